//! Byte-exact SMTP transcripts against a real listener on 127.0.0.1:0.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::time::Duration;

use common::{queue_id, Server};

#[test]
fn greeting_ehlo_and_one_message() {
    let srv = Server::start("");
    let mut c = srv.client();
    assert_eq!(c.reply(), "220 mx.test ESMTP\r\n");
    let ehlo = c.cmd("EHLO client.test", "250");
    assert_eq!(
        ehlo,
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n"
    );
    let id = c.send_message("s@sender.test", &["r@example.net"], "Subject: t\r\n\r\nhello\r\n");
    assert_eq!(c.cmd("QUIT", "221"), "221 2.0.0 Bye\r\n");
    assert!(c.closed());
    let (status, body) = srv.http("GET", &format!("/queue/{id}"));
    assert_eq!(status, 200, "{body}");
    let q = srv.queue();
    assert_eq!(q["messages"], 1);
    assert_eq!(q["recipients"], 1);
    assert_eq!(q["domains"][0]["domain"], "example.net");
    assert_eq!(srv.http("GET", "/health"), (200, "ok\n".to_owned()));
}

#[test]
fn pipelined_transactions_in_one_write() {
    let srv = Server::start("");
    let mut c = srv.client();
    c.expect("220");
    let mut batch = String::from("EHLO c.test\r\n");
    for i in 0..20 {
        batch += &format!("MAIL FROM:<s{i}@x.test>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n");
        // With PIPELINING the client still waits for 354 (RFC 2920), so the
        // content goes in the same write only in this deliberately eager test.
        batch += &format!("Subject: {i}\r\n\r\nbody\r\n.\r\n");
    }
    batch += "QUIT\r\n";
    c.send_str(&batch);
    c.expect("250");
    let mut ids = Vec::new();
    for _ in 0..20 {
        c.expect("250");
        c.expect("250");
        c.expect("354");
        ids.push(queue_id(&c.expect("250 2.0.0 Ok: queued as")).unwrap().to_owned());
    }
    c.expect("221");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every message got its own id");
    assert_eq!(srv.queued_messages(), 20);
}

#[test]
fn smuggling_never_splits_a_message() {
    let srv = Server::start("");
    for smuggle in ["\n.\n", "\n.\r\n", "\r.\r", "\r\n.\n", "\r\n.\r"] {
        let mut c = srv.client();
        c.open_data("a@x.test", "r@example.net");
        let payload = format!(
            "Subject: one\r\n\r\nx{smuggle}MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\
Subject: smuggled\r\n\r\nevil\r\n.\r\n"
        );
        c.send_str(&payload);
        let r = c.expect("550 5.5.2");
        assert!(r.contains("bare CR or LF"), "{r}");
        // The next reply answers our NOOP, not a smuggled command.
        assert_eq!(c.cmd("NOOP", "250"), "250 2.0.0 Ok\r\n");
    }
    assert_eq!(srv.queued_messages(), 0, "nothing was accepted");
}

#[test]
fn bdat_over_the_wire() {
    let srv = Server::start("");
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@x.test> BODY=8BITMIME", "250");
    c.cmd("RCPT TO:<r@example.net>", "250");
    c.send_str("BDAT 14\r\nSubject: b\r\n\r\n");
    assert_eq!(c.reply(), "250 2.0.0 14 octets received\r\n");
    c.send_str("BDAT 6 LAST\r\nbody\r\n");
    let r = c.expect("250 2.0.0 Ok: queued as");
    let id = queue_id(&r).unwrap();
    assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 200);
}

