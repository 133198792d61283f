//! The on-disk record format of spool segments. Pure encoding and decoding.
//!
//! ```text
//! record   = magic "RPR3" | kind u8 | check u24 LE | len u32 LE | crc u32 LE | payload (len bytes)
//!            crc   = crc32c(kind, 0 0 0, len, payload) XOR tag
//!            check = crc32c(tag, kind, len) & 0xff_ffff
//! end mark = "RPE3" | crc32c("RPE3", offset) XOR tag u32 | offset u64   (16 bytes)
//! Message  = envelope | body (the rest of the payload)
//! Done     = id u64 LE
//! Progress = id u64 | attempts u32 | next_attempt u64 (Unix s) | last_error string
//!            | n u32 | n x recipient index u32   (recipients finished by this attempt)
//! ```
//! All integers are little-endian. Strings are `u16 length | bytes`; optional
//! strings are `u8 present | string`.
//!
//! The *tag* binds a record to the segment it was committed to: it is
//! computed from the segment's number and a random salt in the segment's
//! header (see `segment`). Segment files are recycled (a dead file gets a new
//! number and salt and is overwritten from the start), so past the last
//! commit a file may still hold whole, once valid records of its earlier
//! life: their tags are another segment's, so neither recovery nor a reader
//! can take them for records of this one. The salt also makes tags unknown
//! outside the spool, so bytes a client sends (a message body holding
//! something shaped like a record) cannot pass for a record when recovery
//! searches a damaged segment for the next good one.
//!
//! The 24-bit header *check* lets that search reject almost every false
//! candidate from its 16 header bytes, without reading the payload it
//! claims; the *end mark* written after every batch names its own offset, so
//! zeroed or damaged bytes are never taken for the end of a segment.
//!
//! Records are built in memory untagged ([`seal`] tags a batch just before its
//! write) and [`unseal`] turns one read back into that form again.
//!
//! Older formats are still read: `RPR2` records (segments `RPSEG002`) have no
//! check and a tag from the segment number alone, and their end mark is 16
//! zero bytes; `RPR1` records (`RPSEG001`) carry the plain checksum.
use std::net::IpAddr;

use crate::envelope::{BodyType, Envelope, Notify, QueueId, Recipient, Ret};
use crate::smtp::address::{Mailbox, ReversePath};

pub const MAGIC: [u8; 4] = *b"RPR3";
/// Records of `RPSEG002` segments: tagged by segment number, no header check.
pub const MAGIC_V2: [u8; 4] = *b"RPR2";
/// Records from before segment tags: the checksum is not tagged.
pub const MAGIC_UNTAGGED: [u8; 4] = *b"RPR1";
/// The first bytes of an end mark.
pub const END_MAGIC: [u8; 4] = *b"RPE3";
pub const HEADER_LEN: usize = 16;
/// An end mark's length (the same as a record header's).
pub const END_LEN: usize = 16;
/// Largest payload a record may have. A message's payload is its envelope
/// and body, so `limits.message_size` is bounded well below this (see
/// `config`); the writer refuses anything larger instead of storing what
/// recovery would take for corruption.
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A message: envelope and body.
    Message = 1,
    /// The message with this id is finished (delivered, bounced or deleted).
    Done = 2,
    /// A delivery attempt finished some recipients and/or scheduled a retry.
    Progress = 3,
}

/// The record format a header was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `RPR1`: untagged.
    V1,
    /// `RPR2`: tagged by segment number.
    V2,
    /// `RPR3`: salted tag and header check.
    V3,
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
    /// The sender has been told the message is delayed (`[delivery]
    /// delay_warning`): once per message. Encoded as a trailing byte only
    /// when set, so records without it read as before.
    pub delay_notified: bool,
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
    pub kind: RecordKind,
    pub len: u32,
    pub crc: u32,
    pub version: Version,
    /// The 24-bit header check (`RPR3`; zero otherwise).
    pub check: u32,
}

/// The tag of an `RPSEG002` segment: its number alone. Distinct for any two
/// segment numbers below 2^32 (a CRC detects every error burst of 32 bits or
/// less), but known to anyone.
pub fn seq_tag(seq: u64) -> u32 {
    crc32c::crc32c(&seq.to_le_bytes())
}

