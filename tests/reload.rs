//! SIGHUP: every key docs/config.md marks *reload* takes effect for new
//! connections (and for delivery), and a file that does not load keeps the
//! configuration in force, which is checked by using it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::time::{Duration, Instant};

use common::{free_port, make_cert, read_events, wait_until, Client, Receiver, Server};

/// Greeting and EHLO; returns the EHLO reply.
fn hello(c: &mut Client) -> String {
    c.expect("220");
    c.cmd("EHLO c.test", "250")
}

#[test]
fn hostname() {
    let srv = Server::start("");
    assert_eq!(srv.client().reply(), "220 mx.test ESMTP\r\n");
    srv.reload("hostname = \"mx2.test\"\n", false);
    let mut c = srv.client();
    assert_eq!(c.reply(), "220 mx2.test ESMTP\r\n");
    assert!(c.cmd("EHLO c.test", "250").starts_with("250-mx2.test\r\n"));
    // <postmaster> is ours under the new name.
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<postmaster>", "250");
}

/// The certificate a TLS handshake with `addr` presents (PEM).
fn served_cert(addr: std::net::SocketAddr) -> String {
    let code = format!("import ssl; print(ssl.get_server_certificate(('{}', {})))", addr.ip(), addr.port());
    common::run(std::process::Command::new("python3").args(["-c", &code]))
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn tls_cert_and_key() {
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = make_cert(&dir);
    let tables = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\ntls = \"implicit\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let srv = Server::start_in(&dir, &tables(&cert, &key));
    let first = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(pem_body(&served_cert(srv.addr())), pem_body(&first));
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (cert2, key2) = make_cert(&other);
    srv.reload(&tables(&cert2, &key2), false);
    let second = std::fs::read_to_string(&cert2).unwrap();
    assert_ne!(pem_body(&first), pem_body(&second));
    assert_eq!(pem_body(&served_cert(srv.addr())), pem_body(&second), "the new certificate is served");
}

#[test]
fn message_size_recipients_line_length_and_errors() {
    let srv = Server::start("[relay]\nlocal_domains = [\"example.test\"]\n");
    let mut c = srv.client();
    assert!(hello(&mut c).contains("250-SIZE 52428800\r\n"));
    srv.reload(
        "[limits]\nmessage_size = 5000\nrecipients = 2\nline_length = 600\nerrors = 4\n\
         [relay]\nlocal_domains = [\"example.test\"]\n",
        false,
    );
    let mut c = srv.client();
    assert!(hello(&mut c).contains("250-SIZE 5000\r\n"));
    // message_size
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_str(&format!("Subject: big\r\n\r\n{}\r\n.\r\n", "b".repeat(6000)));
    c.expect("552 5.3.4");
    // recipients
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<r1@example.test>", "250");
    c.cmd("RCPT TO:<r2@example.test>", "250");
    c.cmd("RCPT TO:<r3@example.test>", "452 4.5.3");
    c.cmd("RSET", "250");
    // line_length: 700 bytes is over 600
    c.cmd(&format!("NOOP {}", "x".repeat(700)), "500 5.5.2");
    // errors: 552, 452 and 500 were three error replies; the fourth closes
    c.cmd("BOGUS", "500");
    c.expect("421 4.7.0");
    assert!(c.closed());
}

#[test]
fn connections_and_connections_per_ip() {
    let srv = Server::start("[relay]\nrelay_networks = []\n");
    srv.reload("[limits]\nconnections_per_ip = 2\n[relay]\nrelay_networks = []\n", false);
    let mut held = vec![srv.client(), srv.client()];
    for c in &mut held {
        c.expect("220");
    }
    assert!(srv.client().reply().starts_with("421 4.7.0"), "a third from one address");
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || srv.metric("ringpost_connections") == 0.0));
    srv.reload("[limits]\nconnections = 1\n[relay]\nrelay_networks = []\n", false);
    let mut one = srv.client();
    one.expect("220");
    assert!(srv.client().reply().starts_with("421 4.7.0"), "a second in all");
}

#[test]
fn command_and_data_timeouts() {
    let srv = Server::start("");
    srv.reload("[limits]\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n", false);
    let started = Instant::now();
    let mut idle = srv.client();
    hello(&mut idle);
    idle.expect("421 4.4.2");
    assert!(started.elapsed() < Duration::from_secs(5), "command_timeout");
    let mut c = srv.client();
    c.open_data("a@x.test", "r@example.net");
    c.send_str("Subject: slow\r\n");
    let started = Instant::now();
    c.expect("421 4.4.2");
    assert!(started.elapsed() < Duration::from_secs(5), "data_timeout");
}

