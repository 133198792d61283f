//! The injection API through the SPEC surface: Python's http.client posts
//! requests on a `kind = "http"` listener with a `[[http_token]]`, and a
//! receiver gets the messages; refusals (no token, bad JSON, too big) come
//! back with their status and reason; suppression, events and metrics
//! apply as for SMTP.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, hash_password, read_events, run, test_file, wait_until, Receiver, Server};
use serde_json::{json, Value};

const TOKEN: &str = "inject-token-of-the-app";

struct Setup {
    rx: Receiver,
    srv: Server,
    dir: std::path::PathBuf,
    http: u16,
}

fn start(extra: &str, delivery: &str) -> Setup {
    let port = free_port();
    let http = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let config = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\
         [[listener]]\naddress = \"127.0.0.1:{http}\"\nkind = \"http\"\n\
         [[http_token]]\nname = \"app\"\nhash = \"{}\"\n\
         [[http_token]]\nname = \"acme-app\"\nhash = \"{}\"\ntenant = \"acme\"\n\
         [events]\nfile = \"{}\"\n\
         [[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n{delivery}{extra}",
        hash_password(TOKEN),
        hash_password("acme-token"),
        dir.join("events.jsonl").display()
    );
    let srv = Server::start_in(&dir, &config);
    Setup { rx, srv, dir, http }
}

/// Posts each body with Python's http.client on one connection; (status,
/// answer) per request.
fn post(http: u16, token: &str, dir: &Path, bodies: &[String]) -> Vec<(u16, String)> {
    let mut cmd = Command::new("python3");
    cmd.arg(test_file("peers/inject.py")).args(["127.0.0.1", &http.to_string(), token]);
    for (i, b) in bodies.iter().enumerate() {
        let n = std::fs::read_dir(dir).unwrap().count();
        let path = dir.join(format!("request-{n}-{i}.json"));
        std::fs::write(&path, b).unwrap();
        cmd.arg(path);
    }
    let out = run(&mut cmd);
    out.lines()
        .map(|l| {
            let (status, body) = l.split_once(' ').unwrap_or((l, ""));
            (status.parse().unwrap(), body.to_owned())
        })
        .collect()
}

fn header(message: &str, name: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse(message.as_bytes())?;
    parsed.header(name).and_then(|h| h.as_text()).map(str::to_owned)
}

