//! The per-worker spool: the handle sessions and delivery use ([`Spool`]:
//! appends queued for the next commit, queries of the index), and the two
//! tasks beside it: the committer (`committer`: one write and one fdatasync
//! per batch), the janitor (`janitor`: spent segments deleted or kept to
//! recycle, the next segment prepared ahead) and compaction (`compactor`:
//! live messages copied out of mostly dead segments). See the module doc of
//! `spool` for the durability order they implement.

mod committer;
mod compactor;
mod janitor;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use local_sync::oneshot;
use monoio::fs::File;

use super::index::{DomainCount, Index, Location, Prepared};
use super::record;
use super::recover::Family;
use super::AppendError;
use crate::envelope::{Envelope, QueueId};

/// Counters shared with the admin thread (all workers add into one).
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub commits: AtomicU64,
    /// Commits written while the previous one's fdatasync ran (see
    /// `committer::IN_FLIGHT`).
    pub commits_overlapped: AtomicU64,
    pub committed_records: AtomicU64,
    pub commit_failures: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_recycled: AtomicU64,
    /// Spare segments whose file was gone when they were to be recycled
    /// (removed by someone else); a new file was started instead.
    pub spares_missing: AtomicU64,
    pub segments_deleted: AtomicU64,
    /// Damaged regions among committed records that recovery skipped at
    /// startup (each cost the records in it; the scan went on after it).
    pub recovery_corrupt: AtomicU64,
    /// Records recovery found whole but could not decode (skipped).
    pub recovery_undecodable: AtomicU64,
    /// Time of each batch's write (steps 4-5: a new segment, if any, and the write).
    pub write_latency: crate::metrics::Histogram,
    /// Time of each batch's fdatasync (step 6).
    pub sync_latency: crate::metrics::Histogram,
}

/// A record made durable: the message it concerns, and where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub id: QueueId,
    pub loc: Location,
}

/// One step of compaction (see [`Spool::compaction_work`]).
#[derive(Debug, Clone)]
pub enum Compaction {
    /// Copy the message at `loc` forward (with its progress).
    Copy { id: QueueId, loc: Location, progress: Option<record::ProgressRecord> },
    /// Write this progress again, in the current segment.
    Progress(record::ProgressRecord),
}

/// The answer to one append: resolves when the record is durable (or not).
pub type Ticket = oneshot::Receiver<Result<Committed, AppendError>>;

enum Op {
    Insert(QueueId, Prepared),
    Remove(QueueId),
    Progress(Box<record::ProgressRecord>),
    /// A copy of a live message's record (and its progress), from `Location`.
    Relocate(QueueId, Location, Option<Box<record::ProgressRecord>>),
}

struct Item {
    /// Offset of the record within the batch buffer.
    offset: usize,
    len: usize,
    op: Op,
    done: oneshot::Sender<Result<Committed, AppendError>>,
}

#[derive(Clone)]
struct Open {
    /// For io_uring: big writes and every fdatasync.
    file: Rc<File>,
    /// The same file, for what is done on the worker thread: small writes
    /// (pwrite(2), see `committer`) and truncation after a failed write.
    blocking: Rc<std::fs::File>,
    seq: u64,
    /// The tag of this segment's records.
    tag: u32,
    /// End of the last durable record.
    end: u64,
}

/// Where the segment after the current one stands.
enum Next {
    /// Not prepared; nothing under way.
    Idle,
    /// Being prepared (by the janitor or the committer), from the spare
    /// `recycling` if any: like the spare, that file is no longer the
    /// janitor's to keep or delete. `waiter` is the committer, waiting.
    Preparing { recycling: Option<u64>, waiter: Option<Waker> },
    /// Ready: header and name durable.
    Ready(Open),
    /// The last preparation failed: the janitor leaves it to the committer.
    Failed,
}

impl Next {
    /// The spare being recycled by a preparation under way.
    fn recycling(&self) -> Option<u64> {
        match self {
            Next::Preparing { recycling, .. } => *recycling,
            _ => None,
        }
    }
}

struct Inner {
    dir: PathBuf,
    family: u32,
    fsync: bool,
    segment_size: u64,
    index: Index,
    next_seq: u64,
    current: Option<Open>,
    /// The segment after the current one.
    next: Next,
    /// A dead, recyclable segment kept for the next preparation. It stays in
    /// the index (so nothing that depends on it being gone goes first) until
    /// its file carries its new name and header.
    spare_segment: Option<u64>,
    buf: Vec<u8>,
    items: Vec<Item>,
    spare: Vec<u8>,
    waker: Option<Waker>,
    /// The janitor task, waiting for the next commit.
    janitor: Option<Waker>,
    /// A commit happened since the janitor last looked.
    janitor_due: bool,
    closed: bool,
    stats: Arc<SpoolStats>,
}

