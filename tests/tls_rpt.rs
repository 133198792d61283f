//! TLS reporting (RFC 8460) through the SPEC surface: with MTA-STS on and
//! `tls_report_interval = "4s"`, dnsmasq publishes `_smtp._tls` records,
//! the Python HTTPS server serves MTA-STS policies, scripted receivers play
//! the MX hosts. Each domain that asks gets an aggregate report: as mail
//! (multipart/report; report-type=tlsrpt with the gzipped JSON) through
//! ringpost's own queue, and as an https POST; the counts and result types
//! match what happened (a verified session, a certificate for another
//! name under an enforced and a testing policy, a server without STARTTLS
//! and no policy).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::io::{BufRead, Read};

use mail_parser::MimeHeaders;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, test_file, wait_until, Ca, Dnsmasq, Receiver, Server, StsServer};

/// A child process killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn started(mut child: Child) -> Peer {
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    Peer(child)
}

fn gunzip(gz: &[u8]) -> serde_json::Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The report JSON inside a report mail (as the receiver saved it).
fn report_of(mail: &str) -> serde_json::Value {
    let body = mail.split_once("\r\n").map_or(mail, |(_, rest)| rest); // X-Envelope
    let parsed = mail_parser::MessageParser::default().parse(body.as_bytes()).unwrap();
    let ct = parsed.root_part().content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype(), ct.attribute("report-type")),
        ("multipart", Some("report"), Some("tlsrpt"))
    );
    let part = parsed.attachment(0).unwrap();
    let ct = part.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("tlsrpt+gzip")));
    gunzip(part.contents())
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[test]
fn domains_that_ask_get_aggregate_tls_reports_by_mail_and_https() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = Ca::new();
    let ca_file = ca.file(&dir);

    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for (domain, mode, mx) in [
        ("sts.test", "enforce", "mx.sts.test"),
        ("wrongcert.test", "enforce", "mx.wrongcert.test"),
        ("testing.test", "testing", "mx.testing.test"),
    ] {
        std::fs::write(policies.join(format!("mta-sts.{domain}.txt")), policy(mode, mx)).unwrap();
    }
    let names = ["mta-sts.sts.test", "mta-sts.wrongcert.test", "mta-sts.testing.test"];
    let (web_cert, web_key) = ca.leaf(&dir, "web", &names).files();
    let _web = StsServer::start("127.0.0.22", &web_cert, &web_key, &policies);
    let post_port = free_port();
    let posts = dir.join("posts");
    std::fs::create_dir_all(&posts).unwrap();
    let (hook_cert, hook_key) = ca.leaf(&dir, "hook", &["localhost"]).files();
    let _hook = started(
        Command::new("python3")
            .arg(test_file("peers/webhook.py"))
            .args(["127.0.0.1", &post_port.to_string()])
            .arg(&posts)
            .arg("--tls")
            .args([&hook_cert, &hook_key])
            .arg("--raw")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    let rua = "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test";
    // In a file, quoted: on dnsmasq's command line a comma starts a new
    // string of the record.
    let conf = dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "txt-record=_smtp._tls.sts.test,\"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://localhost:{post_port}/tlsrpt\"\n"
        ),
    )
    .unwrap();
    let dns = Dnsmasq::start_with(&[
        "--txt-record=_mta-sts.sts.test,v=STSv1; id=1",
        "--txt-record=_mta-sts.wrongcert.test,v=STSv1; id=1",
        "--txt-record=_mta-sts.testing.test,v=STSv1; id=1",
        &format!("--conf-file={}", conf.display()),
        &format!("--txt-record=_smtp._tls.wrongcert.test,{rua}"),
        &format!("--txt-record=_smtp._tls.testing.test,{rua}"),
        &format!("--txt-record=_smtp._tls.nosts.test,{rua}"),
        "--host-record=mta-sts.sts.test,127.0.0.22",
        "--host-record=mta-sts.wrongcert.test,127.0.0.22",
        "--host-record=mta-sts.testing.test,127.0.0.22",
        "--mx-host=sts.test,mx.sts.test,10",
        "--host-record=mx.sts.test,127.0.0.21",
        "--mx-host=wrongcert.test,mx.wrongcert.test,10",
        "--host-record=mx.wrongcert.test,127.0.0.25",
        "--mx-host=testing.test,mx.testing.test,10",
        "--host-record=mx.testing.test,127.0.0.25",
        "--mx-host=nosts.test,mx.nosts.test,10",
        "--host-record=mx.nosts.test,127.0.0.24",
        "--mx-host=reports.test,mx.reports.test,10",
        "--host-record=mx.reports.test,127.0.0.26",
    ]);
    let port = free_port();
    let (mx_cert, mx_key) = ca.leaf(&dir, "mx", &["mx.sts.test"]).files();
    let (other_cert, other_key) = ca.leaf(&dir, "other", &["not-the-mx.test"]).files();
    let (s, k) = (mx_cert.to_str().unwrap(), mx_key.to_str().unwrap());
    let good_rx = Receiver::start("127.0.0.21", port, &["--tls", s, k]);
    let (s, k) = (other_cert.to_str().unwrap(), other_key.to_str().unwrap());
    let wrong_rx = Receiver::start("127.0.0.25", port, &["--tls", s, k]);
    let plain_rx = Receiver::start("127.0.0.24", port, &[]);
    let reports_rx = Receiver::start("127.0.0.26", port, &[]);

    let srv = Server::start_in(
        &dir,
        &format!(
            "[delivery]\ndns_servers = [\"127.0.0.1:{}\"]\nport = {port}\nretry = [\"1s\"]\nmta_sts = true\n\
             ca_file = \"{}\"\ntls_report_interval = \"4s\"\n",
            dns.port,
            ca_file.display()
        ),
    );
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    for to in ["a@sts.test", "b@wrongcert.test", "t@testing.test", "e@nosts.test"] {
        c.send_message("s@ours.test", &[to], &format!("Subject: to {to}\r\n\r\nhello\r\n"));
    }
    c.cmd("QUIT", "221");
    assert_eq!(good_rx.wait_for(1, Duration::from_secs(20)).len(), 1);
    // The testing policy does not stop delivery: the wrong certificate gets it.
    assert!(wait_until(Duration::from_secs(20), || wrong_rx
        .messages()
        .iter()
        .any(|m| m.contains("<t@testing.test>"))));

    // Four report mails (one per domain that asks), the first period's.
    assert!(
        wait_until(Duration::from_secs(30), || reports_rx.messages().len() >= 4),
        "{:?}\n{}",
        reports_rx
            .messages()
            .iter()
            .map(|m| m.lines().nth(6).unwrap_or_default().to_string())
            .collect::<Vec<_>>(),
        srv.stderr()
    );
    let mut by_domain = std::collections::HashMap::new();
    for m in reports_rx.messages() {
        assert!(m.starts_with("X-Envelope: <> "), "null sender: {}", &m[..80]);
        let r = report_of(&m);
        let domain = r["policies"][0]["policy"]["policy-domain"].as_str().unwrap().to_string();
        assert!(m.contains(&format!("Report Domain: {domain} Submitter: ")), "{m}");
        by_domain.entry(domain).or_insert(r);
    }
    let sum = |r: &serde_json::Value, k: &str| r["policies"][0]["summary"][k].as_u64().unwrap();
    let first_failure = |r: &serde_json::Value| r["policies"][0]["failure-details"][0].clone();

    let sts = &by_domain["sts.test"];
    assert_eq!(sts["policies"][0]["policy"]["policy-type"], "sts");
    assert_eq!(sts["policies"][0]["policy"]["mx-host"][0], "mx.sts.test");
    assert!(
        sum(sts, "total-successful-session-count") >= 1 && sum(sts, "total-failure-session-count") == 0,
        "{sts}"
    );
    assert!(sts["date-range"]["start-datetime"].as_str().unwrap().ends_with('Z'));

    let wrong = &by_domain["wrongcert.test"];
    assert!(sum(wrong, "total-failure-session-count") >= 1, "{wrong}");
    let d = first_failure(wrong);
    assert_eq!(d["result-type"], "certificate-host-mismatch", "{wrong}");
    assert_eq!(d["receiving-mx-hostname"], "mx.wrongcert.test");
    assert_eq!(d["receiving-ip"], "127.0.0.25");

    let testing = &by_domain["testing.test"];
    let strings = testing["policies"][0]["policy"]["policy-string"].to_string();
    assert!(strings.contains("mode: testing"), "{testing}");
    assert_eq!(first_failure(testing)["result-type"], "certificate-host-mismatch", "{testing}");

    let nosts = &by_domain["nosts.test"];
    assert_eq!(nosts["policies"][0]["policy"]["policy-type"], "no-policy-found");
    assert_eq!(first_failure(nosts)["result-type"], "starttls-not-supported", "{nosts}");
    assert!(plain_rx.messages().iter().any(|m| m.contains("<e@nosts.test>")));

    // sts.test also asked for an https POST.
    assert!(wait_until(Duration::from_secs(10), || posts.join("post-1").exists()));
    assert_eq!(std::fs::read_to_string(posts.join("post-1.type")).unwrap(), "application/tlsrpt+gzip");
    let posted = gunzip(&std::fs::read(posts.join("post-1")).unwrap());
    assert_eq!(posted["policies"][0]["policy"]["policy-domain"], "sts.test");
    assert_eq!(posted["report-id"], sts["report-id"]);
    assert!(srv.metric("ringpost_tls_reports_total{result=\"sent\"}") >= 5.0);
    // The counts are saved in the spool between reports.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("spool").join("tls-report.json")).unwrap()).unwrap();
    assert!(saved["start"].as_u64().unwrap() > 0, "{saved}");
}

