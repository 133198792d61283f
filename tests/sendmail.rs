//! `ringpost sendmail` through its command line, as cron, PHP's mail() and
//! git send-email call it (also through a link named `sendmail`): the
//! message waits durably in the maildrop while the server is down, is
//! picked up when it runs, and bad input exits with sysexits codes and
//! leaves nothing behind.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config_text, free_port, wait_until, Receiver, Server, BIN};

/// A config routing everything to a receiver, written to `dir`.
fn setup() -> (Receiver, PathBuf, PathBuf) {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    );
    let cfg = dir.join("ringpost.toml");
    std::fs::write(&cfg, config_text(&dir, &extra)).unwrap();
    (rx, dir, cfg)
}

/// Runs `program args` with `stdin`; (exit code, stderr).
fn sendmail(program: &Path, args: &[&str], stdin: &[u8]) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It may exit (a usage error) before reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn drops(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("spool/maildrop"))
        .map(|d| d.flatten().filter(|e| e.file_type().unwrap().is_file()).count())
        .unwrap_or(0)
}

#[test]
fn mail_waits_while_the_server_is_down_and_goes_when_it_runs() {
    let (rx, dir, cfg) = setup();
    let c = cfg.to_str().unwrap();
    // As cron calls it: a full name, -i, 8BITMIME, error mode, to a local user name.
    let (code, err) = sendmail(
        Path::new(BIN),
        &["sendmail", "-FCron Daemon", "-i", "-B8BITMIME", "-oem", "-C", c, "ops@example.test"],
        b"Subject: backup done\nX-Cron-Env: <SHELL=/bin/sh>\n\nall good\n.\nthe dot above is text with -i\n",
    );
    assert_eq!(code, 0, "{err}");
    // git send-email style: -i, -f, recipients as arguments.
    let (code, err) = sendmail(
        Path::new(BIN),
        &["sendmail", "-C", c, "-i", "-f", "dev@example.test", "a@example.test", "b@example.test"],
        b"From: Dev <dev@example.test>\nSubject: [PATCH] fix\nMessage-ID: <patch-1@example.test>\n\ndiff\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(drops(&dir), 2, "both wait in the maildrop");

    let srv = Server::start_with_config(&dir, &cfg);
    // The patch goes to both its recipients in one transaction.
    let got = rx.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(wait_until(Duration::from_secs(5), || drops(&dir) == 0), "picked-up files are removed");
    let cron = got.iter().find(|m| m.contains("backup done")).unwrap();
    let uid = unsafe { libc::getuid() };
    assert!(cron.contains(&format!("Received: by mx.test (ringpost, from userid {uid})\r\n")), "{cron}");
    assert!(
        cron.contains("From: \"Cron Daemon\" <")
            && cron.contains("\r\nDate: ")
            && cron.contains("\r\nMessage-ID: <"),
        "{cron}"
    );
    assert!(cron.contains("\r\n\r\nall good\r\n.\r\nthe dot above is text with -i\r\n"), "{cron}");
    assert!(cron.starts_with("X-Envelope: <") && cron.contains("| <ops@example.test>"), "{cron}");
    let patch = got.iter().find(|m| m.contains("[PATCH] fix")).unwrap();
    assert!(patch.starts_with("X-Envelope: <dev@example.test> SIZE="), "{patch}");
    assert!(patch.lines().next().unwrap().ends_with("| <a@example.test>, <b@example.test>"), "{patch}");
    assert_eq!(patch.matches("Message-ID:").count(), 1, "its own Message-ID is kept: {patch}");
    assert_eq!(srv.metric("ringpost_messages_accepted_total"), 2.0);
}

#[test]
fn a_link_named_sendmail_with_t_reads_the_headers() {
    let (rx, dir, cfg) = setup();
    let srv = Server::start_with_config(&dir, &cfg);
    let link = dir.join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    // PHP's mail(): -t -i; without -i a lone dot would end the message.
    let message =
        b"To: Ann <ann@example.test>, bob@example.test\nCc: carl@example.test\nBcc: dana@example.test\n\
        From: web@example.test\nSubject: from php\n\nhello\n";
    let started = Instant::now();
    let (code, err) = sendmail(&link, &["-t", "-i", "-C", cfg.to_str().unwrap()], message);
    assert_eq!(code, 0, "{err}");
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert!(!got.is_empty());
    // The running server picks it up within about a second (250 ms polls).
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let m = &got[0];
    for r in ["ann@example.test", "bob@example.test", "carl@example.test", "dana@example.test"] {
        assert!(m.lines().next().unwrap().contains(&format!("<{r}>")), "{r} is a recipient: {m}");
    }
    assert!(!m.contains("Bcc"), "{m}");
    assert!(!m[m.find("\r\nFrom:").unwrap()..].contains("dana"), "Bcc is not in the message: {m}");

    // Without -i, a line with a single dot ends the message.
    let (code, _) = sendmail(
        &link,
        &["-C", cfg.to_str().unwrap(), "eve@example.test"],
        b"Subject: dot\n\nbefore\n.\nafter\n",
    );
    assert_eq!(code, 0);
    let got = rx.wait_for(2, Duration::from_secs(10));
    let dot = got.iter().find(|m| m.contains("Subject: dot")).unwrap();
    assert!(dot.ends_with("\r\n\r\nbefore\r\n"), "{dot:?}");
    drop(srv);
}

#[test]
fn bad_input_exits_with_sysexits_and_leaves_nothing() {
    let (_rx, dir, cfg) = setup();
    let c = cfg.to_str().unwrap();
    let small = dir.join("small.toml");
    std::fs::write(
        &small,
        std::fs::read_to_string(&cfg).unwrap().replace("[spool]", "[limits]\nmessage_size = 100\n[spool]"),
    )
    .unwrap();
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "threads = \"many\"\n").unwrap();
    let big = vec![b'x'; 200];
    let cases: Vec<(Vec<&str>, &[u8], i32, &str)> = vec![
        (vec!["-C", c], b"Subject: s\n\nx\n", 64, "no recipients"),
        (vec!["-C", c, "-t"], b"Subject: no to\n\nx\n", 64, "no recipients"),
        (vec!["-C", c, "-q", "a@example.test"], b"x\n", 64, "unknown option"),
        (vec!["-C", c, "-bs"], b"", 64, "not supported"),
        (vec!["-C", c, "not@@address"], b"x\n", 64, "not an address"),
        (vec!["-C", c, "-t"], b"To: @@@\n\nx\n", 65, "-t"),
        (vec!["-C", small.to_str().unwrap(), "a@example.test"], &big, 65, "too big"),
        (vec!["-C", broken.to_str().unwrap(), "a@example.test"], b"x\n", 78, "threads"),
    ];
    for (args, input, code, why) in &cases {
        let mut all = vec!["sendmail"];
        all.extend(args);
        let (got, err) = sendmail(Path::new(BIN), &all, input);
        assert_eq!(got, *code, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(drops(&dir), 0, "nothing queued by bad input");
    // A maildrop that cannot be written: 75, try later.
    let ro = dir.join("ro");
    std::fs::create_dir_all(ro.join("spool")).unwrap();
    std::fs::write(ro.join("spool/maildrop"), "a file, not a directory").unwrap();
    let cfg_ro = dir.join("ro.toml");
    std::fs::write(&cfg_ro, config_text(&ro, "")).unwrap();
    let (got, err) =
        sendmail(Path::new(BIN), &["sendmail", "-C", cfg_ro.to_str().unwrap(), "a@example.test"], b"x\n");
    assert_eq!(got, 75, "{err}");
}

#[test]
fn links_in_the_maildrop_are_not_followed() {
    let (rx, dir, cfg) = setup();
    let srv = Server::start_with_config(&dir, &cfg);
    // A valid drop file somewhere else, linked into the maildrop: the link
    // could expose a file its maker cannot read; it is set aside unread.
    let outside = dir.join("secret.drop");
    std::fs::write(
        &outside,
        "{\"v\":1,\"sender\":\"\",\"recipients\":[\"thief@example.test\"]}\nSubject: secret\r\n\r\nx\r\n",
    )
    .unwrap();
    let maildrop = dir.join("spool/maildrop");
    std::fs::hard_link(&outside, maildrop.join("0000000000000001.1.hard")).unwrap();
    std::os::unix::fs::symlink(&outside, maildrop.join("0000000000000002.1.soft")).unwrap();
    // A real submission after them still goes.
    let (code, err) = sendmail(
        Path::new(BIN),
        &["sendmail", "-C", cfg.to_str().unwrap(), "ok@example.test"],
        b"Subject: fine\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    let got = rx.wait_for(1, Duration::from_secs(10));
    assert!(got.iter().any(|m| m.contains("Subject: fine")));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!rx.messages().iter().any(|m| m.contains("secret")), "a link was followed");
    assert!(wait_until(Duration::from_secs(5), || maildrop.join("bad/0000000000000001.1.hard").exists()));
    assert!(outside.exists());
    drop(srv);
}

/// Tenant mail to several recipients with `[unsubscribe]`: a copy each,
/// each with a one-click URL naming its recipient, as over SMTP.
#[test]
fn tenant_mail_to_several_recipients_gets_a_copy_each_with_unsubscribe() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = format!(
        "[unsubscribe]\nbase_url = \"https://unsub.example.test\"\nsecret = \"a long enough unsubscribe secret\"\n\
         [[tenant]]\nname = \"acme\"\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    );
    let cfg = dir.join("ringpost.toml");
    std::fs::write(&cfg, config_text(&dir, &extra)).unwrap();
    let c = cfg.to_str().unwrap();
    let (code, err) = sendmail(
        Path::new(BIN),
        &["sendmail", "-C", c, "-i", "-f", "news@example.test", "a@example.test", "b@example.test"],
        b"From: news@example.test\nX-Tenant: acme\nSubject: news\n\nhello\n",
    );
    assert_eq!(code, 0, "{err}");
    let _srv = Server::start_with_config(&dir, &cfg);
    let got = rx.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(wait_until(Duration::from_secs(5), || drops(&dir) == 0), "picked-up file removed");
    let mut urls: Vec<String> = got
        .iter()
        .map(|m| {
            let envelope = m.lines().find(|l| l.starts_with("X-Envelope:")).unwrap();
            assert_eq!(envelope.matches('@').count(), 2, "one sender, one recipient: {envelope}");
            let line = m.lines().skip_while(|l| !l.starts_with("List-Unsubscribe:")).nth(1).unwrap();
            line.trim().to_owned()
        })
        .collect();
    urls.dedup();
    assert_eq!(urls.len(), 2, "each copy its own token: {urls:?}");
    assert!(urls.iter().all(|u| u.starts_with("<https://unsub.example.test/unsubscribe/v1.")), "{urls:?}");
}
