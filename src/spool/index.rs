//! The in-memory index of one family's live messages, and which segment files
//! may be deleted.
//!
//! A live message references the segment of its Message record and, once it
//! has been attempted, the segment of its latest Progress record (which says
//! which recipients are already done). A segment may be deleted when (a) no
//! live message references it, and (b) every older segment holding a record
//! that one of its records cancels (a Done, or a newer copy of a message) is
//! already gone. Rule (a) keeps progress from being forgotten (no recipient
//! gets a message twice after a crash); rule (b) keeps a finished message
//! from coming back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::record::ProgressRecord;
use crate::envelope::{Envelope, QueueId};

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub seq: u64,
    pub offset: u64,
    /// Whole record length, header included.
    pub len: u32,
    /// The tag of the segment's records (see `record`): what a reader checks
    /// the record against.
    pub tag: u32,
}

/// Where delivery of a message stands (from its Progress records).
///
/// Every message that has had an attempt has one, boxed, so its size is
/// memory per queued message: 32 bytes (a pointer-sized error text shared
/// by all messages with the same one, a pointer to the finished recipients
/// that stays empty for the one-recipient messages bulk mail is made of,
/// seconds in 32 bits until 2106, the delay flag in the attempts word),
/// where the plain layout took 64.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Segment of the latest Progress record.
    pub seq: u64,
    /// Shared by every message with the same text (a destination that is
    /// down gives thousands of messages one reason).
    last_error: ErrorText,
    /// Recipients finished (delivered or bounced), sorted; none: empty.
    #[allow(clippy::box_collection)]
    // reason: a thin pointer (8 bytes, a Vec is 24), None for most messages
    done: Option<Box<Vec<u32>>>,
    /// Unix seconds (saturated at u32::MAX).
    next_attempt: u32,
    /// Attempts (low 31 bits, saturated) and whether a delay DSN went out
    /// (the top bit, sticky).
    attempts: u32,
}

const DELAY_NOTIFIED: u32 = 1 << 31;

/// An error text shared by the messages that have it (thin: one pointer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ErrorText(Arc<Box<str>>);

impl std::ops::Deref for ErrorText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ErrorText {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Progress {
    pub fn attempts(&self) -> u32 {
        self.attempts & !DELAY_NOTIFIED
    }

    /// Unix seconds.
    pub fn next_attempt(&self) -> u64 {
        u64::from(self.next_attempt)
    }

    pub fn last_error(&self) -> &str {
        &self.last_error
    }

    /// The shared text itself (cheap to keep).
    pub fn last_error_shared(&self) -> ErrorText {
        self.last_error.clone()
    }

    /// Recipients finished, sorted.
    pub fn done(&self) -> &[u32] {
        self.done.as_deref().map_or(&[], Vec::as_slice)
    }

    /// A delay DSN went out.
    pub fn delay_notified(&self) -> bool {
        self.attempts & DELAY_NOTIFIED != 0
    }

    /// The record that says this again (compaction, adoption).
    pub fn record(&self, id: QueueId) -> ProgressRecord {
        ProgressRecord {
            id,
            attempts: self.attempts(),
            next_attempt: self.next_attempt(),
            last_error: self.last_error.to_string(),
            done: self.done().to_vec(),
            delay_notified: self.delay_notified(),
        }
    }
}

/// The domain ids of a message's recipients, by recipient index: inline
/// for one recipient (bulk mail's usual case, no allocation of its own:
/// the allocator would round four bytes up to a 32-byte chunk), boxed for
/// more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDomains {
    One(u32),
    Many(Box<[u32]>),
}

