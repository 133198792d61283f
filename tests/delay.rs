//! `[delivery] delay_warning`: a sender whose message is still queued after
//! that long gets one `delayed` DSN (RFC 3464), for recipients that want it
//! (NOTIFY=DELAY, or no NOTIFY), not one per retry, and not after a restart.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::time::Duration;

use common::{free_port, Receiver, Server};

#[test]
fn one_delayed_dsn_per_message() {
    let (late, home) = (free_port(), free_port());
    // The recipients' server answers 451 to every RCPT; the senders' takes DSNs.
    let _late = Receiver::start("127.0.0.1", late, &["--mode", "always-451"]);
    let rx = Receiver::start("127.0.0.1", home, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let config = format!(
        "[[route]]\ndomain = \"late.test\"\nto = [\"127.0.0.1:{late}\"]\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{home}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\ndelay_warning = \"2s\"\n"
    );
    let srv = Server::start_in(&dir, &config);
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<alice@home.test> RET=FULL", "250");
    c.cmd("RCPT TO:<a@late.test> NOTIFY=DELAY,FAILURE", "250");
    c.cmd("RCPT TO:<b@late.test> NOTIFY=FAILURE", "250");
    c.cmd("RCPT TO:<c@late.test>", "250");
    c.cmd("DATA", "354");
    c.send_str("Subject: late\r\n\r\nthe body stays home\r\n.\r\n");
    c.expect("250");
    c.cmd("QUIT", "221");

    let got = rx.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1, "{got:?}");
    let dsn = &got[0];
    assert!(dsn.starts_with("X-Envelope: <> SIZE="), "{dsn}");
    assert!(dsn.contains("Subject: Delayed Mail (still being retried)"), "{dsn}");
    assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status"), "{dsn}");
    assert_eq!(dsn.matches("Action: delayed").count(), 2, "a and c (no NOTIFY), not b: {dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; a@late.test")
            && dsn.contains("Final-Recipient: rfc822; c@late.test")
    );
    assert!(!dsn.contains("Final-Recipient: rfc822; b@late.test"), "{dsn}");
    assert!(dsn.contains("Will-Retry-Until: "), "{dsn}");
    assert!(dsn.contains("Status: 4."), "{dsn}");
    // Headers only: the message is still on its way.
    assert!(
        dsn.contains("Content-Type: text/rfc822-headers") && !dsn.contains("the body stays home"),
        "{dsn}"
    );

    // More retries, and a restart: no second one.
    std::thread::sleep(Duration::from_secs(3));
    srv.stop();
    let srv = Server::start_in(&dir, &config);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.messages().len(), 1, "one delayed DSN per message");
    assert_eq!(srv.queued_messages(), 1);
}
