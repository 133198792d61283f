//! Session state-machine tests: no sockets, simulated time.
#![allow(clippy::disallowed_methods)] // reason: a real Instant as the simulated clock's origin

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::envelope::{QueueId, QueueIdGen};

struct Harness {
    session: Session,
    now: Now,
    /// Input the session has not consumed yet, as the shell keeps it.
    pending: Vec<u8>,
}

fn config(role: Role) -> SessionConfig {
    SessionConfig {
        hostname: Domain::parse_host_name("mx.test").unwrap(),
        role,
        starttls: true,
        max_message_size: 1000,
        max_recipients: 3,
        max_line: 100,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        max_errors: 10,
        policy: Arc::new(Policy::new(
            &["example.test".into()],
            &["relay.test".into()],
            &[],
            [("alice@example.test".to_owned(), "hash".to_owned())],
        )),
        suppression: None,
    }
}

impl Harness {
    fn new(role: Role, peer: &str, trusted: bool) -> Harness {
        Harness::with_config(config(role), peer, trusted)
    }

    fn with_config(config: SessionConfig, peer: &str, trusted: bool) -> Harness {
        let now = Now { instant: Instant::now(), unix_secs: 1_795_432_817 };
        let conn = ConnInfo { peer: peer.parse().unwrap(), trusted, tls: None };
        let ids = Rc::new(RefCell::new(QueueIdGen::new(0, QueueId(0))));
        Harness { session: Session::new(Arc::new(config), conn, ids, now), now, pending: Vec::new() }
    }

    fn mx() -> Harness {
        Harness::new(Role::Mx, "192.0.2.1", false)
    }

    /// Feeds everything (one byte at a time if `bytewise`), resolving Store
    /// events with `store_ok`; returns the output since the last call.
    fn send_with(&mut self, input: &[u8], bytewise: bool, store_ok: bool) -> String {
        let mut fed = self.pending.len();
        self.pending.extend_from_slice(input);
        loop {
            let end = if bytewise { (fed + 1).min(self.pending.len()) } else { self.pending.len() };
            fed = end;
            let used = self.session.handle_input(&self.pending[..end], self.now);
            self.pending.drain(..used);
            fed -= used;
            match self.session.poll_event() {
                Some(Event::Store) => {
                    let r = if store_ok { Ok(()) } else { Err(StoreError::Temporary) };
                    self.session.handle_stored(r, self.now);
                    continue;
                }
                Some(_) => break,
                None => {}
            }
            if fed >= self.pending.len() {
                break;
            }
        }
        let out = String::from_utf8(self.session.output().to_vec()).unwrap();
        self.session.clear_output();
        out
    }

    fn send(&mut self, input: &str) -> String {
        self.send_with(input.as_bytes(), false, true)
    }

    fn greet(&mut self) {
        self.send("");
        self.send("EHLO client.test\r\n");
    }
}

fn codes(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| &l[..3]).collect()
}

#[test]
fn greeting_and_ehlo() {
    let mut h = Harness::mx();
    assert_eq!(h.send(""), "220 mx.test ESMTP\r\n");
    let ehlo = h.send("EHLO client.test\r\n");
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext}"
        );
    }
    // Not loopback, no TLS: no AUTH.
    assert!(!ehlo.contains("AUTH"));
    assert!(ehlo.starts_with("250-mx.test\r\n"));
}

#[test]
fn auth_offered_on_loopback() {
    let mut h = Harness::new(Role::Mx, "127.0.0.1", true);
    h.send("");
    assert!(h.send("EHLO c\r\n").contains("250 AUTH PLAIN LOGIN\r\n"));
}