impl RcptDomains {
    fn new(ids: Vec<u32>) -> RcptDomains {
        match ids.as_slice() {
            [one] => RcptDomains::One(*one),
            _ => RcptDomains::Many(ids.into_boxed_slice()),
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        match self {
            RcptDomains::One(d) => std::slice::from_ref(d),
            RcptDomains::Many(ds) => ds,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the index keeps per live message: small on purpose (the envelope
/// stays on disk). 48 bytes, so a hash table slot with its key is 56: the
/// reception time in 32 bits beside the one recipient's domain id (bulk
/// mail's usual case, no allocation of its own), the domains of a message
/// with more recipients behind one thin pointer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub loc: Location,
    /// Unix seconds (saturated at u32::MAX, the year 2106).
    received_at: u32,
    /// The domain id of the only recipient (unused when `more` is set).
    first_domain: u32,
    /// The domain ids of every recipient, for a message with other than one.
    #[allow(clippy::box_collection)] // reason: a thin pointer (8 bytes; a boxed slice is 16)
    more_domains: Option<Box<Vec<u32>>>,
    /// Delivery progress, once there has been an attempt.
    pub progress: Option<Box<Progress>>,
}

impl Entry {
    fn new(loc: Location, received_at: u64, domains: RcptDomains) -> Entry {
        let (first_domain, more_domains) = match domains {
            RcptDomains::One(d) => (d, None),
            RcptDomains::Many(ds) => (0, Some(Box::new(ds.into_vec()))),
        };
        let received_at = u32::try_from(received_at).unwrap_or(u32::MAX);
        Entry { loc, received_at, first_domain, more_domains, progress: None }
    }

    /// Unix seconds.
    pub fn received_at(&self) -> u64 {
        u64::from(self.received_at)
    }

    /// Domain id of each recipient, by recipient index.
    pub fn rcpt_domains(&self) -> &[u32] {
        match &self.more_domains {
            Some(ds) => ds,
            None => std::slice::from_ref(&self.first_domain),
        }
    }

    pub fn recipients(&self) -> u32 {
        self.rcpt_domains().len() as u32
    }

    fn is_done(&self, i: u32) -> bool {
        self.progress.as_ref().is_some_and(|p| p.done().binary_search(&i).is_ok())
    }

    /// Indexes of the recipients not finished yet.
    pub fn remaining(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.recipients()).filter(|&i| !self.is_done(i))
    }
}

/// An entry without its location; see [`Index::prepare`].
#[derive(Debug)]
pub struct Prepared {
    received_at: u64,
    rcpt_domains: RcptDomains,
}

impl Prepared {
    pub fn recipients(&self) -> u32 {
        self.rcpt_domains.len() as u32
    }
}

#[derive(Debug, Default)]
struct SegmentState {
    /// References from live messages (message records and latest progress).
    live: u32,
    /// Bytes of live message records in this segment.
    live_bytes: u64,
    /// End of the last record written (the segment's useful size).
    end: u64,
    /// Older segments that records in this one cancel.
    refs: BTreeSet<u64>,
    /// Never recycle this file (an `RPSEG001` file, with untagged records, or
    /// one whose recycling failed half way): delete it.
    no_recycle: bool,
}

/// A closed segment less live than this (live bytes / size) is compacted:
/// its live messages are copied forward so it can be deleted.
pub const COMPACT_BELOW: f64 = 0.10;

/// Per-domain totals for `/queue`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DomainCount {
    pub messages: u64,
    pub recipients: u64,
}

/// The live messages of one segment family.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<QueueId, Entry>,
    segments: BTreeMap<u64, SegmentState>,
    domain_ids: HashMap<String, u32>,
    domain_names: Vec<String>,
    domain_counts: Vec<DomainCount>,
    /// Recipients not finished, over all live messages.
    recipients: u64,
    /// The distinct last errors (see [`Progress::last_error`]), and how
    /// many there were after the last sweep of unused ones.
    errors: std::collections::HashSet<ErrorText>,
    errors_swept: usize,
}

impl Index {
    /// The shared copy of an error text; texts no message uses any more are
    /// dropped whenever the set has doubled since the last sweep.
    fn intern(&mut self, text: &str) -> ErrorText {
        if let Some(t) = self.errors.get(text) {
            return t.clone();
        }
        if self.errors.len() >= 2 * self.errors_swept + 1024 {
            self.errors.retain(|t| Arc::strong_count(&t.0) > 1);
            self.errors_swept = self.errors.len();
        }
        let t = ErrorText(Arc::new(Box::from(text)));
        self.errors.insert(t.clone());
        t
    }

    /// Registers a segment file (so it is considered for deletion even if it
    /// never holds a live message).
    pub fn add_segment(&mut self, seq: u64) {
        self.segments.entry(seq).or_default();
    }