/// The tag of an `RPSEG003` segment: its number and its random salt. For one
/// salt, distinct for any two numbers below 2^32, as [`seq_tag`].
pub fn segment_tag(seq: u64, salt: u32) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), &salt.to_le_bytes())
}

/// The 24-bit check of an `RPR3` header.
fn header_check(tag: u32, kind: u8, len: u32) -> u32 {
    let mut b = [0u8; 9];
    b[..4].copy_from_slice(&tag.to_le_bytes());
    b[4] = kind;
    b[5..].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c(&b) & 0xff_ffff
}

/// The checksum of `kind`, `len` and the payload, untagged.
fn body_crc(kind: u8, len: u32, payload: &[u8]) -> u32 {
    let mut b = [0u8; 8];
    b[0] = kind;
    b[4..].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&b), payload)
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header, DecodeError> {
        let b: &[u8; HEADER_LEN] =
            b.get(..HEADER_LEN).and_then(|s| s.try_into().ok()).ok_or(DecodeError::Truncated)?;
        let version = match [b[0], b[1], b[2], b[3]] {
            MAGIC => Version::V3,
            MAGIC_V2 => Version::V2,
            MAGIC_UNTAGGED => Version::V1,
            _ => return Err(DecodeError::Magic),
        };
        let kind = match b[4] {
            1 => RecordKind::Message,
            2 => RecordKind::Done,
            3 => RecordKind::Progress,
            k => return Err(DecodeError::Kind(k)),
        };
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let check = u32::from_le_bytes([b[5], b[6], b[7], 0]);
        if len > MAX_PAYLOAD || (version != Version::V3 && check != 0) {
            return Err(DecodeError::Length(len));
        }
        Ok(Header { kind, len, crc: u32::from_le_bytes([b[12], b[13], b[14], b[15]]), version, check })
    }

    /// Whether the header itself fits a segment whose records carry `tag`:
    /// the 24-bit check of an `RPR3` header (older headers have none). Lets a
    /// search reject a false candidate without reading its payload.
    pub fn fits(&self, tag: u32) -> bool {
        self.version != Version::V3 || self.check == header_check(tag, self.kind as u8, self.len)
    }

    /// Checks the payload against the header, as a record of a segment whose
    /// records carry `tag` (ignored for an untagged `RPR1` record).
    pub fn verify(&self, payload: &[u8], tag: u32) -> Result<(), DecodeError> {
        let tag = if self.version == Version::V1 { 0 } else { tag };
        if self.fits(tag) && body_crc(self.kind as u8, self.len, payload) ^ tag == self.crc {
            Ok(())
        } else {
            Err(DecodeError::Checksum)
        }
    }
}

/// The end mark at `offset` of a segment whose records carry `tag`.
pub fn end_mark(tag: u32, offset: u64) -> [u8; END_LEN] {
    let mut m = [0u8; END_LEN];
    m[..4].copy_from_slice(&END_MAGIC);
    m[8..].copy_from_slice(&offset.to_le_bytes());
    let check = crc32c::crc32c_append(crc32c::crc32c(&END_MAGIC), &m[8..]) ^ tag;
    m[4..8].copy_from_slice(&check.to_le_bytes());
    m
}

/// Whether `b` starts with the end mark of offset `offset` for `tag`.
pub fn is_end_mark(b: &[u8], tag: u32, offset: u64) -> bool {
    b.get(..END_LEN).is_some_and(|m| m == end_mark(tag, offset))
}