#[test]
fn limits_and_errors() {
    let srv = Server::start("[limits]\nmessage_size = 100\nrecipients = 2\nline_length = 600\n");
    let mut c = srv.client();
    c.expect("220");
    assert!(c.cmd("EHLO c.test", "250").contains("250-SIZE 100\r\n"));
    c.cmd("MAIL FROM:<a@x.test> SIZE=101", "552 5.3.4");
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<r1@example.net>", "250");
    c.cmd("RCPT TO:<r2@example.net>", "250");
    c.cmd("RCPT TO:<r3@example.net>", "452 4.5.3");
    c.cmd("DATA", "354");
    c.send_str(&format!("{}\r\n.\r\n", "x".repeat(200)));
    c.expect("552 5.3.4");
    assert_eq!(srv.metric("ringpost_messages_rejected_total"), 1.0);
    assert_eq!(srv.metric("ringpost_recipients_rejected_total"), 1.0);
    c.cmd(&format!("NOOP {}", "y".repeat(700)), "500 5.5.2");
    c.cmd("RSET", "250");
    // A line of 100 kB without CRLF is discarded as it streams in.
    c.send(&vec![b'z'; 100_000]);
    c.send_str("\r\n");
    c.expect("500 5.5.2 Line too long");
    c.cmd("NOOP", "250");
    assert_eq!(srv.queued_messages(), 0);
}

#[test]
fn relay_control_and_unknown_users() {
    let hash = ringpost::auth::hash("pw").unwrap();
    let srv = Server::start(&format!(
        "[relay]\nlocal_domains = [\"example.test\"]\nrelay_domains = [\"relay.test\"]\nrelay_networks = []\n\
[[user]]\naddress = \"alice@example.test\"\npassword = \"{hash}\"\n"
    ));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@x.test>", "250");
    assert_eq!(c.cmd("RCPT TO:<x@elsewhere.test>", "554"), "554 5.7.1 Relay access denied\r\n");
    c.cmd("RCPT TO:<bob@example.test>", "550 5.1.1");
    c.cmd("RCPT TO:<alice@example.test>", "250");
    c.cmd("RCPT TO:<anyone@relay.test>", "250");
    c.cmd("RCPT TO:<postmaster@example.test>", "250");
    c.cmd("QUIT", "221");
    assert_eq!(srv.metric("ringpost_recipients_rejected_total"), 2.0);
}

/// The tail of an over-long line inside an AUTH exchange is not a command.
#[test]
fn an_overlong_auth_response_is_not_run_as_a_command() {
    let hash = ringpost::auth::hash("pw").unwrap();
    let srv = Server::start(&format!(
        "[relay]\nrelay_networks = []\n[[user]]\naddress = \"alice@example.test\"\npassword = \"{hash}\"\n"
    ));
    let mut c = srv.client();
    c.expect("220");
    assert!(c.cmd("EHLO c.test", "250").contains("AUTH PLAIN LOGIN"));
    c.cmd("AUTH LOGIN", "334");
    // The line's start arrives first, longer than line_length; its tail later.
    c.send_str(&"A".repeat(3000));
    std::thread::sleep(Duration::from_millis(300));
    c.send_str("MAIL FROM:<a@x.test>\r\n");
    c.expect("500 5.5.2");
    // Not in a transaction: RCPT needs MAIL first.
    c.cmd("RCPT TO:<alice@example.test>", "503 5.5.1");
    c.cmd("QUIT", "221");
}

/// A web page cannot drive the admin API through a browser on the same
/// machine: a name that is not this server in `Host` (DNS rebinding) and
/// another site in `Origin` (a cross-site form) are refused, and nothing
/// happens.
#[test]
fn admin_refuses_foreign_hosts_and_origins() {
    let srv = Server::start("[delivery]\nhold = true\ndns_servers = [\"127.0.0.1:9\"]\n");
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let id = c.send_message("a@x.test", &["r@example.net"], "Subject: s\r\n\r\nx\r\n");
    let admin = srv.admin;
    let local = format!("Host: {admin}\r\n");
    let refused = [
        ("GET", "/queue".to_owned(), "Host: attacker.example\r\n".to_owned()),
        ("GET", "/metrics".to_owned(), String::new()),
        ("POST", "/queue/flush".to_owned(), format!("{local}Origin: http://attacker.example\r\n")),
        ("DELETE", format!("/queue/{id}"), format!("{local}Origin: http://attacker.example\r\n")),
        ("DELETE", format!("/queue/{id}"), format!("Host: localhost.attacker.example:{}\r\n", admin.port())),
        ("POST", format!("/queue/{id}/bounce"), format!("{local}Origin: null\r\n")),
    ];
    for (method, path, headers) in &refused {
        let (status, body) = common::http_with(admin, method, path, headers);
        assert_eq!(status, 403, "{method} {path} {headers:?}: {body}");
    }
    assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 200, "the message is still queued");
    let ok = [format!("Host: localhost:{}\r\n", admin.port()), format!("{local}Origin: http://{admin}\r\n")];
    for headers in &ok {
        assert_eq!(common::http_with(admin, "GET", "/queue", headers).0, 200, "{headers:?}");
    }
    assert_eq!(srv.http("DELETE", &format!("/queue/{id}")).0, 200);
}