    /// Notes that the file of segment `seq` must be deleted, not recycled.
    pub fn forbid_recycling(&mut self, seq: u64) {
        if let Some(s) = self.segments.get_mut(&seq) {
            s.no_recycle = true;
        }
    }

    /// Whether the file of segment `seq` may be recycled once dead.
    pub fn recyclable(&self, seq: u64) -> bool {
        self.segments.get(&seq).is_some_and(|s| !s.no_recycle)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Recipients not finished yet, over all live messages.
    pub fn recipients(&self) -> u64 {
        self.recipients
    }

    pub fn get(&self, id: QueueId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.entries.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (QueueId, &Entry)> + '_ {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    /// The domain name of a domain id.
    pub fn domain_name(&self, id: u32) -> Option<&str> {
        self.domain_names.get(id as usize).map(String::as_str)
    }

    /// Per-domain totals of unfinished recipients, by domain name.
    pub fn domains(&self) -> impl Iterator<Item = (&str, DomainCount)> + '_ {
        self.domain_names
            .iter()
            .zip(&self.domain_counts)
            .filter(|(_, c)| c.messages > 0)
            .map(|(n, c)| (n.as_str(), *c))
    }

    /// Adds (or supersedes) a message whose record is at `loc`.
    pub fn insert(&mut self, env: &Envelope, loc: Location) {
        let prepared = self.prepare(env);
        self.insert_prepared(env.id, prepared, loc);
    }

    /// The part of an entry that does not depend on where it is written, so it
    /// can be computed before the write and applied after it is durable.
    pub fn prepare(&mut self, env: &Envelope) -> Prepared {
        let ids: Vec<u32> =
            env.recipients.iter().map(|r| self.domain_id(&r.address.domain().to_lowercase())).collect();
        Prepared { received_at: env.received_at, rcpt_domains: RcptDomains::new(ids) }
    }

    /// Adds a prepared entry once its record is durable at `loc`.
    pub fn insert_prepared(&mut self, id: QueueId, p: Prepared, loc: Location) {
        self.remove_at(id, loc.seq);
        let entry = Entry::new(loc, p.received_at, p.rcpt_domains);
        self.count(&entry, true);
        self.reference(loc.seq, 1);
        self.live_bytes(loc, true);
        self.entries.insert(id, entry);
    }

    /// A live message was copied forward: its record (and, if given, its
    /// progress) now lives at `loc`. Ignored unless the message is still at
    /// `old` (it may have finished or moved meanwhile).
    pub fn relocate(
        &mut self,
        id: QueueId,
        old: Location,
        loc: Location,
        progress: Option<&ProgressRecord>,
    ) -> bool {
        let Some(entry) = self.entries.get(&id) else { return false };
        if entry.loc != old {
            return false;
        }
        let old_progress = entry.progress.as_ref().map(|p| p.seq);
        self.live_bytes(old, false);
        self.reference(old.seq, -1);
        self.reference(loc.seq, 1);
        self.live_bytes(loc, true);
        if loc.seq > old.seq {
            // The copy must outlive the original, or a crash could revive it.
            self.segments.entry(loc.seq).or_default().refs.insert(old.seq);
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.loc = loc;
        }
        if let (Some(p), Some(_)) = (progress, old_progress) {
            self.apply_progress(p, loc.seq);
        }
        true
    }

    fn live_bytes(&mut self, loc: Location, add: bool) {
        let s = self.segments.entry(loc.seq).or_default();
        if add {
            s.live_bytes += u64::from(loc.len);
        } else {
            s.live_bytes = s.live_bytes.saturating_sub(u64::from(loc.len));
        }
    }

    /// Records that segment `seq` holds data up to `end`.
    pub fn note_extent(&mut self, seq: u64, end: u64) {
        let s = self.segments.entry(seq).or_default();
        s.end = s.end.max(end);
    }

    /// Closed segments worth compacting: some live data, but less than
    /// [`COMPACT_BELOW`] of their size.
    pub fn compactable(&self, current: Option<u64>) -> Vec<u64> {
        self.segments
            .iter()
            .filter(|(seq, s)| {
                Some(**seq) != current && s.live > 0 && (s.live_bytes as f64) < COMPACT_BELOW * s.end as f64
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// The live messages whose record or latest progress is in one of `seqs`.
    pub fn live_in(&self, seqs: &[u64]) -> Vec<(QueueId, Location, Option<ProgressRecord>)> {
        self.entries
            .iter()
            .filter(|(_, e)| {
                seqs.contains(&e.loc.seq) || e.progress.as_ref().is_some_and(|p| seqs.contains(&p.seq))
            })
            .map(|(id, e)| {
                let p = e.progress.as_ref().map(|p| p.record(*id));
                (*id, e.loc, p)
            })
            .collect()
    }

    /// Applies a Progress record found in segment `seq`. Returns false if the
    /// message is unknown (already finished).
    pub fn apply_progress(&mut self, r: &ProgressRecord, seq: u64) -> bool {
        let Some(mut entry) = self.entries.remove(&r.id) else { return false };
        self.count(&entry, false);
        let recipients = entry.recipients();
        let previous = entry.progress.as_ref().map(|p| p.seq);
        let p = entry.progress.get_or_insert_with(Box::default);
        p.seq = seq;
        let delay = p.delay_notified() || r.delay_notified;
        p.attempts = r.attempts.min(!DELAY_NOTIFIED) | if delay { DELAY_NOTIFIED } else { 0 };
        p.next_attempt = u32::try_from(r.next_attempt).unwrap_or(u32::MAX);
        if *p.last_error != *r.last_error {
            p.last_error = self.intern(&r.last_error);
        }
        if r.done.iter().any(|&i| i < recipients) {
            let done = p.done.get_or_insert_with(Box::default);
            done.extend(r.done.iter().copied().filter(|&i| i < recipients));
            done.sort_unstable();
            done.dedup();
        }
        if previous != Some(seq) {
            self.reference(seq, 1);
            if let Some(old) = previous {
                self.reference(old, -1);
            }
        }
        self.count(&entry, true);
        self.entries.insert(r.id, entry);
        true
    }

    /// Removes a message because a record in segment `seq` (a Done, or a newer
    /// copy) supersedes it. Returns the removed entry.
    pub fn remove_at(&mut self, id: QueueId, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.count(&entry, false);
        self.reference(entry.loc.seq, -1);
        self.live_bytes(entry.loc, false);
        if let Some(p) = &entry.progress {
            self.reference(p.seq, -1);
        }
        if entry.loc.seq < seq {
            self.segments.entry(seq).or_default().refs.insert(entry.loc.seq);
        }
        Some(entry)
    }

    fn reference(&mut self, seq: u64, delta: i32) {
        let s = self.segments.entry(seq).or_default();
        s.live = s.live.saturating_add_signed(delta);
    }

    fn domain_id(&mut self, domain: &str) -> u32 {
        if let Some(&id) = self.domain_ids.get(domain) {
            return id;
        }
        let id = self.domain_names.len() as u32;
        self.domain_names.push(domain.to_owned());
        self.domain_counts.push(DomainCount::default());
        self.domain_ids.insert(domain.to_owned(), id);
        id
    }

    /// Adds (or subtracts) an entry's unfinished recipients to the totals.
    fn count(&mut self, e: &Entry, add: bool) {
        let mut seen: Vec<u32> = Vec::new();
        for i in e.remaining() {
            let Some(&d) = e.rcpt_domains().get(i as usize) else { continue };
            let Some(c) = self.domain_counts.get_mut(d as usize) else { continue };
            let first = !seen.contains(&d);
            if first {
                seen.push(d);
            }
            if add {
                c.recipients += 1;
                c.messages += u64::from(first);
                self.recipients += 1;
            } else {
                c.recipients = c.recipients.saturating_sub(1);
                c.messages = c.messages.saturating_sub(u64::from(first));
                self.recipients = self.recipients.saturating_sub(1);
            }
        }
    }

    /// Segments that may be deleted now, oldest first. `current` (the one being
    /// written) is never among them. Deleting these may make more deletable:
    /// call again after [`Index::mark_deleted`] and a directory sync.
    pub fn deletable(&self, current: Option<u64>) -> Vec<u64> {
        self.segments
            .iter()
            .filter(|(seq, s)| {
                Some(**seq) != current && s.live == 0 && s.refs.iter().all(|r| !self.segments.contains_key(r))
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Forgets a segment whose file was deleted.
    pub fn mark_deleted(&mut self, seq: u64) {
        self.segments.remove(&seq);
    }

    /// All known segment numbers, oldest first.
    pub fn segment_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::tests::sample_envelope;

    fn loc(seq: u64) -> Location {
        Location { seq, offset: 0, len: 10, tag: 0 }
    }

    fn progress(id: u64, done: &[u32]) -> ProgressRecord {
        ProgressRecord {
            id: QueueId(id),
            attempts: 1,
            next_attempt: 100,
            last_error: "451 later".into(),
            done: done.to_vec(),
            delay_notified: false,
        }
    }

    #[test]
    fn one_recipient_needs_no_allocation_of_its_own() {
        assert_eq!(std::mem::size_of::<RcptDomains>(), 16);
        assert_eq!(RcptDomains::new(vec![7]), RcptDomains::One(7));
        assert_eq!(RcptDomains::new(vec![7, 8]).as_slice(), &[7, 8]);
        assert!(RcptDomains::new(vec![]).is_empty());
    }

    #[test]
    fn an_entry_is_48_bytes() {
        // Per queued message, in the hash table beside its 8-byte key.
        assert_eq!(std::mem::size_of::<Entry>(), 48);
        let e = Entry::new(loc(1), 1_800_000_000, RcptDomains::One(7));
        assert_eq!((e.received_at(), e.rcpt_domains(), e.recipients()), (1_800_000_000, &[7][..], 1));
        let e = Entry::new(loc(1), u64::MAX, RcptDomains::new(vec![3, 4, 3]));
        assert_eq!(
            (e.received_at(), e.rcpt_domains(), e.recipients()),
            (u64::from(u32::MAX), &[3, 4, 3][..], 3)
        );
        let e = Entry::new(loc(1), 0, RcptDomains::new(vec![]));
        assert_eq!(e.recipients(), 0);
    }

    #[test]
    fn progress_is_32_bytes() {
        // One boxed per attempted message: memory per queued message.
        assert_eq!(std::mem::size_of::<Progress>(), 32);
    }

    #[test]
    fn progress_saturates_and_keeps_the_delay_flag() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1));
        let mut r = progress(1, &[]);
        r.attempts = u32::MAX;
        r.next_attempt = u64::MAX;
        r.delay_notified = true;
        ix.apply_progress(&r, 1);
        let p = ix.get(QueueId(1)).unwrap().progress.clone().unwrap();
        assert_eq!(
            (p.attempts(), p.next_attempt(), p.delay_notified()),
            ((1 << 31) - 1, u64::from(u32::MAX), true)
        );
        // Sticky: a later record without the flag keeps it.
        ix.apply_progress(&progress(1, &[]), 2);
        let p = ix.get(QueueId(1)).unwrap().progress.clone().unwrap();
        assert_eq!((p.attempts(), p.delay_notified()), (1, true));
        assert!(p.record(QueueId(1)).delay_notified);
        assert!(p.done().is_empty());
    }

    /// Messages deferred for the same reason share one copy of its text;
    /// texts nobody uses any more go at a sweep.
    #[test]
    fn last_errors_are_shared_and_swept() {
        let mut ix = Index::default();
        for id in 1..=3 {
            ix.insert(&sample_envelope(id), loc(1));
            assert!(ix.apply_progress(&progress(id, &[]), 1));
        }
        let text =
            |ix: &Index, id: u64| ix.get(QueueId(id)).unwrap().progress.as_ref().unwrap().last_error_shared();
        assert!(Arc::ptr_eq(&text(&ix, 1).0, &text(&ix, 3).0));
        assert_eq!(&*text(&ix, 2), "451 later");
        // Unique texts, one after another on one message: the old ones go.
        for i in 0..5000 {
            let mut p = progress(1, &[]);
            p.last_error = format!("451 try {i}");
            ix.apply_progress(&p, 1);
        }
        assert!(ix.errors.len() < 3000, "{} texts kept", ix.errors.len());
        assert_eq!(&*text(&ix, 1), "451 try 4999");
        assert!(ix.errors.contains("451 later"), "still used by messages 2 and 3");
    }

    #[test]
    fn counts_and_domains() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1));
        ix.insert(&sample_envelope(2), loc(1));
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.recipients(), 4);
        let d: Vec<_> = ix.domains().collect();
        assert_eq!(d.len(), 2);
        assert!(d.contains(&("example.test", DomainCount { messages: 2, recipients: 2 })));
        ix.remove_at(QueueId(1), 2);
        assert_eq!(ix.recipients(), 2);
        assert!(ix.domains().all(|(_, c)| c.messages == 1));
    }