#[test]
fn message_memory() {
    let srv = Server::start("");
    srv.reload("[limits]\nmessage_memory = 20000\n", false);
    let mut c = srv.client();
    c.open_data("a@x.test", "r@example.net");
    c.send_str(&format!("Subject: s\r\n\r\n{}\r\n.\r\n", "m".repeat(30_000)));
    c.expect("452 4.3.1");
}

#[test]
fn shutdown_grace() {
    let srv = Server::start("");
    srv.reload("[limits]\nshutdown_grace = \"1s\"\n", false);
    let mut c = srv.client();
    hello(&mut c);
    c.cmd("MAIL FROM:<a@x.test>", "250");
    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    c.expect("421 4.3.2");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after 1s, not the 10s default");
    let mut srv = srv;
    assert_eq!(srv.wait(Duration::from_secs(10)).code(), Some(0));
}

/// A domain made local by a reload is local for delivery too: its mail goes
/// to the Maildir, not to an MX.
#[test]
fn local_domains_reach_delivery() {
    let srv = Server::start("[relay]\nlocal_domains = [\"example.test\"]\n");
    srv.reload("[relay]\nlocal_domains = [\"example.test\", \"newlocal.test\"]\n", false);
    let mut c = srv.client();
    hello(&mut c);
    c.send_message("a@x.test", &["bob@newlocal.test"], "Subject: s\r\n\r\nto a new local domain\r\n");
    let new = srv.dir.join("mail/newlocal.test/bob/new");
    let delivered =
        wait_until(Duration::from_secs(10), || std::fs::read_dir(&new).is_ok_and(|d| d.count() == 1));
    assert!(delivered, "delivered into {}: {}", new.display(), srv.stderr());
    assert!(wait_until(Duration::from_secs(5), || srv.queued_messages() == 0));
}

#[test]
fn relay_domains_and_relay_networks() {
    let srv = Server::start("");
    let mut c = srv.client();
    hello(&mut c);
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<r@elsewhere.test>", "250"); // loopback may relay
    srv.reload("[relay]\nrelay_networks = []\nrelay_domains = [\"newly.test\"]\n", false);
    let mut c = srv.client();
    hello(&mut c);
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<r@elsewhere.test>", "554 5.7.1");
    c.cmd("RCPT TO:<r@newly.test>", "250");
}

#[test]
fn users() {
    let old = ringpost::auth::hash("old secret").unwrap();
    let user =
        |address: &str, hash: &str| format!("[[user]]\naddress = \"{address}\"\npassword = \"{hash}\"\n");
    let relay = "[relay]\nlocal_domains = [\"example.test\"]\nrelay_networks = []\n";
    let srv = Server::start(&format!("{relay}{}", user("alice@example.test", &old)));
    let plain = |u: &str, p: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"))
    };
    let mut c = srv.client();
    hello(&mut c);
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "550 5.1.1");
    let new = ringpost::auth::hash("new secret").unwrap();
    srv.reload(
        &format!("{relay}{}{}", user("alice@example.test", &new), user("bob@example.test", &new)),
        false,
    );
    let mut c = srv.client();
    hello(&mut c);
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<bob@example.test>", "250");
    c.cmd("RSET", "250");
    c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.test", "old secret")), "535");
    c.cmd(&format!("AUTH PLAIN {}", plain("bob@example.test", "new secret")), "235");
}

/// A file that does not load (bad TOML, or a value out of range) is refused
/// and what was in force stays in force: the reloaded settings, not those
/// the server started with.
#[test]
fn a_broken_file_keeps_the_configuration_in_force() {
    let srv = Server::start("[relay]\nrelay_networks = []\n");
    srv.reload(
        "hostname = \"mx2.test\"\n[relay]\nrelay_networks = []\nrelay_domains = [\"newly.test\"]\n",
        false,
    );
    for broken in ["this is not toml", "[limits]\ncommand_timeout = \"366d\"\n", "hostname = \"bad_name\"\n"]
    {
        std::fs::write(&srv.config_path, broken).unwrap();
        srv.reload_file(true);
        let mut c = srv.client();
        assert_eq!(c.reply(), "220 mx2.test ESMTP\r\n", "after {broken:?}");
        c.cmd("EHLO c.test", "250");
        c.cmd("MAIL FROM:<a@x.test>", "250");
        c.cmd("RCPT TO:<r@newly.test>", "250");
        c.cmd("RCPT TO:<r@elsewhere.test>", "554 5.7.1");
    }
    assert!(srv.stderr().contains("keeping the old configuration"), "{}", srv.stderr());
}

