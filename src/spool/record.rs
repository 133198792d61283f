//! The on-disk record format of spool segments. Pure encoding and decoding.
//!
//! ```text
//! record  = magic "RPR2" | kind u8 | 0 0 0 | len u32 LE | crc u32 LE | payload (len bytes)
//!           crc = crc32c(kind, the three zero bytes, len, payload) XOR seq_tag(segment seq)
//! Message = envelope | body (the rest of the payload)
//! Done    = id u64 LE
//! Progress= id u64 | attempts u32 | next_attempt u64 (Unix s) | last_error string
//!           | n u32 | n x recipient index u32   (recipients finished by this attempt)
//! ```
//! All integers are little-endian. Strings are `u16 length | bytes`; optional
//! strings are `u8 present | string`.
//!
//! The tag binds a record to the segment it was committed to. Segment files
//! are recycled (a dead file gets a new number and is overwritten from the
//! start), so past the last commit a file may still hold whole, once valid
//! records of its earlier life: their tags are another segment's, so neither
//! recovery nor a reader can take them for records of this one. Records are
//! built in memory untagged ([`seal`] tags a batch just before its write) and
//! [`unseal`] turns one read back into that form again.
//!
//! `RPR1` records (written before tags existed) carry the plain checksum; they
//! are only ever found in segments that are never recycled (see `segment`).
use std::net::IpAddr;

use crate::envelope::{BodyType, Envelope, Notify, QueueId, Recipient, Ret};
use crate::smtp::address::{Mailbox, ReversePath};

pub const MAGIC: [u8; 4] = *b"RPR2";
/// Records from before segment tags: the checksum is not tagged.
pub const MAGIC_UNTAGGED: [u8; 4] = *b"RPR1";
pub const HEADER_LEN: usize = 16;
/// Records larger than this are corrupt by definition.
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A message: envelope and body.
    Message = 1,
    /// The message with this id is finished (delivered, bounced or deleted).
    Done = 2,
    /// A delivery attempt finished some recipients and/or scheduled a retry.
    Progress = 3,
}

/// The content of a Progress record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProgressRecord {
    pub id: QueueId,
    pub attempts: u32,
    /// Unix seconds of the next attempt.
    pub next_attempt: u64,
    pub last_error: String,
    /// Recipients (indexes into the envelope) finished by this attempt.
    pub done: Vec<u32>,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is truncated")]
    Truncated,
    #[error("bad magic")]
    Magic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("record length {0} is out of range")]
    Length(u32),
    #[error("malformed payload")]
    Payload,
}

/// A record header, checked except for the payload checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u32,
    pub crc: u32,
    /// False for an `RPR1` record, whose checksum carries no segment tag.
    pub tagged: bool,
}

/// The tag of segment `seq`: distinct for any two segment numbers below
/// 2^32 (a CRC detects every error burst of 32 bits or less).
pub fn seq_tag(seq: u64) -> u32 {
    crc32c::crc32c(&seq.to_le_bytes())
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header, DecodeError> {
        let b: &[u8; HEADER_LEN] =
            b.get(..HEADER_LEN).and_then(|s| s.try_into().ok()).ok_or(DecodeError::Truncated)?;
        let tagged = match [b[0], b[1], b[2], b[3]] {
            MAGIC => true,
            MAGIC_UNTAGGED => false,
            _ => return Err(DecodeError::Magic),
        };
        let kind = match b[4] {
            1 => Kind::Message,
            2 => Kind::Done,
            3 => Kind::Progress,
            k => return Err(DecodeError::Kind(k)),
        };
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if len > MAX_PAYLOAD || b[5..8] != [0, 0, 0] {
            return Err(DecodeError::Length(len));
        }
        Ok(Header { kind, len, crc: u32::from_le_bytes([b[12], b[13], b[14], b[15]]), tagged })
    }

    /// Checks the payload against the header's checksum, as a record of
    /// segment `seq`.
    pub fn verify(&self, header_bytes: &[u8], payload: &[u8], seq: u64) -> Result<(), DecodeError> {
        let tag = if self.tagged { seq_tag(seq) } else { 0 };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[4..12]), payload) ^ tag;
        if crc == self.crc {
            Ok(())
        } else {
            Err(DecodeError::Checksum)
        }
    }
}

