//! MTA-to-MTA interop with Postfix itself, both ways: Postfix relaying into
//! ringpost (Postfix's SMTP client against our server), and ringpost
//! delivering into Postfix (our client against Postfix's smtpd). Each test runs
//! a private Postfix instance (`postfix -c DIR`) on loopback.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{free_port, run, wait_until, Receiver, Server};

/// Postfix instances register in the system main.cf; one at a time.
static POSTFIX: Mutex<()> = Mutex::new(());

/// A private Postfix instance listening on 127.0.0.1:`port`, relaying all
/// mail to `relay`.
struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    fn start(name: &str, port: u16, relay: std::net::SocketAddr) -> Postfix {
        let dir = PathBuf::from(format!("/tmp/ringpost-test-postfix-{name}"));
        let _ = Command::new("postfix").args(["-c"]).arg(dir.join("etc")).arg("stop").output();
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\nmail_owner = postfix\n\
setgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = pf-{name}.test\n\
mydestination =\nmynetworks = 127.0.0.0/8\nrelay_domains =\nrelayhost = [{}]:{}\n\
smtp_dns_support_level = disabled\nsmtpd_peername_lookup = no\nnotify_classes =\nalias_maps =\n\
local_recipient_maps =\nmaillog_file = /var/log/postfix-ringpost-test.log\n",
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
        // `postfix -c DIR` only accepts directories the default instance lists.
        let list = "alternate_config_directories = /tmp/ringpost-test-postfix-in/etc /tmp/ringpost-test-postfix-out/etc";
        run(Command::new("postconf").args(["-e", list]));
        run(Command::new("chown").arg("postfix").arg(dir.join("data")));
        let _ = Command::new("postfix").arg("-c").arg(dir.join("etc")).arg("check").output();
        run(Command::new("postfix").arg("-c").arg(dir.join("etc")).arg("start"));
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "postfix listens on {port}"
        );
        Postfix { dir }
    }

    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix").arg("-c").arg(self.etc()).arg("stop").output();
        let _ = Command::new("postsuper").arg("-c").arg(self.etc()).args(["-d", "ALL"]).output();
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}

#[test]
fn postfix_relays_into_ringpost_and_ringpost_delivers() {
    let _one = POSTFIX.lock().unwrap_or_else(|p| p.into_inner());
    let sink_port = free_port();
    let receiver = Receiver::start("127.0.0.1", sink_port, &[]);
    let srv = Server::start(&format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{sink_port}\"]\n[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    ));
    let pf_port = free_port();
    let _pf = Postfix::start("in", pf_port, srv.addr());
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
    let _one = POSTFIX.lock().unwrap_or_else(|p| p.into_inner());
    let sink_port = free_port();
    let receiver = Receiver::start("127.0.0.1", sink_port, &[]);
    let pf_port = free_port();
    let _pf = Postfix::start("out", pf_port, format!("127.0.0.1:{sink_port}").parse().unwrap());
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
    let (_, metrics) = srv.http("GET", "/metrics");
    assert!(metrics.contains("ringpost_delivered_total 10\n"), "{metrics}");
}