/// A worker's handle on its spool family. Cheap to clone; not `Send`.
#[derive(Clone)]
pub struct Spool {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.borrow();
        f.debug_struct("Spool").field("family", &i.family).field("messages", &i.index.len()).finish()
    }
}

impl Spool {
    /// Wraps a recovered family. Call [`Spool::run_committer`] on the worker's
    /// runtime to make appends complete.
    pub fn new(dir: PathBuf, fam: Family, fsync: bool, segment_size: u64, stats: Arc<SpoolStats>) -> Spool {
        stats.messages.fetch_add(fam.index.len() as u64, Ordering::Relaxed);
        stats.recipients.fetch_add(fam.index.recipients(), Ordering::Relaxed);
        let inner = Inner {
            dir,
            family: fam.family,
            fsync,
            segment_size,
            index: fam.index,
            next_seq: fam.max_seq + 1,
            current: None,
            next: Next::Idle,
            spare_segment: None,
            buf: Vec::with_capacity(1 << 16),
            items: Vec::new(),
            spare: Vec::with_capacity(1 << 16),
            waker: None,
            janitor: None,
            janitor_due: false,
            closed: false,
            stats,
        };
        Spool { inner: Rc::new(RefCell::new(inner)) }
    }

    /// Queues a message for the next commit. The record is decoded again
    /// at once and must give back `env`: what could not be read back (and
    /// so would be lost after the `250`) is refused here instead.
    pub fn append_message(&self, env: &Envelope, head: &[u8], body: &[u8]) -> Ticket {
        if record::message_payload_len(env, head.len() + body.len()) > u64::from(record::MAX_PAYLOAD) {
            return refused(AppendError::TooBig);
        }
        let mut i = self.inner.borrow_mut();
        let offset = i.buf.len();
        let len = record::append_message(&mut i.buf, env, head, body);
        if let Err(e) = record::check_message(&i.buf[offset..offset + len], env) {
            i.buf.truncate(offset);
            tracing::error!(id = %env.id, error = e, "refusing a message whose spool record would not read back");
            return refused(AppendError::Unstorable(e));
        }
        let prepared = i.index.prepare(env);
        i.push(offset, len, Op::Insert(env.id, prepared))
    }

    /// Queues a Done record: the message is finished and leaves the queue.
    pub fn finish(&self, id: QueueId) -> Ticket {
        let mut i = self.inner.borrow_mut();
        if i.index.get(id).is_none() {
            return refused(AppendError::NotFound);
        }
        let offset = i.buf.len();
        let len = record::append_done(&mut i.buf, id);
        i.push(offset, len, Op::Remove(id))
    }

    /// Records delivery progress: finished recipients, the next attempt.
    /// The last error is made one line of at most
    /// [`record::MAX_LAST_ERROR`] bytes; the record must read back as made.
    pub fn progress(&self, mut p: record::ProgressRecord) -> Ticket {
        let mut i = self.inner.borrow_mut();
        if i.index.get(p.id).is_none() {
            return refused(AppendError::NotFound);
        }
        p.last_error = record::bounded_text(&p.last_error, record::MAX_LAST_ERROR);
        let offset = i.buf.len();
        let len = record::append_progress(&mut i.buf, &p);
        if let Err(e) = record::check_progress(&i.buf[offset..offset + len], &p) {
            i.buf.truncate(offset);
            tracing::error!(id = %p.id, error = e, "refusing a progress record that would not read back");
            return refused(AppendError::Unstorable(e));
        }
        i.push(offset, len, Op::Progress(Box::new(p)))
    }

    /// Copies a live message forward: `raw` is its whole Message record as
    /// read from `old` (checked), `progress` its delivery state, re-recorded
    /// beside it. Resolves when the copy is durable and the index points to it.
    pub fn relocate(
        &self,
        id: QueueId,
        old: Location,
        raw: &[u8],
        progress: Option<record::ProgressRecord>,
    ) -> Ticket {
        let mut i = self.inner.borrow_mut();
        let offset = i.buf.len();
        i.buf.extend_from_slice(raw);
        if let Some(p) = &progress {
            record::append_progress(&mut i.buf, p);
        }
        i.push(offset, raw.len(), Op::Relocate(id, old, progress.map(Box::new)))
    }