#[test]
fn personalised_messages_are_queued_and_delivered() {
    let Setup { rx, srv, dir, http } = start("", "");
    // One recipient suppressed beforehand, through the admin API.
    let (ok, out) = common::suppress_cli(&srv, &["add", "gone@isp.test"]);
    assert!(ok, "{out}");
    let request = json!({
        "envelope_sender": "bounces@ours.test",
        "campaign": "spring",
        "tenant": "acme",
        "content": {
            "from": {"email": "news@ours.test", "name": "Ours News"},
            "subject": "Hello {{ name }}, {{ offer }}",
            "text_body": "Dear {{ name }},\n{{ offer }} in {{ city }}.\n",
            "html_body": "<p>Dear <b>{{ name }}</b></p>",
            "headers": {"X-Customer": "{{ id }}"}
        },
        "substitutions": {"offer": "20% off", "city": "Lyon"},
        "recipients": [
            {"email": "ann@isp.test", "name": "Ann", "substitutions": {"name": "Ann", "id": 1}},
            {"email": "bob@isp.test", "substitutions": {"name": "Bob", "id": 2, "city": "Z\u{fc}rich"}},
            {"email": "not an address"},
            {"email": "gone@isp.test", "substitutions": {"name": "Gone"}}
        ]
    });
    let answers = post(http, TOKEN, &dir, &[request.to_string()]);
    assert_eq!(answers[0].0, 200, "{answers:?}");
    let answer: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(answer["success_count"], 2, "{answer}");
    assert_eq!(answer["fail_count"], 2);
    assert_eq!(answer["failed_recipients"], json!(["not an address", "gone@isp.test"]));
    let errors = answer["errors"].as_array().unwrap();
    assert!(errors[0].as_str().unwrap().contains("invalid address"), "{errors:?}");
    assert!(errors[1].as_str().unwrap().contains("suppressed"), "{errors:?}");

    // Durable when answered: in the queue or already delivered.
    let got = rx.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2);
    let ann = got.iter().find(|m| m.contains("for <ann@isp.test>")).unwrap();
    let bob = got.iter().find(|m| m.contains("for <bob@isp.test>")).unwrap();
    assert_eq!(header(ann, "Subject").as_deref(), Some("Hello Ann, 20% off"));
    assert_eq!(header(bob, "Subject").as_deref(), Some("Hello Bob, 20% off"));
    let bob_parsed = mail_parser::MessageParser::default().parse(bob.as_bytes()).unwrap();
    assert_eq!(bob_parsed.body_text(0).as_deref(), Some("Dear Bob,\r\n20% off in Z\u{fc}rich.\r\n"));
    assert_eq!(bob_parsed.body_html(0).as_deref(), Some("<p>Dear <b>Bob</b></p>"));
    assert!(ann.contains("X-Customer: 1\r\n") && bob.contains("X-Customer: 2\r\n"));
    assert!(!ann.contains("X-Tenant") && !ann.contains("X-Campaign"));
    assert!(
        ann.contains("\nReceived: from [127.0.0.1] (token app)\r\n\tby mx.test (ringpost) with HTTP id "),
        "{ann}"
    );
    assert!(ann.contains("Content-Type: multipart/alternative"), "{ann}");
    // Python's email package reads them too (another MIME parser).
    let script = "import sys, email, email.policy\n\
        m = email.message_from_string(open(sys.argv[1]).read(), policy=email.policy.default)\n\
        print(m['Subject']); print(m['From']); print(m.get_body(('plain',)).get_content().strip())\n";
    let file = dir.join("bob.eml");
    std::fs::write(&file, bob).unwrap();
    let out = run(Command::new("python3").args(["-c", script]).arg(&file));
    assert_eq!(out, "Hello Bob, 20% off\nOurs News <news@ours.test>\nDear Bob,\n20% off in Z\u{fc}rich.\n");

    // Events: a Reception per message with the tenant and campaign, a
    // Suppressed for the suppressed one.
    let ev = dir.join("events.jsonl");
    assert!(wait_until(Duration::from_secs(10), || read_events(&ev)
        .iter()
        .filter(|e| e["type"] == "Delivery")
        .count()
        == 2));
    let events = read_events(&ev);
    let receptions: Vec<&Value> = events.iter().filter(|e| e["type"] == "Reception").collect();
    assert_eq!(receptions.len(), 2);
    assert!(receptions.iter().all(|e| e["tenant"] == "acme" && e["campaign"] == "spring"), "{receptions:?}");
    let suppressed: Vec<&Value> = events.iter().filter(|e| e["type"] == "Suppressed").collect();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["recipient"], "gone@isp.test");
    assert_eq!(srv.metric("ringpost_injected_total"), 2.0);
    assert_eq!(srv.metric("ringpost_inject_failed_recipients_total"), 2.0);
    assert_eq!(srv.metric("ringpost_inject_requests_total"), 1.0);
}

#[test]
fn raw_content_and_many_requests_on_one_connection() {
    let Setup { rx, srv, dir, http } = start("", "");
    let raw = |n: usize| {
        json!({
            "envelope_sender": "bounces@ours.test",
            "content": "From: news@ours.test\nSubject: raw {{ n }}\n\nbody {{ n }}\n",
            "recipients": [{"email": format!("r{n}@isp.test"), "substitutions": {"n": n}}]
        })
        .to_string()
    };
    let bodies: Vec<String> = (0..5).map(raw).collect();
    let answers = post(http, TOKEN, &dir, &bodies);
    assert_eq!(answers.len(), 5);
    for (status, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(serde_json::from_str::<Value>(body).unwrap()["success_count"], 1);
    }
    let got = rx.wait_for(5, Duration::from_secs(20));
    assert_eq!(got.len(), 5);
    for n in 0..5 {
        let m = got.iter().find(|m| m.contains(&format!("for <r{n}@isp.test>"))).unwrap();
        assert!(
            m.contains(&format!("Subject: raw {n}\r\n")) && m.contains(&format!("\r\n\r\nbody {n}\r\n")),
            "{m}"
        );
        // Added because the client left them out.
        assert!(m.contains("\r\nMessage-ID: <") && m.contains("\r\nDate: "), "{m}");
    }
    assert_eq!(srv.metric("ringpost_inject_requests_total"), 5.0);
}

