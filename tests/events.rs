//! Delivery events and bounce classes through the SPEC surface: `[events]
//! file`, `[[webhook]]`, `/metrics` and DSNs, against a scripted receiver
//! that answers with providers' real bounce texts and a Python webhook
//! endpoint that is down at first; restarts and kill -9 in between.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, queue_id, read_events, test_file, wait_until, Receiver, Server};
use serde_json::Value;

fn route(port: u16, extra: &str) -> String {
    format!(
        "{extra}[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    )
}

fn of_type<'a>(events: &'a [Value], kind: &str, rcpt: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind && e["recipient"] == rcpt).collect()
}

fn send(srv: &Server, headers: &str, to: &[&str]) -> String {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let reply = c.send_message("s@sender.test", to, &format!("{headers}Subject: hi\r\n\r\nbody\r\n"));
    c.cmd("QUIT", "221");
    queue_id(&reply).unwrap().to_owned()
}

/// Replies as Gmail, Microsoft and Yahoo send them become events with the
/// right class, counted in /metrics, and named in the DSN.
#[test]
fn events_file_records_outcomes_with_bounce_classes() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let map = dir.join("replies");
    std::fs::write(
        &map,
        "unknown@a.test|550-5.1.1 The email account that you tried to reach does not exist. Please try\\r\\n\
         550 5.1.1 double-checking the recipient's email address for typos. - gsmtp\n\
         ms@a.test|550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)\n\
         auth@a.test|550-5.7.26 This mail has been blocked because the sender is\\r\\n550 5.7.26 unauthenticated. - gsmtp\n\
         busy@a.test|450-4.2.1 The user you are trying to contact is receiving mail at a rate that\\r\\n450 4.2.1 prevents additional messages from being delivered. - gsmtp\n",
    )
    .unwrap();
    let rx = Receiver::start("127.0.0.1", port, &["--mode", "rcpt-map", "--arg", map.to_str().unwrap()]);
    let events_path = dir.join("events.jsonl");
    let srv = Server::start_in(
        &dir,
        &route(
            port,
            &format!("[events]\nfile = \"{}\"\n[[tenant]]\nname = \"acme\"\n", events_path.display()),
        ),
    );
    let rcpts = ["ok@a.test", "unknown@a.test", "ms@a.test", "auth@a.test", "busy@a.test"];
    let id = send(&srv, "X-Tenant: acme\r\nX-Campaign: spring\r\n", &rcpts);
    // The message for ok@, and one DSN for the three bounces.
    let got = rx.wait_for(2, Duration::from_secs(15));
    assert_eq!(got.len(), 2, "{got:?}");
    let dsn = got.iter().find(|m| m.contains("multipart/report")).expect("a DSN");
    for class in ["InvalidRecipient", "AuthenticationFailed"] {
        assert!(dsn.contains(&format!("X-Ringpost-Bounce-Class: {class}\r\n")), "{class} in {dsn}");
    }
    // busy@ is retried every second: wait for two transient failures.
    assert!(wait_until(Duration::from_secs(15), || {
        of_type(&read_events(&events_path), "TransientFailure", "busy@a.test").len() >= 2
    }));
    let events = read_events(&events_path);
    let reception: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "Reception" && e["id"] == id).collect();
    assert_eq!(reception.len(), 1, "{events:?}");
    let r = reception[0];
    assert_eq!(r["recipients"].as_array().unwrap().len(), 5);
    assert_eq!((r["tenant"].as_str(), r["campaign"].as_str()), (Some("acme"), Some("spring")));
    assert_eq!(r["sender"], "s@sender.test");
    assert!(r["size"].as_u64().unwrap() > 20);
    assert!(r["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r["peer"], "127.0.0.1");

    let delivered = of_type(&events, "Delivery", "ok@a.test");
    assert_eq!(delivered.len(), 1);
    let d = delivered[0];
    assert_eq!((d["id"].as_str(), d["attempt"].as_u64()), (Some(id.as_str()), Some(1)));
    assert_eq!(d["response"]["code"], 250);
    assert_eq!(d["campaign"], "spring");
    assert!(d["next_hop"].as_str().unwrap().contains(&format!("127.0.0.1]:{port}")), "{d}");

    for (rcpt, class, code, enhanced) in [
        ("unknown@a.test", "InvalidRecipient", 550, "5.1.1"),
        ("ms@a.test", "InvalidRecipient", 550, "5.5.0"),
        ("auth@a.test", "AuthenticationFailed", 550, "5.7.26"),
    ] {
        let b = of_type(&events, "Bounce", rcpt);
        assert_eq!(b.len(), 1, "{rcpt}: {events:?}");
        assert_eq!(b[0]["class"], class, "{rcpt}");
        assert_eq!(b[0]["response"]["code"], code, "{rcpt}");
        assert_eq!(b[0]["response"]["enhanced"], enhanced, "{rcpt}");
        assert_eq!(b[0]["tenant"], "acme");
    }
    let t = of_type(&events, "TransientFailure", "busy@a.test");
    assert_eq!(t[0]["class"], "RateLimited");
    assert_eq!((t[0]["attempt"].as_u64(), t[1]["attempt"].as_u64()), (Some(1), Some(2)));

    assert_eq!(srv.metric("ringpost_bounces_total{class=\"InvalidRecipient\"}"), 2.0);
    assert_eq!(srv.metric("ringpost_bounces_total{class=\"AuthenticationFailed\"}"), 1.0);
    assert!(srv.metric("ringpost_deferrals_total{class=\"RateLimited\"}") >= 2.0);
    assert_eq!(srv.metric("ringpost_events_total{type=\"Delivery\"}"), 2.0, "the message and the DSN");

    // logrotate: move the file away, SIGHUP, and new events go to a new file.
    let rotated = dir.join("events.jsonl.1");
    std::fs::rename(&events_path, &rotated).unwrap();
    srv.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(15), || events_path.exists()
        && !of_type(&read_events(&events_path), "TransientFailure", "busy@a.test").is_empty()));
}

