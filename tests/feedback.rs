//! Complaints and one-click unsubscribes through the SPEC surface: a
//! `kind = "http"` listener answering RFC 8058 POSTs made by Python's
//! urllib, ARF reports in the shape providers send them to `[feedback]
//! addresses`, forged tokens and references that change nothing, and the
//! suppressions, events and metrics that follow.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, read_events, wait_until, Receiver, Server};
use serde_json::Value;

fn config(port: u16, http: u16, events: &Path) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
         [[listener]]\naddress = \"127.0.0.1:{http}\"\nkind = \"http\"\n\
         [unsubscribe]\nbase_url = \"http://127.0.0.1:{http}\"\nsecret = \"a long enough unsubscribe secret\"\n\
         [feedback]\naddresses = [\"fbl@ours.test\"]\n\
         [[tenant]]\nname = \"acme\"\n\
         [events]\nfile = \"{}\"\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n",
        events.display()
    )
}

/// A receiver, and a server with both listeners and an events file.
struct Setup {
    rx: Receiver,
    srv: Server,
    dir: std::path::PathBuf,
    ev: std::path::PathBuf,
    http: u16,
}

impl Setup {
    fn start() -> Setup {
        let port = free_port();
        let http = free_port();
        let rx = Receiver::start("127.0.0.1", port, &[]);
        let dir = tempfile::tempdir().unwrap().keep();
        let ev = dir.join("events.jsonl");
        let srv = Server::start_in(&dir, &config(port, http, &ev));
        Setup { rx, srv, dir, ev, http }
    }
}

fn send(srv: &Server, to: &str, headers: &str) -> String {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let reply = c.send_message(
        "bounces@ours.test",
        &[to],
        &format!("{headers}From: news@ours.test\r\nTo: {to}\r\nSubject: news\r\n\r\nhello\r\n"),
    );
    c.cmd("QUIT", "221");
    common::queue_id(&reply).unwrap().to_owned()
}