#[test]
fn refusals_say_why() {
    let Setup { srv, dir, http, .. } = start("[limits]\ninject_size = 4096\n", "");
    let good = json!({"envelope_sender": "a@ours.test", "content": "From: a@ours.test\n\nx",
                      "recipients": [{"email": "x@isp.test"}]})
    .to_string();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("-", good.clone(), 401, "bearer token"),
        ("wrong-token", good.clone(), 401, "bearer token"),
        (TOKEN, "{not json".into(), 400, "invalid request"),
        (TOKEN, json!({"content": "x", "recipients": []}).to_string(), 400, "envelope_sender"),
        (TOKEN, json!({"envelope_sender": "a@ours.test", "content": "x"}).to_string(), 400, "recipients"),
        (
            TOKEN,
            json!({"envelope_sender": "a@ours.test", "content": {"from": {"email": "a@ours.test"}},
                   "recipients": [{"email": "x@isp.test"}]})
            .to_string(),
            400,
            "text_body or html_body",
        ),
        (
            "acme-token",
            json!({"envelope_sender": "a@ours.test", "content": "From: a@ours.test\n\nx", "tenant": "other",
                              "recipients": [{"email": "x@isp.test"}]})
            .to_string(),
            400,
            "acme",
        ),
        (TOKEN, format!("{{\"pad\": \"{}\"}}", "x".repeat(5000)), 413, "too large"),
    ];
    for (token, body, status, why) in &cases {
        let got = post(http, token, &dir, std::slice::from_ref(body));
        assert_eq!(got[0].0, *status, "{token} {body:.80}: {got:?}");
        assert!(got[0].1.contains(why), "{token} {body:.80}: {got:?}");
    }
    // The good request with the right token goes through after all that;
    // nothing was queued by the refused ones.
    let got = post(http, TOKEN, &dir, &[good]);
    assert_eq!(got[0].0, 200, "{got:?}");
    assert_eq!(srv.metric("ringpost_injected_total"), 1.0);
    assert_eq!(srv.metric("ringpost_inject_refused_total"), cases.len() as f64);
    // A GET of the API is not a request to inject.
    let (status, _) = common::http_with(
        ([127, 0, 0, 1], http).into(),
        "GET",
        "/api/inject/v1",
        "Host: x\r\nConnection: close\r\n",
    );
    assert_eq!(status, 405);
}

#[test]
fn what_is_answered_survives_kill_9() {
    let Setup { srv, dir, http, .. } = start("", "hold = true\n");
    let recipients: Vec<Value> = (0..300).map(|i| json!({"email": format!("u{i}@isp.test")})).collect();
    let request = json!({"envelope_sender": "a@ours.test", "content": "From: a@ours.test\nSubject: s\n\nx\n",
                         "recipients": recipients})
    .to_string();
    let got = post(http, TOKEN, &dir, &[request]);
    assert_eq!(serde_json::from_str::<Value>(&got[0].1).unwrap()["success_count"], 300, "{got:?}");
    srv.kill9();
    let cfg = std::fs::read_to_string(dir.join("ringpost.toml")).unwrap();
    let srv = Server::start_with_config(&dir, &dir.join("ringpost.toml"));
    assert!(cfg.contains("hold = true"));
    assert_eq!(srv.queued_messages(), 300);
}

#[test]
fn curl_gets_100_continue_and_its_answer() {
    let Setup { rx, srv: _srv, dir, http } = start("", "");
    // curl sends `Expect: 100-continue` on its own for large bodies (the
    // size depends on its version): asked for here.
    let recipients: Vec<Value> = (0..200).map(|i| json!({"email": format!("c{i}@isp.test")})).collect();
    let body = json!({"envelope_sender": "a@ours.test", "content": "From: a@ours.test\nSubject: curl\n\nx\n",
                      "recipients": recipients})
    .to_string();
    let file = dir.join("curl.json");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("curl")
        .args(["-sv", "--max-time", "30", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Content-Type: application/json", "-H", "Expect: 100-continue", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{http}/api/inject/v1"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("> Expect: 100-continue"), "{stderr}");
    assert!(stderr.contains("< HTTP/1.1 100 Continue"), "{stderr}");
    assert!(stderr.contains("< HTTP/1.1 200 OK"), "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["success_count"], 200, "{stdout}");
    assert_eq!(rx.wait_for(200, Duration::from_secs(30)).len(), 200);
}