/// Appends a record with the given payload writer; returns the record's length.
fn append(out: &mut Vec<u8>, kind: Kind, write_payload: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&[0; 8]); // len and crc, filled below
    write_payload(out);
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start + 4..start + 12]), &out[start + HEADER_LEN..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Tags every record in `batch` (whole records built by the `append_*`
/// functions, back to back) for segment `seq`. XOR is its own inverse, so
/// sealing twice with the same `seq` undoes it.
pub fn seal(batch: &mut [u8], seq: u64) {
    let tag = seq_tag(seq).to_le_bytes();
    let mut at = 0;
    while let Some(h) = batch.get_mut(at..at + HEADER_LEN) {
        debug_assert_eq!(h[..4], MAGIC, "seal walks records it built");
        for (b, t) in h[12..16].iter_mut().zip(tag) {
            *b ^= t;
        }
        at += HEADER_LEN + u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    }
}

/// Turns a checked record read from segment `seq` back into the untagged
/// in-memory form (an `RPR1` record becomes `RPR2`), ready for another batch.
pub fn unseal(record: &mut [u8], h: &Header, seq: u64) {
    if h.tagged {
        let crc = h.crc ^ seq_tag(seq);
        record[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    record[..4].copy_from_slice(&MAGIC);
}

/// Appends a Message record. Returns its length in bytes.
pub fn append_message(out: &mut Vec<u8>, env: &Envelope, body: &[u8]) -> usize {
    append(out, Kind::Message, |p| {
        encode_envelope(p, env);
        p.extend_from_slice(body);
    })
}

/// Appends a Done record. Returns its length in bytes.
pub fn append_done(out: &mut Vec<u8>, id: QueueId) -> usize {
    append(out, Kind::Done, |p| p.extend_from_slice(&id.0.to_le_bytes()))
}

/// Appends a Progress record. Returns its length in bytes.
pub fn append_progress(out: &mut Vec<u8>, p: &ProgressRecord) -> usize {
    append(out, Kind::Progress, |b| {
        b.extend_from_slice(&p.id.0.to_le_bytes());
        b.extend_from_slice(&p.attempts.to_le_bytes());
        b.extend_from_slice(&p.next_attempt.to_le_bytes());
        put_str(b, &p.last_error);
        b.extend_from_slice(&(p.done.len() as u32).to_le_bytes());
        for i in &p.done {
            b.extend_from_slice(&i.to_le_bytes());
        }
    })
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    // Every string we store is bounded far below 64 KiB by the parsers.
    let len = s.len().min(u16::MAX as usize);
    p.extend_from_slice(&(len as u16).to_le_bytes());
    p.extend_from_slice(&s.as_bytes()[..len]);
}

fn put_opt(p: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            p.push(1);
            put_str(p, s);
        }
        None => p.push(0),
    }
}

fn encode_envelope(p: &mut Vec<u8>, env: &Envelope) {
    p.extend_from_slice(&env.id.0.to_le_bytes());
    p.extend_from_slice(&env.received_at.to_le_bytes());
    let body = match env.body_type {
        BodyType::SevenBit => 0,
        BodyType::EightBitMime => 1,
        BodyType::BinaryMime => 2,
    };
    let ret = match env.ret {
        None => 0,
        Some(Ret::Full) => 1,
        Some(Ret::Headers) => 2,
    };
    p.push(u8::from(env.smtputf8) | body << 1 | ret << 3);
    put_str(p, &env.reverse_path.to_string());
    put_opt(p, env.envid.as_deref());
    put_str(p, &env.helo);
    match env.client_ip {
        None => p.push(0),
        Some(IpAddr::V4(v4)) => {
            p.push(4);
            p.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            p.push(6);
            p.extend_from_slice(&v6.octets());
        }
    }
    put_opt(p, env.auth_user.as_deref());
    p.extend_from_slice(&(env.recipients.len() as u32).to_le_bytes());
    for r in &env.recipients {
        put_str(p, &r.address.to_string());
        p.push(r.notify.bits());
        put_opt(p, r.orcpt.as_deref());
    }
}

/// A bounds-checked reader over a payload.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Payload);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Payload)
    }
    fn opt(&mut self) -> Result<Option<&'a str>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(DecodeError::Payload),
        }
    }
}

