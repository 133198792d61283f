//! DKIM signing, checked by dkimpy (an independent verifier) on the
//! messages as a receiver got them. Keys are made by openssl and their DNS
//! records derived by openssl too, so neither side is ringpost's own idea.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::{free_port, run, run_briefly, test_file, wait_until, Receiver, Server, BIN};

/// A key made by openssl, and the TXT value that publishes it.
struct TestKey {
    path: PathBuf,
    record: String,
}

/// `kind`: "rsa-pkcs1", "rsa-pkcs8", "rsa-1024" or "ed25519".
fn make_key(dir: &Path, name: &str, kind: &str) -> TestKey {
    let path = dir.join(format!("{name}.pem"));
    let p = path.to_str().unwrap();
    match kind {
        "rsa-pkcs1" => run(Command::new("openssl").args(["genrsa", "-traditional", "-out", p, "2048"])),
        "rsa-pkcs8" => run(Command::new("openssl").args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ])),
        "rsa-1024" => run(Command::new("openssl").args(["genrsa", "-out", p, "1024"])),
        "ed25519" => run(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out", p])),
        _ => unreachable!(),
    };
    let der =
        Command::new("openssl").args(["pkey", "-in", p, "-pubout", "-outform", "DER"]).output().unwrap();
    assert!(der.status.success());
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let record = if kind == "ed25519" {
        // RFC 8463: the bare 32-byte key, the tail of the SubjectPublicKeyInfo.
        format!("v=DKIM1; k=ed25519; p={}", b64(&der.stdout[der.stdout.len() - 32..]))
    } else {
        format!("v=DKIM1; k=rsa; p={}", b64(&der.stdout))
    };
    TestKey { path, record }
}

fn dkim_entry(domain: &str, selector: &str, key: &TestKey) -> String {
    format!("[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = \"{}\"\n", key.path.display())
}

/// dkimpy's verdict on each signature of `message`, top to bottom.
fn verify(dir: &Path, message: &str, records: &[(&str, &TestKey)]) -> Vec<String> {
    let n = std::fs::read_dir(dir).unwrap().count();
    let msg = dir.join(format!("verify-{n}.eml"));
    std::fs::write(&msg, message).unwrap();
    let rec = dir.join(format!("verify-{n}.txt"));
    let lines: String = records.iter().map(|(name, k)| format!("{name} {}\n", k.record)).collect();
    std::fs::write(&rec, lines).unwrap();
    let out = run(Command::new("python3").arg(test_file("peers/dkim_verify.py")).arg(&msg).arg(&rec));
    out.lines().map(str::to_owned).collect()
}