#[test]
fn one_message() {
    let mut h = Harness::mx();
    h.greet();
    assert_eq!(h.send("MAIL FROM:<s@sender.test>\r\n"), "250 2.1.0 Sender ok\r\n");
    assert_eq!(h.send("RCPT TO:<alice@example.test>\r\n"), "250 2.1.5 Recipient ok\r\n");
    assert_eq!(h.send("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    h.session.handle_input(b"Subject: hi\r\n\r\n..dot\r\n.\r\n", h.now);
    assert_eq!(h.session.poll_event(), Some(Event::Store));
    let msg = h.session.message().unwrap();
    let body = String::from_utf8(msg.body.clone()).unwrap();
    assert!(body
        .starts_with("Received: from client.test ([192.0.2.1])\r\n\tby mx.test (ringpost) with ESMTP id "));
    assert!(body.contains("\r\n\tfor <alice@example.test>;\r\n\tMon, 23 Nov 2026 11:20:17 +0000\r\n"));
    assert!(body.ends_with("Subject: hi\r\n\r\n.dot\r\n"));
    assert_eq!(msg.envelope.recipients.len(), 1);
    let id = msg.envelope.id;
    h.session.handle_stored(Ok(()), h.now);
    assert_eq!(h.send(""), format!("250 2.0.0 Ok: queued as {id}\r\n"));
    assert_eq!(h.send("QUIT\r\n"), "221 2.0.0 Bye\r\n");
    assert_eq!(h.session.poll_event(), Some(Event::Close));
}

#[test]
fn pipelined_transaction_in_one_buffer() {
    let mut h = Harness::mx();
    h.greet();
    let out = h.send(
        "MAIL FROM:<s@x.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n",
    );
    assert_eq!(codes(&out), ["250", "250", "550", "354"]);
    let out = h.send("hello\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<x@relay.test>\r\nBDAT 5 LAST\r\nabcdeQUIT\r\n");
    assert_eq!(codes(&out), ["250", "250", "250", "250", "221"], "{out}");
}

#[test]
fn bytewise_feeding_matches_bulk() {
    let script =
        "EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nline\r\n.\r\nQUIT\r\n";
    let mut a = Harness::mx();
    let mut b = Harness::mx();
    let bulk = a.send_with(script.as_bytes(), false, true);
    let bytewise = b.send_with(script.as_bytes(), true, true);
    assert_eq!(codes(&bulk), codes(&bytewise));
    assert_eq!(codes(&bulk), ["220", "250", "250", "250", "354", "250", "221"]);
}

#[test]
fn sequencing_errors() {
    let mut h = Harness::mx();
    h.send("");
    assert_eq!(h.send("MAIL FROM:<a@b.test>\r\n"), "503 5.5.1 Send EHLO or HELO first\r\n");
    h.send("HELO c\r\n");
    assert_eq!(h.send("RCPT TO:<alice@example.test>\r\n"), "503 5.5.1 Need MAIL command\r\n");
    assert_eq!(h.send("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
    h.send("MAIL FROM:<a@b.test>\r\n");
    assert_eq!(h.send("MAIL FROM:<a@b.test>\r\n"), "503 5.5.1 Nested MAIL command\r\n");
    assert_eq!(h.send("DATA\r\n"), "503 5.5.1 Need RCPT command\r\n");
    assert!(h.send("RCPT TO:<x@elsewhere.test>\r\n").starts_with("554 5.7.1"));
    assert_eq!(h.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
    assert_eq!(h.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert!(h.send("VRFY x\r\n").starts_with("252 2.5.2"));
    assert!(h.send("HELP\r\n").starts_with("214 2.0.0"));
    assert!(h.send("EXPN x\r\n").starts_with("502 5.5.1"));
    assert!(h.send("FOO\r\n").starts_with("500 5.5.2"));
}

#[test]
fn address_and_parameter_errors() {
    let mut h = Harness::mx();
    h.greet();
    assert!(h.send("MAIL FROM:<bad address>\r\n").starts_with("501 5.1.7"));
    assert!(h.send("MAIL FROM:<a@b.test> SIZE=5000\r\n").starts_with("552 5.3.4"));
    assert!(h.send("MAIL FROM:<a@b.test> FOO=1\r\n").starts_with("555 5.5.4"));
    assert!(h.send("MAIL FROM:<a@b.test> BODY=9BIT\r\n").starts_with("501 5.5.4"));
    assert!(h.send("MAIL FROM:<ü@b.test>\r\n").starts_with("553 5.6.7"));
    assert!(h.send("MAIL FROM:<ü@b.test> SMTPUTF8\r\n").starts_with("250"));
    assert!(h.send("RCPT TO:<@@>\r\n").starts_with("501 5.1.3"));
    assert!(h.send("RCPT TO:<alice@example.test> NOTIFY=BOGUS\r\n").starts_with("501 5.5.4"));
    assert!(h.send("RCPT TO:<Postmaster>\r\n").starts_with("250"));
}

#[test]
fn dsn_parameters_are_kept() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2B1\r\n");
    h.send("RCPT TO:<alice@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;alice@example.test\r\n");
    h.send("DATA\r\n");
    h.session.handle_input(b"x\r\n.\r\n", h.now);
    let env = &h.session.message().unwrap().envelope;
    assert_eq!(env.ret, Some(crate::envelope::Ret::Headers));
    assert_eq!(env.envid.as_deref(), Some("QQ+2B1"));
    let r = &env.recipients[0];
    assert!(r.notify.success() && r.notify.delay() && !r.notify.failure());
    assert_eq!(r.orcpt.as_deref(), Some("rfc822;alice@example.test"));
}

#[test]
fn relay_control() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\n");
    assert_eq!(h.send("RCPT TO:<x@elsewhere.test>\r\n"), "554 5.7.1 Relay access denied\r\n");
    assert!(h.send("RCPT TO:<bob@example.test>\r\n").starts_with("550 5.1.1"));
    assert!(h.send("RCPT TO:<x@relay.test>\r\n").starts_with("250"));
    assert_eq!(h.session.take_refusals(), (0, 2));

    let mut trusted = Harness::new(Role::Mx, "10.0.0.1", true);
    trusted.greet();
    trusted.send("MAIL FROM:<a@b.test>\r\n");
    assert!(trusted.send("RCPT TO:<x@elsewhere.test>\r\n").starts_with("250"));
}

#[test]
fn recipient_limit() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\n");
    for i in 0..3 {
        assert!(h.send(&format!("RCPT TO:<u{i}@relay.test>\r\n")).starts_with("250"));
    }
    assert_eq!(h.send("RCPT TO:<u9@relay.test>\r\n"), "452 4.5.3 Too many recipients\r\n");
}

#[test]
fn oversized_message_is_refused_without_buffering() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    let line = format!("{}\r\n", "x".repeat(98));
    for _ in 0..100 {
        assert_eq!(h.send(&line), "");
    }
    assert!(h.session.body.len() < 2000, "body buffer stays bounded: {}", h.session.body.len());
    assert_eq!(h.send(".\r\n"), "552 5.3.4 Message size exceeds fixed limit\r\n");
    assert_eq!(h.session.take_refusals(), (1, 0));
    assert_eq!(h.session.take_refusals(), (0, 0));
    assert!(h.send("MAIL FROM:<a@b.test>\r\n").starts_with("250"), "session goes on");
}

#[test]
fn smuggling_shapes_are_one_rejected_message() {
    for smuggle in ["\n.\n", "\n.\r\n", "\r.\r", "\r\n.\n", "\r\n.\r", "\r.\r\n"] {
        let mut h = Harness::mx();
        h.greet();
        h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
        let payload = format!(
            "Subject: one\r\n\r\nbody{smuggle}MAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: two\r\n\r\n.\r\n"
        );
        let out = h.send(&payload);
        assert_eq!(codes(&out), ["550"], "smuggle {smuggle:?}: {out}");
        assert!(out.starts_with("550 5.5.2"));
        assert!(h.session.message().is_none());
        // Nothing was accepted as a second message, and the session still works.
        assert!(h.send("NOOP\r\n").starts_with("250"));
    }
}

#[test]
fn command_line_endings_and_length() {
    let mut h = Harness::mx();
    h.greet();
    assert!(h.send("NOOP\n").starts_with("500 5.5.2"));
    assert!(h.send("NOOP\rRSET\r\n").starts_with("500 5.5.2"));
    let long = format!("NOOP {}\r\n", "x".repeat(500));
    assert_eq!(h.send(&long), "500 5.5.2 Line too long\r\n");
    // A long line that arrives in pieces is discarded as it comes.
    let mut out = String::new();
    for _ in 0..50 {
        out += &h.send(&"y".repeat(99));
    }
    out += &h.send("\r\nNOOP\r\n");
    assert_eq!(out, "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
}

#[test]
fn bdat_chunks() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n");
    assert_eq!(h.send("BDAT 6\r\nhello\r"), "250 2.0.0 6 octets received\r\n");
    assert!(h.send("DATA\r\n").starts_with("503 5.5.1"));
    h.session.handle_input(b"BDAT 8 LAST\r\n\nworld\r\n", h.now);
    assert_eq!(h.session.poll_event(), Some(Event::Store));
    assert!(h.session.message().unwrap().body.ends_with(b"hello\r\nworld\r\n"));
    h.session.handle_stored(Ok(()), h.now);
    assert!(h.send("").starts_with("250 2.0.0 Ok: queued as"));
}

#[test]
fn bdat_refused_chunk_is_consumed() {
    let mut h = Harness::mx();
    h.greet();
    let out = h.send("BDAT 10 LAST\r\nMAIL FROM:NOOP\r\n");
    assert_eq!(out, "503 5.5.1 Need MAIL command\r\n250 2.0.0 Ok\r\n");
    h.send("MAIL FROM:<a@b.test>\r\n");
    assert!(h.send("BDAT 3 LAST\r\nabc").starts_with("503 5.5.1 Need RCPT"));
}

#[test]
fn bdat_bare_lf_and_zero_last() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n");
    assert!(h.send("BDAT 4 LAST\r\na\nb\n").starts_with("550 5.5.2"));
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n");
    h.send("BDAT 3\r\nab\r");
    h.session.handle_input(b"BDAT 0 LAST\r\n", h.now);
    assert_eq!(h.session.poll_event(), None);
    assert!(h.send("").starts_with("550 5.5.2"), "trailing CR is bare");
}

#[test]
fn store_failure_is_452_and_session_continues() {
    let mut h = Harness::mx();
    h.greet();
    let out = h.send_with(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nx\r\n.\r\n",
        false,
        false,
    );
    assert!(out.ends_with("452 4.3.1 Insufficient system storage, try again later\r\n"), "{out}");
    assert!(h.send("MAIL FROM:<a@b.test>\r\n").starts_with("250"));
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let mut h = Harness::mx();
    h.greet();
    let input = b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n";
    let used = h.session.handle_input(input, h.now);
    assert_eq!(used, 10, "stops right after STARTTLS");
    assert_eq!(h.session.poll_event(), Some(Event::StartTls));
    assert_eq!(h.send(""), "220 2.0.0 Ready to start TLS\r\n");
    // The shell drops the rest of the buffer and runs the handshake.
    let info = TlsInfo { version: "TLSv1_3".into(), cipher: "TLS13_AES_128_GCM_SHA256".into() };
    h.session.handle_tls_established(info, h.now);
    assert!(h.send("MAIL FROM:<a@b.test>\r\n").starts_with("503 5.5.1 Send EHLO"));
    let ehlo = h.send("EHLO c\r\n");
    assert!(!ehlo.contains("STARTTLS"));
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "AUTH offered over TLS");
    assert!(h.send("STARTTLS\r\n").starts_with("503 5.5.1 TLS already active"));
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    h.session.handle_input(b"x\r\n.\r\n", h.now);
    let body = String::from_utf8(h.session.message().unwrap().body.clone()).unwrap();
    assert!(body.contains("(using TLSv1_3 with cipher TLS13_AES_128_GCM_SHA256)"), "{body}");
    assert!(body.contains("with ESMTPS id"));
}