/// Appends a record with the given payload writer; returns the record's length.
fn append(out: &mut Vec<u8>, kind: RecordKind, write_payload: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&[0; 8]); // len and crc, filled below
    write_payload(out);
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
    let crc = body_crc(kind as u8, len, &out[start + HEADER_LEN..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Tags every record in `batch` (whole records built by the `append_*`
/// functions, back to back) for a segment whose records carry `tag`.
/// [`unseal`] undoes it for one record.
pub fn seal(batch: &mut [u8], tag: u32) {
    let mut at = 0;
    while let Some(h) = batch.get_mut(at..at + HEADER_LEN) {
        debug_assert_eq!(h[..4], MAGIC, "seal walks records it built");
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let check = header_check(tag, h[4], len).to_le_bytes();
        h[5..8].copy_from_slice(&check[..3]);
        let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) ^ tag;
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        at += HEADER_LEN + len as usize;
    }
}

/// Turns a checked record read from a segment whose records carry `tag`
/// back into the untagged in-memory form (an `RPR1` or `RPR2` record becomes
/// `RPR3`), ready for another batch.
pub fn unseal(record: &mut [u8], h: &Header, tag: u32) {
    let crc = if h.version == Version::V1 { h.crc } else { h.crc ^ tag };
    record[..4].copy_from_slice(&MAGIC);
    record[5..8].copy_from_slice(&[0, 0, 0]);
    record[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// The payload length of the Message record of `env` and `body`, without
/// building it (as [`append_message`] would write it).
pub fn message_payload_len(env: &Envelope, content_len: usize) -> u64 {
    let string = |s: &str| 2 + s.len().min(u16::MAX as usize) as u64;
    let opt = |s: Option<&str>| 1 + s.map_or(0, string);
    let ip = match env.client_ip {
        None => 1,
        Some(IpAddr::V4(_)) => 5,
        Some(IpAddr::V6(_)) => 17,
    };
    let ext = match (&env.tenant, &env.campaign) {
        (None, None) => 0,
        (t, c) => 1 + [t, c].iter().filter_map(|v| v.as_deref()).map(|v| 1 + string(v)).sum::<u64>(),
    };
    let rcpts: u64 =
        env.recipients.iter().map(|r| string(&r.address.to_string()) + 1 + opt(r.orcpt.as_deref())).sum();
    8 + 8
        + 1
        + string(&env.reverse_path.to_string())
        + opt(env.envid.as_deref())
        + string(&env.helo)
        + ip
        + opt(env.auth_user.as_deref())
        + 4
        + rcpts
        + ext
        + content_len as u64
}

/// Appends a Message record whose content is `head` then `body` (header
/// fields we add in front, such as DKIM signatures, and what was received).
/// Returns its length in bytes.
pub fn append_message(out: &mut Vec<u8>, env: &Envelope, head: &[u8], body: &[u8]) -> usize {
    append(out, RecordKind::Message, |p| {
        encode_envelope(p, env);
        p.extend_from_slice(head);
        p.extend_from_slice(body);
    })
}

/// Checks an untagged Message record just built from `env`: it must decode
/// into `env` again. Returns what is wrong otherwise.
pub fn check_message(record: &[u8], env: &Envelope) -> Result<(), &'static str> {
    let h = Header::parse(record).map_err(|_| "record header")?;
    let payload = record.get(HEADER_LEN..HEADER_LEN + h.len as usize).ok_or("record length")?;
    match decode_message(payload) {
        Ok((decoded, _)) if decoded == *env => Ok(()),
        Ok(_) => Err("a field would read back differently"),
        Err(_) => Err("the envelope would not decode"),
    }
}

/// Checks an untagged Progress record just built from `p`: it must decode
/// into `p` again.
pub fn check_progress(record: &[u8], p: &ProgressRecord) -> Result<(), &'static str> {
    let h = Header::parse(record).map_err(|_| "record header")?;
    let payload = record.get(HEADER_LEN..HEADER_LEN + h.len as usize).ok_or("record length")?;
    match decode_progress(payload) {
        Ok(decoded) if decoded == *p => Ok(()),
        Ok(_) => Err("a field would read back differently"),
        Err(_) => Err("the progress would not decode"),
    }
}

/// Appends a Done record. Returns its length in bytes.
pub fn append_done(out: &mut Vec<u8>, id: QueueId) -> usize {
    append(out, RecordKind::Done, |p| p.extend_from_slice(&id.0.to_le_bytes()))
}

/// Appends a Progress record. Returns its length in bytes.
pub fn append_progress(out: &mut Vec<u8>, p: &ProgressRecord) -> usize {
    append(out, RecordKind::Progress, |b| {
        b.extend_from_slice(&p.id.0.to_le_bytes());
        b.extend_from_slice(&p.attempts.to_le_bytes());
        b.extend_from_slice(&p.next_attempt.to_le_bytes());
        put_str(b, &p.last_error);
        b.extend_from_slice(&(p.done.len() as u32).to_le_bytes());
        for i in &p.done {
            b.extend_from_slice(&i.to_le_bytes());
        }
        if p.delay_notified {
            b.push(1);
        }
    })
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    // Strings are bounded far below 64 KiB where they are made; should one
    // not be, it is cut at a character boundary, so it still decodes (and
    // the check that records read back refuses what changed).
    let s = &s[..floor_char_boundary(s, u16::MAX as usize)];
    p.extend_from_slice(&(s.len() as u16).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// The largest index at most `max` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// Longest `last_error` a Progress record keeps, in bytes.
pub const MAX_LAST_ERROR: usize = 1000;

/// `text` made fit for a one-line field: control characters (CR, LF, tab
/// and the rest) become spaces, and it is cut at a character boundary to at
/// most `max` bytes.
pub fn bounded_text(text: &str, max: usize) -> String {
    let cut = &text[..floor_char_boundary(text, max)];
    cut.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
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
    let extended = env.tenant.is_some() || env.campaign.is_some();
    p.push(
        u8::from(env.smtputf8)
            | body << 1
            | ret << 3
            | u8::from(extended) << EXTENDED_BIT
            | u8::from(env.requiretls) << REQUIRETLS_BIT
            | u8::from(env.tls_not_required) << TLS_NOT_REQUIRED_BIT,
    );
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
    if extended {
        // Tagged fields: (tag, string) pairs after a count. Readers skip
        // tags they do not know, so fields can be added without a new kind.
        let fields = [(EXT_TENANT, &env.tenant), (EXT_CAMPAIGN, &env.campaign)];
        let present: Vec<(u8, &str)> = fields.iter().filter_map(|(t, v)| Some((*t, v.as_deref()?))).collect();
        p.push(present.len() as u8);
        for (tag, value) in present {
            p.push(tag);
            put_str(p, value);
        }
    }
}

/// Flag bit: the envelope ends with tagged fields (tenant, campaign, ...).
const EXTENDED_BIT: u8 = 5;
/// Flag bit: REQUIRETLS.
const REQUIRETLS_BIT: u8 = 6;
/// Flag bit: `TLS-Required: No`.
const TLS_NOT_REQUIRED_BIT: u8 = 7;
const EXT_TENANT: u8 = 1;
const EXT_CAMPAIGN: u8 = 2;

/// A bounds-checked reader over a payload.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Payload);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
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
    let mut r = Reader { rest: payload };
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
    let mut recipients = Vec::with_capacity(n.min(r.rest.len() / 4));
    for _ in 0..n {
        let address = Mailbox::parse(r.str()?).map_err(|_| DecodeError::Payload)?;
        let notify = Notify::from_bits(r.u8()?);
        let orcpt = r.opt()?.map(str::to_owned);
        recipients.push(Recipient { address, notify, orcpt });
    }
    let (mut tenant, mut campaign) = (None, None);
    if flags & (1 << EXTENDED_BIT) != 0 {
        for _ in 0..r.u8()? {
            let tag = r.u8()?;
            let value = r.str()?.to_owned();
            match tag {
                EXT_TENANT => tenant = Some(value),
                EXT_CAMPAIGN => campaign = Some(value),
                _ => {}
            }
        }
    }
    let body_offset = payload.len() - r.rest.len();
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
        tenant,
        campaign,
        requiretls: flags & (1 << REQUIRETLS_BIT) != 0,
        tls_not_required: flags & (1 << TLS_NOT_REQUIRED_BIT) != 0,
    };
    Ok((env, body_offset))
}

/// Decodes a Progress payload.
pub fn decode_progress(payload: &[u8]) -> Result<ProgressRecord, DecodeError> {
    let mut r = Reader { rest: payload };
    let id = QueueId(r.u64()?);
    let attempts = r.u32()?;
    let next_attempt = r.u64()?;
    let last_error = r.str()?.to_owned();
    let n = r.u32()? as usize;
    if n > r.rest.len() / 4 {
        return Err(DecodeError::Payload);
    }
    let done = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
    let delay_notified = match r.rest {
        [] => false,
        [1] => true,
        _ => return Err(DecodeError::Payload),
    };
    Ok(ProgressRecord { id, attempts, next_attempt, last_error, done, delay_notified })
}

/// Decodes a Done payload.
pub fn decode_done(payload: &[u8]) -> Result<QueueId, DecodeError> {
    let mut r = Reader { rest: payload };
    let id = QueueId(r.u64()?);
    if !r.rest.is_empty() {
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
            tenant: None,
            campaign: None,
            requiretls: false,
            tls_not_required: false,
        }
    }

    #[test]
    fn requiretls_round_trips_in_the_flags() {
        for on in [false, true] {
            let mut env = sample_envelope(3);
            env.requiretls = on;
            env.tls_not_required = !on;
            env.tenant = on.then(|| "t".to_string());
            let mut buf = Vec::new();
            let len = append_message(&mut buf, &env, b"", b"x\r\n");
            check_message(&buf[..len], &env).unwrap();
            let (decoded, _) = decode_message(&buf[HEADER_LEN..len]).unwrap();
            assert_eq!(decoded.requiretls, on);
            assert_eq!(decoded, env);
        }
    }

    #[test]
    fn tenant_and_campaign_round_trip_and_unknown_tags_are_skipped() {
        for (tenant, campaign) in [(Some("acme"), None), (None, Some("spring-sale")), (Some("a"), Some("c"))]
        {
            let mut env = sample_envelope(9);
            env.tenant = tenant.map(str::to_owned);
            env.campaign = campaign.map(str::to_owned);
            let mut buf = Vec::new();
            let len = append_message(&mut buf, &env, b"", b"body\r\n");
            check_message(&buf[..len], &env).unwrap();
            assert_eq!(message_payload_len(&env, 6), (len - HEADER_LEN) as u64);
            let (decoded, at) = decode_message(&buf[HEADER_LEN..len]).unwrap();
            assert_eq!(decoded, env);
            assert_eq!(&buf[HEADER_LEN + at..len], b"body\r\n");
        }
        // A field a later version adds (tag 200) is skipped, not an error.
        let mut env = sample_envelope(9);
        env.tenant = Some("acme".into());
        let mut payload = Vec::new();
        encode_envelope(&mut payload, &env);
        let count_at = payload.len() - (1 + 1 + 2 + 4);
        assert_eq!(payload[count_at], 1);
        payload[count_at] = 2;
        payload.extend_from_slice(&[200, 3, 0, b'n', b'e', b'w']);
        payload.extend_from_slice(b"body");
        let (decoded, at) = decode_message(&payload).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(&payload[at..], b"body");
    }

    /// Checks a whole record at the start of `b` as one of a segment whose
    /// records carry `tag`; returns its length.
    fn check_one(b: &[u8], tag: u32) -> Result<usize, DecodeError> {
        let h = Header::parse(b)?;
        let end = HEADER_LEN + h.len as usize;
        h.verify(b.get(HEADER_LEN..end).ok_or(DecodeError::Truncated)?, tag)?;
        Ok(end)
    }

    #[test]
    fn message_round_trip() {
        let env = sample_envelope(42);
        let mut buf = vec![0xAA; 3]; // records append after existing bytes
        let len = append_message(&mut buf, &env, b"", b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(len, buf.len() - 3);
        let tag = segment_tag(5, 0x1234_5678);
        seal(&mut buf[3..], tag);
        let rec = &buf[3..];
        let h = Header::parse(rec).unwrap();
        assert_eq!((h.kind, h.version), (RecordKind::Message, Version::V3));
        assert!(h.fits(tag));
        let payload = &rec[HEADER_LEN..HEADER_LEN + h.len as usize];
        h.verify(payload, tag).unwrap();
        let (decoded, body_at) = decode_message(payload).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(&payload[body_at..], b"Subject: x\r\n\r\nbody\r\n");
    }

    /// A long remote reply in a multi-byte script: what is stored decodes.
    #[test]
    fn long_multibyte_text_still_decodes() {
        let reply = format!("451 4.7.1 {}", "é".repeat(40_000)); // 80,010 bytes
        let mut p =
            ProgressRecord { id: QueueId(1), last_error: reply.clone(), done: vec![0], ..Default::default() };
        let mut buf = Vec::new();
        append_progress(&mut buf, &p);
        let back = decode_progress(&buf[HEADER_LEN..]).unwrap();
        assert!(reply.starts_with(&back.last_error) && back.last_error.len() > 65_000);
        assert!(check_progress(&buf, &p).is_err(), "cut: not what was meant");
        p.last_error = bounded_text(&reply, MAX_LAST_ERROR);
        assert!(p.last_error.len() <= MAX_LAST_ERROR && p.last_error.ends_with('é'));
        let mut buf = Vec::new();
        append_progress(&mut buf, &p);
        assert_eq!(check_progress(&buf, &p), Ok(()));
        assert_eq!(bounded_text("451 a\r\nb\tc\u{7f}", 100), "451 a  b c ");
        assert_eq!(bounded_text("ab€", 4), "ab", "never half a character");
    }

    #[test]
    fn message_payload_len_is_exact() {
        let mut env = sample_envelope(1);
        for body in [&b""[..], b"x", b"Subject: s\r\n\r\nbody\r\n"] {
            let mut buf = Vec::new();
            let len = append_message(&mut buf, &env, b"", body);
            assert_eq!(message_payload_len(&env, body.len()), (len - HEADER_LEN) as u64);
            env.client_ip = None;
            env.envid = None;
        }
    }

    #[test]
    fn done_round_trip_and_corruption() {
        let mut buf = Vec::new();
        append_done(&mut buf, QueueId(7));
        let tag = segment_tag(0, 99);
        seal(&mut buf, tag);
        assert_eq!(check_one(&buf, tag), Ok(buf.len()));
        assert_eq!(decode_done(&buf[HEADER_LEN..]), Ok(QueueId(7)));
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(check_one(&bad, tag).is_err(), "flipping bit {bit} of byte {i} is detected");
            }
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
            delay_notified: false,
        };
        let mut buf = Vec::new();
        append_progress(&mut buf, &p);
        let tag = segment_tag(1 << 40, 7);
        seal(&mut buf, tag);
        let h = Header::parse(&buf).unwrap();
        assert_eq!(h.kind, RecordKind::Progress);
        h.verify(&buf[HEADER_LEN..], tag).unwrap();
        let plain = buf[HEADER_LEN..].to_vec();
        assert_eq!(decode_progress(&plain), Ok(p.clone()));
        assert!(decode_progress(&plain[..plain.len() - 1]).is_err());
        // The delay flag is one trailing byte, there only when set: records
        // written before it existed read as "not notified".
        let notified = ProgressRecord { delay_notified: true, ..p };
        let mut buf = Vec::new();
        append_progress(&mut buf, &notified);
        seal(&mut buf, tag);
        let payload = &buf[HEADER_LEN..];
        assert_eq!(payload.len(), plain.len() + 1);
        assert_eq!(&payload[..plain.len()], &plain[..]);
        assert_eq!(decode_progress(payload), Ok(notified));
        let mut bad = payload.to_vec();
        *bad.last_mut().unwrap() = 2;
        assert_eq!(decode_progress(&bad), Err(DecodeError::Payload));
        bad.push(1);
        assert_eq!(decode_progress(&bad), Err(DecodeError::Payload));
    }

    /// Checks every record of `buf` for `tag`.
    fn check_all(buf: &[u8], tag: u32) -> Result<usize, DecodeError> {
        let (mut at, mut n) = (0, 0);
        while at < buf.len() {
            at += check_one(&buf[at..], tag)?;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn records_are_bound_to_their_segment() {
        let mut batch = Vec::new();
        append_message(&mut batch, &sample_envelope(1), b"", b"body\r\n");
        append_done(&mut batch, QueueId(2));
        append_progress(&mut batch, &ProgressRecord { id: QueueId(3), ..Default::default() });
        let plain = batch.clone();
        let tag = segment_tag(7, 0xdead_beef);
        seal(&mut batch, tag);
        assert_eq!(check_all(&batch, tag), Ok(3));
        // The same bytes, found in a file recycled as another segment (or the
        // same number with another salt), are not its records.
        for (seq, salt) in [(0, 0xdead_beef), (6, 0xdead_beef), (8, 0xdead_beef), (7, 0xdead_beee), (7, 0)] {
            let other = segment_tag(seq, salt);
            assert_eq!(check_all(&batch, other), Err(DecodeError::Checksum), "seq {seq} salt {salt:x}");
            let h = Header::parse(&batch).unwrap();
            // The header check alone already tells (but for one in 2^24).
            assert!(!h.fits(other), "seq {seq} salt {salt:x}");
        }

        // unseal: a record read back from segment 7, copied into segment 9.
        let h = Header::parse(&batch).unwrap();
        let mut rec = batch[..HEADER_LEN + h.len as usize].to_vec();
        unseal(&mut rec, &h, tag);
        assert_eq!(rec, plain[..rec.len()]);
        seal(&mut rec, segment_tag(9, 1));
        assert_eq!(check_all(&rec, segment_tag(9, 1)), Ok(1));
    }

    #[test]
    fn older_records_still_read() {
        // RPR1 (untagged) and RPR2 (tagged by number) as their writers made them.
        let mut v1 = Vec::new();
        append_done(&mut v1, QueueId(4));
        v1[..4].copy_from_slice(&MAGIC_UNTAGGED);
        let h = Header::parse(&v1).unwrap();
        assert_eq!(h.version, Version::V1);
        assert_eq!(check_all(&v1, 0), Ok(1));
        assert_eq!(check_all(&v1, 12345), Ok(1), "untagged: any tag");
        let mut v2 = Vec::new();
        append_done(&mut v2, QueueId(5));
        v2[..4].copy_from_slice(&MAGIC_V2);
        let crc = u32::from_le_bytes(v2[12..16].try_into().unwrap()) ^ seq_tag(3);
        v2[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_all(&v2, seq_tag(3)), Ok(1));
        assert_eq!(check_all(&v2, seq_tag(4)), Err(DecodeError::Checksum));
        // Both unseal into today's in-memory form, ready for a new segment.
        for (mut rec, tag) in [(v1, 0), (v2, seq_tag(3))] {
            let h = Header::parse(&rec).unwrap();
            unseal(&mut rec, &h, tag);
            assert_eq!(Header::parse(&rec).unwrap().version, Version::V3);
            seal(&mut rec, segment_tag(12, 5));
            assert_eq!(check_all(&rec, segment_tag(12, 5)), Ok(1));
        }
        // An older header with check bytes set is not a header.
        let mut bad = Vec::new();
        append_done(&mut bad, QueueId(6));
        bad[..4].copy_from_slice(&MAGIC_V2);
        bad[6] = 1;
        assert!(Header::parse(&bad).is_err());
    }

    #[test]
    fn end_marks_name_their_segment_and_offset() {
        let tag = segment_tag(3, 42);
        let m = end_mark(tag, 4096);
        assert!(is_end_mark(&m, tag, 4096));
        assert!(!is_end_mark(&m, tag, 4112), "another offset");
        assert!(!is_end_mark(&m, segment_tag(4, 42), 4096), "another segment");
        assert!(!is_end_mark(&[0; END_LEN], tag, 4096), "zeros are not an end mark");
        assert!(!is_end_mark(&m[..15], tag, 4096));
        assert!(Header::parse(&m).is_err(), "an end mark is not a record header");
    }

    #[test]
    fn decoding_garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut valid = Vec::new();
        append_message(&mut valid, &sample_envelope(1), b"", b"x");
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
