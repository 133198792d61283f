//! Client tests: against our own server session (no sockets), and against
//! scripted replies for every branch.
#![allow(clippy::disallowed_methods)] // reason: a real Instant as the simulated clock's origin

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::envelope::{QueueId, QueueIdGen};
use crate::policy::Policy;
use crate::smtp::session::{self, ConnInfo, Now, Role, Session, SessionConfig};

fn config() -> ClientConfig {
    ClientConfig {
        helo: "out.test".into(),
        starttls: true,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(120),
        final_timeout: Duration::from_secs(600),
        lmtp: false,
    }
}

fn outgoing(rcpts: &[&str]) -> Outgoing {
    Outgoing {
        reverse_path: "s@x.test".into(),
        recipients: rcpts
            .iter()
            .map(|a| OutRecipient { address: (*a).to_owned(), notify: Notify::default(), orcpt: None })
            .collect(),
        size: 20,
        body_type: BodyType::SevenBit,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        requiretls: false,
    }
}

/// Runs our client against our server session until the message is done.
#[test]
fn client_and_server_cores_talk_without_sockets() {
    let t0 = Instant::now();
    let now = Now { instant: t0, unix_secs: 1_800_000_000 };
    let server_config = Arc::new(SessionConfig {
        hostname: crate::smtp::address::Domain::parse_host_name("mx.test").unwrap(),
        role: Role::Mx,
        starttls: false,
        max_message_size: 10_000,
        max_recipients: 10,
        max_line: 2048,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(300),
        max_errors: 10,
        policy: Arc::new(Policy::new(&["example.test".into()], &[], &[], [])),
        suppression: None,
    });
    let ids = Rc::new(RefCell::new(QueueIdGen::new(0, QueueId(0))));
    let conn = ConnInfo { peer: "192.0.2.7".parse().unwrap(), trusted: false, tls: None };
    let mut server = Session::new(server_config, conn, ids, now);
    let mut client = Client::new(config(), t0);
    let body = b"Subject: hi\r\n\r\n.starts with a dot\r\n".to_vec();
    let mut stored = None;
    let mut done = None;
    let mut to_client: Vec<u8> = Vec::new();
    let mut to_server: Vec<u8> = Vec::new();
    for _ in 0..100 {
        to_client.extend_from_slice(server.output());
        server.clear_output();
        let n = client.handle_input(&to_client, t0);
        to_client.drain(..n);
        match client.poll_event() {
            Some(Event::Ready) => {
                client.send_message(outgoing(&["a@example.test", "nobody@elsewhere.test"]), t0)
            }
            Some(Event::SendBody) => {
                to_server.extend_from_slice(client.output());
                client.output.clear();
                body::encode(&body, &mut to_server);
                client.handle_body_sent(t0);
            }
            Some(Event::MessageDone(r)) => {
                done = Some(r);
                client.quit(t0);
            }
            Some(Event::Closed) => break,
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
        to_server.extend_from_slice(client.output());
        client.output.clear();
        let n = server.handle_input(&to_server, now);
        to_server.drain(..n);
        if server.poll_event() == Some(session::Event::Store) {
            stored = server.message().map(|m| m.body.clone());
            server.handle_stored(Ok(()), now);
        }
    }
    let results = done.expect("message finished");
    assert_eq!(results[0].reply.code, 250, "{results:?}");
    assert_eq!(results[1].reply.code, 554, "relay refused for the second recipient");
    let stored = String::from_utf8(stored.expect("server stored it")).unwrap();
    assert!(
        stored.ends_with("Subject: hi\r\n\r\n.starts with a dot\r\n"),
        "dot stuffing round trip: {stored}"
    );
    assert!(client.capabilities().pipelining);
}

/// Drives a client with scripted server replies; returns (commands, events).
struct Script {
    client: Client,
    now: Instant,
}

impl Script {
    fn new(starttls: bool) -> Script {
        let t = Instant::now();
        let mut cfg = config();
        cfg.starttls = starttls;
        Script { client: Client::new(cfg, t), now: t }
    }
    fn reply(&mut self, bytes: &str) -> Option<Event> {
        let n = self.client.handle_input(bytes.as_bytes(), self.now);
        assert_eq!(n, bytes.len(), "consumed all of {bytes:?}");
        self.client.poll_event()
    }
    fn sent(&mut self) -> String {
        let s = String::from_utf8(self.client.output().to_vec()).unwrap();
        self.client.output.clear();
        s
    }
}

const EHLO_FULL: &str =
    "250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 DSN\r\n";

#[test]
fn pipelined_transaction_with_mixed_recipients() {
    let mut s = Script::new(false);
    assert_eq!(s.reply("220 mx ESMTP\r\n"), None);
    assert_eq!(s.sent(), "EHLO out.test\r\n");
    assert_eq!(s.reply(EHLO_FULL), Some(Event::Ready));
    let mut m = outgoing(&["a@x.test", "b@x.test"]);
    m.recipients[0].notify = Notify::parse("SUCCESS,FAILURE").unwrap();
    m.recipients[0].orcpt = Some("rfc822;a@x.test".into());
    m.ret = Some(Ret::Headers);
    m.envid = Some("E1".into());
    s.client.send_message(m, s.now);
    assert_eq!(
        s.sent(),
        "MAIL FROM:<s@x.test> SIZE=20 RET=HDRS ENVID=E1\r\nRCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x.test\r\n\
RCPT TO:<b@x.test>\r\nDATA\r\n",
        "all in one write"
    );
    assert_eq!(s.reply("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n"), Some(Event::SendBody));
    s.client.handle_body_sent(s.now);
    let Some(Event::MessageDone(r)) = s.reply("250 2.0.0 queued\r\n") else { panic!() };
    assert_eq!((r[0].reply.code, r[1].reply.code), (250, 550));
    assert_eq!(r[1].reply.enhanced(), Some("5.1.1"));
    assert_eq!(s.sent(), "", "no RSET after a clean transaction");
}

/// REQUIRETLS: sent as a MAIL parameter to a server that advertises it;
/// a server that does not gets nothing, and the message fails with 5.7.10.
#[test]
fn requiretls_goes_only_to_a_server_that_advertises_it() {
    for (ehlo, taken) in [(EHLO_FULL, false), ("250-mx\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n", true)] {
        let mut s = Script::new(false);
        s.reply("220 mx\r\n");
        s.reply(ehlo);
        s.sent();
        let mut m = outgoing(&["a@x.test"]);
        m.requiretls = true;
        s.client.send_message(m, s.now);
        if taken {
            assert_eq!(s.sent(), "MAIL FROM:<s@x.test> REQUIRETLS\r\nRCPT TO:<a@x.test>\r\nDATA\r\n");
        } else {
            let Some(Event::MessageDone(r)) = s.client.poll_event() else { panic!() };
            assert_eq!((r[0].reply.code, r[0].reply.enhanced()), (554, Some("5.7.10")));
            assert_eq!(s.sent(), "", "nothing sent");
        }
    }
}

#[test]
fn all_recipients_refused_then_rset_and_next_message() {
    let mut s = Script::new(false);
    s.reply("220 mx\r\n");
    s.reply(EHLO_FULL);
    s.sent();
    s.client.send_message(outgoing(&["a@x.test"]), s.now);
    s.sent();
    let Some(Event::MessageDone(r)) =
        s.reply("250 ok\r\n450 4.2.0 try later\r\n554 5.5.1 no valid recipients\r\n")
    else {
        panic!()
    };
    assert_eq!(r[0].reply.code, 450, "the RCPT reply decides");
    assert_eq!(s.sent(), "RSET\r\n");
    s.client.send_message(outgoing(&["c@x.test"]), s.now);
    assert!(s.sent().starts_with("MAIL FROM"), "pipelined after RSET");
    assert_eq!(s.reply("250 reset\r\n"), None);
}

#[test]
fn helo_fallback_and_no_pipelining() {
    let mut s = Script::new(false);
    s.reply("220 old server\r\n");
    s.sent();
    assert_eq!(s.reply("500 what is EHLO\r\n"), None);
    assert_eq!(s.sent(), "HELO out.test\r\n");
    assert_eq!(s.reply("250 hello\r\n"), Some(Event::Ready));
    s.client.send_message(outgoing(&["a@x.test", "b@x.test"]), s.now);
    assert_eq!(s.sent(), "MAIL FROM:<s@x.test>\r\n", "no parameters, one command at a time");
    s.reply("250 ok\r\n");
    assert_eq!(s.sent(), "RCPT TO:<a@x.test>\r\n");
    s.reply("550 no\r\n");
    assert_eq!(s.sent(), "RCPT TO:<b@x.test>\r\n");
    s.reply("250 ok\r\n");
    assert_eq!(s.sent(), "DATA\r\n");
    assert_eq!(s.reply("354 go\r\n"), Some(Event::SendBody));
}

#[test]
fn no_data_when_every_recipient_failed_without_pipelining() {
    let mut s = Script::new(false);
    s.reply("220 x\r\n");
    s.reply("250 x\r\n");
    s.sent();
    s.client.send_message(outgoing(&["a@x.test"]), s.now);
    s.sent();
    s.reply("250 ok\r\n");
    s.sent();
    let Some(Event::MessageDone(r)) = s.reply("550 5.1.1 unknown\r\n") else { panic!() };
    assert_eq!(r[0].reply.code, 550);
    assert_eq!(s.sent(), "RSET\r\n", "no DATA");
}

#[test]
fn refuses_what_the_server_cannot_take() {
    let mut s = Script::new(false);
    s.reply("220 x\r\n");
    s.reply("250-x\r\n250 SIZE 10\r\n");
    s.sent();
    let mut m = outgoing(&["a@x.test"]);
    m.eight_bit = true;
    s.client.send_message(m, s.now);
    let Some(Event::MessageDone(r)) = s.client.poll_event() else { panic!() };
    assert_eq!(r[0].reply.enhanced(), Some("5.6.3"));
    let mut m = outgoing(&["a@x.test"]);
    m.smtputf8 = true;
    s.client.send_message(m, s.now);
    let Some(Event::MessageDone(r)) = s.client.poll_event() else { panic!() };
    assert_eq!(r[0].reply.enhanced(), Some("5.6.7"));
    let m = outgoing(&["a@x.test"]); // 20 bytes > SIZE 10
    s.client.send_message(m, s.now);
    let Some(Event::MessageDone(r)) = s.client.poll_event() else { panic!() };
    assert_eq!(r[0].reply.enhanced(), Some("5.3.4"));
    assert_eq!(s.sent(), "", "nothing was sent for refused messages");
}

#[test]
fn starttls_then_ehlo_again() {
    let mut s = Script::new(true);
    s.reply("220 x\r\n");
    s.sent();
    assert_eq!(s.reply("250-x\r\n250-PIPELINING\r\n250 STARTTLS\r\n"), None);
    assert_eq!(s.sent(), "STARTTLS\r\n");
    assert_eq!(s.reply("220 go ahead\r\n"), Some(Event::StartTls));
    s.client.handle_tls_established(s.now);
    assert!(s.client.is_tls());
    assert_eq!(s.sent(), "EHLO out.test\r\n");
    assert_eq!(s.reply("250-x\r\n250 8BITMIME\r\n"), Some(Event::Ready));
    assert!(!s.client.capabilities().pipelining, "capabilities from the TLS EHLO only");
}

#[test]
fn starttls_refused_continues_in_plain_text() {
    let mut s = Script::new(true);
    s.reply("220 x\r\n");
    s.reply("250-x\r\n250 STARTTLS\r\n");
    s.sent();
    assert_eq!(s.reply("454 4.7.0 TLS not available\r\n"), Some(Event::Ready));
}

#[test]
fn failures_end_the_connection() {
    let mut s = Script::new(false);
    assert!(
        matches!(s.reply("554 5.7.1 go away\r\n"), Some(Event::Failed(Failure::Reply(r))) if r.code == 554)
    );
    let mut s = Script::new(false);
    s.reply("220 x\r\n");
    assert!(matches!(s.reply("421 4.3.2 shutting down\r\n"), Some(Event::Failed(_))));
    let mut s = Script::new(false);
    assert!(matches!(s.reply("garbage\r\n"), Some(Event::Failed(Failure::Protocol(_)))));
    let mut s = Script::new(false);
    s.reply("220 x\r\n");
    s.client.handle_eof();
    assert_eq!(s.client.poll_event(), Some(Event::Failed(Failure::Closed)));
}

#[test]
fn endless_multiline_reply_is_cut_off() {
    let mut s = Script::new(false);
    let flood = "220-more\r\n".repeat(1000);
    let n = s.client.handle_input(flood.as_bytes(), s.now);
    assert_eq!(n, flood.len());
    assert_eq!(s.client.poll_event(), Some(Event::Failed(Failure::Protocol(ReplyError::TooManyLines))));
}

#[test]
fn timeouts() {
    let mut s = Script::new(false);
    let deadline = s.client.poll_timeout();
    assert_eq!(deadline, s.now + Duration::from_secs(300));
    s.client.handle_timeout(s.now);
    assert_eq!(s.client.poll_event(), None);
    s.client.handle_timeout(deadline);
    assert_eq!(s.client.poll_event(), Some(Event::Failed(Failure::Timeout("the greeting"))));
}

#[test]
fn lmtp_has_a_reply_per_recipient_after_the_content() {
    let t = Instant::now();
    let mut s = Script { client: Client::new(ClientConfig { lmtp: true, ..config() }, t), now: t };
    s.reply("220 lmtp ready\r\n");
    assert_eq!(s.sent(), "LHLO out.test\r\n");
    assert_eq!(s.reply("250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"), Some(Event::Ready));
    s.client.send_message(outgoing(&["a@x.test", "b@x.test", "c@x.test"]), s.now);
    assert!(s.sent().ends_with("DATA\r\n"));
    assert_eq!(
        s.reply("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n"),
        Some(Event::SendBody)
    );
    s.client.handle_body_sent(s.now);
    // One reply per accepted recipient (a, c), in RCPT order.
    assert_eq!(s.reply("250 2.0.0 a saved\r\n"), None);
    let Some(Event::MessageDone(r)) = s.reply("452 4.2.2 c over quota\r\n") else { panic!() };
    let codes: Vec<u16> = r.iter().map(|x| x.reply.code).collect();
    assert_eq!(codes, [250, 550, 452]);
    assert_eq!(r[2].reply.enhanced(), Some("4.2.2"));
    assert_eq!(s.sent(), "", "the transaction is over: no RSET");
    // The next message goes at once.
    s.client.send_message(outgoing(&["d@x.test"]), s.now);
    assert!(s.sent().starts_with("MAIL FROM:<s@x.test>"));
}

#[test]
fn lmtp_refusing_lhlo_ends_the_connection() {
    let t = Instant::now();
    let mut s = Script { client: Client::new(ClientConfig { lmtp: true, ..config() }, t), now: t };
    s.reply("220 lmtp\r\n");
    s.sent();
    assert!(matches!(s.reply("500 5.5.1 what\r\n"), Some(Event::Failed(Failure::Reply(_)))));
    assert_eq!(s.sent(), "", "no HELO in LMTP");
}
