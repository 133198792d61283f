//! REQUIRETLS (RFC 8689) through the SPEC surface: Python's smtplib sends
//! with `REQUIRETLS` over STARTTLS (and is refused without TLS); ringpost
//! passes such mail on only over TLS with a certificate valid for the MX
//! name (checked against `[delivery] ca_file`) to a server that advertises
//! REQUIRETLS, with the parameter; a server without REQUIRETLS, one with a
//! certificate for another name and one without STARTTLS mean a bounce
//! with 5.7.10, whose report quotes nothing of the message. Mail without
//! REQUIRETLS to the same plain-text server goes as before.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, make_cert, wait_until, Ca, Dnsmasq, Receiver, Server};

/// Python's smtplib: REQUIRETLS refused before STARTTLS, advertised and
/// taken after it.
const CLIENT: &str = r#"
import smtplib, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("client.test")
assert not s.has_extn("requiretls"), "advertised without TLS"
try:
    s.sendmail("s@sender.test", ["x@good.test"], "Subject: no\r\n\r\nno\r\n", mail_options=["REQUIRETLS"])
    raise SystemExit("REQUIRETLS taken without TLS")
except smtplib.SMTPSenderRefused as e:
    assert e.smtp_code == 530 and b"5.7.10" in e.smtp_error, e
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo("client.test")
assert s.has_extn("requiretls"), "not advertised over TLS"
for to in ["a@good.test", "b@noreq.test", "c@badcert.test", "d@plain.test"]:
    s.sendmail("s@sender.test", [to], "Subject: secret for %s\r\n\r\nthe secret body\r\n" % to, mail_options=["REQUIRETLS"])
s.sendmail("s@sender.test", ["e@plain.test"], "Subject: open\r\n\r\nopen body\r\n")
s.quit()
print("ok")
"#;

#[test]
fn requiretls_mail_goes_only_over_verified_tls_to_servers_that_take_it() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = Ca::new();
    let ca_file = ca.file(&dir);
    let port = free_port();
    let good = ca.leaf(&dir, "good", &["mx.good.test"]).paths();
    let noreq = ca.leaf(&dir, "noreq", &["mx.noreq.test"]).paths();
    let wrong = ca.leaf(&dir, "wrong", &["someone-else.test"]).paths();
    let good_rx = Receiver::start("127.0.0.51", port, &["--tls", &good[0], &good[1], "--requiretls"]);
    let noreq_rx = Receiver::start("127.0.0.52", port, &["--tls", &noreq[0], &noreq[1]]);
    let wrong_rx = Receiver::start("127.0.0.53", port, &["--tls", &wrong[0], &wrong[1], "--requiretls"]);
    let plain_rx = Receiver::start("127.0.0.54", port, &[]);
    let sender_rx = Receiver::start("127.0.0.55", port, &[]);
    let mut records = Vec::new();
    for (domain, ip) in [
        ("good.test", "127.0.0.51"),
        ("noreq.test", "127.0.0.52"),
        ("badcert.test", "127.0.0.53"),
        ("plain.test", "127.0.0.54"),
        ("sender.test", "127.0.0.55"),
    ] {
        records.push(format!("--mx-host={domain},mx.{domain},10"));
        records.push(format!("--host-record=mx.{domain},{ip}"));
    }
    let dns = Dnsmasq::start_with(&records.iter().map(String::as_str).collect::<Vec<_>>());

    let (cert, key) = make_cert(&dir);
    let srv = Server::start_in(
        &dir,
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\ntls = \"starttls\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [delivery]\ndns_servers = [\"127.0.0.1:{}\"]\nport = {port}\nretry = [\"1s\"]\nca_file = \"{}\"\n",
            cert.display(),
            key.display(),
            dns.port,
            ca_file.display()
        ),
    );
    let out = Command::new("python3")
        .args(["-c", CLIENT, &srv.smtp[0].ip().to_string(), &srv.smtp[0].port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Verified TLS to a server that takes REQUIRETLS, with the parameter.
    let got = good_rx.wait_for(1, Duration::from_secs(20));
    let envelope = got[0].lines().next().unwrap();
    assert!(envelope.contains("REQUIRETLS") && envelope.contains("<a@good.test>"), "{envelope}");
    assert!(got[0].contains("X-TLS: yes"), "{}", got[0]);
    // Without REQUIRETLS, the plain-text server gets its mail as before.
    assert!(wait_until(Duration::from_secs(20), || plain_rx
        .messages()
        .iter()
        .any(|m| m.contains("<e@plain.test>"))));
    // The three others come back to the sender, 5.7.10, quoting nothing.
    let dsns = sender_rx.wait_for(3, Duration::from_secs(30));
    assert_eq!(dsns.len(), 3, "{dsns:?}");
    for (to, why) in [
        ("b@noreq.test", "does not support REQUIRETLS"),
        ("c@badcert.test", "certificate valid for mx.badcert.test"),
        ("d@plain.test", "does not take STARTTLS"),
    ] {
        let dsn = dsns
            .iter()
            .find(|d| d.contains(&format!("Final-Recipient: rfc822; {to}")))
            .unwrap_or_else(|| panic!("{to}: {dsns:?}"));
        assert!(dsn.contains("Status: 5.7.10") && dsn.contains(why), "{to}: {dsn}");
        assert!(!dsn.contains("secret"), "the report quotes the message: {dsn}");
    }
    assert!(noreq_rx.messages().is_empty() && wrong_rx.messages().is_empty());
    assert!(!plain_rx.messages().iter().any(|m| m.contains("secret")), "REQUIRETLS mail in plain text");
    assert!(wait_until(Duration::from_secs(10), || srv.queued_messages() == 0));
}
