//! MTA-to-MTA interop with Postfix itself, both ways: Postfix relaying into
//! ringpost (Postfix's SMTP client against our server), and ringpost
//! delivering into Postfix (our client against Postfix's smtpd): plain
//! relaying, per-recipient refusals and retries, DSN parameters, 8-bit
//! content and STARTTLS. Each test runs a private Postfix instance: its own
//! config, queue and log under a temporary directory, its `master` started
//! in the foreground and stopped by PID; nothing system-wide is touched.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, make_cert, run, wait_until, Receiver, Server};

/// A private Postfix instance listening on 127.0.0.1:`port`, relaying all
/// mail to `relay`.
struct Postfix {
    dir: PathBuf,
    master: Child,
}

impl Postfix {
    /// `extra` lines are appended to main.cf.
    fn start(name: &str, port: u16, relay: std::net::SocketAddr, extra: &str) -> Postfix {
        let top = tempfile::tempdir().unwrap().keep();
        let dir = top.join(format!("postfix-{name}"));
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // Postfix's own user must reach its data directory.
        use std::os::unix::fs::PermissionsExt;
        for d in [&top, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        run(Command::new("chown").arg("postfix").arg(dir.join("data")));
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\nmail_owner = postfix\n\
setgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = pf-{name}.test\n\
mydestination =\nmynetworks = 127.0.0.0/8\nrelay_domains =\nrelayhost = [{}]:{}\n\
smtp_dns_support_level = disabled\nsmtpd_peername_lookup = no\nnotify_classes =\nalias_maps =\n\
local_recipient_maps =\nmaillog_file = /dev/stdout\n{extra}",
            relay.ip(),
            relay.port()
        );
        std::fs::write(dir.join("etc/main.cf"), main_cf).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("postfix installed");
        let mut master: String = master
            .lines()
            .filter(|l| !l.starts_with("postlog"))
            .map(|l| {
                if l.starts_with("smtp      inet") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        master.push_str("\npostlog   unix-dgram n  -       n       -       1       postlogd\n");
        std::fs::write(dir.join("etc/master.cf"), master).unwrap();
        // The queue directories, made as `postfix check` would, for this
        // instance only (nothing under /etc/postfix changes).
        run(Command::new("/usr/lib/postfix/sbin/post-install")
            .arg(format!("config_directory={d}/etc"))
            .arg("meta_directory=/etc/postfix")
            .arg("create-missing"));
        let log = std::fs::File::create(dir.join("maillog")).unwrap();
        let master = Command::new("/usr/lib/postfix/sbin/master")
            .arg("-c")
            .arg(dir.join("etc"))
            .arg("-d")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("postfix master (apt-get install postfix)");
        let pf = Postfix { dir, master };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "postfix listens on {port}: {}",
            pf.log()
        );
        pf
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // master stops its whole process group (smtpd, qmgr, ...) on SIGTERM.
        // SAFETY: sending a signal to a child we started.
        unsafe {
            libc::kill(self.master.id() as i32, libc::SIGTERM);
        }
        let _ = self.master.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn postfix_relays_into_ringpost_and_ringpost_delivers() {
    let sink_port = free_port();
    let receiver = Receiver::start("127.0.0.1", sink_port, &[]);
    let srv = Server::start(&format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{sink_port}\"]\n[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    ));
    let pf_port = free_port();
    let _pf = Postfix::start("in", pf_port, srv.addr(), "");
    // A client submits to Postfix, which relays into ringpost, which delivers.
    let out = run(Command::new("swaks").args([
        "--server",
        &format!("127.0.0.1:{pf_port}"),
        "--from",
        "sender@x.test",
        "--to",
        "rcpt@y.test",
        "--header",
        "Subject: through postfix",
    ]));
    assert!(out.contains("250 2.0.0 Ok"), "{out}");
    let got = receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "delivered through Postfix and ringpost");
    let m = &got[0];
    assert!(m.contains("Subject: through postfix"), "{m}");
    assert!(m.contains("by mx.test (ringpost) with ESMTP"), "our Received header: {m}");
    assert!(m.contains("by pf-in.test (Postfix)"), "Postfix's Received header: {m}");
    assert!(wait_until(Duration::from_secs(10), || srv.queued_messages() == 0));
}

#[test]
fn ringpost_delivers_into_postfix() {
    let sink_port = free_port();
    let receiver = Receiver::start("127.0.0.1", sink_port, &[]);
    let pf_port = free_port();
    let _pf = Postfix::start("out", pf_port, format!("127.0.0.1:{sink_port}").parse().unwrap(), "");
    let srv = Server::start(&format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{pf_port}\"]\n[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    ));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    // The test client sends content as is, so the leading dot is stuffed here.
    for i in 0..5 {
        c.send_message(
            "s@x.test",
            &["r1@y.test", "r2@z.test"],
            &format!("Subject: to postfix {i}\r\n\r\n..dotted\r\n"),
        );
    }
    c.cmd("QUIT", "221");
    assert!(wait_until(Duration::from_secs(20), || srv.queued_messages() == 0), "Postfix took everything");
    let got = receiver.wait_for(5, Duration::from_secs(30));
    assert!(got.len() >= 5, "Postfix relayed them on: {}", got.len());
    for m in &got {
        assert!(m.contains("by pf-out.test (Postfix)") && m.contains("\r\n.dotted\r\n"), "{m}");
    }
    assert_eq!(srv.metric("ringpost_delivered_total"), 10.0);
}

/// Our client against Postfix's smtpd, recipient by recipient: one is
/// taken, one refused for good (a DSN to the sender, carrying Postfix's
/// reply), one refused for now and taken on a later attempt.
#[test]
fn postfix_refusals_bounce_or_retry_per_recipient() {
    let sink_port = free_port();
    let receiver = Receiver::start("127.0.0.1", sink_port, &[]);
    let pf_port = free_port();
    let access = tempfile::tempdir().unwrap().keep().join("access");
    let write_access = |later: &str| {
        std::fs::write(&access, format!("bad@y.test 550 5.1.1 no such mailbox here\n{later}")).unwrap();
    };
    write_access("later@y.test 450 4.2.1 mailbox busy, try later\n");
    // One connection per smtpd process, so a changed map is read at once.
    let extra = format!(
        "smtpd_recipient_restrictions = check_recipient_access texthash:{}, permit_mynetworks, reject\nmax_use = 1\n",
        access.display()
    );
    let _pf = Postfix::start("refuse", pf_port, format!("127.0.0.1:{sink_port}").parse().unwrap(), &extra);
    let srv = Server::start(&format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{pf_port}\"]\n[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1h\"]\n"
    ));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let id = c.send_message(
        "sender@x.test",
        &["ok@y.test", "bad@y.test", "later@y.test"],
        "Subject: three recipients\r\n\r\nbody\r\n",
    );
    // ok@ reaches the sink through Postfix, and so does the DSN for bad@.
    let got = receiver.wait_for(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "{}", _pf.log());
    let original = got.iter().find(|m| m.contains("Subject: three recipients")).expect("the message");
    assert!(original.contains("| <ok@y.test>"), "only ok@ got it: {original}");
    let dsn = got.iter().find(|m| m.contains("multipart/report")).expect("a DSN");
    assert!(dsn.starts_with("X-Envelope: <> ") && dsn.contains("<sender@x.test>"), "{dsn}");
    for needle in ["Final-Recipient: rfc822; bad@y.test", "Status: 5.1.1", "no such mailbox here"] {
        assert!(dsn.contains(needle), "DSN has {needle:?}: {dsn}");
    }
    assert!(!dsn.contains("later@y.test"), "no DSN for a temporary refusal: {dsn}");
    // later@ waits, with Postfix's reply as the last error.
    assert!(wait_until(Duration::from_secs(10), || srv.queue()["deferred"].as_u64() == Some(1)));
    let (_, shown) = srv.http("GET", "/queue/messages");
    assert!(shown.contains("mailbox busy, try later") && shown.contains("later@y.test"), "{shown}");
    assert!(!shown.contains("ok@y.test"), "ok@ is done: {shown}");
    // Postfix takes it now (a new smtpd process, on a new connection, reads
    // the map again); a flush tries again at once.
    assert!(wait_until(Duration::from_secs(10), || srv.queue()["outbound_connections"].as_u64() == Some(0)));
    write_access("");
    assert_eq!(srv.http("POST", "/queue/flush").0, 200);
    let got = receiver.wait_for(3, Duration::from_secs(30));
    assert_eq!(got.len(), 3, "{}\n{}\n{}", _pf.log(), srv.stderr(), srv.http("GET", "/queue/messages").1);
    assert!(got.iter().any(|m| m.contains("| <later@y.test>") && m.contains("Subject: three recipients")));
    assert!(wait_until(Duration::from_secs(10), || srv.queued_messages() == 0));
    assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 404);
    assert_eq!(srv.metric("ringpost_delivered_total"), 3.0, "ok@, later@ and the DSN");
    assert_eq!(srv.metric("ringpost_bounced_total"), 1.0);
}

/// Opportunistic STARTTLS with Postfix's smtpd, 8-bit content, and DSN
/// parameters: Postfix advertises DSN, so it reports success itself (no
/// "relayed" DSN from us) and passes NOTIFY and ORCPT on.
#[test]
fn starttls_8bit_and_dsn_parameters_through_postfix() {
    let sink_port = free_port();
    let receiver = Receiver::start("127.0.0.1", sink_port, &[]);
    let pf_port = free_port();
    let certs = tempfile::tempdir().unwrap().keep();
    let (cert, key) = make_cert(&certs);
    let extra = format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = may\nsmtpd_tls_received_header = yes\n",
        cert.display(),
        key.display()
    );
    let pf = Postfix::start("tls", pf_port, format!("127.0.0.1:{sink_port}").parse().unwrap(), &extra);
    let srv = Server::start(&format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{pf_port}\"]\n[delivery]\ndns_servers = [\"127.0.0.1:9\"]\n"
    ));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.cmd("MAIL FROM:<sender@x.test> BODY=8BITMIME ENVID=env-7", "250");
    c.cmd("RCPT TO:<r@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r@y.test", "250");
    c.cmd("DATA", "354");
    c.send_str(
        "Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nd\u{e9}j\u{e0} vu\r\n.\r\n",
    );
    c.expect("250");
    let got = receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", pf.log());
    let m = &got[0];
    assert!(m.contains("déjà vu") && m.contains("Subject: café"), "8-bit content intact: {m}");
    assert!(m.contains("by pf-tls.test (Postfix) with ESMTPS"), "Postfix took it over TLS: {m}");
    assert!(m.contains("NOTIFY=SUCCESS,FAILURE") && m.contains("ORCPT=rfc822;r@y.test"), "{m}");
    assert!(m.contains("ENVID=env-7"), "{m}");
    assert!(wait_until(Duration::from_secs(10), || srv.queued_messages() == 0));
    assert_eq!(srv.metric("ringpost_dsn_total"), 0.0, "Postfix reports success itself");
}