/// Decodes a Message payload into its envelope and the body's offset within it.
pub fn decode_message(payload: &[u8]) -> Result<(Envelope, usize), DecodeError> {
    let mut r = Reader { b: payload };
    let id = QueueId(r.u64()?);
    let received_at = r.u64()?;
    let flags = r.u8()?;
    let body_type = match (flags >> 1) & 3 {
        0 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        2 => BodyType::BinaryMime,
        _ => return Err(DecodeError::Payload),
    };
    let ret = match (flags >> 3) & 3 {
        0 => None,
        1 => Some(Ret::Full),
        2 => Some(Ret::Headers),
        _ => return Err(DecodeError::Payload),
    };
    let reverse_path = match r.str()? {
        "" => ReversePath::Null,
        s => ReversePath::Mailbox(Mailbox::parse(s).map_err(|_| DecodeError::Payload)?),
    };
    let envid = r.opt()?.map(str::to_owned);
    let helo = r.str()?.to_owned();
    let client_ip = match r.u8()? {
        0 => None,
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).map_err(|_| DecodeError::Payload)?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).map_err(|_| DecodeError::Payload)?)),
        _ => return Err(DecodeError::Payload),
    };
    let auth_user = r.opt()?.map(str::to_owned);
    let n = r.u32()? as usize;
    // Each recipient takes at least 4 bytes: never trust `n` for allocation.
    let mut recipients = Vec::with_capacity(n.min(r.b.len() / 4));
    for _ in 0..n {
        let address = Mailbox::parse(r.str()?).map_err(|_| DecodeError::Payload)?;
        let notify = Notify::from_bits(r.u8()?);
        let orcpt = r.opt()?.map(str::to_owned);
        recipients.push(Recipient { address, notify, orcpt });
    }
    let body_offset = payload.len() - r.b.len();
    let env = Envelope {
        id,
        received_at,
        reverse_path,
        recipients,
        body_type,
        smtputf8: flags & 1 != 0,
        ret,
        envid,
        client_ip,
        helo,
        auth_user,
    };
    Ok((env, body_offset))
}

/// Decodes a Progress payload.
pub fn decode_progress(payload: &[u8]) -> Result<ProgressRecord, DecodeError> {
    let mut r = Reader { b: payload };
    let id = QueueId(r.u64()?);
    let attempts = r.u32()?;
    let next_attempt = r.u64()?;
    let last_error = r.str()?.to_owned();
    let n = r.u32()? as usize;
    if n > r.b.len() / 4 {
        return Err(DecodeError::Payload);
    }
    let done = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
    if !r.b.is_empty() {
        return Err(DecodeError::Payload);
    }
    Ok(ProgressRecord { id, attempts, next_attempt, last_error, done })
}

