//! Message content receivers: DATA (dot-stuffed, ended by `<CRLF>.<CRLF>`) and
//! BDAT (counted chunks, RFC 3030).
//!
//! The only end of DATA is CR LF `.` CR LF, where the first CR LF may be the one
//! that ended the DATA command. A bare LF or a bare CR never starts a line, so
//! `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>` and friends (the 2023 "SMTP smuggling"
//! shapes) are content, and the message that holds them is rejected: it would
//! be read differently by the next MTA.

use memchr::memchr2;

/// What the receiver saw, for the session's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentVerdict {
    /// Well formed and within the limit.
    Ok,
    /// Contained a CR not followed by LF, or an LF not preceded by CR.
    BareNewline,
    /// More content than the size limit.
    TooBig,
    /// The server ran short of memory for message content and dropped it
    /// (temporary: `452 4.3.1`).
    NoMemory,
}

/// The verdict from what was seen: permanent reasons win over temporary ones.
fn verdict(too_big: bool, bare: bool, dropped: bool) -> ContentVerdict {
    if too_big {
        ContentVerdict::TooBig
    } else if bare {
        ContentVerdict::BareNewline
    } else if dropped {
        ContentVerdict::NoMemory
    } else {
        ContentVerdict::Ok
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// After CR LF (or right after the DATA command).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line: LF now ends the data.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, just after a CR.
    Cr,
}

/// Receives DATA content: dot-unstuffs into `body`, finds the end, checks line
/// endings and size. Memory stays bounded by `limit`: past it, bytes are counted
/// and dropped.
#[derive(Debug)]
pub struct DotReceiver {
    state: DotState,
    bare: bool,
    /// Content is being counted but no longer kept (see `drop_content`).
    dropped: bool,
    size: u64,
    limit: u64,
}

impl DotReceiver {
    pub fn new(limit: u64) -> Self {
        DotReceiver { state: DotState::LineStart, bare: false, dropped: false, size: 0, limit }
    }

    /// From now on, count content but keep none; the verdict will be
    /// [`ContentVerdict::NoMemory`] unless a permanent reason applies.
    pub fn drop_content(&mut self) {
        self.dropped = true;
    }

    /// Content bytes seen so far (unstuffed, counting dropped ones).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Feeds wire bytes. Returns how many were consumed and, once the end marker
    /// has been consumed, the verdict. Bytes after the marker are not consumed.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> (usize, Option<ContentVerdict>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                DotState::LineStart if b == b'.' => {
                    self.state = DotState::Dot;
                    i += 1;
                }
                DotState::Dot if b == b'\r' => {
                    self.state = DotState::DotCr;
                    i += 1;
                }
                DotState::DotCr if b == b'\n' => {
                    return (i + 1, Some(self.verdict()));
                }
                DotState::DotCr => {
                    // `.` CR x: the dot was stuffing, the CR is bare.
                    self.bare = true;
                    self.emit(b"\r", body);
                    self.state = DotState::Mid;
                }
                DotState::Cr if b == b'\n' => {
                    self.emit(b"\r\n", body);
                    self.state = DotState::LineStart;
                    i += 1;
                }
                DotState::Cr => {
                    self.bare = true;
                    self.emit(b"\r", body);
                    self.state = DotState::Mid;
                }
                // LineStart without a dot, Dot followed by content (unstuffed), Mid.
                DotState::LineStart | DotState::Dot | DotState::Mid => {
                    i += self.scan_line(&input[i..], body);
                }
            }
        }
        (i, None)
    }

    /// Copies line content up to the next CR or LF; consumes that CR or LF too.
    fn scan_line(&mut self, input: &[u8], body: &mut Vec<u8>) -> usize {
        match memchr2(b'\r', b'\n', input) {
            None => {
                self.emit(input, body);
                self.state = DotState::Mid;
                input.len()
            }
            Some(pos) => {
                self.emit(&input[..pos], body);
                if input[pos] == b'\r' {
                    self.state = DotState::Cr;
                } else {
                    self.bare = true;
                    self.emit(b"\n", body);
                    self.state = DotState::Mid;
                }
                pos + 1
            }
        }
    }

    fn emit(&mut self, bytes: &[u8], body: &mut Vec<u8>) {
        if !self.dropped {
            let room = self.limit.saturating_sub(self.size);
            let keep = (bytes.len() as u64).min(room) as usize;
            body.extend_from_slice(&bytes[..keep]);
        }
        self.size += bytes.len() as u64;
    }

    fn verdict(&self) -> ContentVerdict {
        verdict(self.size > self.limit, self.bare, self.dropped)
    }
}

