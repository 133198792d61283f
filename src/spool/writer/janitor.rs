//! The janitor, beside the committer: deletes spent segments (step 9 of
//! the durability order in `spool`), keeps one to recycle, and prepares the
//! next segment ahead (step 4), so commits wait for neither.

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use monoio::fs::{File, OpenOptions};

use super::{Next, Open, Spool};
use crate::spool::record;
use crate::spool::segment::{self, FILE_HEADER_LEN};
use crate::spool::AppendError;

impl Spool {
    /// Step 9, off the commit path: waits for spent segments and deletes
    /// them; returns once the spool is closed and nothing is left to delete.
    /// A failed unlink is logged and tried again after the next commit.
    pub(super) async fn run_janitor(self) {
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

    /// Janitor: makes the segment after the current one ready, so that
    /// starting it costs a commit nothing.
    async fn prepare_ahead(&self) {
        let due = {
            let i = self.inner.borrow();
            i.current.is_some() && matches!(i.next, Next::Idle) && !i.closed
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
    pub(super) async fn prepare(&self) -> Result<(), AppendError> {
        let (dir, family, seq, spare) = {
            let mut i = self.inner.borrow_mut();
            let seq = i.next_seq;
            i.next_seq += 1;
            let spare = i.spare_segment.take();
            i.next = Next::Preparing { recycling: spare, waiter: None };
            (i.dir.clone(), i.family, seq, spare)
        };
        let made = make_segment(&dir, family, seq, spare).await;
        let mut i = self.inner.borrow_mut();
        if let Next::Preparing { waiter: Some(w), .. } = std::mem::replace(&mut i.next, Next::Failed) {
            w.wake();
        }
        match made {
            Ok(Made { file, blocking, recycled, tag }) => {
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
                i.next = Next::Ready(Open {
                    file: Rc::new(file),
                    blocking: Rc::new(blocking),
                    seq,
                    tag,
                    end: FILE_HEADER_LEN,
                });
                Ok(())
            }
            Err(NotMade { error, renamed }) => {
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

    /// Step 9: unlink segments that hold nothing live.
    async fn delete_dead_segments(&self) {
        loop {
            let (dir, family, dead) = {
                let i = self.inner.borrow();
                let mut dead = i.index.deletable(i.current.as_ref().map(|c| c.seq));
                dead.retain(|s| Some(*s) != i.spare_segment && Some(*s) != i.next.recycling());
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

/// A segment made ready by [`make_segment`].
struct Made {
    file: File,
    /// The same file, opened once more for the worker thread's own writes.
    blocking: std::fs::File,
    /// Whether the spare was used.
    recycled: bool,
    /// The tag of the segment's records.
    tag: u32,
}

/// A failed [`make_segment`]: the error, and whether the spare had already
/// been renamed (so it is no longer there to reuse).
struct NotMade {
    error: AppendError,
    renamed: bool,
}

/// Makes segment `seq` of `family` ready: from the dead segment `spare` if
/// given (renamed, then overwritten from the start), else a new file. On
/// return its header (with a new salt) and end mark are durable and so is
/// its name.
async fn make_segment(
    dir: &std::path::Path,
    family: u32,
    seq: u64,
    spare: Option<u64>,
) -> Result<Made, NotMade> {
    let path = segment::segment_path(dir, family, seq);
    let fail = |renamed: bool| move |e: std::io::Error| NotMade { error: AppendError::from_io(&e), renamed };
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
    // Blocking too, and as brief: the file is in the directory cache now.
    let blocking = std::fs::OpenOptions::new().write(true).open(&path).map_err(fail(renamed))?;
    let salt = crate::spool::new_salt().map_err(fail(renamed))?;
    let tag = record::segment_tag(seq, salt);
    let mut head = segment::encode_header(family, seq, salt).to_vec();
    head.extend_from_slice(&record::end_mark(tag, FILE_HEADER_LEN)); // no records yet
    let (res, _) = file.write_all_at(head, 0).await;
    res.map_err(fail(renamed))?;
    file.sync_data().await.map_err(fail(renamed))?;
    sync_family_dir(dir, family).await.map_err(fail(renamed))?;
    Ok(Made { file, blocking, recycled: renamed, tag })
}

/// Fsyncs a family's directory, so names created, renamed or removed in it
/// are durable.
async fn sync_family_dir(dir: &std::path::Path, family: u32) -> std::io::Result<()> {
    File::open(segment::family_dir(dir, family)).await?.sync_all().await
}