    #[test]
    fn progress_finishes_recipients_and_updates_domains() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1)); // a@example.test, b@x.test
        assert!(ix.apply_progress(&progress(1, &[0]), 2));
        assert_eq!(ix.recipients(), 1);
        let d: HashMap<&str, DomainCount> = ix.domains().collect();
        assert!(!d.contains_key("example.test"), "its only recipient is done");
        assert_eq!(d["x.test"], DomainCount { messages: 1, recipients: 1 });
        let e = ix.get(QueueId(1)).unwrap();
        assert_eq!(e.remaining().collect::<Vec<_>>(), vec![1]);
        assert_eq!(e.progress.as_ref().unwrap().attempts(), 1);
        assert!(!ix.apply_progress(&progress(99, &[0]), 2), "unknown message");
    }

    #[test]
    fn the_latest_progress_keeps_its_segment_alive() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1));
        ix.add_segment(2);
        ix.add_segment(3);
        ix.apply_progress(&progress(1, &[0]), 2);
        assert_eq!(ix.deletable(Some(9)), vec![3], "seg 2 holds the live progress");
        ix.apply_progress(&progress(1, &[]), 3);
        assert_eq!(ix.deletable(Some(9)), vec![2], "superseded progress frees seg 2");
        ix.remove_at(QueueId(1), 4);
        ix.mark_deleted(2);
        // Seg 4 (the Done) waits for seg 1 (the message) to go first.
        assert_eq!(ix.deletable(Some(9)), vec![1, 3]);
    }

    #[test]
    fn a_done_keeps_its_target_segment_alive_first() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1)); // X in seg 1
        ix.insert(&sample_envelope(2), loc(1)); // Y in seg 1
        ix.add_segment(2);
        ix.remove_at(QueueId(1), 2); // Done(X) in seg 2
                                     // Seg 2 holds no live message but cancels X in seg 1, which must go first.
        assert_eq!(ix.deletable(Some(3)), Vec::<u64>::new());
        ix.remove_at(QueueId(2), 2);
        assert_eq!(ix.deletable(Some(3)), vec![1]);
        ix.mark_deleted(1);
        assert_eq!(ix.deletable(Some(3)), vec![2]);
        assert_eq!(ix.deletable(Some(2)), Vec::<u64>::new(), "never the current segment");
    }

    #[test]
    fn compaction_candidates_and_relocation() {
        let mut ix = Index::default();
        let big = |seq, offset| Location { seq, offset, len: 1000, tag: 0 };
        for i in 0..20 {
            ix.insert(&sample_envelope(i), big(1, i * 1000));
        }
        ix.note_extent(1, 20_000);
        ix.add_segment(2);
        assert!(ix.compactable(Some(2)).is_empty(), "all live");
        for i in 0..19 {
            ix.remove_at(QueueId(i), 2);
        }
        assert_eq!(ix.compactable(Some(2)), vec![1], "5% live");
        assert!(ix.compactable(Some(1)).is_empty(), "never the current segment");
        let live = ix.live_in(&[1]);
        assert_eq!(live.len(), 1);
        let (id, old, _) = live[0].clone();
        assert!(ix.relocate(id, old, big(2, 0), None));
        assert!(!ix.relocate(id, old, big(2, 0), None), "only from where it was");
        assert_eq!(ix.get(id).unwrap().loc.seq, 2);
        // Seg 1 is now dead and goes first; seg 2 waits for it.
        assert_eq!(ix.deletable(Some(3)), vec![1]);
    }

    #[test]
    fn newer_copy_supersedes_older() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1));
        ix.insert(&sample_envelope(1), loc(5)); // copied forward
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.get(QueueId(1)).unwrap().loc.seq, 5);
        assert_eq!(ix.deletable(None), vec![1]);
    }
}
