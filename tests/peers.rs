//! Real third-party peers against ringpost: Python smtplib/ssl, swaks,
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly
//! openssl s_client, Postfix's smtp-source. All on loopback. The Debian
//! packages are installed by .ci/run; a missing tool fails the test.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{make_cert, run, test_file, Server};

const USER: &str = "alice@example.test";
const PASSWORD: &str = "correct horse";

/// One argon2 hash for all tests (hashing is slow in debug builds).
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| ringpost::auth::hash(PASSWORD).unwrap())
}

/// A server with STARTTLS on mx, a STARTTLS submission listener and an
/// implicit-TLS listener, one user, and relay only for authenticated clients.
fn tls_server() -> Server {
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = make_cert(&dir);
    let extra = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\ntls = \"starttls\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\ntls = \"starttls\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\ntls = \"implicit\"\n\
[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
[relay]\nlocal_domains = [\"example.test\"]\nrelay_domains = [\"example.net\"]\nrelay_networks = []\n\
[[user]]\naddress = \"{USER}\"\npassword = \"{}\"\n",
        cert.display(),
        key.display(),
        password_hash()
    );
    Server::start_in(&dir, &extra)
}

fn python(mode: &str, srv_addr: std::net::SocketAddr, extra: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(test_file("peers/smtplib_check.py"))
        .arg(mode)
        .arg(srv_addr.ip().to_string())
        .arg(srv_addr.port().to_string())
        .args(extra);
    run(&mut cmd)
}

#[test]
fn python_smtplib_plain() {
    let srv = Server::start("");
    let out = python("plain", srv.addr(), &[]);
    assert!(out.contains("ok plain"), "{out}");
    assert_eq!(srv.queued_messages(), 5);
    let q = srv.queue();
    assert_eq!(q["recipients"], 8);
}

#[test]
fn python_smtplib_tls_auth_submission_and_injection() {
    let srv = tls_server();
    let [mx, submission, implicit] = [srv.smtp[0], srv.smtp[1], srv.smtp[2]];
    assert!(python("relay-denied", mx, &[]).contains("ok"));
    assert!(python("starttls", mx, &[USER, PASSWORD]).contains("ok starttls"));
    assert!(python("submission", submission, &[USER, PASSWORD]).contains("ok submission"));
    assert!(python("implicit", implicit, &[]).contains("ok implicit"));
    assert!(python("starttls-injection", mx, &[]).contains("ok starttls injection"));
    assert!(python("tls-garbage", mx, &[]).contains("ok tls garbage"));
    assert_eq!(srv.queued_messages(), 3);
    // smtplib tries PLAIN, then LOGIN, with the wrong password: two failures.
    assert_eq!(srv.metric("ringpost_auth_failures_total"), 2.0);
    assert_eq!(srv.metric("ringpost_auth_successes_total"), 2.0);
}

#[test]
fn received_header_names_tls_version_and_cipher() {
    let srv = tls_server();
    python("starttls", srv.smtp[0], &[USER, PASSWORD]);
    let dir = srv.dir.clone();
    assert_eq!(srv.stop().code(), Some(0));
    // The spool holds the message as it will be delivered; read the segment raw.
    let mut found = String::new();
    for entry in walk(&dir.join("spool")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if let Some(at) = text.find("Received: from client.test") {
            found = text[at..].chars().take(400).collect();
        }
    }
    assert!(found.contains("(using TLSv1.3 with cipher TLS13_"), "{found}");
    assert!(found.contains("by mx.test (ringpost) with ESMTPSA id "), "{found}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "seg") {
            out.push(p);
        }
    }
    out
}

#[test]
fn swaks_plain_pipelining_and_tls_auth() {
    let srv = tls_server();
    let port = srv.smtp[0].port().to_string();
    let server = format!("127.0.0.1:{port}");
    let out = run(Command::new("swaks").args([
        "--server",
        &server,
        "--from",
        "s@x.test",
        "--to",
        "r@example.net",
        "--pipeline",
        "--timeout",
        "20",
    ]));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let auth = |mechanism: &str| {
        run(Command::new("swaks").args([
            "--server",
            &server,
            "--from",
            USER,
            "--to",
            "far@elsewhere.test",
            "--tls",
            "--auth",
            mechanism,
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
            "--timeout",
            "20",
        ]))
    };
    let out = auth("PLAIN");
    assert!(out.contains("235 2.7.0") && out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let out = auth("LOGIN");
    assert!(out.contains("235 2.7.0"), "{out}");
    assert_eq!(srv.queued_messages(), 3);
}

#[test]
fn openssl_s_client_starttls() {
    let srv = tls_server();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &srv.smtp[0].to_string(), "-starttls", "smtp", "-crlf", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"EHLO client.test\nNOOP\nQUIT\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("250-mx.test") && text.contains("250 2.0.0 Ok") && text.contains("221 2.0.0"),
        "{text}"
    );
    assert!(!text.contains("STARTTLS"), "not offered again inside TLS: {text}");
}

#[test]
fn smtp_source_thousands_over_many_connections() {
    let srv = Server::start("");
    let target = srv.addr().to_string();
    // 50 sessions, connections reused (-d), 5000 messages of 1 KiB.
    run(Command::new("smtp-source").args([
        "-s",
        "50",
        "-m",
        "5000",
        "-l",
        "1024",
        "-d",
        "-f",
        "s@x.test",
        "-t",
        "r@example.net",
        &target,
    ]));
    // A new connection per message.
    run(Command::new("smtp-source").args([
        "-s",
        "20",
        "-m",
        "500",
        "-l",
        "1024",
        "-f",
        "s@x.test",
        "-t",
        "r@example.net",
        &target,
    ]));
    assert_eq!(srv.queued_messages(), 5500);
    assert_eq!(srv.metric("ringpost_messages_accepted_total"), 5500.0);
}

#[test]
fn io_uring_carries_all_socket_io() {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = dir.join("ringpost.toml");
    std::fs::write(&config, common::config_text(&dir, "")).unwrap();
    let trace = dir.join("strace.txt");
    // strace -f -c follows every thread and counts syscalls.
    let mut child = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&trace)
        .arg(common::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (apt-get install strace)");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let addr = loop {
        let line = lines.next().expect("ringpost printed its listener").unwrap();
        if let Some(rest) = line.strip_prefix("ringpost: listening ") {
            break rest.split(' ').nth(1).unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    run(Command::new("smtp-source").args([
        "-s",
        "5",
        "-m",
        "200",
        "-l",
        "1024",
        "-d",
        "-f",
        "s@x.test",
        "-t",
        "r@example.net",
        &addr,
    ]));
    // Stop ringpost itself (strace's child); strace exits with it and writes the summary.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let ringpost: i32 = children.split_whitespace().next().expect("ringpost under strace").parse().unwrap();
    // SAFETY: sends a signal to a process we started; no memory is involved.
    unsafe { libc::kill(ringpost, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "ringpost under strace exited cleanly");
    let summary = std::fs::read_to_string(&trace).unwrap();
    // A syscall that was made has a row whose last column is its name.
    let count = |name: &str| summary.lines().any(|l| l.split_whitespace().last() == Some(name));
    assert!(count("io_uring_enter"), "io_uring carries the I/O:\n{summary}");
    for forbidden in [
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "accept",
        "accept4",
        "recvfrom",
        "recvmsg",
        "sendto",
        "sendmsg",
    ] {
        assert!(!count(forbidden), "{forbidden} must not appear:\n{summary}");
    }
}