    /// What compaction should do now: copy live messages out of mostly-dead
    /// segments, and re-record progress that pins one.
    pub fn compaction_work(&self) -> Vec<Compaction> {
        let i = self.inner.borrow();
        let seqs = i.index.compactable(i.current.as_ref().map(|c| c.seq));
        if seqs.is_empty() {
            return Vec::new();
        }
        i.index
            .live_in(&seqs)
            .into_iter()
            .filter_map(|(id, loc, progress)| {
                if seqs.contains(&loc.seq) {
                    Some(Compaction::Copy { id, loc, progress })
                } else {
                    // Only its progress is in a candidate: record it again.
                    progress.map(Compaction::Progress)
                }
            })
            .collect()
    }

    /// Runs `f` on the index entry of a live message.
    pub fn with_entry<R>(&self, id: QueueId, f: impl FnOnce(&super::index::Entry) -> R) -> Option<R> {
        self.inner.borrow().index.get(id).map(f)
    }

    /// Runs `f` over every live message (startup scheduling, listings).
    pub fn for_each_entry(&self, mut f: impl FnMut(QueueId, &super::index::Entry)) {
        for (id, e) in self.inner.borrow().index.iter() {
            f(id, e);
        }
    }

    /// The domain name of a domain id in this family's index.
    pub fn domain_name(&self, id: u32) -> Option<String> {
        self.inner.borrow().index.domain_name(id).map(str::to_owned)
    }

    /// The spool directory and this family's number (to read records).
    pub fn family(&self) -> (PathBuf, u32) {
        let i = self.inner.borrow();
        (i.dir.clone(), i.family)
    }

    /// Live messages and recipients in this family.
    pub fn counts(&self) -> (usize, u64) {
        let i = self.inner.borrow();
        (i.index.len(), i.index.recipients())
    }

    /// Per-domain totals of this family.
    pub fn domains(&self) -> Vec<(String, DomainCount)> {
        self.inner.borrow().index.domains().map(|(d, c)| (d.to_owned(), c)).collect()
    }

    /// The index entry of a queued message.
    pub fn summary(&self, id: QueueId) -> Option<super::MessageSummary> {
        let i = self.inner.borrow();
        let e = i.index.get(id)?;
        Some(super::MessageSummary {
            received_at: e.received_at(),
            recipients: e.recipients(),
            size: e.loc.len,
        })
    }

    pub fn contains(&self, id: QueueId) -> bool {
        self.inner.borrow().index.get(id).is_some()
    }

    /// Stops taking appends; the committer finishes what is queued and returns.
    pub fn close(&self) {
        let mut i = self.inner.borrow_mut();
        i.closed = true;
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }
}

/// A ticket already answered with `e`.
fn refused(e: AppendError) -> Ticket {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(e));
    rx
}

