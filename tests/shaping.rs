//! Shaping and automation against scripted receivers: a budget shared by
//! the domains one provider hosts (MX rollup through dnsmasq), its rate and
//! connection limit; a receiver that says "421 4.7.28 unusual rate" gets a
//! pause while other destinations keep flowing; replies that mean "no such
//! mailbox" bounce at once.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{free_port, wait_until, Dnsmasq, Receiver, Server};

fn send(srv: &Server, to: &str, n: usize) {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    for i in 0..n {
        c.send_message("s@x.test", &[to], &format!("Subject: {i}\r\n\r\nbody\r\n"));
    }
    c.cmd("QUIT", "221");
}

fn refused(rx: &Receiver) -> u32 {
    std::fs::read_to_string(rx.dir.join("refused")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// A receiver answering RCPT TO per `replies` (lines `ADDR|REPLY`), its
/// port, and the directory the server's files will live in.
fn mapped_receiver(replies: &str) -> (Receiver, u16, std::path::PathBuf) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let map = dir.join("replies");
    std::fs::write(&map, replies).unwrap();
    let rx = Receiver::start("127.0.0.1", port, &["--mode", "rcpt-map", "--arg", map.to_str().unwrap()]);
    (rx, port, dir)
}

/// One message from a relay client to `to`, with `headers` on top.
fn send_with(srv: &Server, to: &str, headers: &str) {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.send_message("s@x.test", &[to], &format!("{headers}Subject: s\r\n\r\nbody\r\n"));
    c.cmd("QUIT", "221");
}

/// Two domains on different MX hosts of one provider share one budget
/// (`mx` glob): one connection at a time and 5 messages a second between
/// them, where without the rule each would have its own.
#[test]
fn mx_rollup_shares_one_budget() {
    let dns = Dnsmasq::start();
    let port = free_port();
    let rx = Receiver::start("127.0.0.2", port, &[]);
    let srv = Server::start(&format!(
        "[[shaping]]\nmx = \"*.provider.test\"\nconnections = 1\nrate = \"5/s\"\n\
         [delivery]\nport = {port}\ndns_servers = [\"127.0.0.1:{}\"]\nretry = [\"1s\"]\n",
        dns.port
    ));
    let started = SystemTime::now();
    let (a, b) = (srv.addr(), srv.addr());
    let ta = std::thread::spawn(move || {
        let mut c = common::Client::connect(a);
        c.expect("220");
        c.cmd("EHLO c.test", "250");
        for i in 0..5 {
            c.send_message("s@x.test", &["r@hosted-a.test"], &format!("Subject: a{i}\r\n\r\nx\r\n"));
        }
    });
    let tb = std::thread::spawn(move || {
        let mut c = common::Client::connect(b);
        c.expect("220");
        c.cmd("EHLO c.test", "250");
        for i in 0..5 {
            c.send_message("s@x.test", &["r@hosted-b.test"], &format!("Subject: b{i}\r\n\r\nx\r\n"));
        }
    });
    ta.join().unwrap();
    tb.join().unwrap();
    let got = rx.wait_for(10, Duration::from_secs(20));
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().any(|m| m.contains("hosted-a.test")) && got.iter().any(|m| m.contains("hosted-b.test"))
    );
    assert_eq!(rx.connections().1, 1, "one connection at a time across both domains");
    // 10 messages at 5/s: the last starts 1.8 s after the first at the
    // earliest.
    let arrivals = rx.arrivals();
    let spread = arrivals[9].duration_since(arrivals[0]).unwrap();
    assert!(spread >= Duration::from_millis(1700), "{spread:?}");
    assert!(arrivals[0].duration_since(started).unwrap() < Duration::from_secs(5));
    let metrics = srv.http("GET", "/metrics").1;
    assert!(
        metrics.contains("ringpost_egress_recipients_total{source=\"default\",destination=\"mx:*.provider.test\",outcome=\"delivered\"} 10"),
        "{metrics}"
    );
}