#[test]
fn submission_requires_auth() {
    let mut h = Harness::new(Role::Submission, "127.0.0.1", true);
    h.greet();
    assert!(h.send("MAIL FROM:<alice@example.test>\r\n").starts_with("530 5.7.0"));
    // AUTH PLAIN with an initial response: \0alice@example.test\0secret
    let out = h.send("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n");
    assert_eq!(out, "");
    assert_eq!(h.session.poll_event(), Some(Event::Authenticate));
    assert_eq!(h.session.credentials(), Some(("alice@example.test", "secret")));
    h.session.handle_auth_result(true, h.now);
    assert_eq!(h.send(""), "235 2.7.0 Authentication successful\r\n");
    assert!(h.send("MAIL FROM:<alice@example.test>\r\n").starts_with("250"));
    assert!(h.send("RCPT TO:<x@elsewhere.test>\r\n").starts_with("250"), "authenticated users relay");
    assert!(h.send("DATA\r\n").starts_with("354"));
    h.session.handle_input(b"x\r\n.\r\n", h.now);
    let body = String::from_utf8(h.session.message().expect("a message to store").body.clone()).unwrap();
    let received = body.split("\r\n\r\n").next().unwrap();
    assert!(received.starts_with("Received: ") && received.contains(" with ESMTPA id "), "{body}");
}

