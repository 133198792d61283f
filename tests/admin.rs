//! `[admin] token`: every admin request needs the bearer token; the CLI
//! sends it from `--token` or RINGPOST_ADMIN_TOKEN; an admin address off
//! loopback without a token is a config error.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real processes, and fail loudly

mod common;

use std::process::Command;

use common::{http_with, Server, BIN};

fn hash(token: &str) -> String {
    common::hash_password(token)
}

#[test]
fn every_admin_request_needs_the_token() {
    let token = "correct horse battery staple";
    let srv = Server::start(&format!("[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{}\"\n", hash(token)));
    let req = |method: &str, path: &str, auth: &str| {
        http_with(srv.admin, method, path, &format!("Host: {}\r\n{auth}", srv.admin))
    };
    for path in ["/health", "/metrics", "/queue", "/suppression"] {
        let (status, body) = req("GET", path, "");
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(req("GET", path, "Authorization: Bearer wrong\r\n").0, 401, "{path}");
        assert_eq!(req("GET", path, &format!("Authorization: Bearer {token}\r\n")).0, 200, "{path}");
    }
    assert_eq!(req("POST", "/queue/flush", "").0, 401, "no flush without the token");

    let cli = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["queue", "stats", "--admin", &srv.admin.to_string()])
            .args(args)
            .env_remove("RINGPOST_ADMIN_TOKEN");
        if let Some(t) = env {
            c.env("RINGPOST_ADMIN_TOKEN", t);
        }
        c.output().unwrap().status.code()
    };
    assert_eq!(cli(&[], None), Some(1));
    assert_eq!(cli(&["--token", token], None), Some(0));
    assert_eq!(cli(&[], Some(token)), Some(0));
    assert_eq!(cli(&["--token", "nope"], None), Some(1));
}

#[test]
fn an_admin_address_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("ringpost.toml");
    std::fs::write(&path, common::config_text(&dir, "[admin]\naddress = \"0.0.0.0:0\"\n")).unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("admin.address") && err.contains("admin.token"), "{err}");
    std::fs::write(
        &path,
        common::config_text(&dir, "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"plain\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PHC hash"));
}

/// A client that sends more than its request (a stray CRLF after the body,
/// as some old clients do, or a pipelined second request) still reads the
/// whole answer: the server closes its side and drains what is left rather
/// than closing with unread bytes, which would make the kernel send a reset
/// that can destroy the answer (seen as "connection reset" in CI).
#[test]
fn extra_bytes_after_a_request_do_not_reset_the_answer() {
    let srv = Server::start("");
    for _ in 0..20 {
        let body = "{\"domain\": \"x.test\", \"forever\": true}";
        let (status, text) = common::http_body(
            srv.admin,
            "POST",
            "/suspend",
            &format!("Host: {}\r\nContent-Length: {}\r\n", srv.admin, body.len()),
            &format!("{body}\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }
}
