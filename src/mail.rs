//! The header block of a stored message (RFC 5322 section 2.2): its fields
//! as they are on the wire, folding and all, and where the body starts.
//! DKIM signs these bytes exactly, and the tenant and campaign headers are
//! cut out of them, so this works on raw bytes; decoding values (addresses,
//! encoded words) is `mail-parser`'s job.
//!
//! Pure: bytes in, ranges out.

use std::ops::Range;

/// One header field: `name` and the whole field, from the first byte of
/// its name to the end of its last line (CRLF included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub raw: Range<usize>,
}

impl Field {
    /// The field's name, as written.
    pub fn name<'a>(&self, message: &'a [u8]) -> &'a [u8] {
        &message[self.name.clone()]
    }

    /// Whether the field's name is `name` (ASCII case-insensitive).
    pub fn is(&self, message: &[u8], name: &str) -> bool {
        self.name(message).eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value: everything after the colon, unfolded lines and all,
    /// without the final CRLF.
    pub fn value<'a>(&self, message: &'a [u8]) -> &'a [u8] {
        let raw = &message[self.raw.clone()];
        let colon = self.name.end - self.raw.start;
        let after = raw[colon..].iter().position(|&b| b == b':').map_or(raw.len(), |p| colon + p + 1);
        let end = if raw.ends_with(b"\r\n") { raw.len() - 2 } else { raw.len() };
        &raw[after.min(end)..end]
    }
}

/// The header block of `message`: its fields in order, and the offset of
/// the body (after the empty line; `message.len()` if there is none).
///
/// A line that is neither a field nor a continuation ends the header block
/// there, as if an empty line had been seen: what follows is body. Such a
/// message is malformed, and nothing after that line is treated as a field.
pub fn fields(message: &[u8]) -> (Vec<Field>, usize) {
    let mut out: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let line_end = memchr::memmem::find(&message[at..], b"\r\n").map_or(message.len(), |p| at + p + 2);
        let line = &message[at..line_end];
        if line == b"\r\n" {
            return (out, line_end);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match out.last_mut() {
                Some(f) => f.raw.end = line_end,
                None => return (out, at),
            }
        } else {
            match field_name(line) {
                Some(n) => out.push(Field { name: at..at + n, raw: at..line_end }),
                None => return (out, at),
            }
        }
        at = line_end;
    }
    (out, message.len())
}

/// The length of the field name that starts `line`: printable ASCII but
/// the colon (RFC 5322 ftext), optionally followed by white space, then a
/// colon. `None` if the line does not start a field.
fn field_name(line: &[u8]) -> Option<usize> {
    let n = line.iter().position(|&b| !(33..=126).contains(&b) || b == b':')?;
    if n == 0 {
        return None;
    }
    let rest = &line[n..];
    let ws = rest.iter().position(|&b| b != b' ' && b != b'\t')?;
    (rest[ws] == b':').then_some(n)
}

/// Longest tenant or campaign name taken from a header.
pub const MAX_NAME: usize = 200;

/// What the `X-Tenant` and `X-Campaign` fields of a message say, and the
/// message without them (they are ours, not the recipient's). `None` if it
/// has neither (and nothing is copied). The first of each counts; a value
/// that is empty, longer than [`MAX_NAME`] or not printable ASCII counts
/// as absent, but its field still goes.
pub fn take_tenant_fields(message: &[u8]) -> Option<(Option<String>, Option<String>, Vec<u8>)> {
    let (fields, _) = fields(message);
    let ours = |f: &Field| f.is(message, "x-tenant") || f.is(message, "x-campaign");
    if !fields.iter().any(ours) {
        return None;
    }
    let first =
        |name: &str| fields.iter().find(|f| f.is(message, name)).and_then(|f| name_value(f.value(message)));
    let (tenant, campaign) = (first("x-tenant"), first("x-campaign"));
    Some((tenant, campaign, without(message, &fields, ours)))
}

/// Whether the message says `TLS-Required: No` (RFC 8689 §5: its sender
/// prefers delivery to the recipient domain's TLS policies). The first such
/// field counts.
pub fn tls_not_required(message: &[u8]) -> bool {
    let (fields, _) = fields(message);
    fields
        .iter()
        .find(|f| f.is(message, "tls-required"))
        .is_some_and(|f| f.value(message).trim_ascii().eq_ignore_ascii_case(b"no"))
}