#[test]
fn auth_login_and_failures() {
    let mut h = Harness::new(Role::Mx, "127.0.0.1", true);
    h.greet();
    assert_eq!(h.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.send("YWxpY2VAZXhhbXBsZS50ZXN0\r\n"), "334 UGFzc3dvcmQ6\r\n");
    h.send("d3Jvbmc=\r\n");
    assert_eq!(h.session.credentials(), Some(("alice@example.test", "wrong")));
    h.session.handle_auth_result(false, h.now);
    assert!(h.send("").starts_with("535 5.7.8"));
    assert_eq!(h.send("AUTH PLAIN\r\n"), "334 \r\n");
    assert!(h.send("*\r\n").starts_with("501 5.0.0"));
    assert!(h.send("AUTH CRAM-MD5\r\n").starts_with("504 5.5.4"));
    assert!(h.send("AUTH PLAIN !!!\r\n").starts_with("501 5.5.2"));
}

/// An over-long line inside an AUTH exchange is discarded whole: its tail
/// is never read as a command, however the bytes arrive.
#[test]
fn an_overlong_auth_line_is_discarded_whole() {
    let line = format!("{}MAIL FROM:<a@b.test>\r\n", "A".repeat(100));
    for (mechanism, bytewise) in [("LOGIN", false), ("LOGIN", true), ("PLAIN", false), ("PLAIN", true)] {
        let mut h = Harness::new(Role::Mx, "127.0.0.1", true);
        h.greet();
        assert!(h.send(&format!("AUTH {mechanism}\r\n")).starts_with("334"));
        let out = h.send_with(line.as_bytes(), bytewise, true);
        assert_eq!(codes(&out), ["500"], "{mechanism} bytewise={bytewise}: {out}");
        assert!(out.contains("5.5.2 Line too long"), "{out}");
        assert_eq!(h.session.reverse_path(), None, "no transaction was opened");
        assert!(h.send("NOOP\r\n").starts_with("250"), "back to commands");
    }
}

