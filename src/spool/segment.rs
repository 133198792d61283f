//! Segment files: names and the 32-byte file header.
//!
//! ```text
//! <spool>/lock                      flock'd by the running server
//! <spool>/w<family:03>/<seq:016x>.seg
//! header = "RPSEG003" | family u32 | salt u32 | seq u64 | crc32c(first 24 bytes) u32 | 0u32
//! ```
//!
//! The salt is random, drawn each time a segment number is given to a file;
//! with the number it makes the tag of the segment's records (see `record`).
//! A segment file may be recycled: once dead, it is renamed to a new number,
//! gets that number's header (and a new salt), and is overwritten from the
//! start. Overwriting blocks a file already has costs a commit only the data
//! and a cache flush; appending to a fresh file also costs ext4 a journal
//! commit (the new size and blocks) at every fdatasync.
//!
//! Older files are still read: `RPSEG002` (records tagged by number alone,
//! zero end marks) may be recycled like today's; `RPSEG001` (untagged
//! records) is read and deleted, never recycled.

use std::path::{Path, PathBuf};

use super::record;

pub const FILE_HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"RPSEG003";
const MAGIC_V2: &[u8; 8] = b"RPSEG002";
const MAGIC_UNTAGGED: &[u8; 8] = b"RPSEG001";
/// Segment numbers above this are refused at startup: new segments count up
/// from the highest one found, and a hand-made name near `u64::MAX` would
/// make them wrap.
pub const MAX_SEQ: u64 = 1 << 48;

/// The format of a segment file, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `RPSEG001`: untagged `RPR1` records; never recycled.
    V1,
    /// `RPSEG002`: `RPR2` records tagged by the segment number; zero end marks.
    V2,
    /// `RPSEG003`: `RPR3` records tagged by number and salt; end marks that
    /// name their offset.
    V3 { salt: u32 },
}

/// A checked segment file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub family: u32,
    pub seq: u64,
    pub format: Format,
}

impl SegmentHeader {
    /// The tag of this segment's records (see `record`).
    pub fn tag(&self) -> u32 {
        match self.format {
            Format::V1 => 0,
            Format::V2 => record::seq_tag(self.seq),
            Format::V3 { salt } => record::segment_tag(self.seq, salt),
        }
    }

    /// Whether the file may be reused for a later segment once dead.
    pub fn recyclable(&self) -> bool {
        self.format != Format::V1
    }
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

/// The header of segment `seq` of `family`, with its random `salt`.
pub fn encode_header(family: u32, seq: u64, salt: u32) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&family.to_le_bytes());
    h[12..16].copy_from_slice(&salt.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header.
pub fn decode_header(h: &[u8]) -> Option<SegmentHeader> {
    let h = h.get(..FILE_HEADER_LEN as usize)?;
    let crc = u32::from_le_bytes(h[24..28].try_into().ok()?);
    if crc != crc32c::crc32c(&h[..24]) {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let format = match &h[..8] {
        m if m == MAGIC => Format::V3 { salt: word(12) },
        m if m == MAGIC_V2 => Format::V2,
        m if m == MAGIC_UNTAGGED => Format::V1,
        _ => return None,
    };
    let seq = u64::from_le_bytes(h[16..24].try_into().ok()?);
    Some(SegmentHeader { family: word(8), seq, format })
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
        let h = encode_header(3, 42, 0xabcd);
        let decoded = decode_header(&h).unwrap();
        assert_eq!(decoded, SegmentHeader { family: 3, seq: 42, format: Format::V3 { salt: 0xabcd } });
        assert_eq!(decoded.tag(), record::segment_tag(42, 0xabcd));
        assert!(decoded.recyclable());
        for (magic, format) in [(MAGIC_UNTAGGED, Format::V1), (MAGIC_V2, Format::V2)] {
            let mut old = encode_header(3, 42, 0);
            old[..8].copy_from_slice(magic);
            let crc = crc32c::crc32c(&old[..24]);
            old[24..28].copy_from_slice(&crc.to_le_bytes());
            let d = decode_header(&old).unwrap();
            assert_eq!(d, SegmentHeader { family: 3, seq: 42, format });
            assert_eq!(d.recyclable(), format == Format::V2);
        }
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad), None);
    }
}