/// Mail delivered while ringpost stops has its end recorded before ringpost
/// exits (after its outcome events are durable): after a restart none of it
/// is sent again, and every message has its Delivery event.
#[test]
fn mail_delivered_as_ringpost_stops_is_not_sent_again() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let events_path = dir.join("events.jsonl");
    let extra = route(port, &format!("[events]\nfile = \"{}\"\n", events_path.display()));
    let mut srv = Server::start_in(&dir, &extra);
    // The receiver sends SIGTERM to ringpost as it takes the 20th message.
    let rx =
        Receiver::start("127.0.0.1", port, &["--mode", "term-at", "--arg", &format!("20|{}", srv.pid())]);
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let mut sent = 0;
    for i in 0..40 {
        c.send_str("MAIL FROM:<s@sender.test>\r\n");
        if !c.reply().starts_with("250") {
            break; // stopping
        }
        c.cmd(&format!("RCPT TO:<r{i}@a.test>"), "250");
        c.cmd("DATA", "354");
        c.send_str(&format!("Subject: m{i}\r\n\r\nbody\r\n.\r\n"));
        if !c.reply().starts_with("250") {
            break;
        }
        sent += 1;
    }
    assert!(sent >= 20, "{sent} accepted");
    drop(c); // nothing keeps ringpost from stopping at once
    assert!(srv.wait(Duration::from_secs(30)).success());
    let srv = Server::start_in(&dir, &extra);
    assert!(wait_until(Duration::from_secs(20), || srv.queued_messages() == 0), "{}", srv.queue());
    let got = rx.messages();
    for i in 0..sent {
        let n = got.iter().filter(|m| m.contains(&format!("Subject: m{i}\r\n"))).count();
        assert_eq!(n, 1, "message m{i} delivered {n} times");
    }
    assert_eq!(got.len(), sent);
    let deliveries = read_events(&events_path).into_iter().filter(|e| e["type"] == "Delivery").count();
    assert_eq!(deliveries, sent, "one Delivery event per message");
}

