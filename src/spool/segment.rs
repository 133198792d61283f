//! Segment files: names and the 32-byte file header.
//!
//! ```text
//! <spool>/lock                      flock'd by the running server
//! <spool>/w<family:03>/<seq:016x>.seg
//! header = "RPSEG002" | family u32 | 0u32 | seq u64 | crc32c(first 24 bytes) u32 | 0u32
//! ```
//!
//! A `RPSEG002` file holds tagged records (see `record`) and may be recycled:
//! once dead, it is renamed to a new number, gets that number's header, and
//! is overwritten from the start. Overwriting blocks a file already has costs
//! a commit only the data and a cache flush; appending to a fresh file also
//! costs ext4 a journal commit (the new size and blocks) at every fdatasync.
//! `RPSEG001` files (from before tags) are read as before and never recycled.

use std::path::{Path, PathBuf};

pub const FILE_HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"RPSEG002";
const MAGIC_UNTAGGED: &[u8; 8] = b"RPSEG001";

/// A checked segment file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub family: u32,
    pub seq: u64,
    /// False for an `RPSEG001` file: untagged records, never recycled.
    pub recyclable: bool,
}

pub fn family_dir(spool: &Path, family: u32) -> PathBuf {
    spool.join(format!("w{family:03}"))
}

pub fn segment_path(spool: &Path, family: u32, seq: u64) -> PathBuf {
    family_dir(spool, family).join(format!("{seq:016x}.seg"))
}

/// Parses a family directory name (`w007` is 7).
pub fn parse_family(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('w')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses a segment file name (`000000000000002a.seg` is 42).
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub fn encode_header(family: u32, seq: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&family.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header.
pub fn decode_header(h: &[u8]) -> Option<SegmentHeader> {
    let h = h.get(..FILE_HEADER_LEN as usize)?;
    let recyclable = match &h[..8] {
        m if m == MAGIC => true,
        m if m == MAGIC_UNTAGGED => false,
        _ => return None,
    };
    let crc = u32::from_le_bytes(h[24..28].try_into().ok()?);
    if crc != crc32c::crc32c(&h[..24]) {
        return None;
    }
    let family = u32::from_le_bytes(h[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(h[16..24].try_into().ok()?);
    Some(SegmentHeader { family, seq, recyclable })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_header() {
        assert_eq!(parse_family("w007"), Some(7));
        assert_eq!(parse_family("w"), None);
        assert_eq!(parse_family("x1"), None);
        let p = segment_path(Path::new("/s"), 3, 42);
        assert_eq!(p, Path::new("/s/w003/000000000000002a.seg"));
        assert_eq!(parse_segment_name("000000000000002a.seg"), Some(42));
        assert_eq!(parse_segment_name("2a.seg"), None);
        let h = encode_header(3, 42);
        assert_eq!(decode_header(&h), Some(SegmentHeader { family: 3, seq: 42, recyclable: true }));
        let mut old = h;
        old[..8].copy_from_slice(MAGIC_UNTAGGED);
        let crc = crc32c::crc32c(&old[..24]);
        old[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&old), Some(SegmentHeader { family: 3, seq: 42, recyclable: false }));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad), None);
    }
}