/// Whether `v` may be a tenant or campaign name: 1 to [`MAX_NAME`]
/// printable ASCII characters.
pub fn is_name(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_NAME && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A field value as a name: unfolded, trimmed, printable ASCII.
fn name_value(value: &[u8]) -> Option<String> {
    let unfolded: Vec<u8> = value.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    let text = std::str::from_utf8(&unfolded).ok()?.trim();
    let ok = !text.is_empty()
        && text.len() <= MAX_NAME
        && text.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
    ok.then(|| text.replace('\t', " "))
}

/// `message` without the fields `drop` picks: the rest copied in order.
pub fn without(message: &[u8], fields: &[Field], drop: impl Fn(&Field) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    for f in fields.iter().filter(|f| drop(f)) {
        out.extend_from_slice(&message[at..f.raw.start]);
        at = f.raw.end;
    }
    out.extend_from_slice(&message[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: &[u8]) -> (Vec<String>, usize) {
        let (f, body) = fields(m);
        (f.iter().map(|f| String::from_utf8_lossy(f.name(m)).into_owned()).collect(), body)
    }

    #[test]
    fn tls_required_no() {
        for (m, want) in [
            (&b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n"[..], true),
            (b"tls-required:  no \r\n\r\n", true),
            (b"TLS-Required: yes\r\n\r\n", false),
            (b"TLS-Required: Nope\r\n\r\n", false),
            (b"Subject: x\r\n\r\nTLS-Required: No\r\n", false),
            (b"TLS-Required: yes\r\nTLS-Required: No\r\n\r\n", false),
        ] {
            assert_eq!(tls_not_required(m), want, "{}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn splits_fields_and_body() {
        let m = b"From: a@b.test\r\nSubject: one\r\n two\r\nX-Y : z\r\n\r\nbody\r\n";
        let (f, body) = fields(m);
        assert_eq!(names(m).0, ["From", "Subject", "X-Y"]);
        assert_eq!(&m[body..], b"body\r\n");
        assert_eq!(&m[f[1].raw.clone()], b"Subject: one\r\n two\r\n");
        assert_eq!(f[1].value(m), b" one\r\n two");
        assert_eq!(f[2].value(m), b" z");
        assert!(f[2].is(m, "x-y"));
    }

    #[test]
    fn malformed_blocks_end_where_they_stop_being_fields() {
        let table: &[(&[u8], &[&str], usize)] = &[
            (b"", &[], 0),
            (b"\r\nbody", &[], 2),
            (b"A: 1\r\n", &["A"], 6),
            (b"A: 1", &["A"], 4),
            (b"A: 1\r\nnot a field\r\nB: 2\r\n", &["A"], 6),
            (b" leading continuation\r\nA: 1\r\n", &[], 0),
            (b": no name\r\n", &[], 0),
            (b"A\r\n", &[], 0),
        ];
        for (m, want, body) in table {
            assert_eq!(names(m), (want.iter().map(|s| s.to_string()).collect(), *body), "{:?}", m);
        }
    }

    #[test]
    fn tenant_fields_are_read_and_removed() {
        let m = b"Received: x\r\nX-Tenant:  acme \r\nFrom: a@b.test\r\nx-campaign: spring\r\n sale\r\nX-Tenant: second\r\n\r\nX-Tenant: in the body\r\n";
        let (t, c, out) = take_tenant_fields(m).unwrap();
        assert_eq!((t.as_deref(), c.as_deref()), (Some("acme"), Some("spring sale")));
        assert_eq!(out, b"Received: x\r\nFrom: a@b.test\r\n\r\nX-Tenant: in the body\r\n");
        assert!(take_tenant_fields(b"From: a@b.test\r\n\r\nX-Tenant: body\r\n").is_none());
        let bad = format!("X-Tenant: {}\r\nX-Campaign: caf\u{e9}\r\n\r\n", "t".repeat(MAX_NAME + 1));
        let (t, c, out) = take_tenant_fields(bad.as_bytes()).unwrap();
        assert_eq!((t, c, out), (None, None, b"\r\n".to_vec()));
    }

    #[test]
    fn without_drops_whole_fields() {
        let m = b"X-Tenant: acme\r\nFrom: a@b.test\r\nX-Campaign: c\r\n  folded\r\n\r\nbody\r\n";
        let (f, _) = fields(m);
        let out = without(m, &f, |f| f.is(m, "x-tenant") || f.is(m, "x-campaign"));
        assert_eq!(out, b"From: a@b.test\r\n\r\nbody\r\n");
    }
}
