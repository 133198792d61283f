//! POP3 end to end: mail arrives over SMTP, local delivery writes the Maildir,
//! and Python's poplib reads it over plain text, STLS and implicit TLS.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{make_cert, run, test_file, wait_until, Server};

const USER: &str = "alice@example.test";
const PASSWORD: &str = "pop secret";

fn python(mode: &str, addr: std::net::SocketAddr, args: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(test_file("peers/pop3_check.py"))
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args);
    run(&mut cmd)
}

/// Like [`python`], but a failed check is `false` (for retries).
fn python_ok(mode: &str, addr: std::net::SocketAddr, args: &[&str]) -> bool {
    Command::new("python3")
        .arg(test_file("peers/pop3_check.py"))
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Listeners: [0] mx, [1] pop3 with STLS, [2] pop3 on implicit TLS.
fn server() -> Server {
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = make_cert(&dir);
    let hash = ringpost::auth::hash(PASSWORD).unwrap();
    let extra = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3\"\ntls = \"starttls\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3\"\ntls = \"implicit\"\n\
[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
[relay]\nlocal_domains = [\"example.test\"]\n\
[[user]]\naddress = \"{USER}\"\npassword = \"{hash}\"\n",
        cert.display(),
        key.display(),
    );
    Server::start_in(&dir, &extra)
}

fn maildir(srv: &Server) -> PathBuf {
    srv.dir.join("mail/example.test/alice")
}

fn files(dir: &Path) -> usize {
    ["new", "cur"].iter().map(|s| std::fs::read_dir(dir.join(s)).map_or(0, |d| d.count())).sum()
}

fn deliver(srv: &Server, n: usize) {
    let before = files(&maildir(srv));
    let out = python("send", srv.smtp[0], &[&n.to_string(), USER]);
    assert!(out.contains("ok send"), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || files(&maildir(srv)) == before + n),
        "local delivery: {} files",
        files(&maildir(srv))
    );
}

#[test]
fn poplib_reads_deletes_and_only_quit_removes() {
    let srv = server();
    deliver(&srv, 3);
    let pop = srv.smtp[1];
    // Deleting without QUIT removes nothing; the lock goes with the connection
    // (the next login may race the server noticing the close, hence retries).
    let out = python("keep", pop, &[USER, PASSWORD, "3"]);
    assert!(out.contains("ok keep"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || python_ok("plain", pop, &[USER, PASSWORD, "3"])));
    assert_eq!(files(&maildir(&srv)), 3);
    let out = python("read", pop, &[USER, PASSWORD, "3"]);
    assert!(out.contains("ok read"), "{out}");
    assert_eq!(files(&maildir(&srv)), 2, "QUIT removed the deleted message");
    let out = python("read", pop, &[USER, PASSWORD, "2"]);
    assert!(out.contains("ok read"), "{out}");
    assert_eq!(files(&maildir(&srv)), 1);
}

#[test]
fn one_session_per_maildrop_and_tls_both_ways() {
    let srv = server();
    deliver(&srv, 1);
    let out = python("inuse", srv.smtp[1], &[USER, PASSWORD]);
    assert!(out.contains("ok inuse"), "{out}");
    let out = python("stls", srv.smtp[1], &[USER, PASSWORD, "1"]);
    assert!(out.contains("ok stls"), "{out}");
    let out = python("pop3s", srv.smtp[2], &[USER, PASSWORD, "1"]);
    assert!(out.contains("ok pop3s"), "{out}");
}

#[test]
fn wrong_passwords_and_unknown_users_are_refused_alike() {
    let srv = server();
    let mut c = common::Client::connect(srv.smtp[1]);
    assert!(c.reply().starts_with("+OK"));
    for (user, pass) in [(USER, "wrong"), ("nobody@example.test", PASSWORD)] {
        c.send_str(&format!("USER {user}\r\n"));
        assert!(c.reply().starts_with("+OK"));
        c.send_str(&format!("PASS {pass}\r\n"));
        assert_eq!(c.reply(), "-ERR [AUTH] invalid user name or password\r\n");
    }
    c.send_str("STAT\r\n");
    assert!(c.reply().starts_with("-ERR"));
    c.send_str(&format!("USER {USER}\r\nPASS x\r\n"));
    assert!(c.reply().starts_with("+OK"));
    assert!(c.reply().starts_with("-ERR [AUTH]"));
    assert!(c.closed(), "three failed logins end the session");
}

