//! Parsing server replies, defensively: bounded line length and line count,
//! CRLF or bare LF accepted as line ends (as Postfix does), anything that is
//! not `DDD[ -]text` is a protocol error.

use memchr::memchr;

/// Longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512; be generous).
pub const MAX_LINE: usize = 4096;
/// Most lines in one multi-line reply.
pub const MAX_LINES: usize = 200;

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// Text of every line, without code and separator, joined by `\n`.
    pub text: String,
}

impl ServerReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// One line for logs and DSNs: `250 2.0.0 Ok` (multi-line text joined by spaces).
    pub fn one_line(&self) -> String {
        let text = self.text.replace('\n', " ");
        format!("{} {}", self.code, text.trim())
    }
    /// The enhanced status code at the start of the text, if any (`5.1.1`).
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.text.split(' ').next()?;
        let mut parts = first.split('.');
        let ok = parts.next().is_some_and(|c| c.len() == 1 && matches!(c, "2" | "4" | "5"))
            && parts
                .next()
                .is_some_and(|s| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|d| (1..=3).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
            && parts.next().is_none();
        ok.then_some(first)
    }
}

/// Why the server's bytes are not a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line too long")]
    LineTooLong,
    #[error("too many lines in one reply")]
    TooManyLines,
    #[error("malformed reply")]
    Malformed,
}

/// Accumulates lines of one reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    text: String,
    lines: usize,
}

impl ReplyParser {
    /// Parses from `input`; returns the bytes consumed and a reply once its
    /// last line arrived. Stops after one complete reply.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<ServerReply>), ReplyError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let Some(lf) = memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok((used, None));
            };
            if lf > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let mut line = &rest[..lf];
            if let Some((b'\r', l)) = line.split_last() {
                line = l;
            }
            used += lf + 1;
            if let Some(reply) = self.line(line)? {
                return Ok((used, Some(reply)));
            }
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<ServerReply>, ReplyError> {
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || !matches!(line[0], b'2'..=b'5') {
            return Err(ReplyError::Malformed);
        }
        let code =
            u16::from(line[0] - b'0') * 100 + u16::from(line[1] - b'0') * 10 + u16::from(line[2] - b'0');
        if self.code.is_some_and(|c| c != code) {
            return Err(ReplyError::Malformed);
        }
        self.code = Some(code);
        let sep = line.get(3).copied();
        if !matches!(sep, None | Some(b' ') | Some(b'-')) {
            return Err(ReplyError::Malformed);
        }
        let text = String::from_utf8_lossy(line.get(4..).unwrap_or(&[]));
        if self.lines > 0 {
            self.text.push('\n');
        }
        self.text.push_str(text.trim_end());
        self.lines += 1;
        if self.lines > MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        if sep == Some(b'-') {
            return Ok(None);
        }
        let reply = ServerReply { code, text: std::mem::take(&mut self.text) };
        self.code = None;
        self.lines = 0;
        Ok(Some(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<ServerReply>, ReplyError> {
        let mut p = ReplyParser::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (n, r) = p.feed(&input[pos..])?;
            pos += n;
            match r {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }

    #[test]
    fn replies() {
        let r = parse_all(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n221 2.0.0 Bye\n").unwrap();
        assert_eq!(r[0], ServerReply { code: 250, text: "mx.test\nPIPELINING\nSIZE 100".into() });
        assert_eq!(r[1].code, 221);
        assert_eq!(r[1].enhanced(), Some("2.0.0"));
        assert_eq!(parse_all(b"354\r\n").unwrap()[0].code, 354);
        assert_eq!(parse_all(b"550 no code\r\n").unwrap()[0].enhanced(), None);
    }

    #[test]
    fn hostile_replies() {
        assert_eq!(parse_all(b"HTTP/1.1 200 OK\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse_all(b"250-a\r\n251 b\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse_all(b"999 x\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse_all(&[b'2'; 5000]), Err(ReplyError::LineTooLong));
        assert_eq!(parse_all(&b"250-x\r\n".repeat(300)), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn partial_input_waits() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed(b"250-a\r\n250 b"), Ok((7, None)));
        assert_eq!(p.feed(b"250 b\r\n").unwrap().1.unwrap().text, "a\nb");
    }
}
