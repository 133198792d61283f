//! The "relaxed" canonicalizations of RFC 6376 section 3.4.2 (header
//! fields) and 3.4.4 (body, with erratum 3192: an empty body is empty).
//! Pure.

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Appends the relaxed form of one header field (`raw`: name, colon,
/// value, folding, final CRLF if any) to `out`: the name lowercased, the
/// value unfolded, runs of white space made one space, white space around
/// the colon and at the end removed, then CRLF if `crlf`.
pub fn header(raw: &[u8], crlf: bool, out: &mut Vec<u8>) {
    let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
    let name = &raw[..colon];
    let name_end = name.iter().rposition(|&b| !is_wsp(b)).map_or(0, |p| p + 1);
    out.extend(name[..name_end].iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let value = raw.get(colon + 1..).unwrap_or_default();
    let mut space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = started,
            _ => {
                if space {
                    out.push(b' ');
                    space = false;
                }
                started = true;
                out.push(b);
            }
        }
    }
    if crlf {
        out.extend_from_slice(b"\r\n");
    }
}

/// Where the CRLF that ends the line starting at `from` is (a bare LF
/// does not end a line).
fn line_end(body: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let lf = at + memchr::memchr(b'\n', &body[at..])?;
        if lf > from && body[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        at = lf + 1;
    }
}

/// Feeds the relaxed form of a message body to `sink`, in pieces: each
/// line with runs of white space made one space and trailing white space
/// removed, empty lines at the end dropped, a final CRLF added to a
/// non-empty body that lacks one. Returns how many bytes it fed.
///
/// Lines the canonicalization leaves alone (no tab, no two spaces in a row,
/// no trailing space: nearly all of them) are fed straight from `body`, a
/// run of them at a time; only the others are rewritten.
pub fn body(body: &[u8], mut sink: impl FnMut(&[u8])) -> u64 {
    let mut fed = 0u64;
    let mut feed = |bytes: &[u8]| {
        sink(bytes);
        fed += bytes.len() as u64;
    };
    let mut empty_lines = 0u64;
    // Start of a run of unchanged lines, not fed yet.
    let mut run: Option<usize> = None;
    let mut line = Vec::new();
    let two_spaces = memchr::memmem::Finder::new(b"  ");
    let mut at = 0;
    while at < body.len() {
        let (end, next) = match line_end(body, at) {
            Some(p) => (p, p + 2),
            None => (body.len(), body.len()),
        };
        let l = &body[at..end];
        let unchanged = next > end
            && l.last().is_some_and(|&b| !is_wsp(b))
            && memchr::memchr(b'\t', l).is_none()
            && two_spaces.find(l).is_none();
        if unchanged {
            for _ in 0..empty_lines {
                feed(b"\r\n");
            }
            empty_lines = 0;
            run.get_or_insert(at);
        } else {
            if let Some(start) = run.take() {
                feed(&body[start..at]);
            }
            line.clear();
            let mut space = false;
            for &b in l {
                if is_wsp(b) {
                    space = true;
                } else {
                    if space {
                        line.push(b' ');
                        space = false;
                    }
                    line.push(b);
                }
            }
            if line.is_empty() {
                empty_lines += 1;
            } else {
                for _ in 0..empty_lines {
                    feed(b"\r\n");
                }
                empty_lines = 0;
                line.extend_from_slice(b"\r\n");
                feed(&line);
            }
        }
        at = next;
    }
    if let Some(start) = run {
        feed(&body[start..]);
    }
    fed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(raw: &str) -> String {
        let mut out = Vec::new();
        header(raw.as_bytes(), true, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn b(input: &str) -> String {
        let mut out = Vec::new();
        let n = body(input.as_bytes(), |p| out.extend_from_slice(p));
        assert_eq!(n as usize, out.len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn headers() {
        // RFC 6376 section 3.4.5's example, then the edges.
        assert_eq!(h("A: X\r\n"), "a:X\r\n");
        assert_eq!(h("B : Y\t\r\n\tZ  \r\n"), "b:Y Z\r\n");
        let table = [
            ("Subject:   spaced   out  \r\n", "subject:spaced out\r\n"),
            ("Subject:\r\n", "subject:\r\n"),
            ("Subject: \r\n \r\n", "subject:\r\n"),
            ("X-A:a\r\n\tb\r\n c\r\n", "x-a:a b c\r\n"),
            ("FROM: <a@b.test>", "from:<a@b.test>\r\n"),
            ("no colon at all", "no colon at all:\r\n"),
        ];
        for (raw, want) in table {
            assert_eq!(h(raw), want, "{raw:?}");
        }
        let mut out = Vec::new();
        header(b"DKIM-Signature: v=1; b=", false, &mut out);
        assert_eq!(out, b"dkim-signature:v=1; b=");
    }

    /// The relaxed body the slow, obvious way: every line rewritten.
    fn reference(body: &[u8]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let (l, next) = match memchr::memmem::find(rest, b"\r\n") {
                Some(p) => (&rest[..p], &rest[p + 2..]),
                None => (rest, &rest[rest.len()..]),
            };
            let mut out = Vec::new();
            let mut space = false;
            for &b in l {
                if is_wsp(b) {
                    space = true;
                } else {
                    if space {
                        out.push(b' ');
                    }
                    space = false;
                    out.push(b);
                }
            }
            lines.push(out);
            rest = next;
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines.iter().flat_map(|l| l.iter().copied().chain(*b"\r\n")).collect()
    }

    #[test]
    fn bodies_match_the_obvious_way() {
        let pieces: [&[u8]; 8] = [b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"xy", b"\r\n\r\n"];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..12);
            let input: Vec<u8> =
                (0..n).flat_map(|_| pieces[rng.usize(0..pieces.len())].iter().copied()).collect();
            let mut got = Vec::new();
            body(&input, |p| got.extend_from_slice(p));
            assert_eq!(got, reference(&input), "{:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn bodies() {
        // RFC 6376 section 3.4.5's example.
        assert_eq!(b(" C \r\nD \t E\r\n\r\n\r\n"), " C\r\nD E\r\n");
        let table = [
            ("", ""),
            ("\r\n", ""),
            ("\r\n\r\n", ""),
            (" \t \r\n", ""),
            ("x", "x\r\n"),
            ("x\r\n", "x\r\n"),
            ("\r\nx\r\n", "\r\nx\r\n"),
            ("a\r\n\r\n\r\nb\r\n\r\n", "a\r\n\r\n\r\nb\r\n"),
            ("a  \r\n \r\nb", "a\r\n\r\nb\r\n"),
            ("tab\there\r\n", "tab here\r\n"),
        ];
        for (input, want) in table {
            assert_eq!(b(input), want, "{input:?}");
        }
    }
}
