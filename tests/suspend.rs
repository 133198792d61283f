//! Queue suspensions through the CLI and the admin API: held mail stays
//! queued and untried, survives a restart, does not expire while held, and
//! goes at once on resume (or when `--for` ends); other mail flows.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, wait_until, Receiver, Server, BIN};
use serde_json::Value;

fn config(port: u16, max_age: &str) -> String {
    format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\nmax_age = \"{max_age}\"\n"
    )
}

fn queue(srv: &Server, args: &[&str]) -> (i32, String) {
    let out =
        Command::new(BIN).arg("queue").args(args).args(["--admin", &srv.admin.to_string()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn send(srv: &Server, to: &str, headers: &str) {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_message("s@ours.test", &[to], &format!("{headers}Subject: to {to}\r\n\r\nhello\r\n"));
    c.cmd("QUIT", "221");
}

fn delivered_to(rx: &Receiver, to: &str) -> bool {
    rx.messages().iter().any(|m| m.lines().next().unwrap_or("").contains(&format!("<{to}>")))
}

#[test]
fn suspended_mail_waits_survives_a_restart_and_goes_on_resume() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let srv = Server::start_in(&dir, &config(port, "5d"));
    let (code, out) = queue(&srv, &["suspend", "--domain", "Held.test"]);
    assert_eq!(code, 0, "{out}");
    send(&srv, "a@held.test", "");
    send(&srv, "b@free.test", "");
    assert!(wait_until(Duration::from_secs(10), || delivered_to(&rx, "b@free.test")));
    std::thread::sleep(Duration::from_secs(3)); // three retry intervals
    assert!(!delivered_to(&rx, "a@held.test"));
    let q: Value = serde_json::from_str(&queue(&srv, &["stats"]).1).unwrap();
    assert_eq!(q["queue_suspensions"][0]["scope"]["domain"], "held.test", "{q}");
    assert_eq!(q["held_messages"], 1, "{q}");
    assert_eq!(q["messages"], 1);
    assert_eq!(srv.metric("ringpost_queue_held_messages"), 1.0);
    assert_eq!(srv.metric("ringpost_queue_suspensions"), 1.0);

    // Kept across a restart.
    srv.stop();
    let srv = Server::start_in(&dir, &config(port, "5d"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!delivered_to(&rx, "a@held.test"));
    assert!(wait_until(Duration::from_secs(5), || srv.metric("ringpost_queue_held_messages") == 1.0));

    // A flush does not override a suspension; a resume does.
    assert_eq!(queue(&srv, &["flush"]).0, 0);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!delivered_to(&rx, "a@held.test"));
    let (code, out) = queue(&srv, &["resume", "--domain", "held.test"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"released\":1"), "{out}");
    assert!(wait_until(Duration::from_secs(10), || delivered_to(&rx, "a@held.test")));
    assert_eq!(srv.metric("ringpost_queue_held_messages"), 0.0);
    // Resuming what is not suspended: 404, exit 1.
    let (code, out) = queue(&srv, &["resume", "--domain", "held.test"]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn held_mail_does_not_expire_and_for_ends_by_itself() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let srv = Server::start(&config(port, "2s"));
    assert_eq!(queue(&srv, &["suspend", "--tenant", "acme"]).0, 0);
    assert_eq!(queue(&srv, &["suspend", "--campaign", "spring", "--for", "2s"]).0, 0);
    send(&srv, "old@isp.test", "X-Tenant: acme\r\n");
    send(&srv, "c@isp.test", "X-Campaign: spring\r\n");
    send(&srv, "d@isp.test", "X-Tenant: other\r\n");
    assert!(wait_until(Duration::from_secs(10), || delivered_to(&rx, "d@isp.test")));
    // The campaign's suspension ends by itself after 2 s.
    assert!(wait_until(Duration::from_secs(10), || delivered_to(&rx, "c@isp.test")));
    // The tenant's mail is past max_age (2 s) by now, but held mail does
    // not age into bounces: no DSN, still queued; on resume it is tried.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!delivered_to(&rx, "old@isp.test"));
    assert!(!rx.messages().iter().any(|m| m.contains("X-Envelope: <> ")), "no DSN while held");
    assert_eq!(queue(&srv, &["resume", "--tenant", "acme"]).0, 0);
    assert!(wait_until(Duration::from_secs(10), || delivered_to(&rx, "old@isp.test")));
}

#[test]
fn bad_suspensions_are_refused() {
    let srv = Server::start("");
    // Two selectors, or none: the CLI refuses (exit 2, clap).
    assert_eq!(queue(&srv, &["suspend", "--domain", "a.test", "--tenant", "t"]).0, 2);
    assert_eq!(queue(&srv, &["suspend"]).0, 2);
    let (code, out) = queue(&srv, &["suspend", "--domain", "a.test", "--for", "soon"]);
    assert_eq!(code, 1);
    assert!(out.contains("duration"), "{out}");
    let (code, out) = queue(&srv, &["suspend", "--domain", "a b"]);
    assert_eq!(code, 1);
    assert!(out.contains("printable"), "{out}");
    let post = |body: &str| {
        common::http_body(
            srv.admin,
            "POST",
            "/suspend",
            &format!(
                "Host: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                srv.admin,
                body.len()
            ),
            body,
        )
    };
    for (body, why) in [
        ("{\"planet\": \"x\"}", "one of domain, tenant, campaign"),
        ("{\"domain\": \"a.test\", \"tenant\": \"t\"}", "only one"),
        ("{\"domain\": \"a.test\", \"forever\": true}", "unknown field"),
        ("[]", "JSON object"),
    ] {
        let (status, text) = post(body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }
    assert_eq!(srv.metric("ringpost_queue_suspensions"), 0.0);
}