/// What needs a restart is named in the log and not applied; the rest of
/// the same file is.
#[test]
fn restart_keys_are_named_and_the_rest_applies() {
    let srv = Server::start("");
    srv.reload("hostname = \"mx2.test\"\n[spool]\nsegment_size = 2097152\n", false);
    assert!(srv.stderr().contains("need a restart") && srv.stderr().contains("[spool]"), "{}", srv.stderr());
    assert_eq!(srv.client().reply(), "220 mx2.test ESMTP\r\n");
}

/// `[[route]]` to `port` for every domain, and `[delivery]` with `extra`.
fn routed(port: u16, extra: &str) -> String {
    format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\ndestination_backoff = \"1s\"\n{extra}"
    )
}

fn send(srv: &Server, to: &str, subject: &str) -> String {
    let mut c = srv.client();
    hello(&mut c);
    let id = c.send_message("s@x.test", &[to], &format!("Subject: {subject}\r\n\r\nbody\r\n"));
    c.cmd("QUIT", "221");
    id
}

/// Routes change live: the next message goes to the new next hop; the
/// queue and the server go on.
#[test]
fn routes() {
    let (pa, pb) = (free_port(), free_port());
    let a = Receiver::start("127.0.0.1", pa, &[]);
    let b = Receiver::start("127.0.0.1", pb, &[]);
    let srv = Server::start(&routed(pa, ""));
    send(&srv, "r@y.test", "first");
    assert_eq!(a.wait_for(1, Duration::from_secs(10)).len(), 1);
    srv.reload(&routed(pb, ""), false);
    send(&srv, "r@y.test", "second");
    let got = b.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "the new route is used");
    assert!(got[0].contains("Subject: second"));
    assert_eq!(a.messages().len(), 1);
}

/// Mail queued on hold goes out when a reload lifts the hold, without a
/// restart.
#[test]
fn hold() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let srv = Server::start(&routed(port, "hold = true\n"));
    send(&srv, "r@y.test", "held");
    assert_eq!(srv.queued_messages(), 1);
    assert_eq!(rx.messages().len(), 0, "on hold");
    srv.reload(&routed(port, "hold = false\n"), false);
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).len(), 1, "delivered once the hold is lifted");
    assert!(wait_until(Duration::from_secs(5), || srv.queued_messages() == 0));
    // And back on hold: new mail waits again.
    srv.reload(&routed(port, "hold = true\n"), false);
    send(&srv, "r@y.test", "held again");
    assert_eq!(srv.queued_messages(), 1);
    assert_eq!(srv.http("POST", "/queue/flush").1.trim(), r#"{"flushed":0}"#);
}

/// `[local] mail_dir`: the next local delivery goes to the new place.
#[test]
fn local_mail_dir() {
    let dir = tempfile::tempdir().unwrap().keep();
    let tables = |sub: &str| {
        format!(
            "[relay]\nlocal_domains = [\"example.test\"]\n[local]\nmail_dir = \"{}\"\n",
            dir.join(sub).display()
        )
    };
    let srv = Server::start_in(&dir, &tables("one"));
    srv.reload(&tables("two"), false);
    send(&srv, "bob@example.test", "where");
    let new = dir.join("two/example.test/bob/new");
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_dir(&new).is_ok_and(|d| d.count() == 1)));
    assert!(!dir.join("one/example.test/bob").exists());
}

