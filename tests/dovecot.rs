//! The mailbox side with a real Dovecot (dovecot-imapd), started from the
//! test with its own config on loopback: ringpost delivers into Maildirs
//! owned by `[local] user`, `ringpost users export --dovecot` gives Dovecot
//! the same users and passwords, Python's imaplib reads and flags the mail
//! through Dovecot, and ringpost's POP3 (poplib) still serves the same
//! Maildir after Dovecot renamed the file and wrote its index.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, hash_password, run, wait_until, Server, BIN};

/// A private Dovecot: its own config, base and state directories, log.
struct Dovecot {
    child: Child,
    log: PathBuf,
}

impl Dovecot {
    fn start(dir: &Path, passwd: &Path, mail: &Path, imap: u16) -> Dovecot {
        let userdb = format!(
            "userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={}/%d/%n\n}}\n",
            mail.display()
        );
        Dovecot::start_with(dir, passwd, mail, imap, None, &userdb)
    }

    /// With an LMTP listener on `lmtp` too, and the given userdb.
    fn start_with(
        dir: &Path,
        passwd: &Path,
        mail: &Path,
        imap: u16,
        lmtp: Option<u16>,
        userdb: &str,
    ) -> Dovecot {
        let run_dir = dir.join("dovecot-run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let log = dir.join("dovecot.log");
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {run}\nstate_dir = {run}/state\nlog_path = {log}\ninfo_log_path = {log}\n\
                 listen = 127.0.0.1\nprotocols = imap{lmtp_protocol}\nssl = no\ndisable_plaintext_auth = no\n\
                 auth_mechanisms = plain login\nauth_username_format = %Lu\n\
                 mail_location = maildir:{mail}/%d/%n\nfirst_valid_uid = 1\n\
                 passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n{userdb}\
                 service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap}\n  }}\n\
                 \x20 inet_listener imaps {{\n    port = 0\n  }}\n}}\n{lmtp_service}",
                lmtp_protocol = if lmtp.is_some() { " lmtp" } else { "" },
                lmtp_service = lmtp.map_or(String::new(), |p| format!(
                    "service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {p}\n  }}\n}}\n"
                )),
                run = run_dir.display(),
                log = log.display(),
                mail = mail.display(),
                passwd = passwd.display(),
            ),
        )
        .unwrap();
        let child = Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot (apt-get install dovecot-imapd)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", imap)).is_err()
            || lmtp.is_some_and(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err())
        {
            assert!(
                Instant::now() < deadline,
                "dovecot did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot { child, log }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its children.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn dovecot_imap_and_ringpost_pop3_share_the_maildirs() {
    let dir = tempfile::tempdir().unwrap().keep();
    // Dovecot's mail processes run as nobody: they must reach the Maildirs.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mail = dir.join("mail");
    let pop3 = free_port();
    let password = "imap and pop3 alike";
    let srv = Server::start_in(
        &dir,
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
             [[listener]]\naddress = \"127.0.0.1:{pop3}\"\nkind = \"pop3\"\n\
             [relay]\nlocal_domains = [\"example.test\"]\n\
             [[user]]\naddress = \"Alice@example.test\"\npassword = \"{}\"\n\
             [local]\nmail_dir = \"{}\"\nuser = \"nobody\"\n",
            hash_password(password),
            mail.display()
        ),
    );
    // The same users for Dovecot.
    let exported =
        run(Command::new(BIN).args(["users", "export", "--dovecot", "--config"]).arg(&srv.config_path));
    assert!(exported.starts_with("alice@example.test:{ARGON2ID}$argon2id$"), "{exported}");
    let passwd = dir.join("users.passwd");
    std::fs::write(&passwd, &exported).unwrap();

    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_message(
        "bob@remote.test",
        &["alice@example.test"],
        "Subject: for imap\r\n\r\nhello from smtp\r\n",
    );
    c.cmd("QUIT", "221");
    let new = mail.join("example.test/alice/new");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0) == 1)
    );
    let nobody = std::fs::metadata(mail.join("example.test/alice")).unwrap().uid();
    assert_ne!(nobody, 0, "[local] user owns the Maildir");
    let file = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), nobody);
    assert_eq!(std::fs::metadata(mail.join("example.test")).unwrap().uid(), nobody);

    let imap = free_port();
    let dovecot = Dovecot::start(&dir, &passwd, &mail, imap);
    let script = "import imaplib, sys\n\
        m = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))\n\
        m.login('Alice@example.test', sys.argv[2])\n\
        typ, data = m.select('INBOX')\n\
        print('exists', data[0].decode())\n\
        typ, data = m.fetch('1', '(RFC822.SIZE BODY[])')\n\
        print(data[0][0].decode())\n\
        print(data[0][1].decode().replace('\\r\\n', '|'))\n\
        m.store('1', '+FLAGS', '\\\\Seen')\n\
        m.logout()\n\
        m = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))\n\
        try:\n    m.login('alice@example.test', 'wrong password')\n    print('wrong password accepted')\n\
        except imaplib.IMAP4.error:\n    print('wrong password refused')\n";
    let out = Command::new("python3").args(["-c", script, &imap.to_string(), password]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(&dovecot.log).unwrap_or_default();
    assert!(out.status.success(), "{text}\n{}\n{log}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("exists 1"), "{text}\n{log}");
    assert!(text.contains("Subject: for imap|") && text.contains("hello from smtp"), "{text}");
    assert!(text.contains("Delivered-To: alice@example.test|"), "{text}");
    assert!(text.contains("wrong password refused"), "{text}");
    // Dovecot checked our S= size (a wrong one fails the FETCH) and moved
    // the message into cur/ with its flag.
    assert!(!log.contains("Error"), "{log}");
    let cur: Vec<String> = std::fs::read_dir(mail.join("example.test/alice/cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(cur.len() == 1 && cur[0].ends_with(":2,S"), "{cur:?}");

    // ringpost's POP3 reads the same Maildir after Dovecot's changes.
    let script = "import poplib, sys\n\
        p = poplib.POP3('127.0.0.1', int(sys.argv[1]))\n\
        p.user('alice@example.test'); p.pass_(sys.argv[2])\n\
        n, size = p.stat(); print('stat', n, size)\n\
        print('uidl', p.uidl(1).decode())\n\
        resp, lines, octets = p.retr(1)\n\
        print('retr', octets, b'hello from smtp' in b'\\n'.join(lines))\n\
        p.quit()\n";
    let out = run(Command::new("python3").args(["-c", script, &pop3.to_string(), password]));
    let stat_size: usize = out.lines().next().unwrap().split(' ').nth(2).unwrap().parse().unwrap();
    assert!(out.starts_with("stat 1 "), "{out}");
    assert!(out.contains("retr ") && out.contains(" True"), "{out}");
    let retr_octets: usize =
        out.lines().find(|l| l.starts_with("retr")).unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert!(retr_octets >= stat_size - 2 && retr_octets <= stat_size + 2, "{out}");
    drop(dovecot);
}

#[test]
fn delivery_over_lmtp_to_dovecot_answers_each_recipient() {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let (uid, gid) = (65534, 65534); // nobody, nogroup
    std::os::unix::fs::chown(&mail, Some(uid), Some(gid)).unwrap();
    // Dovecot knows alice only (RCPT for anyone else: 550 5.1.1).
    let passwd = dir.join("users.passwd");
    std::fs::write(
        &passwd,
        format!(
            "alice@lmtp.test:{{PLAIN}}x:{uid}:{gid}::{m}/lmtp.test/alice::\n             carol@lmtp.test:{{PLAIN}}x:{uid}:{gid}::{m}/lmtp.test/carol::userdb_quota_rule=*:storage=1\n",
            m = mail.display()
        ),
    )
    .unwrap();
    let userdb = format!("userdb {{\n  driver = passwd-file\n  args = {}\n}}\n", passwd.display());
    let (imap, lmtp) = (free_port(), free_port());
    let dovecot = Dovecot::start_with(&dir, &passwd, &mail, imap, Some(lmtp), &userdb);

    // DSNs for the sender come back to this receiver.
    let home = free_port();
    let rx = common::Receiver::start("127.0.0.1", home, &[]);
    let srv = Server::start_in(
        &dir,
        &format!(
            "[[route]]\ndomain = \"lmtp.test\"\nto = [\"127.0.0.1:{lmtp}\"]\nprotocol = \"lmtp\"\n\
             [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{home}\"]\n\
             [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
        ),
    );
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_message(
        "sender@home.test",
        &["alice@lmtp.test", "nobody-here@lmtp.test"],
        "Subject: over lmtp\r\n\r\nhello dovecot\r\n",
    );
    c.cmd("QUIT", "221");

    // alice: delivered by Dovecot into her Maildir; the unknown user
    // bounces on its own (a DSN to the sender), without holding alice back.
    let new = mail.join("lmtp.test/alice/new");
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0) == 1),
        "{}",
        std::fs::read_to_string(&dovecot.log).unwrap_or_default()
    );
    let file = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("Subject: over lmtp") && text.contains("hello dovecot"), "{text}");
    let dsn = rx.wait_for(1, Duration::from_secs(15));
    assert_eq!(dsn.len(), 1, "{dsn:?}");
    assert!(dsn[0].contains("Action: failed") && dsn[0].contains("nobody-here@lmtp.test"), "{}", dsn[0]);
    assert!(!dsn[0].contains("Final-Recipient: rfc822; alice@lmtp.test"), "{}", dsn[0]);
    assert!(wait_until(Duration::from_secs(10), || srv.queued_messages() == 0));
    drop(dovecot);
}