#[test]
fn http_and_garbage_are_refused() {
    let srv = Server::start("");
    let mut c = srv.client();
    c.expect("220");
    c.send_str("GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    c.expect("554 5.7.0");
    assert!(c.closed());

    let mut c = srv.client();
    c.expect("220");
    let garbage: Vec<u8> = (0..40_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    // The server may close (421) before all of it is written: not a failure.
    use std::io::Write;
    let _ = c.stream.write_all(&garbage);
    let _ = c.stream.write_all(b"\r\n");
    let mut got = String::new();
    while !got.contains("421 4.7.0") {
        got += &c.reply();
    }
    assert!(c.closed());
    // The server is still up for everyone else.
    let mut ok = srv.client();
    ok.expect("220");
}

#[test]
fn idle_timeout_closes_with_421() {
    let srv = Server::start("[limits]\ncommand_timeout = \"1s\"\n");
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let started = std::time::Instant::now();
    c.expect("421 4.4.2");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(c.closed());
}

#[test]
fn slow_data_times_out() {
    let srv = Server::start("[limits]\ndata_timeout = \"1s\"\n");
    let mut c = srv.client();
    c.open_data("a@x.test", "r@example.net");
    c.send_str("partial line");
    c.expect("421 4.4.2");
    assert_eq!(srv.queued_messages(), 0);
}

#[test]
fn connection_limits() {
    let srv =
        Server::start("[limits]\nconnections = 3\nconnections_per_ip = 2\n[relay]\nrelay_networks = []\n");
    let mut a = srv.client();
    a.expect("220");
    let mut b = srv.client();
    b.expect("220");
    let mut c = srv.client();
    c.expect("421 4.7.0");
    assert!(c.closed());
    drop(a);
    assert!(common::wait_until(Duration::from_secs(5), || srv.metric("ringpost_connections") == 1.0));
    let mut d = srv.client();
    d.expect("220");
    b.cmd("NOOP", "250");
}

#[test]
fn total_connection_limit_applies_to_trusted_clients() {
    let srv = Server::start("[limits]\nconnections = 2\nconnections_per_ip = 1\n");
    // Loopback is in relay_networks by default: exempt from the per-IP limit.
    let mut a = srv.client();
    a.expect("220");
    let mut b = srv.client();
    b.expect("220");
    let mut c = srv.client();
    c.expect("421 4.7.0");
}

#[test]
fn sigterm_closes_idle_sessions_and_lets_transactions_finish() {
    let srv = Server::start("[limits]\nshutdown_grace = \"10s\"\n");
    let mut idle = srv.client();
    idle.expect("220");
    idle.cmd("EHLO c.test", "250");
    let mut busy = srv.client();
    busy.open_data("a@x.test", "r@example.net");
    busy.send_str("Subject: in flight\r\n\r\n");
    srv.signal(libc::SIGTERM);
    idle.expect("421 4.3.2");
    assert!(idle.closed());
    busy.send_str("done\r\n.\r\n");
    busy.expect("250 2.0.0 Ok: queued as");
    busy.expect("421 4.3.2");
    let mut srv = srv;
    let status = srv.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", srv.stderr());
}

#[test]
fn shutdown_grace_bounds_slow_transactions() {
    let srv = Server::start("[limits]\nshutdown_grace = \"1s\"\n");
    let mut busy = srv.client();
    busy.expect("220");
    busy.cmd("EHLO c.test", "250");
    busy.cmd("MAIL FROM:<a@x.test>", "250");
    srv.signal(libc::SIGTERM);
    busy.expect("421 4.3.2");
    let mut srv = srv;
    assert_eq!(srv.wait(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn messages_survive_restart_and_delete_frees_segments() {
    let srv = Server::start("[spool]\nsegment_size = 1048576\n");
    let dir = srv.dir.clone();
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let body = format!("Subject: big\r\n\r\n{}\r\n", "b".repeat(300_000));
    let ids: Vec<String> = (0..8).map(|_| c.send_message("a@x.test", &["r@example.net"], &body)).collect();
    c.cmd("QUIT", "221");
    assert_eq!(srv.stop().code(), Some(0));

    let srv = Server::start_in(&dir, "[spool]\nsegment_size = 1048576\n");
    assert_eq!(srv.queued_messages(), 8);
    let before = segment_files(&dir);
    assert!(before.len() >= 3, "8 x 300 kB in 1 MiB segments: {before:?}");
    for id in &ids {
        assert_eq!(srv.http("DELETE", &format!("/queue/{id}")).0, 200);
    }
    assert_eq!(srv.http("DELETE", &format!("/queue/{}", ids[0])).0, 404);
    assert_eq!(srv.queued_messages(), 0);
    // A new message forces new segment activity; dead ones are unlinked but
    // one per family, kept (under its old name) to be recycled.
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.send_message("a@x.test", &["r@example.net"], "Subject: s\r\n\r\nx\r\n");
    let deleted =
        common::wait_until(Duration::from_secs(5), || at_most_one_per_family(&before, &segment_files(&dir)));
    assert!(deleted, "spent segments deleted: {before:?} -> {:?}", segment_files(&dir));
    assert_eq!(srv.stop().code(), Some(0));
    let srv = Server::start_in(&dir, "[spool]\nsegment_size = 1048576\n");
    assert_eq!(srv.queued_messages(), 1, "deleted messages stay deleted");
}

#[test]
fn thread_count_change_adopts_old_families() {
    let srv = Server::start("threads = 2\n");
    let dir = srv.dir.clone();
    for _ in 0..10 {
        let mut c = srv.client();
        c.expect("220");
        c.cmd("EHLO c.test", "250");
        c.send_message("a@x.test", &["r@example.net"], "Subject: s\r\n\r\nx\r\n");
    }
    assert_eq!(srv.stop().code(), Some(0));
    std::fs::write(dir.join("ringpost.toml"), common::config_text(&dir, "threads = 1\n")).unwrap();
    let srv = Server::start_with_config(&dir, &dir.join("ringpost.toml"));
    assert_eq!(srv.queued_messages(), 10);
    assert!(!dir.join("spool/w001").exists(), "family 1 was adopted by worker 0");
    // The copies carry their new segment's tag: the next start reads them all.
    assert_eq!(srv.stop().code(), Some(0));
    let srv = Server::start_with_config(&dir, &dir.join("ringpost.toml"));
    assert_eq!(srv.queued_messages(), 10);
    assert!(!srv.stderr().contains("torn"), "{}", srv.stderr());
}

/// Offsets and lengths of the Message records (kind 1) in a segment file
/// (today's format: a 32-byte header, `RPR3` records, an `RPE3` end mark).
fn message_records(file: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 32;
    while file.len() >= at + 16 && &file[at..at + 4] == b"RPR3" {
        let len = 16 + u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        if file[at + 4] == 1 {
            out.push((at, len));
        }
        at += len;
    }
    assert_eq!(&file[at..at + 4], b"RPE3", "records end with an end mark");
    out
}

/// One flipped bit in the middle of a segment costs that one message, not
/// the rest of the segment: the others are delivered from the same file
/// after a restart, the damage is logged with the segment and offset, and
/// counted in /metrics.
#[test]
fn a_damaged_record_costs_only_itself() {
    let extra = "threads = 1\n[delivery]\nhold = true\ndns_servers = [\"127.0.0.1:9\"]\n";
    let srv = Server::start(extra);
    let dir = srv.dir.clone();
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let ids: Vec<String> = (0..10)
        .map(|i| c.send_message("a@x.test", &["r@example.net"], &format!("Subject: {i}\r\n\r\nbody {i}\r\n")))
        .collect();
    c.cmd("QUIT", "221");
    assert_eq!(srv.stop().code(), Some(0));

    let mut damaged = None;
    for path in segment_files(&dir) {
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() < 36 || &bytes[32..36] != b"RPR3" {
            continue;
        }
        let records = message_records(&bytes);
        assert_eq!(records.len(), 10, "all ten in one segment");
        let (at, len) = records[3];
        bytes[at + len - 10] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        damaged = Some((path, at));
    }
    let (path, at) = damaged.expect("the segment with the messages");

    let srv = Server::start_in(&dir, extra);
    assert_eq!(srv.queued_messages(), 9, "only the damaged message is lost");
    assert_eq!(srv.http("GET", &format!("/queue/{}", ids[3])).0, 404);
    for id in ids.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, id)| id) {
        assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 200, "{id} recovered");
    }
    assert_eq!(srv.metric("ringpost_spool_recovery_corrupt_total"), 1.0);
    let log = srv.stderr();
    let line = log.lines().find(|l| l.contains("damaged")).unwrap_or_else(|| panic!("logged: {log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&path.display().to_string()) && line.contains(&format!("offset={at}")), "{line}");
}

/// The spool's segment files.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(&dir.join("spool")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect()
}

/// Whether at most one file of `before` per family directory is in `after`
/// (the dead segment each family keeps to recycle).
fn at_most_one_per_family(before: &[std::path::PathBuf], after: &[std::path::PathBuf]) -> bool {
    let mut left: Vec<_> = before.iter().filter(|p| after.contains(p)).filter_map(|p| p.parent()).collect();
    let n = left.len();
    left.dedup();
    left.len() == n
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn config_errors_exit_2_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "threads = 1\n[limits]\nmesage_size = 5\n").unwrap();
    let out =
        std::process::Command::new(common::BIN).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 3") && err.contains("mesage_size"), "{err}");
}

/// A host name that is not a domain would go into the greeting as it is and
/// into `<postmaster>`'s address, which the spool could then not read back
/// (the mail was acknowledged and lost). It is a config error instead.
#[test]
fn a_bad_hostname_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    for host in ["mx.test.", "mx_test", "", "mx.test\\r\\n250 x"] {
        let path = dir.path().join("host.toml");
        std::fs::write(&path, format!("threads = 1\nhostname = \"{host}\"\n")).unwrap();
        let out = common::run_briefly(
            std::process::Command::new(common::BIN).args(["serve", "--config"]).arg(&path),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{host:?}: {err}");
        assert!(err.contains("host.toml: line 2: hostname"), "{host:?}: {err}");
    }
}

/// `<postmaster>` (no domain) takes our host name; the message must read
/// back after a restart.
#[test]
fn mail_to_bare_postmaster_survives_a_restart() {
    let extra = "[delivery]\nhold = true\ndns_servers = [\"127.0.0.1:9\"]\n";
    let srv = Server::start(extra);
    let dir = srv.dir.clone();
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<Postmaster>", "250");
    c.cmd("DATA", "354");
    c.send_str("Subject: hi\r\n\r\nhello\r\n.\r\n");
    let id = common::queue_id(&c.expect("250")).unwrap().to_owned();
    c.cmd("QUIT", "221");
    assert_eq!(srv.stop().code(), Some(0));
    let srv = Server::start_in(&dir, extra);
    let (status, body) = srv.http("GET", &format!("/queue/{id}"));
    assert_eq!(status, 200, "{body}");
    assert!(!srv.stderr().contains("undecodable"), "{}", srv.stderr());
}

#[test]
fn bind_failure_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = common::config_text(dir.path(), &format!("[[listener]]\naddress = \"{addr}\"\n"));
    std::fs::write(&path, text).unwrap();
    let out =
        std::process::Command::new(common::BIN).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr.to_string()) && err.contains("in use"), "{err}");
}