/// `[delivery] retry` and `max_age` are read when an attempt ends and when
/// one is planned.
#[test]
fn retry_and_max_age() {
    let port = free_port(); // nobody listens: every attempt fails
    let srv = Server::start(&routed(port, "").replace("retry = [\"1s\"]", "retry = [\"1h\"]"));
    let id = send(&srv, "r@y.test", "doomed");
    let next = || {
        let (_, body) = srv.http("GET", "/queue/messages");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["messages"][0]["next_attempt"].as_u64()
    };
    assert!(wait_until(Duration::from_secs(10), || next().is_some()));
    let first = next().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(first > now() + 3000, "retried in an hour");
    srv.reload(&routed(port, "").replace("retry = [\"1s\"]", "retry = [\"2m\"]"), false);
    assert_eq!(srv.http("POST", "/queue/flush").0, 200);
    assert!(wait_until(Duration::from_secs(10), || next().is_some_and(|t| t < first)));
    assert!(next().unwrap() <= now() + 120, "the new interval: {:?}", next());
    // max_age of a second: the next attempt finds it expired and bounces it
    // (its DSN to the sender is queued in turn).
    srv.reload(&routed(port, "max_age = \"1s\"\n").replace("retry = [\"1s\"]", "retry = [\"2m\"]"), false);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(srv.http("POST", "/queue/flush").0, 200);
    assert!(wait_until(Duration::from_secs(10), || srv.http("GET", &format!("/queue/{id}")).0 == 404));
    assert_eq!(srv.metric("ringpost_bounced_total"), 1.0);
    assert_eq!(srv.metric("ringpost_expired_total"), 1.0);
}

/// Per-destination limits are read when connections start:
/// `messages_per_connection`.
#[test]
fn messages_per_connection() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let srv =
        Server::start(&routed(port, "messages_per_connection = 100\nconnections_per_destination = 1\n"));
    srv.reload(&routed(port, "messages_per_connection = 2\nconnections_per_destination = 1\n"), false);
    let mut c = srv.client();
    hello(&mut c);
    for i in 0..6 {
        c.send_message("s@x.test", &["r@y.test"], &format!("Subject: {i}\r\n\r\nx\r\n"));
    }
    assert_eq!(rx.wait_for(6, Duration::from_secs(20)).len(), 6);
    assert!(wait_until(Duration::from_secs(5), || srv.queue()["outbound_connections"].as_u64() == Some(0)));
    let (total, _, most_on_one) = rx.connections();
    assert_eq!(most_on_one, 2, "no connection carried more than the reloaded limit");
    assert!(total >= 3, "{total} connections");
}

/// The outbound client's settings are read when a connection opens:
/// `starttls` (and the host name it says EHLO with).
#[test]
fn starttls_and_outbound_hostname() {
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = make_cert(&dir);
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &["--tls", cert.to_str().unwrap(), key.to_str().unwrap()]);
    let srv = Server::start_in(&dir, &routed(port, "starttls = true\n"));
    send(&srv, "r@y.test", "one");
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert!(got[0].contains("X-TLS: yes"), "{}", got[0]);
    assert!(wait_until(Duration::from_secs(5), || srv.queue()["outbound_connections"].as_u64() == Some(0)));
    srv.reload(&format!("hostname = \"mx2.test\"\n{}", routed(port, "starttls = false\n")), false);
    send(&srv, "r@y.test", "two");
    let got = rx.wait_for(2, Duration::from_secs(10));
    assert!(got[1].contains("X-TLS: no"), "{}", got[1]);
    assert!(got[1].contains("X-Helo: mx2.test\r\n"), "the client says EHLO with the new name: {}", got[1]);
}

