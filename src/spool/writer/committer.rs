//! The committer: takes the pending batch, writes it with one write and
//! one fdatasync (steps 3-7 of the durability order in `spool`), and
//! answers every append of the batch.

use std::future::poll_fn;
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

impl Spool {
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
        let Open { file, blocking, seq, tag, end } = match self.segment_for(len).await {
            Ok(found) => found,
            Err(e) => return (Err(e), batch),
        };
        record::seal(&mut batch, tag);
        // The end mark: the next batch overwrites it. Recovery stops there
        // and never looks further (in a recycled file, the rest is the
        // file's earlier life).
        batch.extend_from_slice(&record::end_mark(tag, end + len));
        let (res, mut batch) = write_batch(&file, &blocking, batch, end).await;
        batch.truncate(len as usize);
        if let Err(e) = res {
            self.truncate_after_failed_write(&blocking, end);
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
}
