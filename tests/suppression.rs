//! The suppression list through the SPEC surface: an `InvalidRecipient`
//! bounce suppresses the address, our senders then get `550 5.7.1` at RCPT
//! (and a `Suppressed` event); `ringpost suppress add|list|remove` and the
//! admin API; mail queued before an address was suppressed is not sent;
//! the list survives kill -9.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_port, read_events, wait_until, Receiver, Server};
use serde_json::Value;

fn routed(port: u16, events: &Path, delivery: &str) -> String {
    format!(
        "[events]\nfile = \"{}\"\n[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n{delivery}",
        events.display()
    )
}

fn cli(srv: &Server, args: &[&str]) -> (bool, String) {
    common::suppress_cli(srv, args)
}

/// RCPT replies for `to`, in one transaction.
fn rcpt_codes(srv: &Server, to: &[&str]) -> Vec<String> {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@sender.test>", "250");
    let codes = to
        .iter()
        .map(|t| {
            c.send_str(&format!("RCPT TO:<{t}>\r\n"));
            c.reply()
        })
        .collect();
    c.send_str("QUIT\r\n");
    codes
}

#[test]
fn bounces_suppress_and_suppressed_addresses_are_refused() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &["--mode", "reject-rcpt", "--arg", "gone@a.test"]);
    let dir = tempfile::tempdir().unwrap().keep();
    let ev = dir.join("events.jsonl");
    let srv = Server::start_in(&dir, &routed(port, &ev, ""));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_message("s@sender.test", &["gone@a.test", "ok@a.test"], "Subject: 1\r\n\r\nx\r\n");
    // The message for ok@ and the DSN for gone@.
    assert_eq!(rx.wait_for(2, Duration::from_secs(15)).len(), 2);
    assert!(wait_until(Duration::from_secs(10), || cli(&srv, &["list"]).1.contains("gone@a.test")));
    let (ok, list) = cli(&srv, &["list"]);
    assert!(ok && list.starts_with("gone@a.test * bounce:InvalidRecipient 20"), "{list}");

    // Now refused at RCPT, with a Suppressed event; others still accepted.
    let codes = rcpt_codes(&srv, &["GONE@a.test", "ok@a.test"]);
    assert!(codes[0].starts_with("550 5.7.1"), "{codes:?}");
    assert!(codes[1].starts_with("250"), "{codes:?}");
    assert!(wait_until(Duration::from_secs(5), || read_events(&ev)
        .iter()
        .any(|e| e["type"] == "Suppressed" && e["recipient"] == "GONE@a.test")));
    let e = read_events(&ev).into_iter().find(|e| e["type"] == "Suppressed").unwrap();
    assert_eq!((e["reason"].as_str(), e["id"].as_str()), (Some("bounce:InvalidRecipient"), None));

    // By hand: add for one tenant, list, remove.
    let (ok, out) = cli(&srv, &["add", "someone@b.test", "--tenant", "acme", "--reason", "complaint"]);
    assert!(ok, "{out}");
    let (_, body) = srv.http("GET", "/suppression?address=SOMEONE%40b.test");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 2);
    assert_eq!(v["entries"][0]["tenant"], "acme");
    assert_eq!(v["entries"][0]["reason"], "complaint");
    // A tenant's entry does not hold mail of no tenant.
    assert!(rcpt_codes(&srv, &["someone@b.test"])[0].starts_with("250"));
    let (ok, _) = cli(&srv, &["remove", "gone@a.test"]);
    assert!(ok);
    let (ok, _) = cli(&srv, &["remove", "gone@a.test"]);
    assert!(!ok, "a second removal finds nothing (404)");
    assert!(rcpt_codes(&srv, &["gone@a.test"])[0].starts_with("250"));
    // Bad input: 400 with a reason, never a panic.
    for body in
        ["", "{", "{\"address\": \"no-at-sign\"}", "{\"address\": \"a@b.test\", \"reason\": \"x\"}", "[1]"]
    {
        let (status, text) = post(&srv, "/suppression", body);
        assert_eq!(status, 400, "{body:?}: {text}");
    }
    assert_eq!(srv.http("GET", "/health").0, 200);
}

fn post(srv: &Server, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(srv.admin).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        srv.admin,
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, raw)
}

/// Mail queued (on hold) before its recipient was suppressed is not sent to
/// it: a `Suppressed` event with the queue id, no DSN; the other recipient
/// is delivered. The list survives kill -9.
#[test]
fn queued_mail_is_not_sent_to_an_address_suppressed_later() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let ev = dir.join("events.jsonl");
    let srv = Server::start_in(&dir, &routed(port, &ev, "hold = true\n"));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let reply = c.send_message(
        "s@sender.test",
        &["later@a.test", "keep@a.test"],
        "X-Tenant: acme\r\nSubject: 1\r\n\r\nx\r\n",
    );
    let id = common::queue_id(&reply).unwrap().to_owned();
    let (status, body) =
        post(&srv, "/suppression", "{\"address\": \"later@a.test\", \"reason\": \"unsubscribe\"}");
    assert_eq!(status, 200, "{body}");
    srv.kill9();
    let srv = Server::start_in(&dir, &routed(port, &ev, ""));
    let got = rx.wait_for(1, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let got_after = rx.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got_after.len(), 1, "no DSN for a suppressed recipient: {got_after:?}");
    assert!(got[0].contains("<keep@a.test>") && !got[0].contains("later@a.test"), "{}", got[0]);
    let all = read_events(&ev);
    let s: Vec<&Value> = all.iter().filter(|e| e["type"] == "Suppressed").collect();
    assert_eq!(s.len(), 1, "{all:?}");
    assert_eq!((s[0]["id"].as_str(), s[0]["recipient"].as_str()), (Some(id.as_str()), Some("later@a.test")));
    assert_eq!(s[0]["reason"], "unsubscribe");
    assert!(wait_until(Duration::from_secs(5), || srv.queued_messages() == 0));
}