/// Decodes a Done payload.
pub fn decode_done(payload: &[u8]) -> Result<QueueId, DecodeError> {
    let mut r = Reader { b: payload };
    let id = QueueId(r.u64()?);
    if !r.b.is_empty() {
        return Err(DecodeError::Payload);
    }
    Ok(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_envelope(id: u64) -> Envelope {
        Envelope {
            id: QueueId(id),
            received_at: 1_795_432_817,
            reverse_path: ReversePath::Mailbox(Mailbox::parse("s@sender.test").unwrap()),
            recipients: vec![
                Recipient {
                    address: Mailbox::parse("a@example.test").unwrap(),
                    notify: Notify::parse("SUCCESS,FAILURE").unwrap(),
                    orcpt: Some("rfc822;a@example.test".into()),
                },
                Recipient {
                    address: Mailbox::parse("b@x.test").unwrap(),
                    notify: Notify::default(),
                    orcpt: None,
                },
            ],
            body_type: BodyType::EightBitMime,
            smtputf8: true,
            ret: Some(Ret::Headers),
            envid: Some("E+2B1".into()),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            helo: "client.test".into(),
            auth_user: Some("alice@example.test".into()),
        }
    }

    #[test]
    fn message_round_trip() {
        let env = sample_envelope(42);
        let mut buf = vec![0xAA; 3]; // records append after existing bytes
        let len = append_message(&mut buf, &env, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(len, buf.len() - 3);
        seal(&mut buf[3..], 5);
        let rec = &buf[3..];
        let h = Header::parse(rec).unwrap();
        assert_eq!(h.kind, Kind::Message);
        let payload = &rec[HEADER_LEN..HEADER_LEN + h.len as usize];
        h.verify(rec, payload, 5).unwrap();
        let (decoded, body_at) = decode_message(payload).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(&payload[body_at..], b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn done_round_trip_and_corruption() {
        let mut buf = Vec::new();
        append_done(&mut buf, QueueId(7));
        seal(&mut buf, 0);
        let h = Header::parse(&buf).unwrap();
        h.verify(&buf, &buf[HEADER_LEN..], 0).unwrap();
        assert_eq!(decode_done(&buf[HEADER_LEN..]), Ok(QueueId(7)));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let ok = Header::parse(&bad).and_then(|h| h.verify(&bad, &bad[HEADER_LEN..], 0));
            assert!(ok.is_err(), "flipping byte {i} is detected");
        }
        assert_eq!(Header::parse(&buf[..10]), Err(DecodeError::Truncated));
    }

    #[test]
    fn progress_round_trip() {
        let p = ProgressRecord {
            id: QueueId(9),
            attempts: 3,
            next_attempt: 1_800_000_300,
            last_error: "451 4.7.1 greylisted".into(),
            done: vec![0, 2],
        };
        let mut buf = Vec::new();
        append_progress(&mut buf, &p);
        seal(&mut buf, 1 << 40);
        let h = Header::parse(&buf).unwrap();
        assert_eq!(h.kind, Kind::Progress);
        h.verify(&buf, &buf[HEADER_LEN..], 1 << 40).unwrap();
        assert_eq!(decode_progress(&buf[HEADER_LEN..]), Ok(p));
        assert!(decode_progress(&buf[HEADER_LEN..buf.len() - 1]).is_err());
    }

    /// Checks every record of `buf` as a record of segment `seq`.
    fn check_all(buf: &[u8], seq: u64) -> Result<usize, DecodeError> {
        let (mut at, mut n) = (0, 0);
        while at < buf.len() {
            let h = Header::parse(&buf[at..])?;
            let end = at + HEADER_LEN + h.len as usize;
            h.verify(&buf[at..], &buf[at + HEADER_LEN..end], seq)?;
            at = end;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn records_are_bound_to_their_segment() {
        let mut batch = Vec::new();
        append_message(&mut batch, &sample_envelope(1), b"body\r\n");
        append_done(&mut batch, QueueId(2));
        append_progress(&mut batch, &ProgressRecord { id: QueueId(3), ..Default::default() });
        let plain = batch.clone();
        seal(&mut batch, 7);
        assert_eq!(check_all(&batch, 7), Ok(3));
        // The same bytes, found in a file recycled as segment 8 (or 6), are not its records.
        for other in [0, 6, 8, 7 + (1 << 32)] {
            assert_eq!(check_all(&batch, other), Err(DecodeError::Checksum), "seq {other}");
        }
        seal(&mut batch, 7);
        assert_eq!(batch, plain, "sealing twice undoes it");

        // unseal: a record read back from segment 7, copied into segment 9.
        seal(&mut batch, 7);
        let h = Header::parse(&batch).unwrap();
        let mut rec = batch[..HEADER_LEN + h.len as usize].to_vec();
        unseal(&mut rec, &h, 7);
        assert_eq!(rec, plain[..rec.len()]);
        seal(&mut rec, 9);
        assert_eq!(check_all(&rec, 9), Ok(1));
    }

    #[test]
    fn untagged_records_of_old_segments_still_read() {
        let mut rec = Vec::new();
        append_done(&mut rec, QueueId(4));
        rec[..4].copy_from_slice(&MAGIC_UNTAGGED); // as written before tags
        assert_eq!(check_all(&rec, 3), Ok(1));
        let h = Header::parse(&rec).unwrap();
        assert!(!h.tagged);
        unseal(&mut rec, &h, 3);
        seal(&mut rec, 12);
        assert_eq!(check_all(&rec, 12), Ok(1));
    }

    #[test]
    fn decoding_garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut valid = Vec::new();
        append_message(&mut valid, &sample_envelope(1), b"x");
        let payload = valid[HEADER_LEN..].to_vec();
        for _ in 0..20_000 {
            let mut p = payload.clone();
            let flips = rng.usize(1..4);
            for _ in 0..flips {
                let i = rng.usize(..p.len());
                p[i] = rng.u8(..);
            }
            p.truncate(rng.usize(..=p.len()));
            let _ = decode_message(&p);
            let _ = decode_done(&p);
            let _ = decode_progress(&p);
        }
    }
}