#[test]
fn second_server_on_same_spool_is_refused() {
    let srv = Server::start("");
    let path = srv.dir.join("second.toml");
    std::fs::write(&path, common::config_text(&srv.dir, "")).unwrap();
    let out =
        std::process::Command::new(common::BIN).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"));
}

#[test]
fn overflowing_durations_are_config_errors_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap().keep();
    let huge = "[limits]\ncommand_timeout = \"18446744073709551615s\"\n";
    std::fs::write(dir.join("huge.toml"), common::config_text(&dir, huge)).unwrap();
    let out = common::run_briefly(
        std::process::Command::new(common::BIN).args(["serve", "--config"]).arg(dir.join("huge.toml")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("huge.toml: line") && err.contains("command_timeout"), "{err}");

    let srv = Server::start("");
    let reload = "[limits]\ndata_timeout = \"18446744073709551615s\"\n";
    std::fs::write(&srv.config_path, common::config_text(&srv.dir, reload)).unwrap();
    srv.signal(libc::SIGHUP);
    assert!(common::wait_until(Duration::from_secs(10), || srv
        .stderr()
        .contains("keeping the old configuration")));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.send_message("a@x.test", &["r@example.net"], "Subject: s\r\n\r\nstill serving\r\n");
    c.cmd("QUIT", "221");
}

