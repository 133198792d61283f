//! The spool: per-worker append-only segment files with group commit.
//!
//! Each worker owns a *family* of segment files (`<spool>/w<NNN>/`) and is the
//! only writer of it. Records are messages (envelope + body) and progress
//! marks (Done); see [`record`] for the format.
//!
//! # Durability order
//!
//! What `250` means (with `fsync = true`): every step below has completed.
//!
//! 1. The session receives the whole message and finds it well formed.
//! 2. The worker encodes it as one record (envelope, body, checksum) and appends
//!    it to the family's pending batch, in memory; the record is decoded again
//!    at once and must give back its envelope.
//! 3. The committer takes the whole pending batch: every message finished since
//!    the last commit started.
//! 4. If the batch needs a new segment file: take the one the janitor prepared
//!    ahead, or prepare it now: the spare dead segment renamed to the new
//!    number (or a new file), its header (with a new random salt) written and
//!    fdatasynced, the family directory fsynced so the file's name is durable
//!    too.
//! 5. Seal the batch (each record's checksum and header check carry the
//!    segment's tag) and write it with a 16-byte end mark after it, at the end
//!    of the segment's records: pwrite(2) on the worker for batches up to 256
//!    KiB (no io-wq round trip), io_uring above. The next batch overwrites the
//!    end mark.
//! 6. One fdatasync of the segment (io_uring). Steps 5-6 are the group commit.
//!    When that fdatasync has run for 1 ms and more messages wait, the next
//!    batch goes through steps 3-6 beside it (two at most): a slow sync then
//!    delays a message by about one sync, not two. Answers still go in batch
//!    order, and a later batch of a segment whose sync failed fails too.
//! 7. Only now are the messages added to the queue index, and each waiting
//!    session replies `250`.
//!
//! A failure in 4-6 answers every message of the batch `452 4.3.1` and adds
//! none to the index. After a failed write the file is truncated back to its
//! last good end, so the next batch overwrites the remains; after a failed
//! fdatasync the segment is abandoned (the kernel may have dropped the dirty
//! pages) and the next batch starts a new one. The server keeps serving and
//! recovers by itself when the disk does (tested on a full tmpfs).
//!
//! 8. Delivery progress follows steps 2-6 too: a Progress record (recipients
//!    done, attempts, next attempt, last error) or a Done record once no
//!    recipient is left; the index applies it in step 7. A recipient is marked
//!    done only after its outcome is known and, for a failure, after its DSN is
//!    durably queued; a crash in between means a second delivery or a second
//!    DSN, never a lost one. The segment holding a live message's latest
//!    Progress record is kept with the message.
//! 9. A segment file is dropped only when nothing in it is live and every older
//!    file holding a record it cancels is gone (`spool::index`). One dead file
//!    is kept as the spare that step 4 recycles (it leaves the index only once
//!    its rename and new header are durable); the rest are unlinked, and the
//!    directory is fsynced after each round. The janitor does this beside the
//!    committer (an unlink of a 64 MiB segment costs ext4 ~27 ms), so commits
//!    never wait for it. Recycling is for latency: an fdatasync after
//!    overwriting blocks a file already has needs no ext4 journal commit; after
//!    appending it does.
//! 10. Compaction: a closed segment that is less than 10% live has its live
//!     messages copied forward (record and progress, through steps 2-6); the
//!     index then points at the copies, and the old segment, now dead, goes
//!     first (the copy's segment refers to it), so no crash can revive the old
//!     copy after the message finished.
//!
//! Recovery scans segments in order and stops at the end mark of the last
//! commit, which names its own offset and segment. A torn batch (its
//! fdatasync never finished, so no `250` was sent for it) can only sit at the
//! end of what was written: damage with no good record and no end mark of
//! this segment after it is such a tail, and is dropped. Any other damage is
//! corruption of committed records: the damaged bytes alone are lost (logged
//! as an error with segment and offset, counted in `/metrics`), and the scan
//! goes on from the next good record, searching for it if the damage left no
//! length to skip by. Records left from a recycled file's earlier life, or
//! shaped like records inside a message body, carry another tag and are
//! never read as this segment's. A file whose header names an older segment
//! was renamed for reuse and then interrupted: it holds nothing. New records
//! always go to a new segment after a restart.
//!
//! With `fsync = false` step 4's and step 6's syncs are skipped: a `250` then
//! means "in the page cache". That setting exists for benchmarks only.
//!
//! # Errors and replies
//!
//! [`AppendError`] (any variant) makes the session reply `452 4.3.1`.
//! [`SpoolError`] at startup stops the server with exit code 1.

pub mod index;
pub mod read;
pub mod record;
pub mod recover;
pub mod segment;
mod writer;

use std::io;
use std::path::PathBuf;

pub use writer::{Committed, Compaction, Spool, SpoolStats, Ticket};

/// What the index knows about one queued message.
#[derive(Debug, Clone, Copy)]
pub struct MessageSummary {
    pub received_at: u64,
    pub recipients: u32,
    /// Bytes of the spool record.
    pub size: u32,
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {} is locked by another running ringpost", .0.display())]
    Locked(PathBuf),
    #[error("{}: corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Why a record could not be made durable. [`AppendError::Unstorable`]
/// means `451 4.3.0`, [`AppendError::TooBig`] `552 5.3.4`; every other
/// variant `452 4.3.1`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// The record would not read back as it was meant (a field the decoder
    /// refuses, or one the encoder had to cut). Refused rather than stored
    /// and lost at the next read.
    #[error("the message cannot be stored: {0}")]
    Unstorable(&'static str),
    /// Larger than a record can be (`552 5.3.4`): recovery would take it
    /// for corruption.
    #[error("the message is larger than the spool can store")]
    TooBig,
    #[error("spool disk is full")]
    NoSpace,
    #[error("spool I/O error: {0}")]
    Io(String),
    #[error("spool is shutting down")]
    Closed,
    #[error("no such message")]
    NotFound,
}

/// A random salt for a new segment's header (see `segment`), from the
/// kernel's generator: the salt keeps record tags unknown outside the spool,
/// so it must not come from a generator whose output peers can observe.
pub(crate) fn new_salt() -> io::Result<u32> {
    let mut b = [0u8; 4];
    getrandom::getrandom(&mut b).map_err(io::Error::other)?;
    Ok(u32::from_le_bytes(b))
}

impl AppendError {
    fn from_io(e: &io::Error) -> AppendError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            AppendError::NoSpace
        } else {
            AppendError::Io(e.to_string())
        }
    }
}