/// Receives the chunks of one BDAT transaction. Content is taken as is (no dot
/// stuffing); unless the body is BINARYMIME, bare CR or LF is flagged as in DATA.
#[derive(Debug)]
pub struct ChunkReceiver {
    /// Bytes left in the current chunk.
    remaining: u64,
    check_newlines: bool,
    pending_cr: bool,
    bare: bool,
    dropped: bool,
    size: u64,
    limit: u64,
}

impl ChunkReceiver {
    pub fn new(limit: u64, check_newlines: bool) -> Self {
        ChunkReceiver {
            remaining: 0,
            check_newlines,
            pending_cr: false,
            bare: false,
            dropped: false,
            size: 0,
            limit,
        }
    }

    /// As [`DotReceiver::drop_content`].
    pub fn drop_content(&mut self) {
        self.dropped = true;
    }

    /// Starts a chunk of `size` bytes.
    pub fn begin_chunk(&mut self, size: u64) {
        self.remaining = size;
    }

    /// True once the current chunk has been read in full.
    pub fn chunk_done(&self) -> bool {
        self.remaining == 0
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Feeds wire bytes of the current chunk; returns how many were consumed.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> usize {
        let n = (input.len() as u64).min(self.remaining) as usize;
        let chunk = &input[..n];
        if self.check_newlines {
            self.check(chunk);
        }
        if !self.dropped {
            let room = self.limit.saturating_sub(self.size);
            let keep = (n as u64).min(room) as usize;
            body.extend_from_slice(&chunk[..keep]);
        }
        self.size += n as u64;
        self.remaining -= n as u64;
        n
    }

    fn check(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            } else {
                self.bare = true;
            }
        }
        while let Some(pos) = memchr2(b'\r', b'\n', rest) {
            if rest[pos] == b'\n' {
                self.bare = true;
                rest = &rest[pos + 1..];
            } else if pos + 1 == rest.len() {
                self.pending_cr = true;
                return;
            } else if rest[pos + 1] == b'\n' {
                rest = &rest[pos + 2..];
            } else {
                self.bare = true;
                rest = &rest[pos + 1..];
            }
        }
    }

    /// The verdict after the LAST chunk.
    pub fn finish(&mut self) -> ContentVerdict {
        if self.pending_cr {
            self.bare = true;
        }
        verdict(self.size > self.limit, self.bare, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a DotReceiver in chunks of `step` bytes.
    fn dot(input: &[u8], step: usize, limit: u64) -> (Vec<u8>, usize, Option<ContentVerdict>) {
        let mut r = DotReceiver::new(limit);
        let mut body = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let (n, verdict) = r.feed(&input[pos..end], &mut body);
            pos += n;
            if verdict.is_some() {
                return (body, pos, verdict);
            }
            assert_eq!(pos, end, "consumes everything until the end marker");
        }
        (body, pos, None)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let cases: &[(&[u8], &[u8], Option<ContentVerdict>)] = &[
            (b".\r\n", b"", Some(ContentVerdict::Ok)),
            (b"a\r\n.\r\n", b"a\r\n", Some(ContentVerdict::Ok)),
            (b"..x\r\n.\r\n", b".x\r\n", Some(ContentVerdict::Ok)),
            (b"...\r\n.\r\n", b"..\r\n", Some(ContentVerdict::Ok)),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", Some(ContentVerdict::Ok)),
            (b"a.\r\nb\r\n.\r\n", b"a.\r\nb\r\n", Some(ContentVerdict::Ok)),
            // Smuggling shapes: none of these end the data; all are bare newlines.
            (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\r.\r\nb\r\n.\r\n", b"a\r.\r\nb\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\n\r\n.\r\n", b"a\n\r\n", Some(ContentVerdict::BareNewline)),
            (b"a\r\r\n.\r\n", b"a\r\r\n", Some(ContentVerdict::BareNewline)),
            // Not finished yet.
            (b"a\r\n.\r", b"a\r\n", None),
            (b"a\n.\n", b"a\n.\n", None),
        ];
        for (input, body, verdict) in cases {
            for step in [1, 2, 3, 7, input.len().max(1)] {
                let (got, _, v) = dot(input, step, 1 << 20);
                assert_eq!(&v, verdict, "{:?} step {step}", String::from_utf8_lossy(input));
                assert_eq!(&got, body, "{:?} step {step}", String::from_utf8_lossy(input));
            }
        }
    }

    #[test]
    fn stops_after_marker() {
        let (_, used, v) = dot(b"x\r\n.\r\nQUIT\r\n", 100, 100);
        assert_eq!(v, Some(ContentVerdict::Ok));
        assert_eq!(used, 6);
    }

    #[test]
    fn size_limit_bounds_memory() {
        let mut input = vec![b'x'; 10_000];
        input.extend_from_slice(b"\r\n.\r\n");
        let (body, _, v) = dot(&input, 333, 100);
        assert_eq!(v, Some(ContentVerdict::TooBig));
        assert_eq!(body.len(), 100);
        let (body, _, v) = dot(b"12345\r\n.\r\n", 1, 7);
        assert_eq!(v, Some(ContentVerdict::Ok));
        assert_eq!(body, b"12345\r\n");
    }

    #[test]
    fn chunks_check_newlines_across_boundaries() {
        let run = |chunks: &[&[u8]], check: bool| {
            let mut r = ChunkReceiver::new(1 << 20, check);
            let mut body = Vec::new();
            for c in chunks {
                r.begin_chunk(c.len() as u64);
                assert_eq!(r.feed(c, &mut body), c.len());
                assert!(r.chunk_done());
            }
            (body, r.finish())
        };
        assert_eq!(run(&[b"a\r", b"\nb\r\n"], true), (b"a\r\nb\r\n".to_vec(), ContentVerdict::Ok));
        assert_eq!(run(&[b"a\r", b"b\r\n"], true).1, ContentVerdict::BareNewline);
        assert_eq!(run(&[b"a\nb"], true).1, ContentVerdict::BareNewline);
        assert_eq!(run(&[b"a\r"], true).1, ContentVerdict::BareNewline);
        assert_eq!(run(&[b"a\nb\r"], false).1, ContentVerdict::Ok);
        assert_eq!(run(&[b"\r\n.\r\n"], true), (b"\r\n.\r\n".to_vec(), ContentVerdict::Ok));
    }

    #[test]
    fn dropped_content_is_counted_not_kept() {
        let mut r = DotReceiver::new(1000);
        let mut body = Vec::new();
        r.feed(b"abc\r\n", &mut body);
        r.drop_content();
        let (_, v) = r.feed(b"defgh\r\n.\r\n", &mut body);
        assert_eq!(v, Some(ContentVerdict::NoMemory));
        assert_eq!(body, b"abc\r\n");
        assert_eq!(r.size(), 12);
        let mut r = DotReceiver::new(4);
        r.drop_content();
        assert_eq!(r.feed(b"toolong\r\n.\r\n", &mut body).1, Some(ContentVerdict::TooBig), "permanent wins");
        let mut c = ChunkReceiver::new(100, true);
        c.drop_content();
        c.begin_chunk(3);
        c.feed(b"xyz", &mut body);
        assert_eq!(c.finish(), ContentVerdict::NoMemory);
    }

    #[test]
    fn chunk_feed_stops_at_chunk_end() {
        let mut r = ChunkReceiver::new(100, true);
        let mut body = Vec::new();
        r.begin_chunk(3);
        assert_eq!(r.feed(b"abcdef", &mut body), 3);
        assert_eq!(body, b"abc");
        r.begin_chunk(200);
        r.feed(&[b'z'; 200], &mut body);
        assert_eq!(r.finish(), ContentVerdict::TooBig);
        assert_eq!(body.len(), 100);
    }
}