/// "421 4.7.28 unusual rate" suspends that budget: no connection to it
/// until the suspension ends, its mail waits without being retried (and
/// without aging faster), and another destination keeps flowing. Then it
/// all goes out.
#[test]
fn a_slow_down_reply_suspends_one_destination_only() {
    let port_y = free_port();
    let port_z = free_port();
    let y = Receiver::start(
        "127.0.0.1",
        port_y,
        &["--mode", "rcpt-reply", "--arg", "1|421 4.7.28 unusual rate of mail"],
    );
    let z = Receiver::start("127.0.0.1", port_z, &[]);
    let srv = Server::start(&format!(
        "[[shaping]]\ndomain = \"y.test\"\n\
         [[shaping.automation]]\nreply = '4\\.7\\.28'\naction = \"suspend\"\nduration = \"4s\"\n\
         [[route]]\ndomain = \"y.test\"\nto = [\"127.0.0.1:{port_y}\"]\n\
         [[route]]\ndomain = \"z.test\"\nto = [\"127.0.0.1:{port_z}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    ));
    send(&srv, "r@y.test", 1);
    assert!(wait_until(Duration::from_secs(10), || refused(&y) == 1));
    // The receiver counts the 421 when it sends it; ringpost reads it a
    // moment later.
    assert!(wait_until(Duration::from_secs(5), || srv.queue()["suspensions"][0]["destination"]
        != serde_json::Value::Null));
    let suspended_at = Instant::now();
    let queue = srv.queue();
    let s = &queue["suspensions"][0];
    assert_eq!(s["destination"], "domain:y.test", "{queue}");
    assert!(s["reason"].as_str().unwrap().contains("4.7.28"), "{queue}");
    // More mail for both while y.test is suspended.
    send(&srv, "r@y.test", 3);
    send(&srv, "r@z.test", 3);
    assert_eq!(z.wait_for(3, Duration::from_secs(3)).len(), 3, "z.test flows at full speed");
    assert!(suspended_at.elapsed() < Duration::from_secs(3));
    assert_eq!(y.connections().0, 1, "no connection to y.test while suspended");
    assert_eq!(y.messages().len(), 0);
    let got = y.wait_for(4, Duration::from_secs(15));
    assert_eq!(got.len(), 4);
    assert!(suspended_at.elapsed() >= Duration::from_millis(3500), "not before the suspension ended");
    assert_eq!(refused(&y), 1, "no attempt was wasted on the suspended destination");
    assert!(wait_until(Duration::from_secs(5), || srv.queued_messages() == 0));
    assert!(srv.http("GET", "/metrics").1.contains("ringpost_egress_suspended"));
}

/// A 4xx reply that automation calls final bounces the recipient at the
/// first attempt (its DSN goes to the sender), instead of retrying for days.
#[test]
fn bounce_actions_fail_recipients_at_once() {
    let port = free_port();
    let rx = Receiver::start(
        "127.0.0.1",
        port,
        &["--mode", "rcpt-reply", "--arg", "1|450 4.2.1 mailbox unavailable"],
    );
    let srv = Server::start(&format!(
        "[[shaping]]\ndomain = \"y.test\"\n\
         [[shaping.automation]]\nreply = '(?i)mailbox unavailable'\naction = \"bounce\"\n\
         [[route]]\ndomain = \"y.test\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1h\"]\n"
    ));
    send(&srv, "r@y.test", 1);
    assert!(wait_until(Duration::from_secs(10), || srv.metric("ringpost_bounced_total") == 1.0));
    // The DSN is queued once the owner settles the attempt, just after the count.
    assert!(
        wait_until(Duration::from_secs(5), || srv.metric("ringpost_dsn_total") == 1.0),
        "the sender is told"
    );
    assert_eq!(rx.messages().len(), 0);
}

/// SIGHUP: a rule added by a reload paces the next messages.
#[test]
fn rules_follow_reloads() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let base = format!(
        "[[route]]\ndomain = \"y.test\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    );
    let srv = Server::start(&base);
    send(&srv, "r@y.test", 5);
    rx.wait_for(5, Duration::from_secs(10));
    let fast = rx.arrivals();
    assert!(fast[4].duration_since(fast[0]).unwrap() < Duration::from_millis(800), "unshaped: at once");
    srv.reload(&format!("[[shaping]]\ndomain = \"y.test\"\nrate = \"4/s\"\n{base}"), false);
    send(&srv, "r@y.test", 5);
    rx.wait_for(10, Duration::from_secs(10));
    let slow = rx.arrivals();
    let spread = slow[9].duration_since(slow[5]).unwrap();
    assert!(spread >= Duration::from_millis(900), "4 a second after the reload: {spread:?}");
}

/// "550 5.7.26 unauthenticated" to one of a tenant's messages stops that
/// tenant everywhere (scope = "tenant") and says why in /queue and
/// /metrics; other senders' mail to the same places keeps flowing.
#[test]
fn tenant_scoped_suspension_stops_that_tenant_only() {
    let (rx, port, dir) = mapped_receiver(
        "auth@g.test|550 5.7.26 This mail has been blocked because the sender is unauthenticated.\n",
    );
    let srv = Server::start_in(
        &dir,
        &format!(
            "[[shaping]]\ndomain = \"g.test\"\n\
             [[shaping.automation]]\nreply = '5\\.7\\.26'\naction = \"suspend\"\nduration = \"1h\"\nscope = \"tenant\"\n\
             [[tenant]]\nname = \"acme\"\n\
             [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
             [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
        ),
    );
    let send = |to: &str, headers: &str| send_with(&srv, to, headers);
    send("auth@g.test", "X-Tenant: acme\r\n");
    assert!(wait_until(Duration::from_secs(10), || srv
        .http("GET", "/metrics")
        .1
        .lines()
        .any(|l| l == "ringpost_tenant_suspended{tenant=\"acme\"} 1")));
    let q = srv.queue();
    assert_eq!(q["tenant_suspensions"][0]["tenant"], "acme", "{q}");
    assert!(q["tenant_suspensions"][0]["reason"].as_str().unwrap().contains("5.7.26"), "{q}");
    // acme's mail elsewhere waits; another sender's goes out.
    send("r@elsewhere.test", "X-Tenant: acme\r\n");
    send("r@elsewhere.test", "");
    let got = rx.wait_for(2, Duration::from_secs(10)); // the DSN for auth@, the other sender's message
    std::thread::sleep(Duration::from_millis(1500));
    let got_after = rx.messages();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got_after.len(), 2, "acme's message waits: {got_after:?}");
    assert!(got.iter().any(|m| m.contains("multipart/report")), "the 5xx bounced with a DSN");
    assert_eq!(srv.queued_messages(), 1);
    let q = srv.queue();
    let err = q["domains"].as_array().unwrap().iter().find(|d| d["domain"] == "elsewhere.test").unwrap()
        ["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("tenant acme is suspended"), "{err}");
}

/// What automation had in force survives kill -9 and a restart: the
/// suspended destination still gets no connection and the suspended
/// tenant's mail still waits, until their ends; /queue shows both again.
#[test]
fn automation_state_survives_a_restart() {
    let (rx, port, dir) = mapped_receiver(
        "auth@g.test|550 5.7.26 This mail has been blocked because the sender is unauthenticated.\n\
         busy@y.test|421 4.7.28 unusual rate of mail\n",
    );
    let config = format!(
        "[[shaping]]\ndomain = \"g.test\"\n\
         [[shaping.automation]]\nreply = '5\\.7\\.26'\naction = \"suspend\"\nduration = \"1h\"\nscope = \"tenant\"\n\
         [[shaping]]\ndomain = \"y.test\"\n\
         [[shaping.automation]]\nreply = '4\\.7\\.28'\naction = \"suspend\"\nduration = \"1h\"\n\
         [[tenant]]\nname = \"acme\"\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    );
    let send = send_with;
    let srv = Server::start_in(&dir, &config);
    send(&srv, "auth@g.test", "X-Tenant: acme\r\n");
    send(&srv, "busy@y.test", "");
    assert!(wait_until(Duration::from_secs(10), || {
        let q = srv.queue();
        q["tenant_suspensions"][0]["tenant"] == "acme"
            && q["suspensions"][0]["destination"] == "domain:y.test"
    }));
    // Saved within a second of the change.
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(
        dir.join("spool/automation.json")
    )
    .is_ok_and(|t| t.contains("acme") && t.contains("domain:y.test"))));
    srv.kill9();
    let connections = rx.connections().0;

    let srv = Server::start_in(&dir, &config);
    let q = srv.queue();
    assert_eq!(q["tenant_suspensions"][0]["tenant"], "acme", "{q}");
    assert!(q["tenant_suspensions"][0]["reason"].as_str().unwrap().contains("5.7.26"), "{q}");
    assert_eq!(q["suspensions"][0]["destination"], "domain:y.test", "{q}");
    assert!(q["suspensions"][0]["reason"].as_str().unwrap().contains("4.7.28"), "{q}");
    // Mail the suspensions hold waits; other mail goes.
    send(&srv, "r@elsewhere.test", "X-Tenant: acme\r\n");
    send(&srv, "other@y.test", "");
    send(&srv, "r@elsewhere.test", "");
    assert!(wait_until(Duration::from_secs(10), || rx
        .messages()
        .iter()
        .any(|m| m.contains("r@elsewhere.test") && !m.contains("X-Tenant"))));
    std::thread::sleep(Duration::from_millis(2500));
    let got = rx.messages();
    assert!(!got.iter().any(|m| m.contains("<other@y.test>")), "y.test is still suspended: {got:?}");
    assert_eq!(got.iter().filter(|m| m.contains("<r@elsewhere.test>")).count(), 1, "acme's waits: {got:?}");
    assert_eq!(rx.connections().0, connections + 1, "one connection, for the other sender's message only");
    // busy@y.test (retried after the restart? no: still suspended), other@y.test, acme's message.
    assert_eq!(srv.queued_messages(), 3);
}
