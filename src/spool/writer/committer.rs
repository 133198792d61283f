//! The committer: takes the pending batch, writes it with one write and
//! one fdatasync (steps 3-7 of the durability order in `spool`), and
//! answers every append of the batch. Up to two batches are in flight: the
//! next is written and its fdatasync issued while the previous one's runs;
//! answers go in batch order.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use monoio::fs::File;

use super::{adjust, Committed, Item, Next, Op, Open, Spool};
use crate::spool::index::Location;
use crate::spool::record;
use crate::spool::segment::FILE_HEADER_LEN;
use crate::spool::AppendError;

/// Largest batch buffer kept for the next batch. Big messages make big
/// batches; keeping the buffer spares growing (copying) a new one and the
/// kernel zeroing its fresh pages, at a bounded cost in idle memory.
const RETAINED_BATCH: usize = 32 << 20;

/// Where a committed batch landed.
struct Landed {
    seq: u64,
    tag: u32,
    /// Offset of the batch's first byte.
    base: u64,
}

/// Batches up to this size are written with pwrite(2) on the worker thread.
/// io_uring hands a buffered ext4 write to an io-wq thread, which on a busy
/// core costs two context switches and a wait behind the sessions' work (the
/// median batch write took 250 us that way); copying a few KiB into the page
/// cache takes microseconds. Bigger batches still go through io_uring, so a
/// long copy does not hold up the worker's connections.
const INLINE_WRITE_MAX: usize = 256 << 10;

/// Step 5: writes all of `batch` at `offset`; gives the buffer back.
async fn write_batch(
    file: &File,
    blocking: &std::fs::File,
    batch: Vec<u8>,
    offset: u64,
) -> (std::io::Result<()>, Vec<u8>) {
    if batch.len() > INLINE_WRITE_MAX {
        return file.write_all_at(batch, offset).await;
    }
    let res = std::os::unix::fs::FileExt::write_all_at(blocking, &batch, offset);
    (res, batch)
}

/// Batches in flight at once: while one's fdatasync runs, the next is
/// written and its fdatasync issued too (this disk serves overlapping
/// fdatasyncs of one file together: `bench/syncoverlap.py`), so a message
/// that arrives during a slow sync waits about one sync, not two. Answers
/// still go in batch order.
const IN_FLIGHT: usize = 2;

/// The second batch goes only once the first one's fdatasync has taken
/// this long: most syncs are quicker, and waiting for them makes bigger
/// batches (fewer syncs, less CPU per message at full load); the slow ones,
/// which make the latency's tail, get a second beside them.
const PIPELINE_AFTER: std::time::Duration = std::time::Duration::from_micros(1000);

/// A batch written and being made durable.
struct Syncing {
    landed: Landed,
    /// Bytes of records in the batch (without the end mark).
    len: usize,
    items: Vec<Item>,
    /// The fdatasync, in a task of its own (None without fsync).
    sync: Option<monoio::task::JoinHandle<std::io::Result<()>>>,
    /// When it was issued.
    started: std::time::Instant,
}

/// What the committer does next.
enum Step {
    Batch(Vec<u8>, Vec<Item>),
    Synced(std::io::Result<()>),
    Closed,
}