/// `[events] file`, `[[webhook]]` and `[delivery] bounce_rules` follow
/// reloads: events start when a file is named, a webhook added by a reload
/// gets what happens from then on, a new rules file classifies the next
/// failure; a file that cannot be opened refuses the reload.
#[test]
fn events_webhooks_and_bounce_rules() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let map = dir.join("replies");
    std::fs::write(&map, "x@y.test|550 5.7.1 we do not like your kind\n").unwrap();
    let rx = Receiver::start("127.0.0.1", port, &["--mode", "rcpt-map", "--arg", map.to_str().unwrap()]);
    let ev = dir.join("events.jsonl");
    let srv = Server::start_in(&dir, &routed(port, ""));
    let before = send(&srv, "r@y.test", "before");
    let before_id = common::queue_id(&before).unwrap().to_owned();
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).len(), 1);
    assert!(!ev.exists());

    let hook_port = free_port();
    std::fs::write(dir.join("rules.toml"), "[[bounce]]\nclass = \"SpamBlock\"\nreply = 'like your kind'\n")
        .unwrap();
    let tables = format!(
        "[events]\nfile = \"{}\"\n[[webhook]]\nurl = \"http://127.0.0.1:{hook_port}/e\"\nbatch_wait = \"100ms\"\n",
        ev.display()
    );
    srv.reload(&format!("{tables}{}", routed(port, "bounce_rules = [\"rules.toml\"]\n")), false);
    let hook_dir = dir.join("hook");
    std::fs::create_dir_all(&hook_dir).unwrap();
    let hook = std::process::Command::new("python3")
        .arg(common::test_file("peers/webhook.py"))
        .args(["127.0.0.1", &hook_port.to_string()])
        .arg(&hook_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut hook = Kill(hook);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hook.0.stdout.take().unwrap()), &mut line)
        .unwrap();
    send(&srv, "x@y.test", "after");
    assert!(wait_until(Duration::from_secs(10), || read_events(&ev).iter().any(|e| e["type"] == "Bounce")));
    let bounce = read_events(&ev).into_iter().find(|e| e["type"] == "Bounce").unwrap();
    assert_eq!(bounce["class"], "SpamBlock", "the reloaded rules file");
    assert!(read_events(&ev).iter().all(|e| e["id"] != before_id.as_str()), "nothing from before the reload");
    // The webhook added by the reload gets the same events.
    assert!(wait_until(Duration::from_secs(10), || {
        read_events(&hook_dir.join("events.jsonl"))
            .iter()
            .any(|e| e["type"] == "Bounce" && e["class"] == "SpamBlock")
    }));
    // An events file that cannot be opened: refused, the old one stays.
    srv.reload(
        &format!("[events]\nfile = \"{}/no/such/dir/e.jsonl\"\n{}", dir.display(), routed(port, "")),
        true,
    );
    let count = read_events(&ev).len();
    send(&srv, "r@y.test", "still logged");
    assert!(wait_until(Duration::from_secs(10), || read_events(&ev).len() > count));
}

/// `[unsubscribe]` and `[feedback]` follow reloads: tenant mail gets the
/// one-click headers and every copy a reference once they are configured,
/// and a feedback address is accepted from anyone.
#[test]
fn unsubscribe_and_feedback() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let srv = Server::start(&format!("[[tenant]]\nname = \"acme\"\n{}", routed(port, "")));
    let tenant_mail = |srv: &Server| {
        let mut c = srv.client();
        hello(&mut c);
        c.send_message("s@x.test", &["r@y.test"], "X-Tenant: acme\r\nSubject: t\r\n\r\nbody\r\n");
        c.cmd("QUIT", "221");
    };
    tenant_mail(&srv);
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert!(!got[0].contains("List-Unsubscribe") && !got[0].contains("X-Ringpost-Ref"), "{}", got[0]);
    srv.reload(
        &format!(
            "[[tenant]]\nname = \"acme\"\n[unsubscribe]\nbase_url = \"https://u.example.test\"\n\
             secret = \"a secret of enough length\"\n[feedback]\naddresses = [\"fbl@fbl.test\"]\n{}",
            routed(port, "")
        ),
        false,
    );
    tenant_mail(&srv);
    let got = rx.wait_for(2, Duration::from_secs(10));
    assert!(got[1].contains("List-Unsubscribe:\r\n <https://u.example.test/unsubscribe/v1."), "{}", got[1]);
    assert!(got[1].contains("X-Ringpost-Ref: v1."), "{}", got[1]);
    // Mail to the feedback address is now read as a report (this one is
    // not one: kept aside), not delivered.
    let mut c = srv.client();
    hello(&mut c);
    c.send_message("", &["fbl@fbl.test"], "Subject: not a report\r\n\r\nx\r\n");
    c.cmd("QUIT", "221");
    assert!(wait_until(Duration::from_secs(10), || srv
        .metric("ringpost_feedback_reports_total{result=\"rejected\"}")
        == 1.0));
    assert_eq!(rx.messages().len(), 2);
}