/// Moves a shared gauge by the change of a family's count.
fn adjust(gauge: &AtomicU64, before: u64, after: u64) {
    if after >= before {
        gauge.fetch_add(after - before, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(before - after, Ordering::Relaxed);
    }
}

impl Inner {
    fn push(&mut self, offset: usize, len: usize, op: Op) -> Ticket {
        let (tx, rx) = oneshot::channel();
        if self.closed {
            self.buf.truncate(offset);
            let _ = tx.send(Err(AppendError::Closed));
            return rx;
        }
        self.items.push(Item { offset, len, op, done: tx });
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly

    use std::collections::BTreeSet;

    use super::*;
    use crate::spool::record::tests::sample_envelope;
    use crate::spool::recover;

    const SEGMENT: u64 = 64 << 10;

    fn open(dir: &std::path::Path) -> (Spool, recover::Report) {
        let rec = recover::scan(dir).unwrap();
        let (mut fams, report) = recover::assign(dir, rec, 1).unwrap();
        let fam = fams.remove(0);
        (Spool::new(dir.to_path_buf(), fam, true, SEGMENT, Arc::default()), report)
    }

    fn live_ids(dir: &std::path::Path) -> (BTreeSet<u64>, recover::Report) {
        let rec = recover::scan(dir).unwrap();
        let ids = rec.families.iter().flat_map(|f| f.index.ids().map(|id| id.0)).collect();
        (ids, rec.report)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().unwrap().block_on(f)
    }

    /// Messages come and go through many small segments: dead ones are
    /// recycled, and what recovery finds afterwards is exactly what is live:
    /// no record of a recycled file's earlier life comes back, and no tail is
    /// reported torn.
    #[test]
    fn recycled_segments_never_revive_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let stats = spool.inner.borrow().stats.clone();
        let body = vec![b'x'; 3000];
        let mut live = BTreeSet::new();
        block_on(async {
            let committer = monoio::spawn(spool.clone().run_committer());
            for n in 1..=400u64 {
                spool.append_message(&sample_envelope(n), b"", &body).await.unwrap().unwrap();
                live.insert(n);
                // Finish each message a little later (the last five stay).
                if n > 5 {
                    spool.finish(QueueId(n - 5)).await.unwrap().unwrap();
                    live.remove(&(n - 5));
                }
            }
            // Let the janitor catch up with the last commits.
            for _ in 0..20 {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            spool.close();
            committer.await;
        });
        let recycled = stats.segments_recycled.load(Ordering::Relaxed);
        let created = stats.segments_created.load(Ordering::Relaxed);
        let deleted = stats.segments_deleted.load(Ordering::Relaxed);
        assert!(recycled >= 5, "segments were recycled ({recycled}; {created} created, {deleted} deleted)");
        let (found, report) = live_ids(dir.path());
        assert_eq!(found, live);
        assert!(report.torn.is_empty(), "clean ends are not torn: {:?}", report.torn);

        // And it goes on from there after a restart.
        let (spool, report) = open(dir.path());
        assert!(report.deleted_segments >= 1, "the prepared and spare segments are cleaned up");
        block_on(async {
            let committer = monoio::spawn(spool.clone().run_committer());
            for n in 1000..1100u64 {
                spool.append_message(&sample_envelope(n), b"", &body).await.unwrap().unwrap();
                live.insert(n);
            }
            spool.close();
            committer.await;
        });
        assert_eq!(live_ids(dir.path()).0, live);
    }

    /// A record that would not read back as it was meant is refused before
    /// anything is written (`451`), never stored and lost at the next read.
    #[test]
    fn what_would_not_read_back_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let mut env = sample_envelope(1);
        env.envid = Some("x".repeat(70_000)); // a string field holds at most 64 KiB
        block_on(async {
            let committer = monoio::spawn(spool.clone().run_committer());
            let r = spool.append_message(&env, b"", b"body\r\n").await.unwrap();
            assert!(matches!(r, Err(AppendError::Unstorable(_))), "{r:?}");
            spool.append_message(&sample_envelope(2), b"", b"body\r\n").await.unwrap().unwrap();
            spool.close();
            committer.await;
        });
        assert_eq!(live_ids(dir.path()).0, BTreeSet::from([2]));
    }

    /// A message larger than a record may be is refused, not stored for
    /// recovery to drop as corrupt.
    #[test]
    fn what_recovery_would_refuse_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        // Zeroed pages are only mapped when touched: this costs no memory.
        let body = vec![0u8; record::MAX_PAYLOAD as usize];
        block_on(async {
            let committer = monoio::spawn(spool.clone().run_committer());
            let r = spool.append_message(&sample_envelope(1), b"", &body).await.unwrap();
            assert_eq!(r.unwrap_err(), AppendError::TooBig);
            spool.close();
            committer.await;
        });
    }

    /// Segments rolling over at every commit, faster than the janitor works:
    /// the committer prepares segments itself while the janitor deletes and
    /// keeps spares. Every append must succeed, and recovery must find
    /// exactly what is live.
    #[test]
    fn segments_rolling_over_at_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let stats = spool.inner.borrow().stats.clone();
        let body = Rc::new(vec![b'y'; 40_000]);
        let mut live = BTreeSet::new();
        block_on(async {
            let committer = monoio::spawn(spool.clone().run_committer());
            for round in 0..30u64 {
                let ids: Vec<u64> = (0..12).map(|k| round * 100 + k + 1).collect();
                let tasks: Vec<_> = ids
                    .iter()
                    .map(|&n| {
                        let (spool, body) = (spool.clone(), body.clone());
                        monoio::spawn(
                            async move { spool.append_message(&sample_envelope(n), b"", &body).await },
                        )
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
                // Finish the previous round's messages, all at once.
                let done: Vec<u64> = live.iter().copied().collect();
                let tasks: Vec<_> = done
                    .iter()
                    .map(|&n| {
                        let spool = spool.clone();
                        monoio::spawn(async move { spool.finish(QueueId(n)).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
                live = ids.into_iter().collect();
            }
            spool.close();
            committer.await;
        });
        assert!(stats.segments_recycled.load(Ordering::Relaxed) >= 5);
        assert_eq!(stats.commit_failures.load(Ordering::Relaxed), 0);
        assert_eq!(stats.spares_missing.load(Ordering::Relaxed), 0, "no spare was handed out twice");
        assert_eq!(live_ids(dir.path()).0, live);
    }
}