/// The counts survive kill -9: saved in the spool within seconds, read back
/// at start, and reported with the next period.
#[test]
fn counts_survive_a_crash_and_go_into_the_next_report() {
    let dir = tempfile::tempdir().unwrap().keep();
    let port = free_port();
    let dns = Dnsmasq::start_with(&[
        "--txt-record=_smtp._tls.nosts.test,v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
        "--mx-host=nosts.test,mx.nosts.test,10",
        "--host-record=mx.nosts.test,127.0.0.24",
        "--mx-host=reports.test,mx.reports.test,10",
        "--host-record=mx.reports.test,127.0.0.26",
    ]);
    let plain_rx = Receiver::start("127.0.0.24", port, &[]);
    let reports_rx = Receiver::start("127.0.0.26", port, &[]);
    let config = |interval: &str| {
        format!(
            "[delivery]\ndns_servers = [\"127.0.0.1:{}\"]\nport = {port}\nretry = [\"1s\"]\nmta_sts = true\n\
             tls_report_interval = \"{interval}\"\n",
            dns.port
        )
    };
    let srv = Server::start_in(&dir, &config("1h"));
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    for i in 0..3 {
        c.send_message("s@ours.test", &[&format!("u{i}@nosts.test")], "Subject: x\r\n\r\nhello\r\n");
    }
    c.cmd("QUIT", "221");
    assert_eq!(plain_rx.wait_for(3, Duration::from_secs(20)).len(), 3);
    let file = dir.join("spool").join("tls-report.json");
    let saved_count = || -> u64 {
        std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["domains"]["nosts.test"][0]["failure"].as_u64())
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(15), || saved_count() >= 1), "saved");
    srv.kill9();
    assert!(reports_rx.messages().is_empty(), "no report yet (1h)");
    // Restarted with a short period: the saved period is over, so its
    // report goes out with the sessions counted before the crash.
    let _srv = Server::start_in(&dir, &config("2s"));
    let got = reports_rx.wait_for(1, Duration::from_secs(20));
    let r = report_of(&got[0]);
    assert_eq!(r["policies"][0]["policy"]["policy-domain"], "nosts.test");
    assert!(r["policies"][0]["summary"]["total-failure-session-count"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["policies"][0]["failure-details"][0]["result-type"], "starttls-not-supported");
}