/// A UTF-8 EHLO name must not make a 7-bit message 8-bit through our
/// Received header (a next hop without 8BITMIME would refuse it).
#[test]
fn a_utf8_ehlo_name_keeps_a_7bit_message_7bit() {
    for (params, want) in [("", "from xn--e1afmkfd.test "), (" SMTPUTF8", "from пример.test ")] {
        let mut h = Harness::mx();
        h.send("");
        h.send("EHLO пример.test\r\n");
        h.send(&format!("MAIL FROM:<a@b.test>{params}\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"));
        h.session.handle_input(b"Subject: plain\r\n\r\nascii\r\n.\r\n", h.now);
        let body = String::from_utf8(h.session.message().expect("message").body.clone()).unwrap();
        assert!(body.starts_with("Received: ") && body.contains(want), "{params:?}: {body}");
        assert_eq!(body.is_ascii(), params.is_empty(), "{body}");
    }
}

/// BINARYMIME is not advertised, so not accepted, with DATA or BDAT.
#[test]
fn binarymime_is_refused_at_mail() {
    let mut h = Harness::mx();
    h.greet();
    assert!(!h.send("EHLO c.test\r\n").contains("BINARYMIME"));
    for verb in ["DATA\r\n", "BDAT 5 LAST\r\nab\ncd"] {
        let out = h
            .send(&format!("MAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\n{verb}"));
        assert_eq!(codes(&out), ["555", "503", "503"], "{verb:?}: {out}");
        assert!(out.starts_with("555 5.5.4 BODY=BINARYMIME is not supported\r\n"), "{out}");
    }
    assert!(h.send("MAIL FROM:<a@b.test> BODY=8BITMIME\r\n").starts_with("250"));
}

#[test]
fn auth_refused_in_clear_off_loopback() {
    let mut h = Harness::mx();
    h.greet();
    assert!(h.send("AUTH PLAIN AGFsaWNlAHg=\r\n").starts_with("538 5.7.11"));
}

#[test]
fn timeouts() {
    let mut h = Harness::mx();
    h.greet();
    h.session.handle_timeout(h.now);
    assert_eq!(h.session.poll_event(), None, "not yet");
    let deadline = h.session.poll_timeout();
    assert_eq!(deadline, h.now.instant + Duration::from_secs(300));
    h.now.instant = deadline;
    h.session.handle_timeout(h.now);
    assert!(h.send("").starts_with("421 4.4.2"));
    assert_eq!(h.session.poll_event(), Some(Event::Close));
}

#[test]
fn data_deadline_moves_with_progress() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    assert_eq!(h.session.poll_timeout(), h.now.instant + Duration::from_secs(180));
    h.now.instant += Duration::from_secs(100);
    h.send("more\r\n");
    assert_eq!(h.session.poll_timeout(), h.now.instant + Duration::from_secs(180));
}

#[test]
fn shutdown_when_idle_and_after_transaction() {
    let mut h = Harness::mx();
    h.greet();
    h.session.handle_shutdown();
    assert!(h.send("").starts_with("421 4.3.2"));
    assert_eq!(h.session.poll_event(), Some(Event::Close));

    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    h.session.handle_shutdown();
    assert_eq!(h.session.poll_event(), None, "mid-transaction: let it finish");
    let out = h.send("x\r\n.\r\n");
    assert_eq!(codes(&out), ["250", "421"]);
}