/// `[limits] auth_failures_per_ip` follows reloads.
#[test]
fn auth_failures_per_ip() {
    use base64::Engine as _;
    let hash = ringpost::auth::hash("right").unwrap();
    let users = format!("[[user]]\naddress = \"alice@example.test\"\npassword = \"{hash}\"\n");
    let srv = Server::start(&users);
    let auth = |pass: &str, want: &str| {
        let mut c = srv.client();
        hello(&mut c);
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.test\0{pass}"));
        c.cmd(&format!("AUTH PLAIN {b64}"), want);
        c.cmd("QUIT", "221");
    };
    for _ in 0..3 {
        auth("wrong", "535");
    }
    auth("right", "235");
    srv.reload(&format!("[limits]\nauth_failures_per_ip = 2\n{users}"), false);
    auth("wrong", "535");
    auth("wrong", "535");
    auth("right", "454");
}

#[test]
fn http_tokens_and_inject_size() {
    let http = free_port();
    let listeners = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
         [[listener]]\naddress = \"127.0.0.1:{http}\"\nkind = \"http\"\n"
    );
    let token = |name: &str, secret: &str| {
        format!("[[http_token]]\nname = \"{name}\"\nhash = \"{}\"\n", common::hash_password(secret))
    };
    let srv = Server::start(&format!("{listeners}{}[delivery]\nhold = true\n", token("one", "first-secret")));
    let body = "{\"envelope_sender\": \"a@x.test\", \"content\": \"From: a@x.test\\n\\nx\", \
                \"recipients\": [{\"email\": \"b@y.test\"}]}";
    let post = |secret: &str| {
        common::http_body(
            ([127, 0, 0, 1], http).into(),
            "POST",
            "/api/inject/v1",
            &format!(
                "Host: x\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nContent-Length: {}\r\n",
                body.len()
            ),
            body,
        )
        .0
    };
    assert_eq!(post("first-secret"), 200);
    assert_eq!(post("second-secret"), 401);
    srv.reload(
        &format!(
            "{listeners}{}[limits]\ninject_size = 1024\n[delivery]\nhold = true\n",
            token("two", "second-secret")
        ),
        false,
    );
    assert_eq!(post("first-secret"), 401, "a token taken out no longer works");
    assert_eq!(post("second-secret"), 200);
    // A body over the new inject_size: 413 before it is read.
    let (status, text) = common::http_with(
        ([127, 0, 0, 1], http).into(),
        "POST",
        "/api/inject/v1",
        "Host: x\r\nConnection: close\r\nAuthorization: Bearer second-secret\r\nContent-Length: 2048\r\n",
    );
    assert_eq!(status, 413, "{text}");
}

#[test]
fn delay_warning() {
    let (late, home) = (free_port(), free_port());
    let _late = Receiver::start("127.0.0.1", late, &["--mode", "always-451"]);
    let rx = Receiver::start("127.0.0.1", home, &[]);
    let routes = format!(
        "[[route]]\ndomain = \"late.test\"\nto = [\"127.0.0.1:{late}\"]\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{home}\"]\n"
    );
    let srv =
        Server::start(&format!("{routes}[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"));
    srv.reload(
        &format!(
            "{routes}[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\ndelay_warning = \"1s\"\n"
        ),
        false,
    );
    send(&srv, "a@late.test", "late");
    let got = rx.wait_for(1, Duration::from_secs(15));
    assert!(got.iter().any(|m| m.contains("Action: delayed")), "{got:?}");
}

#[test]
fn mta_sts_and_ca_file() {
    let dir = tempfile::tempdir().unwrap().keep();
    let srv = Server::start_in(&dir, "");
    // A ca_file without a certificate refuses the reload, naming the key.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    srv.reload(
        &format!(
            "[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nmta_sts = true\nca_file = \"{}\"\n",
            empty.display()
        ),
        true,
    );
    assert!(srv.stderr().contains("delivery.ca_file"), "{}", srv.stderr());
    // A real one is taken (what MTA-STS then does: tests/mta_sts.rs).
    let (cert, _) = make_cert(&dir);
    srv.reload(
        &format!(
            "[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nmta_sts = true\nca_file = \"{}\"\n",
            cert.display()
        ),
        false,
    );
    // dane and tls_report_interval (what they do: tests/dane.rs, tests/tls_rpt.rs).
    srv.reload(
        "[delivery]\ndns_servers = [\"127.0.0.1:9\"]\ndane = true\ntls_report_interval = \"soon\"\n",
        true,
    );
    assert!(srv.stderr().contains("tls_report_interval"), "{}", srv.stderr());
    srv.reload(
        "[delivery]\ndns_servers = [\"127.0.0.1:9\"]\ndane = true\ntls_report_interval = \"1h\"\n",
        false,
    );
}
