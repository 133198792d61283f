//! Raw bytes into the POP3 session, split into chunks, with every event
//! answered (success or failure chosen by the input). The session must never
//! panic, never answer without CRLF, and never grow its output without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::pop3::MessageInfo;
use ringpost::pop3::session::{Event, LoginError, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    // Time moves a minute per chunk; past the idle timer the session ends.
    let t0 = std::time::Instant::now();
    let at = |n: usize| t0 + std::time::Duration::from_secs(60 * n as u64);
    let mut s = Session::new("pop.test", flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, t0);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for (n, chunk) in input.chunks(7 + usize::from(flags >> 4)).enumerate() {
        pending.extend_from_slice(chunk);
        loop {
            let used = s.handle_input(&pending, at(n));
            assert!(used <= pending.len());
            pending.drain(..used);
            match s.poll_event() {
                Some(Event::Login) => {
                    let ok = n % 3 != 0;
                    let msgs = (0..n % 4)
                        .map(|i| MessageInfo { uid: format!("u{i}"), size: 10 * i as u64, path: "/x".into() })
                        .collect();
                    s.handle_login(if ok { Ok(msgs) } else { Err(LoginError::Credentials) });
                }
                Some(Event::Fetch) => {
                    let content =
                        if n % 2 == 0 { Ok(chunk.to_vec()) } else { Err(std::io::Error::other("x")) };
                    s.handle_content(content);
                }
                Some(Event::StartTls) => s.handle_tls_established(),
                Some(Event::Commit) => s.handle_commit(n % 2),
                Some(Event::Close) | None => break,
            }
        }
        if n % 5 == 4 {
            s.handle_timeout(at(n + 11));
        }
        s.swap_output(&mut out);
        assert!(out.is_empty() || out.ends_with(b"\r\n"), "{out:?}");
        assert!(out.len() < 1 << 20);
        out.clear();
        if s.is_done() {
            break;
        }
    }
});