/// A bounce class file of the user's comes before the shipped rules.
#[test]
fn user_bounce_rules_come_first() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let map = dir.join("replies");
    std::fs::write(&map, "x@a.test|550 5.7.1 Sorry, we do not take mail from your kind\n").unwrap();
    let _rx = Receiver::start("127.0.0.1", port, &["--mode", "rcpt-map", "--arg", map.to_str().unwrap()]);
    std::fs::write(dir.join("mine.toml"), "[[bounce]]\nclass = \"SpamBlock\"\nreply = 'from your kind'\n")
        .unwrap();
    let events_path = dir.join("events.jsonl");
    let srv = Server::start_in(
        &dir,
        &route(port, &format!("[events]\nfile = \"{}\"\n", events_path.display()))
            .replace("[delivery]\n", "[delivery]\nbounce_rules = [\"mine.toml\"]\n"),
    );
    send(&srv, "", &["x@a.test"]);
    assert!(wait_until(Duration::from_secs(15), || !of_type(
        &read_events(&events_path),
        "Bounce",
        "x@a.test"
    )
    .is_empty()));
    assert_eq!(of_type(&read_events(&events_path), "Bounce", "x@a.test")[0]["class"], "SpamBlock");
    // A broken rules file is a config error at startup, naming the file.
    std::fs::write(dir.join("mine.toml"), "[[bounce]]\nclass = \"Nope\"\nreply = 'x'\n").unwrap();
    let config = srv.config_path.clone();
    srv.stop();
    let out = Command::new(common::BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mine.toml") && err.contains("bounce[0].class"), "{err}");
}

/// tests/peers/webhook.py.
struct Hook {
    child: Child,
    dir: PathBuf,
}

