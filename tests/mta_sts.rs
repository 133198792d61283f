//! MTA-STS (RFC 8461) through the SPEC surface: dnsmasq publishes the
//! `_mta-sts` TXT records and MX hosts, a Python HTTPS server with a
//! private CA's certificate serves the policies on 127.0.0.22:443, and
//! scripted receivers play the MX hosts. With `[delivery] mta_sts = true`
//! and the CA as `ca_file`: mail goes to a matching MX only over TLS with a
//! valid certificate; a non-matching MX, a server without STARTTLS or a
//! certificate for another name means a deferral (4.7.5), never plain
//! text; a domain without a policy is delivered as before.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::time::Duration;

use common::{free_port, wait_until, Ca, Dnsmasq, Receiver, Server, StsServer};

fn policy(mx: &str) -> String {
    format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[test]
fn enforced_policies_mean_verified_tls_to_a_listed_mx_or_nothing() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = Ca::new();
    let ca_file = ca.file(&dir);

    // Policies, served for three domains by one HTTPS server.
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for (domain, mx) in [
        ("sts.test", "mx.sts.test"),
        ("badmx.test", "*.elsewhere.test"),
        ("plain.test", "mx.plain.test"),
        ("wrongcert.test", "mx.wrongcert.test"),
    ] {
        std::fs::write(policies.join(format!("mta-sts.{domain}.txt")), policy(mx)).unwrap();
    }
    let names = ["mta-sts.sts.test", "mta-sts.badmx.test", "mta-sts.plain.test", "mta-sts.wrongcert.test"];
    let (web_cert, web_key) = ca.leaf(&dir, "web", &names).files();
    let _web = StsServer::start("127.0.0.22", &web_cert, &web_key, &policies);

    let dns = Dnsmasq::start_with(&[
        "--txt-record=_mta-sts.sts.test,v=STSv1; id=20261130",
        "--txt-record=_mta-sts.badmx.test,v=STSv1; id=1",
        "--txt-record=_mta-sts.plain.test,v=STSv1; id=1",
        "--txt-record=_mta-sts.wrongcert.test,v=STSv1; id=1",
        "--host-record=mta-sts.sts.test,127.0.0.22",
        "--host-record=mta-sts.badmx.test,127.0.0.22",
        "--host-record=mta-sts.plain.test,127.0.0.22",
        "--host-record=mta-sts.wrongcert.test,127.0.0.22",
        "--mx-host=sts.test,mx.sts.test,10",
        "--host-record=mx.sts.test,127.0.0.21",
        "--mx-host=badmx.test,mx.badmx.test,10",
        "--host-record=mx.badmx.test,127.0.0.21",
        "--mx-host=plain.test,mx.plain.test,10",
        "--host-record=mx.plain.test,127.0.0.24",
        "--mx-host=wrongcert.test,mx.wrongcert.test,10",
        "--host-record=mx.wrongcert.test,127.0.0.25",
        "--mx-host=nosts.test,mx.nosts.test,10",
        "--host-record=mx.nosts.test,127.0.0.24",
    ]);
    let port = free_port();
    let (mx_cert, mx_key) = ca.leaf(&dir, "mx", &["mx.sts.test"]).files();
    let (other_cert, other_key) = ca.leaf(&dir, "other", &["not-the-mx.test"]).files();
    let (s, k) = (mx_cert.to_str().unwrap(), mx_key.to_str().unwrap());
    let tls_rx = Receiver::start("127.0.0.21", port, &["--tls", s, k]);
    let plain_rx = Receiver::start("127.0.0.24", port, &[]);
    let (s, k) = (other_cert.to_str().unwrap(), other_key.to_str().unwrap());
    let wrong_rx = Receiver::start("127.0.0.25", port, &["--tls", s, k]);

    let srv = Server::start_in(
        &dir,
        &format!(
            "[delivery]\ndns_servers = [\"127.0.0.1:{}\"]\nport = {port}\nretry = [\"1s\"]\nmta_sts = true\nca_file = \"{}\"\n",
            dns.port,
            ca_file.display()
        ),
    );
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    for to in ["a@sts.test", "b@badmx.test", "c@plain.test", "d@wrongcert.test", "e@nosts.test"] {
        c.send_message("s@ours.test", &[to], &format!("Subject: to {to}\r\n\r\nhello\r\n"));
    }
    // A sender that prefers delivery to the policy (RFC 8689 §5).
    c.send_message("s@ours.test", &["f@badmx.test"], "TLS-Required: No\r\nSubject: x\r\n\r\nhello\r\n");
    c.cmd("QUIT", "221");

    // The policy's MX, over verified TLS.
    let got = tls_rx.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("| <a@sts.test>") && got[0].contains("X-TLS: yes"), "{}", got[0]);
    // No policy: as before (plain text, opportunistic).
    assert!(wait_until(Duration::from_secs(20), || plain_rx
        .messages()
        .iter()
        .any(|m| m.contains("<e@nosts.test>"))));
    // The others stay queued with the reason; nothing went in plain text.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!plain_rx.messages().iter().any(|m| m.contains("<c@plain.test>")), "sent in plain text");
    assert!(wrong_rx.messages().is_empty(), "sent to a certificate for another name");
    // badmx.test's MX is not in its policy: only the message that says
    // TLS-Required: No went there.
    assert!(wait_until(Duration::from_secs(10), || tls_rx.messages().len() == 2));
    let to_badmx: Vec<String> =
        tls_rx.messages().into_iter().filter(|m| m.contains("@badmx.test>")).collect();
    assert!(to_badmx.len() == 1 && to_badmx[0].contains("<f@badmx.test>"), "{to_badmx:?}");
    let q: serde_json::Value = serde_json::from_str(&srv.http("GET", "/queue").1).unwrap();
    let error = |d: &str| {
        q["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["domain"] == d)
            .map(|x| x["last_error"].to_string())
    };
    let bad = error("badmx.test").unwrap();
    assert!(bad.contains("4.7.5") && bad.contains("MTA-STS") && bad.contains("mx.badmx.test"), "{bad}");
    // Why the two others failed is in the log (the queue shows the latest
    // attempt's error, which may be the destination's backoff).
    assert!(error("plain.test").is_some() && error("wrongcert.test").is_some());
    let log = srv.stderr();
    assert!(log.contains("mx.plain.test") && log.contains("does not take STARTTLS"), "{log}");
    assert!(
        log.contains("mx.wrongcert.test") && log.contains("certificate valid for mx.wrongcert.test"),
        "{log}"
    );
    assert_eq!(srv.queued_messages(), 3);
    assert!(srv.metric("ringpost_mta_sts_fetches_total") >= 4.0);
    assert!(srv.metric("ringpost_mta_sts_refused_total") >= 1.0);
}

