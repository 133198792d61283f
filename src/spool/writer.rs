//! The per-worker spool writer: batches records and commits each batch with one
//! write and one fdatasync on io_uring. See the module doc of `spool` for the
//! durability order this implements.

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use local_sync::oneshot;
use monoio::fs::{File, OpenOptions};

use super::index::{DomainCount, Index, Location, Prepared};
use super::record;
use super::recover::Family;
use super::segment::{self, FILE_HEADER_LEN};
use super::AppendError;
use crate::envelope::{Envelope, QueueId};

/// Largest batch buffer kept for the next batch. Big messages make big
/// batches; keeping the buffer spares growing (copying) a new one and the
/// kernel zeroing its fresh pages, at a bounded cost in idle memory.
const RETAINED_BATCH: usize = 32 << 20;

/// Counters shared with the admin thread (all workers add into one).
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub commits: AtomicU64,
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

struct Open {
    file: Rc<File>,
    seq: u64,
    /// The tag of this segment's records.
    tag: u32,
    /// End of the last durable record.
    end: u64,
}

struct Inner {
    dir: PathBuf,
    family: u32,
    fsync: bool,
    segment_size: u64,
    index: Index,
    next_seq: u64,
    current: Option<Open>,
    /// The next segment, made ready (header durable) before it is needed.
    prepared: Option<Open>,
    /// A segment is being prepared (by the janitor or the committer).
    preparing: bool,
    /// The committer, waiting for a preparation under way.
    prepare_waiter: Option<Waker>,
    /// The last preparation failed: the janitor leaves it to the committer.
    prepare_failed: bool,
    /// A dead, recyclable segment kept for the next preparation. It stays in
    /// the index (so nothing that depends on it being gone goes first) until
    /// its file carries its new name and header.
    spare_segment: Option<u64>,
    /// The spare being renamed and rewritten by a preparation under way; like
    /// the spare, it is no longer the janitor's to keep or delete.
    recycling: Option<u64>,
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
            prepared: None,
            preparing: false,
            prepare_waiter: None,
            prepare_failed: false,
            spare_segment: None,
            recycling: None,
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
    pub fn append_message(&self, env: &Envelope, body: &[u8]) -> Ticket {
        if record::message_payload_len(env, body) > u64::from(record::MAX_PAYLOAD) {
            return refused(AppendError::TooBig);
        }
        let mut i = self.inner.borrow_mut();
        let offset = i.buf.len();
        let len = record::append_message(&mut i.buf, env, body);
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
    pub fn summary(&self, id: QueueId) -> Option<crate::rt::worker::MessageSummary> {
        let i = self.inner.borrow();
        let e = i.index.get(id)?;
        Some(crate::rt::worker::MessageSummary {
            received_at: e.received_at,
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

    /// The commit loop. Runs until [`Spool::close`] and the last batch is done.
    /// Spent segments are deleted by a janitor task beside it: unlinking a big
    /// file and syncing the directory takes tens of milliseconds on ext4, and
    /// commits must not wait for that.
    pub async fn run_committer(self) {
        let janitor = monoio::spawn(self.clone().run_janitor());
        while let Some((batch, items)) = self.next_batch().await {
            let (result, batch) = self.commit(batch).await;
            self.settle(batch, items, result);
            self.wake_janitor();
        }
        self.wake_janitor();
        janitor.await;
    }

    fn wake_janitor(&self) {
        let mut i = self.inner.borrow_mut();
        i.janitor_due = true;
        if let Some(w) = i.janitor.take() {
            w.wake();
        }
    }

    /// Step 9, off the commit path: waits for spent segments and deletes
    /// them; returns once the spool is closed and nothing is left to delete.
    /// A failed unlink is logged and tried again after the next commit.
    async fn run_janitor(self) {
        loop {
            self.delete_dead_segments().await;
            self.prepare_ahead().await;
            let closed = poll_fn(|cx| {
                let mut i = self.inner.borrow_mut();
                if std::mem::take(&mut i.janitor_due) || i.closed {
                    return Poll::Ready(i.closed);
                }
                i.janitor = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if closed {
                return;
            }
        }
    }

    async fn next_batch(&self) -> Option<(Vec<u8>, Vec<Item>)> {
        poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if !i.items.is_empty() {
                let spare = std::mem::take(&mut i.spare);
                let batch = std::mem::replace(&mut i.buf, spare);
                let items = std::mem::take(&mut i.items);
                return Poll::Ready(Some((batch, items)));
            }
            if i.closed {
                return Poll::Ready(None);
            }
            i.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Steps 4-6 of the durability order. Returns where the batch landed, and
    /// the batch buffer back (it went to the kernel by value).
    async fn commit(&self, mut batch: Vec<u8>) -> (Result<Landed, AppendError>, Vec<u8>) {
        let len = batch.len() as u64;
        let started = crate::rt::clock::instant();
        let (file, seq, tag, end) = match self.segment_for(len).await {
            Ok(found) => found,
            Err(e) => return (Err(e), batch),
        };
        record::seal(&mut batch, tag);
        // The end mark: the next batch overwrites it. Recovery stops there
        // and never looks further (in a recycled file, the rest is the
        // file's earlier life).
        batch.extend_from_slice(&record::end_mark(tag, end + len));
        let (res, mut batch) = write_batch(&file, batch, end).await;
        batch.truncate(len as usize);
        if let Err(e) = res {
            self.truncate_after_failed_write(&file, end);
            return (Err(AppendError::from_io(&e)), batch);
        }
        let (fsync, stats) = {
            let i = self.inner.borrow();
            (i.fsync, i.stats.clone())
        };
        stats.write_latency.observe_us(started.elapsed().as_micros() as u64);
        if fsync {
            let synced = crate::rt::clock::instant();
            let res = file.sync_data().await;
            stats.sync_latency.observe_us(synced.elapsed().as_micros() as u64);
            if let Err(e) = res {
                tracing::error!(error = %e, "spool fdatasync failed; abandoning segment");
                self.inner.borrow_mut().current = None;
                return (Err(AppendError::from_io(&e)), batch);
            }
        }
        if let Some(cur) = self.inner.borrow_mut().current.as_mut() {
            cur.end = end + len;
        }
        (Ok(Landed { seq, tag, base: end }), batch)
    }

    fn truncate_after_failed_write(&self, file: &File, end: u64) {
        // SAFETY: ftruncate on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::ftruncate(file.as_raw_fd(), end as libc::off_t) };
        if rc != 0 {
            tracing::error!("spool truncate after failed write failed; abandoning segment");
            self.inner.borrow_mut().current = None;
        }
    }

    /// The open segment, or the next one if there is none or the batch would
    /// make it exceed the segment size (an empty segment takes any batch).
    /// The next one is normally ready (see [`Spool::prepare_ahead`]); if not,
    /// it is prepared now, or the preparation under way is awaited.
    async fn segment_for(&self, len: u64) -> Result<(Rc<File>, u64, u32, u64), AppendError> {
        loop {
            {
                let mut i = self.inner.borrow_mut();
                if let Some(cur) = &i.current {
                    if cur.end == FILE_HEADER_LEN || cur.end + len <= i.segment_size {
                        return Ok((cur.file.clone(), cur.seq, cur.tag, cur.end));
                    }
                }
                if let Some(next) = i.prepared.take() {
                    i.index.add_segment(next.seq);
                    let found = (next.file.clone(), next.seq, next.tag, next.end);
                    i.current = Some(next);
                    return Ok(found);
                }
            }
            let busy = poll_fn(|cx| {
                let mut i = self.inner.borrow_mut();
                if i.preparing {
                    i.prepare_waiter = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(i.prepared.is_some())
            })
            .await;
            if !busy {
                self.prepare().await?;
            }
        }
    }

    /// Janitor: makes the segment after the current one ready, so that
    /// starting it costs a commit nothing.
    async fn prepare_ahead(&self) {
        let due = {
            let i = self.inner.borrow();
            i.current.is_some() && i.prepared.is_none() && !i.preparing && !i.prepare_failed && !i.closed
        };
        if due {
            if let Err(e) = self.prepare().await {
                tracing::warn!(error = %e, "cannot prepare the next spool segment");
            }
        }
    }

    /// Steps 4 of the durability order, ahead of time: the next segment file
    /// with its header durable and its name in the synced directory. It is
    /// the spare dead segment renamed, if there is one (see `segment`), or a
    /// new file. Its number is taken now (given back if this fails), so
    /// segments stay in order.
    async fn prepare(&self) -> Result<(), AppendError> {
        let (dir, family, seq, spare) = {
            let mut i = self.inner.borrow_mut();
            i.preparing = true;
            let seq = i.next_seq;
            i.next_seq += 1;
            let spare = i.spare_segment.take();
            i.recycling = spare;
            (i.dir.clone(), i.family, seq, spare)
        };
        let made = make_segment(&dir, family, seq, spare).await;
        let mut i = self.inner.borrow_mut();
        i.preparing = false;
        i.recycling = None;
        if let Some(w) = i.prepare_waiter.take() {
            w.wake();
        }
        i.prepare_failed = made.is_err();
        match made {
            Ok((file, recycled, tag)) => {
                match spare {
                    Some(old) if recycled => {
                        // Its old name and records are gone for good: whatever
                        // waited for it to go may go now.
                        i.index.mark_deleted(old);
                        i.stats.segments_recycled.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if let Some(missing) = other {
                            // Dropped like any dead segment (the unlink finds
                            // nothing), after a directory sync.
                            i.index.forbid_recycling(missing);
                            i.stats.spares_missing.fetch_add(1, Ordering::Relaxed);
                        }
                        i.stats.segments_created.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i.prepared = Some(Open { file: Rc::new(file), seq, tag, end: FILE_HEADER_LEN });
                Ok(())
            }
            Err(Made { error, renamed }) => {
                // The same number next time: a new file under it truncates
                // whatever this attempt left there.
                i.next_seq = seq;
                match spare {
                    Some(old) if renamed => {
                        // Its old name is gone, but durably so only after a
                        // directory sync: it stays in the index, to be
                        // "deleted" (unlink finds nothing, then the sync) like
                        // any dead segment, never recycled again.
                        i.index.forbid_recycling(old);
                    }
                    _ => i.spare_segment = spare,
                }
                Err(error)
            }
        }
    }

    /// Step 7: update the index, then answer every waiter.
    fn settle(&self, mut batch: Vec<u8>, items: Vec<Item>, result: Result<Landed, AppendError>) {
        let mut i = self.inner.borrow_mut();
        let stats = i.stats.clone();
        match result {
            Ok(Landed { seq, tag, base }) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                i.index.note_extent(seq, base + batch.len() as u64);
                stats.committed_records.fetch_add(items.len() as u64, Ordering::Relaxed);
                for item in items {
                    let loc = Location { seq, offset: base + item.offset as u64, len: item.len as u32, tag };
                    let before = (i.index.len() as u64, i.index.recipients());
                    let id = match item.op {
                        Op::Insert(id, prepared) => {
                            i.index.insert_prepared(id, prepared, loc);
                            id
                        }
                        Op::Remove(id) => {
                            i.index.remove_at(id, seq);
                            id
                        }
                        Op::Progress(p) => {
                            i.index.apply_progress(&p, seq);
                            p.id
                        }
                        Op::Relocate(id, old, p) => {
                            i.index.relocate(id, old, loc, p.as_deref());
                            id
                        }
                    };
                    let after = (i.index.len() as u64, i.index.recipients());
                    adjust(&stats.messages, before.0, after.0);
                    adjust(&stats.recipients, before.1, after.1);
                    let _ = item.done.send(Ok(Committed { id, loc }));
                }
            }
            Err(e) => {
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                for item in items {
                    let _ = item.done.send(Err(e.clone()));
                }
            }
        }
        batch.clear();
        if batch.capacity() <= RETAINED_BATCH {
            i.spare = batch;
        }
    }

    /// Step 9: unlink segments that hold nothing live.
    async fn delete_dead_segments(&self) {
        loop {
            let (dir, family, dead) = {
                let i = self.inner.borrow();
                let mut dead = i.index.deletable(i.current.as_ref().map(|c| c.seq));
                dead.retain(|s| Some(*s) != i.spare_segment && Some(*s) != i.recycling);
                (i.dir.clone(), i.family, dead)
            };
            if dead.is_empty() {
                return;
            }
            for seq in dead {
                {
                    // Keep one to recycle.
                    let mut i = self.inner.borrow_mut();
                    if i.spare_segment.is_none() && i.index.recyclable(seq) {
                        i.spare_segment = Some(seq);
                        continue;
                    }
                }
                let path = segment::segment_path(&dir, family, seq);
                match monoio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete spent segment");
                        return;
                    }
                }
                let mut i = self.inner.borrow_mut();
                i.index.mark_deleted(seq);
                i.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
            }
            // What the next round may delete can depend on these unlinks
            // being durable: no next round without the sync.
            if let Err(e) = sync_family_dir(&dir, family).await {
                tracing::warn!(error = %e, "cannot sync the spool directory; deleting more later");
                return;
            }
        }
    }
}

/// Where a committed batch landed.
struct Landed {
    seq: u64,
    tag: u32,
    /// Offset of the batch's first byte.
    base: u64,
}

/// A failed [`make_segment`]: the error, and whether the spare had already
/// been renamed (so it is no longer there to reuse).
struct Made {
    error: AppendError,
    renamed: bool,
}

/// Makes segment `seq` of `family` ready: from the dead segment `spare` if
/// given (renamed, then overwritten from the start), else a new file. On
/// return its header (with a new salt) and end mark are durable and so is
/// its name; it returns the file, whether the spare was used, and the tag of
/// the segment's records.
async fn make_segment(
    dir: &std::path::Path,
    family: u32,
    seq: u64,
    spare: Option<u64>,
) -> Result<(File, bool, u32), Made> {
    let path = segment::segment_path(dir, family, seq);
    let fail = |renamed: bool| move |e: std::io::Error| Made { error: AppendError::from_io(&e), renamed };
    // Blocking, but brief: a rename within a directory only updates cached
    // metadata; the directory fsync below (io_uring) is the part that waits
    // for the disk. (monoio's renameat op does not build without its legacy
    // driver.)
    let renamed = match spare.map(|old| std::fs::rename(segment::segment_path(dir, family, old), &path)) {
        None => false,
        Some(Ok(())) => true,
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            // Someone removed it: not a reason to fail a commit.
            tracing::error!(segment = ?spare, "the spare spool segment is missing; starting a new file");
            false
        }
        Some(Err(e)) => return Err(fail(false)(e)),
    };
    let file = if renamed {
        OpenOptions::new().write(true).open(&path).await.map_err(fail(true))?
    } else {
        // `seq` is above every segment that holds a record, so truncating a
        // file left by an earlier failed attempt cannot lose anything.
        OpenOptions::new().write(true).create(true).truncate(true).open(&path).await.map_err(fail(false))?
    };
    let salt = super::new_salt().map_err(fail(renamed))?;
    let tag = record::segment_tag(seq, salt);
    let mut head = segment::encode_header(family, seq, salt).to_vec();
    head.extend_from_slice(&record::end_mark(tag, FILE_HEADER_LEN)); // no records yet
    let (res, _) = file.write_all_at(head, 0).await;
    res.map_err(fail(renamed))?;
    file.sync_data().await.map_err(fail(renamed))?;
    sync_family_dir(dir, family).await.map_err(fail(renamed))?;
    Ok((file, renamed, tag))
}

/// Fsyncs a family's directory, so names created, renamed or removed in it
/// are durable.
async fn sync_family_dir(dir: &std::path::Path, family: u32) -> std::io::Result<()> {
    File::open(segment::family_dir(dir, family)).await?.sync_all().await
}

/// Batches up to this size are written with pwrite(2) on the worker thread.
/// io_uring hands a buffered ext4 write to an io-wq thread, which on a busy
/// core costs two context switches and a wait behind the sessions' work (the
/// median batch write took 250 us that way); copying a few KiB into the page
/// cache takes microseconds. Bigger batches still go through io_uring, so a
/// long copy does not hold up the worker's connections.
const INLINE_WRITE_MAX: usize = 256 << 10;

/// Step 5: writes all of `batch` at `offset`; gives the buffer back.
async fn write_batch(file: &File, batch: Vec<u8>, offset: u64) -> (std::io::Result<()>, Vec<u8>) {
    if batch.len() > INLINE_WRITE_MAX {
        return file.write_all_at(batch, offset).await;
    }
    let mut done = 0;
    while done < batch.len() {
        let rest = &batch[done..];
        // SAFETY: `rest` is a live, initialised slice for the whole call, and
        // the descriptor is owned by `file`.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return (Err(e), batch);
        }
        if n == 0 {
            return (Err(std::io::ErrorKind::WriteZero.into()), batch);
        }
        done += n as usize;
    }
    (Ok(()), batch)
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
                spool.append_message(&sample_envelope(n), &body).await.unwrap().unwrap();
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
                spool.append_message(&sample_envelope(n), &body).await.unwrap().unwrap();
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
            let r = spool.append_message(&env, b"body\r\n").await.unwrap();
            assert!(matches!(r, Err(AppendError::Unstorable(_))), "{r:?}");
            spool.append_message(&sample_envelope(2), b"body\r\n").await.unwrap().unwrap();
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
            let r = spool.append_message(&sample_envelope(1), &body).await.unwrap();
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
                        monoio::spawn(async move { spool.append_message(&sample_envelope(n), &body).await })
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
