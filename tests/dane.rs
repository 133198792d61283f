//! DANE (RFC 7672) through the SPEC surface, with a real validating
//! resolver: a zone signed by ldns-signzone, served by unbound (its own
//! config, loopback only, the zone's key as trust anchor, root hints that
//! point at a loopback address where nothing listens), and scripted
//! receivers playing the MX hosts. With `[delivery] dane = true`:
//! - DANE-EE (3 1 1): a certificate for any name, whose key the TLSA record
//!   names, gets the mail over TLS;
//! - DANE-TA (2 0 1): a chain to the CA the record names, valid for the MX
//!   name, gets the mail;
//! - a certificate the records do not match, a server without STARTTLS and
//!   a TLSA record whose signature does not verify (bogus: unbound answers
//!   SERVFAIL) mean a deferral, never plain text;
//! - an unsigned zone's TLSA records are not trusted: delivered as before.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until, Ca, Receiver, Server};

/// unbound on 127.0.0.1:`port`; killed when dropped.
struct Unbound {
    child: Child,
    port: u16,
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Unbound {
    /// Serves `signed` (with `trust_anchor`, a DS line) and `unsigned`
    /// zones: (name, zone file) pairs.
    fn start(dir: &Path, signed: (&str, &Path), trust_anchor: &str, unsigned: (&str, &Path)) -> Unbound {
        let port = free_port();
        let hints = dir.join("root.hints");
        // Anything unbound would ask beyond its own zones goes to a loopback
        // address where nothing listens: never to the real root servers.
        std::fs::write(&hints, ".  3600000 NS a.root.invalid.\na.root.invalid. 3600000 A 127.0.0.9\n")
            .unwrap();
        let conf = dir.join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n\
                 \x20 directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n\
                 \x20 access-control: 127.0.0.0/8 allow\n  do-ip6: no\n  module-config: \"validator iterator\"\n\
                 \x20 root-hints: \"{hints}\"\n  trust-anchor-signaling: no\n  root-key-sentinel: no\n\
                 \x20 local-zone: \"test.\" nodefault\n  trust-anchor: \"{trust_anchor}\"\n\
                 auth-zone:\n  name: \"{sn}.\"\n  zonefile: \"{sf}\"\n  for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n\
                 auth-zone:\n  name: \"{un}.\"\n  zonefile: \"{uf}\"\n  for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n",
                d = dir.display(),
                hints = hints.display(),
                sn = signed.0,
                sf = signed.1.display(),
                un = unsigned.0,
                uf = unsigned.1.display(),
            ),
        )
        .unwrap();
        let child = Command::new("unbound")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("unbound.log")).unwrap())
            .spawn()
            .expect("unbound (Debian package unbound)");
        let u = Unbound { child, port };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()),
            "unbound listens on {port}"
        );
        u
    }
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// Signs `zone` (text for `origin`) with fresh ECDSA keys by ldns-keygen and
/// ldns-signzone; returns the signed file and the DS record as an unbound
/// trust anchor.
fn sign(dir: &Path, origin: &str, zone: &str) -> (PathBuf, String) {
    let file = dir.join(format!("{origin}.zone"));
    std::fs::write(&file, zone).unwrap();
    let keygen = |ksk: bool| {
        let mut c = Command::new("ldns-keygen");
        c.current_dir(dir).args(["-a", "ECDSAP256SHA256"]);
        if ksk {
            c.arg("-k");
        }
        let out = c.arg(origin).output().expect("ldns-keygen (Debian package ldnsutils)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (ksk, zsk) = (keygen(true), keygen(false));
    let out = Command::new("ldns-signzone")
        .current_dir(dir)
        .arg("-n")
        .arg(&file)
        .args([&ksk, &zsk])
        .output()
        .expect("ldns-signzone");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = std::fs::read_to_string(dir.join(format!("{ksk}.ds"))).unwrap();
    // "name. [ttl] IN DS ..." -> "name. DS ..."
    let fields: Vec<&str> = ds.split_whitespace().collect();
    let at = fields.iter().position(|f| *f == "DS").unwrap();
    (dir.join(format!("{origin}.zone.signed")), format!("{} {}", fields[0], fields[at..].join(" ")))
}

#[test]
fn tlsa_records_decide_the_tls_of_mx_hosts_with_validated_names() {
    let dir = tempfile::tempdir().unwrap().keep();
    let port = free_port();
    let ca = Ca::new();
    let ee = ca.leaf(&dir, "ee", &["not-the-mx-name.test"]);
    let ee_spki = ee.spki_sha256.clone();
    let (ee_cert, ee_key) = ee.files();
    let (ta_cert, ta_key) = ca.leaf(&dir, "ta", &["mx-ta.dane.test"]).files();
    let (bad_cert, bad_key) = ca.leaf(&dir, "bad", &["mx-bad.dane.test"]).files();
    let ca_hash = sha256_hex(&ca.der);
    let zone = format!(
        "$ORIGIN dane.test.\n$TTL 300\n\
         @ IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 300\n\
         @ IN NS ns.dane.test.\nns IN A 127.0.0.1\n\
         ee IN MX 10 mx-ee.dane.test.\nmx-ee IN A 127.0.0.41\n_{port}._tcp.mx-ee IN TLSA 3 1 1 {ee_spki}\n\
         ta IN MX 10 mx-ta.dane.test.\nmx-ta IN A 127.0.0.42\n_{port}._tcp.mx-ta IN TLSA 2 0 1 {ca_hash}\n\
         bad IN MX 10 mx-bad.dane.test.\nmx-bad IN A 127.0.0.43\n_{port}._tcp.mx-bad IN TLSA 3 1 1 {}\n\
         plain IN MX 10 mx-plain.dane.test.\nmx-plain IN A 127.0.0.44\n_{port}._tcp.mx-plain IN TLSA 3 1 1 {ee_spki}\n\
         bogus IN MX 10 mx-bogus.dane.test.\nmx-bogus IN A 127.0.0.41\n_{port}._tcp.mx-bogus IN TLSA 3 1 1 {ee_spki}\n\
         none IN MX 10 mx-none.dane.test.\nmx-none IN A 127.0.0.44\n",
        "ab".repeat(32)
    );
    let (signed, anchor) = sign(&dir, "dane.test", &zone);
    // Break mx-bogus's TLSA record after signing: its signature no longer
    // verifies, and a validating resolver answers SERVFAIL.
    let text = std::fs::read_to_string(&signed).unwrap();
    let broken: String = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("_{port}._tcp.mx-bogus.dane.test.")) && l.contains("\tTLSA\t") {
                format!("{}{}\n", &l[..l.len() - 4], "0000")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(broken, text, "the bogus record was found");
    std::fs::write(&signed, broken).unwrap();
    let open_zone = dir.join("open.test.zone");
    std::fs::write(
        &open_zone,
        format!(
            "$ORIGIN open.test.\n$TTL 300\n@ IN SOA ns.open.test. h.open.test. 1 3600 600 86400 300\n\
             @ IN NS ns.open.test.\nns IN A 127.0.0.1\n@ IN MX 10 mx.open.test.\nmx IN A 127.0.0.44\n\
             _{port}._tcp.mx IN TLSA 3 1 1 {}\n",
            "cd".repeat(32)
        ),
    )
    .unwrap();
    let dns = Unbound::start(&dir, ("dane.test", &signed), &anchor, ("open.test", &open_zone));

    let arg = |p: &PathBuf| p.to_str().unwrap().to_string();
    let ee_rx = Receiver::start("127.0.0.41", port, &["--tls", &arg(&ee_cert), &arg(&ee_key)]);
    let ta_rx = Receiver::start("127.0.0.42", port, &["--tls", &arg(&ta_cert), &arg(&ta_key)]);
    let bad_rx = Receiver::start("127.0.0.43", port, &["--tls", &arg(&bad_cert), &arg(&bad_key)]);
    let plain_rx = Receiver::start("127.0.0.44", port, &[]);

    let srv = Server::start_in(
        &dir,
        &format!(
            "[delivery]\ndns_servers = [\"127.0.0.1:{}\"]\nport = {port}\nretry = [\"1s\"]\ndane = true\n",
            dns.port
        ),
    );
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    for to in [
        "a@ee.dane.test",
        "b@ta.dane.test",
        "c@bad.dane.test",
        "d@plain.dane.test",
        "e@bogus.dane.test",
        "f@none.dane.test",
        "g@open.test",
    ] {
        c.send_message("s@ours.test", &[to], &format!("Subject: to {to}\r\n\r\nhello\r\n"));
    }
    c.cmd("QUIT", "221");

    // DANE-EE and DANE-TA: over TLS.
    let got = ee_rx.wait_for(1, Duration::from_secs(20));
    assert!(got[0].contains("| <a@ee.dane.test>") && got[0].contains("X-TLS: yes"), "{}", got[0]);
    let got = ta_rx.wait_for(1, Duration::from_secs(20));
    assert!(got[0].contains("| <b@ta.dane.test>") && got[0].contains("X-TLS: yes"), "{}", got[0]);
    // No TLSA record (signed zone), and TLSA records in an unsigned zone:
    // as before (this receiver has no TLS: plain text).
    assert!(wait_until(Duration::from_secs(20), || {
        let m = plain_rx.messages();
        m.iter().any(|m| m.contains("<f@none.dane.test>")) && m.iter().any(|m| m.contains("<g@open.test>"))
    }));
    // The others wait: no match, no STARTTLS, a bogus answer.
    std::thread::sleep(Duration::from_secs(3));
    assert!(bad_rx.messages().is_empty(), "sent to a certificate the TLSA records do not match");
    assert!(!plain_rx.messages().iter().any(|m| m.contains("<d@plain.dane.test>")), "sent in plain text");
    assert_eq!(ee_rx.messages().len(), 1, "bogus TLSA records: mx-bogus (same address as mx-ee) not tried");
    assert_eq!(srv.queued_messages(), 3);
    let log = srv.stderr();
    assert!(log.contains("mx-bad.dane.test") && log.contains("matching the TLSA records"), "{log}");
    assert!(log.contains("mx-plain.dane.test") && log.contains("does not take STARTTLS"), "{log}");
    assert!(log.contains("mx-bogus.dane.test") && log.contains("TLSA lookup"), "{log}");
    assert!(srv.metric("ringpost_dane_groups_total") >= 5.0);
    assert!(srv.metric("ringpost_dane_refused_hosts_total") >= 1.0);
}
