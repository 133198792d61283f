//! Reading records back (for delivery, DSNs and listings), from any worker:
//! a live record never moves, so a reader needs no lock. A segment file is
//! only reused (renamed and overwritten) once nothing in it is live; a reader
//! that still reaches it then finds records tagged for another segment and
//! gets an error, never another message's bytes.

use std::path::Path;

use monoio::buf::IoBufMut;
use monoio::fs::File;

use super::index::Location;
use super::record::{self, Header, RecordKind, HEADER_LEN};
use super::segment;
use crate::envelope::Envelope;

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("spool read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool record is corrupt: {0}")]
    Corrupt(#[from] record::DecodeError),
    #[error("spool record is not a message")]
    NotMessage,
}

/// Reads the whole Message record at `loc` (header included) and checks it.
/// It comes back untagged, as a batch holds it (see `record::unseal`).
pub async fn read_raw(dir: &Path, family: u32, loc: Location) -> Result<Vec<u8>, ReadError> {
    let path = segment::segment_path(dir, family, loc.seq);
    let file = File::open(&path).await?;
    // Read into the spare capacity of exactly `len` bytes: no zeroing first.
    let len = loc.len as usize;
    let (res, buf) = file.read_exact_at(Vec::with_capacity(len).slice_mut(0..len), loc.offset).await;
    let mut buf = buf.into_inner();
    res?;
    let _ = file.close().await;
    if buf.len() != len {
        return Err(ReadError::NotMessage);
    }
    let h = Header::parse(&buf)?;
    if h.kind != RecordKind::Message || h.len as usize + HEADER_LEN != buf.len() {
        return Err(ReadError::NotMessage);
    }
    h.verify(&buf[HEADER_LEN..], loc.tag)?;
    record::unseal(&mut buf, &h, loc.tag);
    Ok(buf)
}

/// Reads and checks the Message record at `loc` of family `family`.
/// Returns the envelope and the body.
pub async fn read_message(dir: &Path, family: u32, loc: Location) -> Result<(Envelope, Vec<u8>), ReadError> {
    let buf = read_raw(dir, family, loc).await?;
    let (env, body_at) = record::decode_message(&buf[HEADER_LEN..])?;
    // Move the body to the front instead of copying it.
    let mut body = buf;
    body.drain(..HEADER_LEN + body_at);
    Ok((env, body))
}