#[test]
fn message_memory_budget_is_shared_by_all_sessions() {
    // A message in progress counts its buffer (~128 KiB for 100 kB) and the
    // copy the spool will make (100 kB): one fits, two do not.
    let srv = Server::start("[limits]\nmessage_memory = 350000\n");
    let open = |srv: &Server| {
        let mut c = srv.client();
        c.open_data("a@x.test", "r@example.net");
        c
    };
    let chunk = format!("{}\r\n", "m".repeat(998));
    let mut a = open(&srv);
    for _ in 0..100 {
        a.send_str(&chunk); // 100 kB held by A
    }
    let held = || srv.metric("ringpost_message_memory_bytes");
    assert!(
        common::wait_until(Duration::from_secs(5), || held() >= 200_000.0),
        "A's content counted: {}",
        held()
    );
    let mut b = open(&srv);
    for _ in 0..100 {
        b.send_str(&chunk); // B would need another 100 kB: over the budget
    }
    b.send_str(".\r\n");
    b.expect("452 4.3.1");
    a.send_str(".\r\n");
    a.expect("250 2.0.0 Ok: queued as");
    // With A's memory released, B succeeds on retry.
    b.cmd("MAIL FROM:<a@x.test>", "250");
    b.cmd("RCPT TO:<r@example.net>", "250");
    b.cmd("DATA", "354");
    for _ in 0..100 {
        b.send_str(&chunk);
    }
    b.send_str(".\r\n");
    b.expect("250 2.0.0 Ok: queued as");
}