#[test]
fn http_and_garbage_are_refused() {
    let mut h = Harness::mx();
    h.send("");
    assert!(h.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("554 5.7.0"));
    assert_eq!(h.session.poll_event(), Some(Event::Close));

    let mut h = Harness::mx();
    h.send("");
    let out = h.send(&"\u{1}\u{2}garbage\r\n".repeat(20));
    assert!(out.ends_with("421 4.7.0 Too many errors, closing connection\r\n"), "{out}");
    assert_eq!(h.session.poll_event(), Some(Event::Close));
    assert_eq!(h.send("NOOP\r\n"), "", "nothing is read after close");
}

#[test]
fn ehlo_resets_transaction() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\n");
    h.send("EHLO again\r\n");
    assert!(h.send("RCPT TO:<alice@example.test>\r\n").starts_with("503 5.5.1 Need MAIL"));
    assert!(h.send("EHLO bad<name>\r\n").starts_with("501"));
}

#[test]
fn every_reply_has_an_enhanced_code() {
    let mut h = Harness::new(Role::Mx, "127.0.0.1", true);
    let script = "EHLO c\r\nHELO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<zz@example.test>\r\n\
DATA\r\nx\r\n.\r\nBDAT 1 LAST\r\nxRSET\r\nNOOP\r\nVRFY a\r\nEXPN a\r\nHELP\r\nBOGUS\r\nMAIL\r\nDATA x\r\nSTARTTLS x\r\nAUTH X\r\nQUIT\r\n";
    let out = h.send(script);
    for line in out.lines() {
        let code = &line[..3];
        if line.starts_with("220 mx.test") || line.as_bytes()[3] == b'-' || code.starts_with('3') {
            continue;
        }
        // EHLO's last line is an extension keyword.
        if line.starts_with("250 AUTH") {
            continue;
        }
        let status = line[4..].split(' ').next().unwrap();
        let parts: Vec<_> = status.split('.').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[0], &code[..1], "class matches: {line}");
    }
}

#[test]
fn zero_length_refused_bdat_does_not_stall_pipelined_input() {
    // Found by the session fuzzer: the session stopped consuming after a
    // refused `BDAT 0`, so pipelined commands waited for the timeout.
    let mut h = Harness::mx();
    h.greet();
    let input = b"BDAT 0\r\nNOOP\r\nNOOP\r\n";
    assert_eq!(h.session.handle_input(input, h.now), input.len(), "all input consumed in one call");
    let out = h.send("");
    assert_eq!(codes(&out), ["503", "250", "250"]);
}

#[test]
fn memory_pressure_drops_content_and_answers_452() {
    let mut h = Harness::mx();
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    h.send("some content\r\n");
    assert!(h.session.content_memory() > 0);
    h.session.handle_memory_pressure();
    assert_eq!(h.session.content_memory(), 0, "memory released");
    h.send("more content that is not kept\r\n");
    assert_eq!(h.session.content_memory(), 0);
    assert_eq!(h.send(".\r\n"), "452 4.3.1 Insufficient system storage, try again later\r\n");
    // Between BDAT chunks too.
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 3\r\nabc");
    h.session.handle_memory_pressure();
    assert!(h.send("BDAT 2 LAST\r\n\r\n").starts_with("452 4.3.1"));
    // And the session goes on.
    assert!(h.send("NOOP\r\n").starts_with("250"));
}

/// A transaction that ends without a stored message (refused content,
/// RSET or EHLO after BDAT chunks) gives back the memory of its content.
#[test]
fn ended_transactions_release_their_content() {
    let mut cfg = config(Role::Mx);
    cfg.max_message_size = 1 << 20;
    let big = "x".repeat(200_000);
    let bdat = format!("BDAT {}\r\n{big}", big.len());
    let cases: [(String, &str, &str); 5] = [
        (format!("DATA\r\n{big}\nbare\r\n"), ".\r\n", "550"),
        (format!("DATA\r\n{big}{big}{big}{big}{big}{big}\r\n"), ".\r\n", "552"),
        (bdat.clone(), "RSET\r\n", "250"),
        (bdat.clone(), "EHLO again.test\r\n", "250"),
        (bdat, "BDAT 1 LAST\r\n\n", "550"),
    ];
    for (content, end, code) in cases {
        let mut h = Harness::with_config(cfg.clone(), "192.0.2.1", false);
        h.greet();
        h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\n");
        h.send(&content);
        let held = h.session.content_memory();
        assert!(held >= 200_000, "{end:?}: content held while receiving ({held})");
        let out = h.send(end);
        assert!(codes(&out).last() == Some(&code), "{end:?}: {out}");
        assert_eq!(h.session.content_memory(), 0, "{end:?} ({code}): content released");
    }
}