fn routed(port: u16, extra: &str) -> String {
    format!(
        "{extra}[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    )
}

/// The values of every `b=` tag in `message` (the signatures themselves).
fn signatures(message: &str) -> Vec<String> {
    let unfolded = message.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(|l| l.rsplit_once("b=").unwrap().1.replace(' ', ""))
        .collect()
}

const BODY: &str = "To: r@y.test\r\nSubject: the  news\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\n\
Message-ID: <1@example.com>\r\nList-Unsubscribe: <https://u.example.com/1>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nHello  there \r\n..dot line\r\n\r\n\r\n";

/// Mail from our clients is signed once per `[[dkim]]` entry of its From:
/// domain (RSA as PKCS#1 and PKCS#8, Ed25519, two for one domain), once
/// per message whatever the number of recipients; a domain without keys is
/// not signed.
#[test]
fn relay_mail_is_signed_with_every_key_of_its_from_domain() {
    let dir = tempfile::tempdir().unwrap().keep();
    let rsa1 = make_key(&dir, "rsa1", "rsa-pkcs1");
    let ed = make_key(&dir, "ed", "ed25519");
    let rsa8 = make_key(&dir, "rsa8", "rsa-pkcs8");
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let keys = format!(
        "{}{}{}",
        dkim_entry("example.com", "s1", &rsa1),
        dkim_entry("example.com", "s2", &ed),
        dkim_entry("other.test", "s3", &rsa8)
    );
    let srv = Server::start_in(&dir, &routed(port, &keys));
    let records = [
        ("s1._domainkey.example.com", &rsa1),
        ("s2._domainkey.example.com", &ed),
        ("s3._domainkey.other.test", &rsa8),
    ];
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    // Three recipients in two domains: two deliveries of one message.
    c.send_message(
        "bounces@example.com",
        &["a@y.test", "b@y.test", "c@z.test"],
        &format!("From: \"News, Inc.\" <news@Example.com>\r\n{BODY}"),
    );
    c.send_message("s@other.test", &["d@y.test"], &format!("From: someone@other.test\r\n{BODY}"));
    c.send_message("s@x.test", &["e@y.test"], &format!("From: someone@unsigned.test\r\n{BODY}"));
    c.cmd("QUIT", "221");
    let got = rx.wait_for(4, Duration::from_secs(20));
    assert_eq!(got.len(), 4);
    let find = |rcpt: &str| got.iter().find(|m| m.lines().next().unwrap().contains(rcpt)).unwrap().clone();

    let (first, second) = (find("a@y.test"), find("c@z.test"));
    for m in [&first, &second] {
        assert_eq!(
            verify(&dir, m, &records),
            ["pass d=example.com s=s1 a=rsa-sha256", "pass d=example.com s=s2 a=ed25519-sha256"],
            "{m}"
        );
    }
    assert_eq!(signatures(&first), signatures(&second), "one signing per message, not per delivery");
    assert_eq!(signatures(&first).len(), 2);
    assert_eq!(verify(&dir, &find("d@y.test"), &records), ["pass d=other.test s=s3 a=rsa-sha256"]);
    assert_eq!(verify(&dir, &find("e@y.test"), &records), ["none"]);

    // The signature covers the one-click unsubscribe pair and over-signs
    // From: a From added on the way breaks it.
    let h: String = first.replace("\r\n\t", "").lines().find(|l| l.contains("s=s1")).unwrap().to_owned();
    assert!(h.contains("list-unsubscribe:list-unsubscribe-post"), "{h}");
    let forged = first.replacen("From: ", "From: evil@attacker.test\r\nFrom: ", 1);
    assert!(verify(&dir, &forged, &records).iter().all(|v| v.starts_with("fail")));
    let edited = first.replacen("Hello  there", "Hello where", 1);
    assert!(verify(&dir, &edited, &records).iter().all(|v| v.starts_with("fail")));
}

/// Mail that arrives from outside for our own domains is never signed;
/// the same From: domain from an authenticated user (swaks, AUTH PLAIN) is.
#[test]
fn strangers_are_not_signed_authenticated_users_are() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ed = make_key(&dir, "ed", "ed25519");
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let hash = ringpost::auth::hash("secret").unwrap();
    let extra = format!(
        "{}[relay]\nlocal_domains = [\"example.com\"]\nrelay_networks = []\n\
         [[user]]\naddress = \"alice@example.com\"\npassword = \"{hash}\"\n",
        dkim_entry("example.com", "s2", &ed)
    );
    let srv = Server::start_in(&dir, &routed(port, &extra));
    // A stranger (loopback is not a relay network here) writes to a local
    // user, claiming our domain in From:.
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    c.send_message("x@example.com", &["alice@example.com"], &format!("From: boss@example.com\r\n{BODY}"));
    c.cmd("QUIT", "221");
    let maildir = dir.join("mail/example.com/alice/new");
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_dir(&maildir).is_ok_and(|d| d.count() == 1)));
    let file = std::fs::read_dir(&maildir).unwrap().next().unwrap().unwrap().path();
    let local = std::fs::read_to_string(file).unwrap();
    assert!(!local.to_ascii_lowercase().contains("dkim-signature"), "{local}");

    let body = format!("From: alice@example.com\r\n{BODY}");
    let body_file = dir.join("swaks.eml");
    std::fs::write(&body_file, &body).unwrap();
    common::swaks_auth(srv.addr(), "alice@example.com", "secret", "friend@y.test", &body_file);
    let got = rx.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1);
    assert_eq!(
        verify(&dir, &got[0], &[("s2._domainkey.example.com", &ed)]),
        ["pass d=example.com s=s2 a=ed25519-sha256"]
    );
}

/// A key that cannot sign is a config error naming its file.
#[test]
fn bad_keys_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap().keep();
    let small = make_key(&dir, "small", "rsa-1024");
    let garbage = TestKey { path: dir.join("garbage.pem"), record: String::new() };
    std::fs::write(&garbage.path, "not a key\n").unwrap();
    let missing = TestKey { path: dir.join("missing.pem"), record: String::new() };
    for (key, why) in
        [(&small, "fewer than 2048 bits"), (&garbage, "no private key"), (&missing, "No such file")]
    {
        let path = dir.join("bad.toml");
        let text = common::config_text(&dir, &dkim_entry("example.com", "s1", key));
        std::fs::write(&path, text).unwrap();
        let out = run_briefly(Command::new(BIN).args(["serve", "--config"]).arg(&path));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("dkim[0].key: {}", key.path.display())) && err.contains(why), "{err}");
    }
    // And a selector that is no DNS label, with its line.
    let path = dir.join("sel.toml");
    let text = common::config_text(&dir, &dkim_entry("example.com", "bad selector", &small));
    std::fs::write(&path, &text).unwrap();
    let out = run_briefly(Command::new(BIN).args(["serve", "--config"]).arg(&path));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("dkim[0].selector"), "{err}");
}

