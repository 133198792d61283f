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

/// Mail waiting on a destination found down (`delivery::down`) is not
/// forgotten: when its domain is probed again, messages due a delay warning
/// are tried (all of them, not one probe), and their senders warned.
#[test]
fn mail_waiting_on_a_down_destination_still_gets_its_delay_warning() {
    let (dead, home) = (free_port(), free_port());
    let rx = Receiver::start("127.0.0.1", home, &[]);
    let srv = Server::start(&format!(
        "threads = 1\n[[route]]\ndomain = \"down.test\"\nto = [\"127.0.0.1:{dead}\"]\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{home}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1h\"]\ndelay_warning = \"1s\"\n\
         destination_backoff = \"4s\"\n"
    ));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    // The first finds the destination down (too young for a warning; its
    // retry is an hour away); the next three wait on it.
    for i in 0..4 {
        c.send_message(
            "alice@home.test",
            &[&format!("r{i}@down.test")],
            &format!("Subject: m{i}\r\n\r\nx\r\n"),
        );
        if i == 0 {
            assert!(
                common::wait_until(Duration::from_secs(5), || srv.metric("ringpost_deferred_total") == 1.0)
            );
        }
    }
    c.cmd("QUIT", "221");
    assert!(
        common::wait_until(Duration::from_secs(5), || srv.metric("ringpost_queue_parked_messages") == 3.0)
    );
    // When the backoff ends all three are past the warning's second: all
    // tried together (one probe per backoff would warn one every 4 s), all
    // warned.
    assert!(!rx.wait_for(1, Duration::from_secs(15)).is_empty());
    let got = rx.wait_for(3, Duration::from_secs(2));
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, warned) in (1..4).map(|i| (i, got.iter().any(|d| d.contains(&format!("<r{i}@down.test>"))))) {
        assert!(warned, "r{i}: {got:?}");
    }
    assert!(got.iter().all(|d| d.contains("Subject: Delayed Mail (still being retried)")), "{got:?}");
    assert_eq!(srv.metric("ringpost_queue_parked_messages"), 0.0);
    assert_eq!(srv.metric("ringpost_deferred_total"), 4.0);
    assert_eq!(srv.queued_messages(), 4);
}