#[test]
fn mail_loops_are_refused_at_end_of_data() {
    let mut cfg = config(Role::Mx);
    cfg.max_message_size = 100_000;
    let mut h = Harness::with_config(cfg, "192.0.2.1", false);
    h.greet();
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    // 100 Received headers plus ours is 101.
    let loop_headers = "Received: from a by b\r\n".repeat(100);
    assert_eq!(
        h.send(&format!("{loop_headers}Subject: x\r\n\r\nbody\r\n.\r\n")),
        "554 5.4.6 Too many hops (mail loop?)\r\n"
    );
    h.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    let fine = "Received: from a by b\r\n".repeat(99);
    let body_has_more = "Received: in the body does not count\r\n".repeat(10);
    let out = h.send(&format!("{fine}Subject: x\r\n\r\n{body_has_more}.\r\n"));
    assert!(out.starts_with("250"), "{out}");
}

#[test]
fn declared_size_reserves_the_content_buffer_within_bounds() {
    let mut cfg = config(Role::Mx);
    cfg.max_message_size = 10 << 20;
    let mut h = Harness::with_config(cfg, "192.0.2.1", false);
    h.greet();
    assert!(h.send("MAIL FROM:<a@b.test> SIZE=100000\r\nRCPT TO:<alice@example.test>\r\n").contains("250"));
    assert!(h.send("DATA\r\n").starts_with("354"));
    assert!(h.session.body.capacity() >= 100_000, "reserved {}", h.session.body.capacity());
    assert!(h.send(".\r\n").starts_with("250"));
    // A declared size far beyond what is typical reserves only the bound.
    assert!(h.send("MAIL FROM:<a@b.test> SIZE=9000000\r\nRCPT TO:<alice@example.test>\r\n").contains("250"));
    assert!(h.send("DATA\r\n").starts_with("354"));
    let cap = h.session.body.capacity();
    assert!((256 * 1024..512 * 1024).contains(&cap), "reserved {cap}");
}

/// X-Tenant and X-Campaign from our clients go into the envelope and out of
/// the message; an authenticated user's configured tenant wins; a
/// stranger's headers are left alone.
#[test]
fn tenant_and_campaign_fields_are_ours_to_take() {
    let content = b"X-Tenant: acme\r\nX-Campaign: spring\r\nSubject: s\r\n\r\nbody\r\n.\r\n";
    let deliver = |h: &mut Harness| {
        assert!(h.send("MAIL FROM:<s@sender.test>\r\n").starts_with("250"));
        assert!(h.send("RCPT TO:<alice@example.test>\r\n").starts_with("250"));
        assert!(h.send("DATA\r\n").starts_with("354"));
        h.session.handle_input(content, h.now);
        let msg = h.session.message().expect("a message to store");
        let body = String::from_utf8(msg.body.clone()).unwrap();
        (msg.envelope.tenant.clone(), msg.envelope.campaign.clone(), body)
    };
    let mut ours = Harness::new(Role::Mx, "127.0.0.1", true);
    ours.greet();
    let (tenant, campaign, body) = deliver(&mut ours);
    assert_eq!((tenant.as_deref(), campaign.as_deref()), (Some("acme"), Some("spring")));
    assert!(
        !body.contains("X-Tenant") && !body.contains("X-Campaign") && body.contains("Subject: s\r\n"),
        "{body}"
    );

    let mut stranger = Harness::mx();
    stranger.greet();
    let (tenant, campaign, body) = deliver(&mut stranger);
    assert_eq!((tenant, campaign), (None, None));
    assert!(body.contains("X-Tenant: acme\r\nX-Campaign: spring\r\n"), "{body}");

    let mut cfg = config(Role::Mx);
    cfg.policy = Arc::new(
        Policy::new(
            &["example.test".into()],
            &[],
            &[],
            [("alice@example.test".to_owned(), "hash".to_owned())],
        )
        .with_tenants([("Alice@Example.test".to_owned(), "bigco".to_owned())]),
    );
    let mut user = Harness::with_config(cfg, "127.0.0.1", false);
    user.greet();
    user.send("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n");
    assert_eq!(user.session.poll_event(), Some(Event::Authenticate));
    user.session.handle_auth_result(true, user.now);
    assert!(user.send("").starts_with("235"));
    let (tenant, campaign, body) = deliver(&mut user);
    assert_eq!((tenant.as_deref(), campaign.as_deref()), (Some("bigco"), Some("spring")));
    assert!(!body.contains("X-Tenant"), "{body}");
}

/// A suppression store in memory, for the session alone.
#[derive(Debug, Default)]
struct MemStore(std::sync::Mutex<crate::suppress::List>);

