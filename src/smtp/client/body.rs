//! Message content on the wire (RFC 5321 §4.5.2, §4.5.3.1.6): dot-stuffed,
//! CRLF only, no line over 998 octets, ended by `.` CRLF.
//!
//! Inbound already refuses bare CR and LF, but this is the last line of
//! defence: any bare CR or LF becomes CRLF, and a line over 998 octets is
//! broken (with a folding space in the header section, so a long header stays
//! one header), as Postfix does.

use memchr::memchr2;

/// Longest line we send, without its CRLF.
pub const MAX_LINE: usize = 998;

/// Appends the DATA encoding of `body`, including the final `.` CRLF.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 8);
    let mut in_headers = true;
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match memchr2(b'\r', b'\n', rest) {
            None => (rest, &rest[rest.len()..]),
            Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => (&rest[..i], &rest[i + 2..]),
            Some(i) => (&rest[..i], &rest[i + 1..]), // bare CR or LF: a line end
        };
        if line.is_empty() {
            in_headers = false;
        }
        put_line(line, in_headers, out);
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
}

/// One logical line, broken into wire lines of at most MAX_LINE octets.
fn put_line(mut line: &[u8], in_headers: bool, out: &mut Vec<u8>) {
    let mut first = true;
    loop {
        let prefix = usize::from(!first && in_headers); // the folding space
        let room = MAX_LINE - prefix - usize::from(line.first() == Some(&b'.'));
        let (chunk, rest) = line.split_at(line.len().min(room));
        if prefix == 1 {
            out.push(b' ');
        } else if chunk.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        first = false;
        if rest.is_empty() {
            return;
        }
        line = rest;
    }
}

/// Whether the content has any byte above 127 (needs 8BITMIME).
pub fn has_8bit(body: &[u8]) -> bool {
    !body.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(body, &mut out);
        out
    }

    #[test]
    fn dot_stuffing_and_end() {
        assert_eq!(enc(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(enc(b""), b".\r\n");
        assert_eq!(enc(b"no final newline"), b"no final newline\r\n.\r\n");
        assert_eq!(enc(b".\r\n"), b"..\r\n.\r\n");
    }

    #[test]
    fn never_a_bare_cr_or_lf() {
        let out = enc(b"a\nb\rc\r\r\nd\n.\n");
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\nd\r\n..\r\n.\r\n");
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(out[i - 1], b'\r');
            }
            if b == b'\r' {
                assert_eq!(out[i + 1], b'\n');
            }
        }
    }

    #[test]
    fn long_lines_are_broken() {
        let header = format!("Subject: {}\r\n\r\n", "h".repeat(2500));
        let body = format!("{header}{}\r\n", "b".repeat(2500));
        let out = enc(body.as_bytes());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE), "no line over 998");
        // The header continues with folding spaces.
        assert!(lines[1].starts_with(' ') && lines[2].starts_with(' '));
        let header_len: usize = lines[..3].iter().map(|l| l.trim_start_matches(' ').len()).sum();
        assert_eq!(header_len, "Subject: ".len() + 2500);
        // The body is just broken.
        let blank = lines.iter().position(|l| l.is_empty()).unwrap();
        assert_eq!(lines[blank + 1].len(), MAX_LINE);
        assert!(!lines[blank + 2].starts_with(' '));
    }

    #[test]
    fn a_broken_line_starting_with_a_dot_is_stuffed() {
        let body = format!("x\r\n\r\n{}.{}\r\n", "a".repeat(MAX_LINE), "z");
        let text = String::from_utf8(enc(body.as_bytes())).unwrap();
        assert!(text.contains("\r\n..z\r\n"), "the continuation starts with a dot: stuffed");
        assert!(text.split("\r\n").all(|l| l.len() <= MAX_LINE));
    }
}