/// SIGHUP: keys added, replaced or broken. A new key signs the next
/// message; a file that does not load keeps the keys in force.
#[test]
fn keys_follow_reloads() {
    let dir = tempfile::tempdir().unwrap().keep();
    let (k1, k2) = (make_key(&dir, "k1", "ed25519"), make_key(&dir, "k2", "rsa-pkcs8"));
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let srv = Server::start_in(&dir, &routed(port, ""));
    let records = [("k1._domainkey.example.com", &k1), ("k2._domainkey.example.com", &k2)];
    let send = |n: usize| {
        let mut c = srv.client();
        c.expect("220");
        c.cmd("EHLO c.test", "250");
        c.send_message("s@example.com", &["r@y.test"], &format!("From: a@example.com\r\n{BODY}"));
        c.cmd("QUIT", "221");
        let got = rx.wait_for(n, Duration::from_secs(20));
        assert_eq!(got.len(), n);
        verify(&dir, &got[n - 1], &records)
    };
    assert_eq!(send(1), ["none"]);
    srv.reload(&routed(port, &dkim_entry("example.com", "k1", &k1)), false);
    assert_eq!(send(2), ["pass d=example.com s=k1 a=ed25519-sha256"]);
    srv.reload(&routed(port, &dkim_entry("example.com", "k2", &k2)), false);
    assert_eq!(send(3), ["pass d=example.com s=k2 a=rsa-sha256"]);
    // The key file is broken in place: the reload is refused, k2 still signs.
    std::fs::write(&k2.path, "broken").unwrap();
    srv.reload(&routed(port, &dkim_entry("example.com", "k2", &k2)), true);
    assert_eq!(send(4), ["pass d=example.com s=k2 a=rsa-sha256"]);
}

/// With `[unsubscribe]`, tenant mail without List-Unsubscribe gets the RFC
/// 8058 pair before it is signed: dkimpy passes the signature, and its h=
/// covers both fields.
#[test]
fn unsubscribe_headers_are_added_before_signing() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ed = make_key(&dir, "ed", "ed25519");
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let extra = format!(
        "{}[unsubscribe]\nbase_url = \"https://unsub.example.com\"\nsecret = \"0123456789abcdef-secret\"\n\
         [[tenant]]\nname = \"acme\"\n",
        dkim_entry("example.com", "s1", &ed)
    );
    let srv = Server::start_in(&dir, &routed(port, &extra));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let plain = "From: news@example.com\r\nTo: r@y.test\r\nSubject: s\r\n\r\nbody\r\n";
    c.send_message("b@example.com", &["r@y.test"], &format!("X-Tenant: acme\r\n{plain}"));
    c.cmd("QUIT", "221");
    let got = rx.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.contains("List-Unsubscribe:\r\n <https://unsub.example.com/unsubscribe/v1."), "{m}");
    assert!(m.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{m}");
    assert_eq!(
        verify(&dir, m, &[("s1._domainkey.example.com", &ed)]),
        ["pass d=example.com s=s1 a=ed25519-sha256"]
    );
    let unfolded = m.replace("\r\n\t", " ").replace("\r\n ", " ").to_ascii_lowercase();
    let h = unfolded.lines().find(|l| l.starts_with("dkim-signature:")).unwrap();
    let h = h.split("h=").nth(1).unwrap().split(';').next().unwrap().replace(' ', "");
    let names: Vec<&str> = h.split(':').collect();
    assert!(names.contains(&"list-unsubscribe") && names.contains(&"list-unsubscribe-post"), "{h}");
}

#[test]
fn injected_mail_is_signed() {
    let dir = tempfile::tempdir().unwrap().keep();
    let rsa = make_key(&dir, "rsa", "rsa-pkcs8");
    let ed = make_key(&dir, "ed", "ed25519");
    let port = free_port();
    let http = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let extra = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
         [[listener]]\naddress = \"127.0.0.1:{http}\"\nkind = \"http\"\n\
         [[http_token]]\nname = \"app\"\nhash = \"{}\"\n{}{}",
        common::hash_password("tok"),
        dkim_entry("example.com", "r", &rsa),
        dkim_entry("example.com", "e", &ed)
    );
    let srv = Server::start_in(&dir, &routed(port, &extra));
    let request = serde_json::json!({
        "envelope_sender": "bounces@example.com",
        "content": {"from": {"email": "news@example.com", "name": "Caf\u{e9} News"},
                    "subject": "Bonjour {{ name }}", "text_body": "Hello {{ name }}\n",
                    "html_body": "<p>{{ name }}</p>"},
        "recipients": [{"email": "a@y.test", "substitutions": {"name": "Ann"}},
                       {"email": "b@y.test", "substitutions": {"name": "Zo\u{eb}"}}]
    });
    let file = dir.join("inject.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let out = run(Command::new("python3")
        .arg(test_file("peers/inject.py"))
        .args(["127.0.0.1", &http.to_string(), "tok"])
        .arg(&file));
    assert!(out.starts_with("200 ") && out.contains("\"success_count\":2"), "{out}");
    let got = rx.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2);
    let records = [("r._domainkey.example.com", &rsa), ("e._domainkey.example.com", &ed)];
    for m in &got {
        assert_eq!(
            verify(&dir, m, &records),
            ["pass d=example.com s=r a=rsa-sha256", "pass d=example.com s=e a=ed25519-sha256"],
            "{m}"
        );
    }
    drop(srv);
}