/// A header field of a received message, unfolded.
fn field(message: &str, name: &str) -> Option<String> {
    let unfolded = message.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// An RFC 8058 POST as a mailbox provider makes it, by Python's urllib.
/// Returns the HTTP status.
fn one_click(url: &str, body: &str) -> u16 {
    let script = "import sys, urllib.request, urllib.error\n\
        req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST',\n\
            headers={'Content-Type': 'application/x-www-form-urlencoded'})\n\
        try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n\
        except urllib.error.HTTPError as e:\n    print(e.code)\n";
    let out = Command::new("python3").args(["-c", script, url, body]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn one_click_unsubscribe_suppresses_for_the_tenant() {
    let Setup { rx, srv, ev, http, .. } = Setup::start();
    let id = send(&srv, "reader@isp.test", "X-Tenant: acme\r\nX-Campaign: spring\r\n");
    let got = rx.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1);
    let url = field(&got[0], "List-Unsubscribe").unwrap();
    let url = url.trim_matches(['<', '>']).to_owned();
    assert!(url.starts_with(&format!("http://127.0.0.1:{http}/unsubscribe/v1.")), "{url}");
    assert_eq!(field(&got[0], "List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    assert!(field(&got[0], "X-Ringpost-Ref").unwrap().starts_with("v1."), "every copy carries a reference");

    // An altered token, a wrong body, a GET (a link scanner): nothing changes.
    let i = url.len() - 5;
    let swap = if &url[i..i + 1] == "A" { "B" } else { "A" };
    let forged = format!("{}{swap}{}", &url[..i], &url[i + 1..]);
    assert_eq!(one_click(&forged, "List-Unsubscribe=One-Click"), 400);
    assert_eq!(one_click(&url, "unsubscribe=yes"), 400);
    let (status, page) = get(http, &url);
    assert_eq!(status, 200);
    assert!(page.contains("reader@isp.test") && page.contains("method=post"), "{page}");
    assert!(!srv.http("GET", "/suppression").1.contains("reader@isp.test"));

    assert_eq!(one_click(&url, "List-Unsubscribe=One-Click"), 200);
    let (_, list) = srv.http("GET", "/suppression?address=reader%40isp.test");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["entries"][0]["tenant"], "acme");
    assert_eq!(list["entries"][0]["reason"], "unsubscribe");
    assert_eq!(srv.metric("ringpost_unsubscribes_total"), 1.0);
    let fb: Vec<Value> = read_events(&ev).into_iter().filter(|e| e["type"] == "Feedback").collect();
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0]["feedback_type"], "unsubscribe");
    assert_eq!(
        (fb[0]["id"].as_str(), fb[0]["recipient"].as_str()),
        (Some(id.as_str()), Some("reader@isp.test"))
    );
    assert_eq!((fb[0]["tenant"].as_str(), fb[0]["campaign"].as_str()), (Some("acme"), Some("spring")));

    // acme's next message to the reader is not sent; another sender's is.
    let dropped = send(&srv, "reader@isp.test", "X-Tenant: acme\r\n");
    send(&srv, "reader@isp.test", "");
    assert_eq!(rx.wait_for(2, Duration::from_secs(15)).len(), 2);
    assert!(wait_until(Duration::from_secs(5), || read_events(&ev)
        .iter()
        .any(|e| e["type"] == "Suppressed" && e["id"] == dropped.as_str())));
    std::thread::sleep(Duration::from_millis(500));
    let all = rx.messages();
    assert_eq!(all.len(), 2, "the suppressed copy was not sent");
    assert!(!all[1].contains("X-Tenant"));
}

#[test]
fn several_recipients_get_a_copy_each_with_its_own_unsubscribe() {
    let Setup { rx, srv, ev, .. } = Setup::start();
    let to = ["one@isp.test", "two@isp.test", "three@other.test"];
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    let reply = c.send_message(
        "bounces@ours.test",
        &to,
        "X-Tenant: acme\r\nFrom: news@ours.test\r\nTo: list@ours.test\r\nSubject: news\r\n\r\nhello\r\n",
    );
    c.cmd("QUIT", "221");
    let id = common::queue_id(&reply).unwrap().to_owned();
    let got = rx.wait_for(3, Duration::from_secs(15));
    assert_eq!(got.len(), 3, "one copy per recipient");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.messages().len(), 3, "and no more");

    // Each copy: one recipient in its envelope, named by its own token and reference.
    let mut urls = std::collections::HashMap::new();
    let mut refs = std::collections::HashSet::new();
    for m in &got {
        let envelope = field(m, "X-Envelope").unwrap();
        let rcpt = envelope.split(" | ").nth(1).unwrap().trim_matches(['<', '>']).to_owned();
        assert!(to.contains(&rcpt.as_str()) && !rcpt.contains(','), "{envelope}");
        let url = field(m, "List-Unsubscribe").unwrap().trim_matches(['<', '>']).to_owned();
        assert!(urls.insert(rcpt, url).is_none(), "every recipient once");
        assert!(refs.insert(field(m, "X-Ringpost-Ref").unwrap()), "every copy its own reference");
        assert_eq!(field(m, "List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    }
    let ids: std::collections::HashSet<String> = read_events(&ev)
        .iter()
        .filter(|e| e["type"] == "Reception")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "a Reception event per copy, each its own queue id");
    assert!(ids.contains(&id), "the first copy keeps the id the 250 named");

    // Unsubscribing the second recipient suppresses that one only.
    assert_eq!(one_click(&urls["two@isp.test"], "List-Unsubscribe=One-Click"), 200);
    let (_, list) = srv.http("GET", "/suppression");
    assert!(list.contains("two@isp.test"), "{list}");
    assert!(!list.contains("one@isp.test") && !list.contains("three@other.test"), "{list}");
}

/// GET over a raw socket: (status, body).
fn get(port: u16, url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let path = url.split_once(&format!(":{port}")).unwrap().1;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, raw.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default())
}

/// An ARF report as Yahoo's and Microsoft's complaint loops send it: the
/// original message attached whole.
fn arf(original: &str) -> String {
    // Our receiver's own first lines are not part of what was sent.
    let original: String = original
        .split_inclusive("\r\n")
        .skip_while(|l| {
            l.starts_with("X-Envelope")
                || l.starts_with("X-TLS")
                || l.starts_with("X-Helo")
                || l.starts_with("X-Peer")
        })
        .collect();
    format!(
        "From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.test>\r\n\
         To: fbl@ours.test\r\n\
         Subject: FW: news\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"----=_Part_7\"\r\n\
         \r\n\
         ------=_Part_7\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is an email abuse report for an email message received from IP 127.0.0.1.\r\n\
         \r\n\
         ------=_Part_7\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: Yahoo!-Mail-Feedback/2.0\r\n\
         Version: 1\r\n\
         Original-Mail-From: <bounces@ours.test>\r\n\
         Original-Rcpt-To: <somebody-else@isp.test>\r\n\
         Arrival-Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n\
         Reporting-MTA: dns; mta1.yahoo.test\r\n\
         Source-IP: 127.0.0.1\r\n\
         \r\n\
         ------=_Part_7\r\n\
         Content-Type: message/rfc822\r\n\
         Content-Disposition: inline\r\n\
         \r\n\
         {original}\r\n\
         ------=_Part_7--\r\n"
    )
}

#[test]
fn complaint_reports_suppress_what_we_sent_and_forged_ones_nothing() {
    let Setup { rx, srv, dir, ev, .. } = Setup::start();
    let id = send(&srv, "victim@isp.test", "X-Tenant: acme\r\nX-Campaign: autumn\r\n");
    let got = rx.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1);
    let original = got[0].clone();

    // The report comes back to the feedback address.
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO arf.mail.yahoo.test", "250");
    c.send_message("", &["fbl@ours.test"], &arf(&original));
    // A forged one: the reference altered to name someone else's message.
    let reference = field(&original, "X-Ringpost-Ref").unwrap();
    let forged = original.replace(&reference, &format!("{}x", &reference[..reference.len() - 1]));
    c.send_message("", &["fbl@ours.test"], &arf(&forged));
    // Not a report at all.
    c.send_message("", &["fbl@ours.test"], "Subject: hi\r\n\r\njust mail\r\n");
    c.cmd("QUIT", "221");

    assert!(wait_until(Duration::from_secs(15), || srv
        .metric("ringpost_feedback_reports_total{result=\"rejected\"}")
        == 2.0
        && srv.metric("ringpost_feedback_reports_total{result=\"accepted\"}") == 1.0));
    let (_, list) = srv.http("GET", "/suppression");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["count"], 1, "{list}");
    let e = &list["entries"][0];
    assert_eq!(
        (e["address"].as_str(), e["tenant"].as_str(), e["reason"].as_str()),
        (Some("victim@isp.test"), Some("acme"), Some("complaint"))
    );
    let fb: Vec<Value> = read_events(&ev).into_iter().filter(|e| e["type"] == "Feedback").collect();
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0]["feedback_type"], "abuse");
    assert_eq!(fb[0]["id"], id.as_str(), "tied to the original message");
    assert_eq!(
        (fb[0]["recipient"].as_str(), fb[0]["campaign"].as_str()),
        (Some("victim@isp.test"), Some("autumn"))
    );
    // Rejected reports are kept aside; none was delivered anywhere.
    let kept = std::fs::read_dir(dir.join("spool/feedback-rejected")).unwrap().count();
    assert_eq!(kept, 2);
    assert_eq!(rx.messages().len(), 1);
    assert!(wait_until(Duration::from_secs(5), || srv.queued_messages() == 0));
    assert_eq!(srv.http("GET", "/health").0, 200);
}