impl Hook {
    fn start(port: u16, args: &[&str]) -> Hook {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut child = Command::new("python3")
            .arg(test_file("peers/webhook.py"))
            .args(["127.0.0.1", &port.to_string()])
            .arg(&dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Hook { child, dir }
    }

    fn events(&self) -> Vec<Value> {
        read_events(&self.dir.join("events.jsonl"))
    }

    fn count(&self, name: &str) -> u64 {
        std::fs::read_to_string(self.dir.join(name)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }
}

/// `route` plus a `[[webhook]]` to 127.0.0.1:`hook_port` with `opts`.
fn webhook_route(port: u16, hook_port: u16, opts: &str) -> String {
    route(port, &format!("[[webhook]]\nurl = \"http://127.0.0.1:{hook_port}/events\"\n{opts}"))
}

/// Whether `hook` got a Delivery event for each of `ids`.
fn posted_every_delivery(hook: &Hook, ids: &[String]) -> bool {
    let ev = hook.events();
    ids.iter().all(|id| ev.iter().any(|e| e["type"] == "Delivery" && e["id"] == id.as_str()))
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The webhook is down when mail flows; ringpost is killed with -9 and
/// restarted; then the endpoint comes up, fails some more, and gets every
/// event: each message's Reception, then its Delivery, in order, in
/// batches, with nothing lost.
#[test]
fn webhook_down_then_up_across_kill9_gets_every_event_in_order() {
    let port = free_port();
    let hook_port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = webhook_route(port, hook_port, "batch_size = 7\nbatch_wait = \"200ms\"\ntimeout = \"2s\"\n");
    let srv = Server::start_in(&dir, &extra);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(send(&srv, &format!("X-Campaign: c{i}\r\n"), &[&format!("r{i}@a.test")]));
    }
    assert_eq!(rx.wait_for(20, Duration::from_secs(20)).len(), 20);
    assert!(wait_until(Duration::from_secs(10), || metric_with_prefix(
        &srv,
        "ringpost_webhook_failures_total"
    ) > 0.0));
    assert!(metric_with_prefix(&srv, "ringpost_webhook_backlog_bytes") > 0.0);
    // Every delivery recorded (otherwise the kill may deliver one again:
    // at least once, allowed, but not what this test counts).
    assert!(wait_until(Duration::from_secs(10), || srv.queued_messages() == 0));
    srv.kill9();

    let srv = Server::start_in(&dir, &extra);
    for i in 20..25 {
        ids.push(send(&srv, &format!("X-Campaign: c{i}\r\n"), &[&format!("r{i}@a.test")]));
    }
    assert_eq!(rx.wait_for(25, Duration::from_secs(20)).len(), 25);
    let hook = Hook::start(hook_port, &["--fail", "2"]);
    assert!(
        wait_until(Duration::from_secs(30), || posted_every_delivery(&hook, &ids)),
        "every Delivery posted; got {:?}",
        hook.events()
    );
    let events = hook.events();
    for (i, id) in ids.iter().enumerate() {
        let mine: Vec<&Value> = events.iter().filter(|e| e["id"] == id.as_str()).collect();
        let first_reception = mine.iter().position(|e| e["type"] == "Reception");
        let first_delivery = mine.iter().position(|e| e["type"] == "Delivery");
        // Reception is handed over without waiting; kill -9 may only lose
        // one taken in the moment before it: none here, the kill came later.
        assert!(first_reception.is_some(), "{id}: {mine:?}");
        assert!(first_reception < first_delivery, "{id}: in order: {mine:?}");
        assert_eq!(mine[first_delivery.unwrap()]["campaign"], format!("c{i}"));
    }
    assert!(hook.count("failed") == 2 && hook.count("bad") == 0);
    // Batches of at most 7: 50 events or more take at least 8 POSTs.
    assert!(hook.count("posts") >= (events.len() as u64).div_ceil(7), "{} posts", hook.count("posts"));
    assert!(wait_until(Duration::from_secs(10), || metric_with_prefix(
        &srv,
        "ringpost_webhook_backlog_bytes"
    ) == 0.0));
    // Acknowledged events are not posted again after a restart.
    let before = hook.events().len();
    srv.stop();
    let srv = Server::start_in(&dir, &extra);
    std::thread::sleep(Duration::from_millis(1500));
    let after = hook.events();
    assert_eq!(after.len(), before, "nothing posted twice: {:?}", &after[before..]);
    drop(srv);
}

/// An endpoint that keeps connections gets many POSTs on one; when it
/// goes away and another takes its place, the dead kept connection is
/// replaced without a failure and nothing is lost.
#[test]
fn webhook_posts_share_a_kept_connection() {
    let port = free_port();
    let hook_port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = webhook_route(port, hook_port, "batch_size = 2\nbatch_wait = \"50ms\"\n");
    let hook = Hook::start(hook_port, &["--keep-alive"]);
    let srv = Server::start_in(&dir, &extra);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(send(&srv, "", &[&format!("r{i}@a.test")]));
    }
    assert!(
        wait_until(Duration::from_secs(20), || posted_every_delivery(&hook, &ids)),
        "{:?}",
        hook.events()
    );
    let (posts, connections) = (hook.count("posts"), hook.count("connections"));
    assert!(posts >= 6, "{posts} posts");
    assert!(connections < posts, "{posts} posts on {connections} connections");
    // The endpoint restarts: the kept connection is dead.
    drop(hook);
    let hook = Hook::start(hook_port, &["--keep-alive"]);
    let mut more = Vec::new();
    for i in 6..9 {
        more.push(send(&srv, "", &[&format!("r{i}@a.test")]));
    }
    assert_eq!(rx.wait_for(9, Duration::from_secs(20)).len(), 9);
    assert!(
        wait_until(Duration::from_secs(20), || posted_every_delivery(&hook, &more)),
        "{:?}",
        hook.events()
    );
    assert_eq!(metric_with_prefix(&srv, "ringpost_webhook_failures_total"), 0.0);
}

/// The value of the first series of `name` (any labels).
fn metric_with_prefix(srv: &Server, name: &str) -> f64 {
    let (_, text) = srv.http("GET", "/metrics");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An administrator's bounce and an expiry are events of their own, with
/// the DSN the sender gets.
#[test]
fn admin_bounces_and_expiry_are_events() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ev = dir.join("events.jsonl");
    // Nothing answers on port 9: every attempt fails; max_age 2s expires the
    // second message (found when its domain is probed again, every second).
    let srv = Server::start_in(
        &dir,
        &format!(
            "[events]\nfile = \"{}\"\n[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:9\"]\n\
             [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\nmax_age = \"2s\"\nhold = true\n\
             destination_backoff = \"1s\"\n",
            ev.display()
        ),
    );
    let held = send(&srv, "", &["a@a.test"]);
    let (status, _) = srv.http("POST", &format!("/queue/{held}/bounce"));
    assert_eq!(status, 200);
    assert!(wait_until(Duration::from_secs(10), || !of_type(&read_events(&ev), "AdminBounce", "a@a.test")
        .is_empty()));
    let e = &of_type(&read_events(&ev), "AdminBounce", "a@a.test")[0].clone();
    assert_eq!(e["id"], held.as_str());
    assert_eq!(e["class"], Value::Null);
    // Lift the hold: the next message fails until it is too old, then expires.
    let old = send(&srv, "", &["b@a.test"]);
    std::fs::write(
        &srv.config_path,
        std::fs::read_to_string(&srv.config_path).unwrap().replace("hold = true", "hold = false"),
    )
    .unwrap();
    srv.reload_file(false);
    assert!(wait_until(Duration::from_secs(20), || !of_type(&read_events(&ev), "Expiration", "b@a.test")
        .is_empty()));
    let all = read_events(&ev);
    let x = of_type(&all, "Expiration", "b@a.test")[0];
    assert_eq!((x["id"].as_str(), x["class"].as_str()), (Some(old.as_str()), Some("MessageExpired")));
    assert!(
        of_type(&all, "TransientFailure", "b@a.test").iter().all(|t| t["class"] == "BadConnection"),
        "a refused connection: {all:?}"
    );
}

/// An https webhook, its certificate trusted through `ca_file`; one whose
/// certificate is not trusted gets nothing (and its events wait).
#[test]
fn https_webhooks_verify_the_certificate() {
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = common::make_cert(&dir);
    let (good, bad) = (free_port(), free_port());
    let tls = ["--tls", cert.to_str().unwrap(), key.to_str().unwrap()];
    let trusted = Hook::start(good, &tls);
    let untrusted = Hook::start(bad, &tls);
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let srv = Server::start_in(
        &dir,
        &route(
            port,
            &format!(
                "[[webhook]]\nurl = \"https://localhost:{good}/e\"\nca_file = \"{}\"\nbatch_wait = \"100ms\"\n\
                 [[webhook]]\nurl = \"https://localhost:{bad}/e\"\nbatch_wait = \"100ms\"\n",
                cert.display()
            ),
        ),
    );
    let id = send(&srv, "", &["r@a.test"]);
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).len(), 1);
    assert!(wait_until(Duration::from_secs(10), || trusted
        .events()
        .iter()
        .any(|e| e["type"] == "Delivery" && e["id"] == id.as_str())));
    assert!(wait_until(Duration::from_secs(10), || srv
        .http("GET", "/metrics")
        .1
        .contains(&format!("ringpost_webhook_failures_total{{url=\"https://localhost:{bad}/e\"}}"))));
    assert!(untrusted.events().is_empty());
    // A ca_file that is not PEM is a config error naming it.
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "nothing here").unwrap();
    let extra =
        format!("[[webhook]]\nurl = \"https://localhost:{good}/e\"\nca_file = \"{}\"\n", not_pem.display());
    srv.reload(&route(port, &extra), true);
}
