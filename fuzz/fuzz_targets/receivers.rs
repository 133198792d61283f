//! DATA and BDAT receivers, checked against a slow reference model, with the
//! input split at fuzzer-chosen points.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::data::{ChunkReceiver, ContentVerdict, DotReceiver};

/// The obvious, slow reading of RFC 5321 §4.5.2 plus our bare CR/LF rule.
fn reference(input: &[u8], limit: u64) -> Option<(usize, Vec<u8>, ContentVerdict)> {
    // The data ends at the first CRLF.CRLF, where the text before counts as
    // starting with CRLF (the one that ended the DATA command).
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    let end = framed.windows(5).position(|w| w == b"\r\n.\r\n")?;
    let content = &framed[2..end + 2]; // includes the final CRLF
    let used = end + 3; // in `input` coordinates: end+5 framed minus 2
    let mut body = Vec::new();
    let mut bare = false;
    let mut i = 0;
    let mut line_start = true;
    while i < content.len() {
        let b = content[i];
        if line_start && b == b'.' {
            line_start = false;
            i += 1;
            continue;
        }
        line_start = false;
        if b == b'\r' && content.get(i + 1) == Some(&b'\n') {
            body.extend_from_slice(b"\r\n");
            i += 2;
            line_start = true;
            continue;
        }
        if b == b'\r' || b == b'\n' {
            bare = true;
        }
        body.push(b);
        i += 1;
    }
    let verdict = if body.len() as u64 > limit {
        ContentVerdict::TooBig
    } else if bare {
        ContentVerdict::BareNewline
    } else {
        ContentVerdict::Ok
    };
    body.truncate(limit as usize);
    Some((used, body, verdict))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let limit = u64::from(data[0]) * 4;
    let step = usize::from(data[1]).max(1);
    let input = &data[2..];

    let mut rx = DotReceiver::new(limit);
    let mut body = Vec::new();
    let mut pos = 0;
    let mut got = None;
    while pos < input.len() {
        let end = (pos + step).min(input.len());
        let (n, verdict) = rx.feed(&input[pos..end], &mut body);
        pos += n;
        if let Some(v) = verdict {
            got = Some((pos, v));
            break;
        }
        assert_eq!(pos, end, "consumes all input before the end marker");
    }
    assert!(body.len() as u64 <= limit, "memory bounded by the limit");
    match (reference(input, limit), got) {
        (None, None) => {}
        (Some((used, rbody, rverdict)), Some((pos, verdict))) => {
            assert_eq!(pos, used, "same end");
            assert_eq!(verdict, rverdict, "same verdict");
            if verdict != ContentVerdict::TooBig {
                assert_eq!(body, rbody, "same content");
            }
        }
        (r, g) => panic!("reference {:?} vs receiver {:?}", r.map(|x| x.0), g),
    }

    // BDAT: chunks of `step` bytes; content is taken as is.
    let mut chunks = ChunkReceiver::new(limit, data[0] & 1 == 0);
    let mut body = Vec::new();
    for chunk in input.chunks(step) {
        chunks.begin_chunk(chunk.len() as u64);
        assert_eq!(chunks.feed(chunk, &mut body), chunk.len());
        assert!(chunks.chunk_done());
    }
    let verdict = chunks.finish();
    assert!(body.len() as u64 <= limit);
    if input.len() as u64 <= limit {
        assert_eq!(body, input);
    } else {
        assert_eq!(verdict, ContentVerdict::TooBig);
    }
});