/// Sessions that ended a transaction without a stored message (a refused
/// message, a BDAT transaction reset) and then sit idle must not keep its
/// content counted against the shared budget.
#[test]
fn refused_and_reset_transactions_give_their_memory_back() {
    let srv = Server::start("[limits]\nmessage_memory = 67108864\nmessage_size = 26214400\n");
    let lines = |mib: usize| format!("{}\r\n", "m".repeat(1022)).repeat(mib * 1024);
    let twenty = lines(20);
    let mut idle = Vec::new();
    let mut c = srv.client();
    c.open_data("a@x.test", "r@example.net");
    c.send_str(&format!("{twenty}bare\nlf\r\n.\r\n"));
    c.expect("550 5.5.2");
    idle.push(c);
    let mut c = srv.client();
    c.open_data("a@x.test", "r@example.net");
    c.send_str(&format!("{}.\r\n", lines(26)));
    c.expect("552 5.3.4");
    idle.push(c);
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<a@x.test>", "250");
    c.cmd("RCPT TO:<r@example.net>", "250");
    c.send_str(&format!("BDAT {}\r\n{twenty}", twenty.len()));
    c.expect("250");
    c.cmd("RSET", "250");
    idle.push(c);
    // The three sit idle; another client's 20 MiB message still fits.
    let mut d = srv.client();
    d.open_data("a@x.test", "r@example.net");
    d.send_str(&format!("{twenty}.\r\n"));
    d.expect("250 2.0.0");
    for mut c in idle {
        c.cmd("NOOP", "250");
    }
}

