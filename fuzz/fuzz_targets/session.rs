//! The whole session state machine. Input bytes pick tokens from an SMTP
//! alphabet (so the fuzzer reaches DATA, BDAT, AUTH and STARTTLS states) or
//! pass through raw; other bytes choose split points, answers to events and
//! clock jumps. Invariants: no panic, replies well formed, memory bounded.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringpost::envelope::{QueueId, QueueIdGen};
use ringpost::policy::Policy;
use ringpost::smtp::session::{ConnInfo, Event, Now, Role, Session, SessionConfig, StoreError, TlsInfo};

const TOKENS: &[&[u8]] = &[
    b"EHLO c.test\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@x.test>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x\r\n",
    b"RCPT TO:<u@example.test>\r\n",
    b"RCPT TO:<r@relay.test> NOTIFY=SUCCESS ORCPT=rfc822;r@relay.test\r\n",
    b"RCPT TO:<x@elsewhere.test>\r\n",
    b"DATA\r\n",
    b"BDAT ",
    b" LAST\r\n",
    b"\r\n.\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AGEAYgBj\r\n",
    b"*\r\n",
    b"VRFY x\r\n",
    b"GET / HTTP/1.1\r\n",
    b"Subject: x\r\n\r\nbody",
    b"0",
    b"1",
    b"5",
    b"9",
];

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: ringpost::smtp::address::Domain::parse_host_name("mx.test").expect("valid"),
        role: Role::Mx,
        starttls: true,
        max_message_size: 200,
        max_recipients: 3,
        max_line: 64,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        max_errors: 30,
        policy: Arc::new(Policy::new(
            &["example.test".into()],
            &["relay.test".into()],
            &[],
            [("u@example.test".to_owned(), "x".to_owned())],
        )),
        suppression: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    // Build the wire bytes and the split points.
    let mut wire = Vec::new();
    let mut splits = Vec::new();
    let mut it = data.iter();
    while let Some(&b) = it.next() {
        match b {
            0..=199 => wire.extend_from_slice(TOKENS[usize::from(b) % TOKENS.len()]),
            200..=239 => {
                if let Some(&raw) = it.next() {
                    wire.push(raw);
                }
            }
            _ => splits.push(wire.len()),
        }
    }
    splits.push(wire.len());

    let start = Instant::now();
    let mut now = Now { instant: start, unix_secs: 1_800_000_000 };
    let ids = Rc::new(RefCell::new(QueueIdGen::new(0, QueueId(0))));
    let conn = ConnInfo { peer: "127.0.0.1".parse().unwrap(), trusted: mode & 1 == 0, tls: None };
    let mut s = Session::new(config(), conn, ids, now);
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut answers = mode;
    for &cut in &splits {
        pending.extend_from_slice(&wire[fed..cut]);
        fed = cut;
        loop {
            let used = s.handle_input(&pending, now);
            pending.drain(..used);
            // Unless an event is pending, at most a partial line stays unconsumed.
            if s.poll_event().is_none() {
                assert!(pending.len() < 64, "unconsumed input bounded: {}", pending.len());
            }
            answers = answers.rotate_left(1);
            match s.poll_event() {
                Some(Event::Store) => {
                    let m = s.message().expect("message with Store");
                    assert!(!m.envelope.recipients.is_empty());
                    let r = if answers & 1 == 0 { Ok(()) } else { Err(StoreError::Temporary) };
                    s.handle_stored(r, now);
                }
                Some(Event::StartTls) => {
                    pending.clear();
                    let info = TlsInfo { version: "TLSv1.3".into(), cipher: "X".into() };
                    s.handle_tls_established(info, now);
                }
                Some(Event::Authenticate) => {
                    assert!(s.credentials().is_some());
                    s.handle_auth_result(answers & 1 == 0, now);
                }
                Some(Event::Close) => break,
                None if used == 0 => break,
                None => {}
            }
        }
        check_output(s.output());
        s.clear_output();
        if answers & 0x80 != 0 {
            now.instant += Duration::from_secs(200);
            s.handle_timeout(now);
            check_output(s.output());
            s.clear_output();
        }
    }
});

fn check_output(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("replies are UTF-8");
    for line in text.split_inclusive("\r\n") {
        assert!(line.ends_with("\r\n"), "reply line ends with CRLF: {line:?}");
        let b = line.as_bytes();
        assert!(b.len() >= 5 && b[..3].iter().all(u8::is_ascii_digit), "3-digit code: {line:?}");
        assert!(b[3] == b' ' || b[3] == b'-', "separator: {line:?}");
        assert!(!line[..line.len() - 2].contains(['\r', '\n']), "no bare CR/LF inside: {line:?}");
    }
}
