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
//! 2. The worker encodes it as one record (envelope, body, CRC32C) and appends
//!    it to the family's pending batch, in memory.
//! 3. The committer takes the whole pending batch: every message finished since
//!    the last commit started.
//! 4. If the batch needs a new segment file: take the one prepared ahead, or
//!    prepare it now. Preparing means: rename the spare dead segment to the
//!    new number (or create a new file), write the header, fdatasync it, then
//!    fsync the family directory so the file's name is durable too. A janitor
//!    task prepares the next segment as soon as one is started.
//! 5. Seal the batch (tag each record's checksum and header with the segment's tag, see
//!    [`record`]) and write it, followed by a 16-byte end mark, at the end of
//!    the segment's records: pwrite(2) for batches up to 256 KiB, io_uring
//!    above. The next batch overwrites the end mark.
//! 6. One fdatasync of the segment (io_uring). Steps 5-6 are the group commit.
//! 7. Only now are the messages added to the queue index, and each waiting
//!    session replies `250`.
//!
//! If step 4, 5 or 6 fails, every message in the batch is answered `452 4.3.1`
//! and none enters the index. After a failed write the file is truncated back
//! to its last good end, so the next batch overwrites the remains; after a
//! failed fdatasync the segment is abandoned (the kernel may have dropped the
//! dirty pages) and the next batch starts a new one. The server keeps serving
//! and recovers by itself when the disk does.
//!
//! 8. Finishing a message (a Done record) follows the same steps 2-6; the index
//!    forgets it in step 7.
//! 9. A segment file is dropped only when the index says nothing in it is live
//!    and nothing it cancels is left in older files. One such file is kept as
//!    the spare for step 4 (it leaves the index only once renamed and synced);
//!    the others are unlinked, and the directory is fsynced after each round.
//!    The janitor task beside the committer does this, so commits never wait
//!    for an unlink. Reusing a file spares each commit's fdatasync an ext4
//!    journal commit (overwriting allocated blocks changes no metadata).
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
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`, which is
    // live and writable for the whole call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == b.len() as isize {
        Ok(u32::from_le_bytes(b))
    } else {
        Err(io::Error::last_os_error())
    }
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