impl Spool {
    /// The commit loop. Runs until [`Spool::close`] and the last batch is done.
    /// Spent segments are deleted by a janitor task beside it: unlinking a big
    /// file and syncing the directory takes tens of milliseconds on ext4, and
    /// commits must not wait for that.
    pub async fn run_committer(self) {
        let janitor = monoio::spawn(self.clone().run_janitor());
        let mut syncing: VecDeque<Syncing> = VecDeque::new();
        // A segment whose fdatasync failed: batches written to it after the
        // failed one fail too (the kernel may have dropped their pages).
        let mut abandoned: Option<u64> = None;
        loop {
            match self.next_step(&mut syncing).await {
                Step::Batch(batch, items) => match self.write(batch, !syncing.is_empty()).await {
                    Ok((landed, len, file)) => {
                        let sync = self.fsync().then(|| {
                            let stats = self.inner.borrow().stats.clone();
                            monoio::spawn(async move {
                                let synced = crate::rt::clock::instant();
                                let res = file.sync_data().await;
                                stats.sync_latency.observe_us(synced.elapsed().as_micros() as u64);
                                res
                            })
                        });
                        syncing.push_back(Syncing {
                            landed,
                            len,
                            items,
                            sync,
                            started: crate::rt::clock::instant(),
                        });
                    }
                    // Failed before anything of it was durable; earlier
                    // batches still in flight are answered first.
                    Err(e) => {
                        while let Some(mut s) = syncing.pop_front() {
                            let res = match s.sync.take() {
                                Some(sync) => sync.await,
                                None => Ok(()),
                            };
                            self.finish_batch(s, res, &mut abandoned);
                        }
                        self.settle(0, items, Err(e));
                        self.wake_janitor();
                    }
                },
                Step::Synced(res) => {
                    if let Some(s) = syncing.pop_front() {
                        self.finish_batch(s, res, &mut abandoned);
                    }
                }
                Step::Closed => break,
            }
        }
        self.wake_janitor();
        janitor.await;
    }

    fn fsync(&self) -> bool {
        self.inner.borrow().fsync
    }

    /// A batch's fdatasync is done (or failed): answer it (step 7).
    fn finish_batch(&self, s: Syncing, res: std::io::Result<()>, abandoned: &mut Option<u64>) {
        let seq = s.landed.seq;
        let result = match res {
            Err(e) => {
                tracing::error!(error = %e, segment = seq, "spool fdatasync failed; abandoning segment");
                let mut i = self.inner.borrow_mut();
                if i.current.as_ref().is_some_and(|c| c.seq == seq) {
                    i.current = None;
                }
                *abandoned = Some(seq);
                Err(AppendError::from_io(&e))
            }
            Ok(()) if *abandoned == Some(seq) => Err(AppendError::from_io(&std::io::Error::other(
                "an earlier fdatasync of this segment failed",
            ))),
            Ok(()) => Ok(s.landed),
        };
        self.settle(s.len, s.items, result);
        self.wake_janitor();
    }

    fn wake_janitor(&self) {
        let mut i = self.inner.borrow_mut();
        i.janitor_due = true;
        if let Some(w) = i.janitor.take() {
            w.wake();
        }
    }