impl crate::suppress::Store for MemStore {
    fn check(&self, address: &str, tenant: Option<&str>) -> Option<crate::suppress::Entry> {
        self.0.lock().unwrap().check(address, tenant)
    }
    fn add(
        &self,
        address: &str,
        tenant: Option<&str>,
        reason: crate::suppress::Reason,
        since: u64,
    ) -> Result<crate::events::log::Durable, String> {
        self.0.lock().unwrap().add(address, tenant, reason, since);
        Ok(crate::events::log::Durable::ready())
    }
    fn remove(&self, address: &str, tenant: Option<&str>) -> (bool, crate::events::log::Durable) {
        (self.0.lock().unwrap().remove(address, tenant), crate::events::log::Durable::ready())
    }
    fn list(&self, address: Option<&str>, limit: usize) -> Vec<crate::suppress::Entry> {
        self.0.lock().unwrap().list(address, limit)
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Our senders (relay networks, AUTH) get 550 5.7.1 for a suppressed
/// address, without it counting as a client error, and the shell hears of
/// it; strangers mailing our own domains are not held to the list.
#[test]
fn suppressed_recipients_are_refused_for_our_senders_only() {
    use crate::suppress::{Reason, Store};
    let store = Arc::new(MemStore::default());
    store.add("gone@relay.test", None, Reason::Unsubscribe, 1).unwrap();
    store.add("alice@example.test", None, Reason::Manual, 1).unwrap();
    let mut c = config(Role::Mx);
    c.suppression = Some(store.clone());
    c.max_errors = 1;
    let mut h = Harness::with_config(c.clone(), "10.0.0.1", true);
    h.greet();
    h.send("MAIL FROM:<s@x.test>\r\n");
    let out = h.send("RCPT TO:<Gone@Relay.test>\r\nRCPT TO:<gone@relay.test>\r\nRCPT TO:<ok@relay.test>\r\n");
    assert_eq!(codes(&out), ["550", "550", "250"], "{out}");
    assert!(out.starts_with("550 5.7.1 "), "{out}");
    let s = h.session.take_suppressed();
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].sender.as_str(), s[0].recipient.as_str()), ("s@x.test", "Gone@Relay.test"));
    assert_eq!(s[0].reason, "unsubscribe");
    assert!(h.session.take_suppressed().is_empty());
    assert_eq!(h.session.take_refusals(), (0, 2));
    // A stranger sending to our own domain: not our sender, not suppressed.
    let mut h = Harness::with_config(c, "192.0.2.9", false);
    h.greet();
    h.send("MAIL FROM:<s@x.test>\r\n");
    assert_eq!(codes(&h.send("RCPT TO:<alice@example.test>\r\n")), ["250"]);
    assert!(h.session.take_suppressed().is_empty());
}

/// REQUIRETLS (RFC 8689): advertised on TLS sessions only, refused without
/// TLS (5.7.10), and kept in the envelope when taken.
#[test]
fn requiretls_only_over_tls_and_into_the_envelope() {
    let mut h = Harness::mx();
    h.greet();
    assert!(!h.send("EHLO c\r\n").contains("REQUIRETLS"));
    assert!(h.send("MAIL FROM:<a@b.test> REQUIRETLS\r\n").starts_with("530 5.7.10 "));
    assert!(h.send("MAIL FROM:<a@b.test> REQUIRETLS=YES\r\n").starts_with("501 5.5.4"));
    h.send("STARTTLS\r\n");
    assert_eq!(h.session.poll_event(), Some(Event::StartTls));
    let info = TlsInfo { version: "TLSv1_3".into(), cipher: "TLS13_AES_128_GCM_SHA256".into() };
    h.session.handle_tls_established(info, h.now);
    let ehlo = h.send("EHLO c\r\n");
    assert!(ehlo.contains("250-REQUIRETLS\r\n") || ehlo.contains("250 REQUIRETLS\r\n"), "{ehlo}");
    for (params, want) in [(" REQUIRETLS", true), ("", false)] {
        assert!(h.send(&format!("MAIL FROM:<a@b.test>{params}\r\n")).starts_with("250"), "{params}");
        h.send("RCPT TO:<alice@example.test>\r\nDATA\r\n");
        h.session.handle_input(b"x\r\n.\r\n", h.now);
        assert_eq!(h.session.message().unwrap().envelope.requiretls, want, "{params}");
        assert_eq!(h.session.poll_event(), Some(Event::Store));
        h.session.handle_stored(Ok(()), h.now);
        assert!(h.send("").starts_with("250"));
    }
}