/// Policies are fetched once per domain even when many deliveries need it
/// at the same moment, and kept across a restart (RFC 8461 §5.1): with the
/// policy server gone, an enforced policy read back from the spool still
/// keeps mail away from an MX host it does not list.
#[test]
fn policies_are_fetched_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = Ca::new();
    let ca_file = ca.file(&dir);
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("mta-sts.keep.test.txt"), policy("*.elsewhere.test")).unwrap();
    let (web_cert, web_key) = ca.leaf(&dir, "web", &["mta-sts.keep.test"]).files();
    let web = StsServer::start("127.0.0.23", &web_cert, &web_key, &policies);
    let dns = Dnsmasq::start_with(&[
        "--txt-record=_mta-sts.keep.test,v=STSv1; id=7",
        "--host-record=mta-sts.keep.test,127.0.0.23",
        "--mx-host=keep.test,mx.keep.test,10",
        "--host-record=mx.keep.test,127.0.0.27",
    ]);
    let port = free_port();
    // The MX takes anything in plain text: only the policy keeps mail away.
    let rx = Receiver::start("127.0.0.27", port, &[]);
    let config = format!(
        "[delivery]\ndns_servers = [\"127.0.0.1:{}\"]\nport = {port}\nretry = [\"1s\"]\nmta_sts = true\nca_file = \"{}\"\n",
        dns.port,
        ca_file.display()
    );
    let srv = Server::start_in(&dir, &config);
    // Ten deliveries to the domain at once, over ten connections.
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let addr = srv.addr();
            std::thread::spawn(move || {
                let mut c = common::Client::connect(addr);
                c.expect("220");
                c.cmd("EHLO client.test", "250");
                c.send_message("s@ours.test", &[&format!("u{i}@keep.test")], "Subject: x\r\n\r\nhello\r\n");
                c.cmd("QUIT", "221");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || srv.metric("ringpost_mta_sts_refused_total") >= 10.0));
    // One fetch per worker at most (two workers), not one per delivery.
    let fetches = srv.metric("ringpost_mta_sts_fetches_total");
    assert!((1.0..=2.0).contains(&fetches), "{fetches} fetches");
    assert!(wait_until(Duration::from_secs(10), || dir.join("spool").join("mta-sts.json").exists()));
    drop(srv);
    drop(web);

    // Restarted, with the policy server gone: the saved policy holds.
    let srv = Server::start_in(&dir, &config);
    std::thread::sleep(Duration::from_secs(3));
    assert!(rx.messages().is_empty(), "the MX the policy does not list got mail after the restart");
    assert_eq!(srv.metric("ringpost_mta_sts_fetches_total"), 0.0, "no fetch: the saved policy is in force");
    assert!(srv.metric("ringpost_mta_sts_refused_total") >= 10.0);
    assert_eq!(srv.queued_messages(), 10);
}