    /// Waits for the next thing to do: a pending batch to write (when none
    /// is in flight, or one whose fdatasync has taken `PIPELINE_AFTER`), or
    /// the oldest batch's fdatasync done.
    async fn next_step(&self, syncing: &mut VecDeque<Syncing>) -> Step {
        let mut timer: Option<std::pin::Pin<Box<monoio::time::Sleep>>> = None;
        poll_fn(|cx| {
            if let Some(front) = syncing.front_mut() {
                match front.sync.as_mut() {
                    None => return Poll::Ready(Step::Synced(Ok(()))),
                    Some(sync) => {
                        if let Poll::Ready(res) = std::pin::Pin::new(sync).poll(cx) {
                            return Poll::Ready(Step::Synced(res));
                        }
                    }
                }
            }
            let mut i = self.inner.borrow_mut();
            let room = match syncing.front() {
                None => true,
                Some(_) if syncing.len() >= IN_FLIGHT || i.items.is_empty() => false,
                Some(front) => {
                    let due = front.started + PIPELINE_AFTER;
                    crate::rt::clock::instant() >= due || {
                        let t = timer.get_or_insert_with(|| Box::pin(monoio::time::sleep_until(due.into())));
                        t.as_mut().poll(cx).is_ready()
                    }
                }
            };
            if room && !i.items.is_empty() {
                let spare = std::mem::take(&mut i.spare);
                let batch = std::mem::replace(&mut i.buf, spare);
                let items = std::mem::take(&mut i.items);
                return Poll::Ready(Step::Batch(batch, items));
            }
            if i.closed && i.items.is_empty() && syncing.is_empty() {
                return Poll::Ready(Step::Closed);
            }
            i.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Steps 4-5 of the durability order: the batch written at the end of
    /// the current segment (or a new one). Returns where it landed, its
    /// length and the file to sync; the buffer goes back for the next batch.
    async fn write(
        &self,
        mut batch: Vec<u8>,
        overlapped: bool,
    ) -> Result<(Landed, usize, Rc<File>), AppendError> {
        let len = batch.len() as u64;
        let started = crate::rt::clock::instant();
        let Open { file, blocking, seq, tag, end } = match self.segment_for(len).await {
            Ok(found) => found,
            Err(e) => {
                self.give_back(batch);
                return Err(e);
            }
        };
        record::seal(&mut batch, tag);
        // The end mark: the next batch overwrites it. Recovery stops there
        // and never looks further (in a recycled file, the rest is the
        // file's earlier life).
        batch.extend_from_slice(&record::end_mark(tag, end + len));
        let (res, batch) = write_batch(&file, &blocking, batch, end).await;
        self.give_back(batch);
        if let Err(e) = res {
            self.truncate_after_failed_write(&blocking, end);
            return Err(AppendError::from_io(&e));
        }
        let stats = self.inner.borrow().stats.clone();
        stats.write_latency.observe_us(started.elapsed().as_micros() as u64);
        if overlapped {
            stats.commits_overlapped.fetch_add(1, Ordering::Relaxed);
        }
        // The next batch goes after this one, also while this one syncs.
        if let Some(cur) = self.inner.borrow_mut().current.as_mut().filter(|c| c.seq == seq) {
            cur.end = end + len;
        }
        Ok((Landed { seq, tag, base: end }, len as usize, file))
    }

    /// A written batch's buffer, kept for the next batch (see RETAINED_BATCH).
    fn give_back(&self, mut batch: Vec<u8>) {
        batch.clear();
        let mut i = self.inner.borrow_mut();
        if batch.capacity() <= RETAINED_BATCH && batch.capacity() > i.spare.capacity() {
            i.spare = batch;
        }
    }

    fn truncate_after_failed_write(&self, file: &std::fs::File, end: u64) {
        if let Err(e) = file.set_len(end) {
            tracing::error!(error = %e, "spool truncate after failed write failed; abandoning segment");
            self.inner.borrow_mut().current = None;
        }
    }

    /// The open segment, or the next one if there is none or the batch would
    /// make it exceed the segment size (an empty segment takes any batch).
    /// The next one is normally ready (see [`Spool::prepare_ahead`]); if not,
    /// it is prepared now, or the preparation under way is awaited.
    async fn segment_for(&self, len: u64) -> Result<Open, AppendError> {
        loop {
            {
                let mut i = self.inner.borrow_mut();
                if let Some(cur) = &i.current {
                    if cur.end == FILE_HEADER_LEN || cur.end + len <= i.segment_size {
                        return Ok(cur.clone());
                    }
                }
                if let Next::Ready(_) = i.next {
                    if let Next::Ready(next) = std::mem::replace(&mut i.next, Next::Idle) {
                        i.index.add_segment(next.seq);
                        i.current = Some(next.clone());
                        return Ok(next);
                    }
                }
            }
            // Wait for a preparation under way; prepare now if none is.
            let ready = poll_fn(|cx| {
                let mut i = self.inner.borrow_mut();
                if let Next::Preparing { waiter, .. } = &mut i.next {
                    *waiter = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(matches!(i.next, Next::Ready(_)))
            })
            .await;
            if !ready {
                self.prepare().await?;
            }
        }
    }

    /// Step 7: update the index, then answer every waiter. `len`: the
    /// batch's bytes of records.
    fn settle(&self, len: usize, items: Vec<Item>, result: Result<Landed, AppendError>) {
        let mut i = self.inner.borrow_mut();
        let stats = i.stats.clone();
        match result {
            Ok(Landed { seq, tag, base }) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                i.index.note_extent(seq, base + len as u64);
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
    }
}