#[test]
fn refuses_to_start_without_io_uring() {
    // monoio's detection treats this variable like a kernel without io_uring.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, common::config_text(dir.path(), "")).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring") && err.contains("does not fall back to epoll"), "{err}");
}

#[test]
fn long_lived_messages_are_copied_forward_so_segments_can_go() {
    let extra = "[spool]\nsegment_size = 1048576\n";
    let srv = Server::start(extra);
    let dir = srv.dir.clone();
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let body = format!("Subject: big\r\n\r\n{}\r\n", "c".repeat(100_000));
    // Deliveries fail (no DNS), so every message stays queued and deferred.
    let ids: Vec<String> = (0..40).map(|_| c.send_message("a@x.test", &["r@example.net"], &body)).collect();
    c.cmd("QUIT", "221");
    let before = segment_files(&dir);
    assert!(before.len() >= 4, "{before:?}");
    // Keep one message in ten: every old segment is under 10% live.
    let keep: Vec<&String> = ids.iter().step_by(10).collect();
    for id in ids.iter().filter(|id| !keep.contains(id)) {
        assert_eq!(srv.http("DELETE", &format!("/queue/{id}")).0, 200);
    }
    // The compactor runs every 10 s. Of the segments older than the two
    // newest (the one written when the messages came, the next one prepared
    // ahead), only one may be left: the dead one kept to be recycled.
    let mut old = before.clone();
    old.sort();
    old.truncate(old.len() - 2);
    assert!(
        common::wait_until(Duration::from_secs(40), || at_most_one_per_family(&old, &segment_files(&dir))),
        "old segments compacted away: {before:?} -> {:?}",
        segment_files(&dir)
    );
    for id in &keep {
        assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 200, "{id} still queued");
    }
    assert_eq!(srv.stop().code(), Some(0));
    let srv = Server::start_in(&dir, extra);
    assert_eq!(srv.queued_messages(), keep.len() as u64, "the copies survive a restart, once each");
    for id in &keep {
        assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 200);
    }
    // Their delivery progress moved with them.
    let (_, list) = srv.http("GET", "/queue/messages");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    for m in list["messages"].as_array().unwrap() {
        assert!(m["attempts"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["last_error"].as_str().is_some_and(|e| e.starts_with('4')), "{m}");
    }
}

#[test]
fn notifies_systemd_when_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, common::config_text(dir.path(), "")).unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    // SAFETY: signals to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(next(), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// `[limits] auth_failures_per_ip`: after that many failed logins, the
/// address gets 454 4.7.0 for AUTH, even with the right password; POP3
/// logins from it get -ERR [AUTH]; counted in /metrics.
#[test]
fn failed_logins_throttle_the_address() {
    let hash = ringpost::auth::hash("right").unwrap();
    let srv = Server::start(&format!(
        "[limits]\nauth_failures_per_ip = 3\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3\"\n\
         [relay]\nlocal_domains = [\"example.test\"]\n\
         [[user]]\naddress = \"alice@example.test\"\npassword = \"{hash}\"\n"
    ));
    use base64::Engine as _;
    let plain = |pass: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("\0alice@example.test\0{pass}"))
    };
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd(&format!("AUTH PLAIN {}", plain("right")), "235");
    c.cmd("QUIT", "221");
    for _ in 0..3 {
        let mut c = srv.client();
        c.expect("220");
        c.cmd("EHLO c.test", "250");
        c.cmd(&format!("AUTH PLAIN {}", plain("wrong")), "535");
        c.cmd("QUIT", "221");
    }
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd(&format!("AUTH PLAIN {}", plain("right")), "454 4.7.0");
    c.cmd("QUIT", "221");
    // POP3 from the same address.
    let mut p = common::Client::connect(srv.smtp[1]);
    assert!(p.line().starts_with("+OK"));
    p.send_str("USER alice@example.test\r\n");
    assert!(p.line().starts_with("+OK"));
    p.send_str("PASS right\r\n");
    let reply = p.line();
    assert!(reply.starts_with("-ERR [AUTH] too many failed logins"), "{reply}");
    assert_eq!(srv.metric("ringpost_auth_throttled_total"), 2.0);
    assert!(srv.stderr().contains("too many failed logins"), "{}", srv.stderr());
}
