//! The in-memory index of one family's live messages, and which segment files
//! may be deleted.
//!
//! A segment may be deleted when (a) no live message's newest record is in it,
//! and (b) every older segment holding a record that one of its records
//! supersedes (a Done for an older message, or a newer copy of one) is already
//! gone. Rule (b) keeps a stale record from outliving the record that cancels
//! it, so a crash can never bring a finished message back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::envelope::{Envelope, QueueId};

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub seq: u64,
    pub offset: u64,
    /// Whole record length, header included.
    pub len: u32,
}

/// What the index keeps per live message: small on purpose (the envelope
/// stays on disk).
#[derive(Debug, Clone)]
pub struct Entry {
    pub loc: Location,
    pub received_at: u64,
    pub recipients: u32,
    /// (domain id, recipients in that domain).
    pub domains: Box<[(u32, u32)]>,
}

/// An entry without its location; see [`Index::prepare`].
#[derive(Debug)]
pub struct Prepared {
    received_at: u64,
    recipients: u32,
    domains: Box<[(u32, u32)]>,
}

impl Prepared {
    pub fn recipients(&self) -> u32 {
        self.recipients
    }
}

#[derive(Debug, Default)]
struct SegmentState {
    live: u32,
    /// Older segments that records in this one supersede.
    refs: BTreeSet<u64>,
}

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
    recipients: u64,
}

impl Index {
    /// Registers a segment file (so it is considered for deletion even if it
    /// never holds a live message).
    pub fn add_segment(&mut self, seq: u64) {
        self.segments.entry(seq).or_default();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn recipients(&self) -> u64 {
        self.recipients
    }

    pub fn get(&self, id: QueueId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.entries.keys().copied()
    }

    /// Per-domain totals, by domain name.
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
        let mut per_domain: Vec<(u32, u32)> = Vec::new();
        for r in &env.recipients {
            let d = self.domain_id(&r.address.domain().to_lowercase());
            match per_domain.iter_mut().find(|(id, _)| *id == d) {
                Some((_, n)) => *n += 1,
                None => per_domain.push((d, 1)),
            }
        }
        Prepared {
            received_at: env.received_at,
            recipients: env.recipients.len() as u32,
            domains: per_domain.into_boxed_slice(),
        }
    }

    /// Adds a prepared entry once its record is durable at `loc`.
    pub fn insert_prepared(&mut self, id: QueueId, p: Prepared, loc: Location) {
        let entry = Entry { loc, received_at: p.received_at, recipients: p.recipients, domains: p.domains };
        self.remove_at(id, loc.seq);
        self.count(&entry, true);
        self.segments.entry(loc.seq).or_default().live += 1;
        self.entries.insert(id, entry);
    }

    /// Removes a message because a record in segment `seq` (a Done, or a newer
    /// copy) supersedes it. Returns the removed entry.
    pub fn remove_at(&mut self, id: QueueId, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.count(&entry, false);
        if let Some(s) = self.segments.get_mut(&entry.loc.seq) {
            s.live = s.live.saturating_sub(1);
        }
        if entry.loc.seq < seq {
            self.segments.entry(seq).or_default().refs.insert(entry.loc.seq);
        }
        Some(entry)
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

    fn count(&mut self, e: &Entry, add: bool) {
        for &(d, n) in e.domains.iter() {
            if let Some(c) = self.domain_counts.get_mut(d as usize) {
                if add {
                    c.messages += 1;
                    c.recipients += u64::from(n);
                } else {
                    c.messages = c.messages.saturating_sub(1);
                    c.recipients = c.recipients.saturating_sub(u64::from(n));
                }
            }
        }
        if add {
            self.recipients += u64::from(e.recipients);
        } else {
            self.recipients = self.recipients.saturating_sub(u64::from(e.recipients));
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
        Location { seq, offset: 0, len: 10 }
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
    fn newer_copy_supersedes_older() {
        let mut ix = Index::default();
        ix.insert(&sample_envelope(1), loc(1));
        ix.insert(&sample_envelope(1), loc(5)); // copied forward
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.get(QueueId(1)).unwrap().loc.seq, 5);
        assert_eq!(ix.deletable(None), vec![1]);
    }
}