#[test]
fn shutdown_ends_sessions_without_removing_anything() {
    let mut srv = server();
    deliver(&srv, 2);
    let mut c = common::Client::connect(srv.smtp[1]);
    assert!(c.reply().starts_with("+OK"));
    c.send_str(&format!("USER {USER}\r\nPASS {PASSWORD}\r\n"));
    assert!(c.reply().starts_with("+OK"));
    assert_eq!(c.reply(), format!("+OK {USER} has 2 messages ({} octets)\r\n", total_size(&srv)));
    c.send_str("DELE 1\r\n");
    assert_eq!(c.reply(), "+OK message 1 deleted\r\n");
    srv.signal(libc::SIGTERM);
    assert_eq!(c.reply(), "-ERR [SYS/TEMP] server shutting down\r\n");
    assert!(c.closed());
    assert!(srv.wait(Duration::from_secs(20)).success());
    assert_eq!(files(&maildir(&srv)), 2, "no UPDATE without QUIT");
}

/// The maildrop's size as POP3 counts it: every line ends in CRLF on the
/// wire, so each LF of a file not preceded by CR adds a byte (and a last
/// line without a line end gets one).
fn total_size(srv: &Server) -> u64 {
    ["new", "cur"]
        .iter()
        .filter_map(|s| std::fs::read_dir(maildir(srv).join(s)).ok())
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            let bare_lf =
                (0..bytes.len()).filter(|&i| bytes[i] == b'\n' && (i == 0 || bytes[i - 1] != b'\r')).count();
            let unterminated = if bytes.ends_with(b"\n") || bytes.is_empty() { 0 } else { 2 };
            (bytes.len() + bare_lf + unterminated) as u64
        })
        .sum()
}

/// A message another program wrote into the Maildir with LF line ends (as
/// Dovecot's LDA does), without sizes in its name: POP3 reports and sends
/// it with CRLF line ends.
#[test]
fn files_with_lf_line_ends_are_sized_as_sent() {
    let srv = server();
    let new = maildir(&srv).join("new");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir(&srv).join(sub)).unwrap();
    }
    let text = "Subject: written elsewhere\n\nfirst line\nsecond line\n";
    std::fs::write(new.join("1795432817.M1P1.elsewhere"), text).unwrap();
    let wire = text.len() + text.matches('\n').count(); // each LF becomes CRLF
    let mut c = common::Client::connect(srv.smtp[1]);
    assert!(c.reply().starts_with("+OK"));
    c.send_str(&format!("USER {USER}\r\nPASS {PASSWORD}\r\nLIST 1\r\nRETR 1\r\n"));
    assert!(c.reply().starts_with("+OK"));
    assert!(c.reply().starts_with("+OK"));
    assert_eq!(c.reply(), format!("+OK 1 {wire}\r\n"));
    assert!(c.reply().starts_with("+OK"));
    let mut got = 0;
    loop {
        let line = c.line();
        if line == ".\r\n" {
            break;
        }
        assert!(line.ends_with("\r\n"), "{line:?}");
        got += line.len();
    }
    assert_eq!(got, wire, "RETR sends what LIST said");
}

/// A POP3 client over the connection limit is answered in POP3, not with
/// an SMTP line.
#[test]
fn over_the_connection_limit_pop3_gets_a_pop3_answer() {
    let extra = "[limits]\nconnections = 1\n\
[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"pop3\"\n";
    let srv = Server::start(extra);
    let mut first = common::Client::connect(srv.smtp[1]);
    assert!(first.reply().starts_with("+OK"));
    let mut second = common::Client::connect(srv.smtp[1]);
    assert_eq!(second.reply(), "-ERR [SYS/TEMP] too many connections, try again later\r\n");
    assert!(second.closed());
    let mut smtp = srv.client();
    assert!(smtp.reply().starts_with("421 4.7.0"), "SMTP keeps its own answer");
}
