#![allow(clippy::unwrap_used)] // reason: tests fail loudly

use super::*;

fn stamp() -> Stamp<'static> {
    Stamp {
        id: QueueId(0x0123_4567_89AB_CDEF),
        unix: 1_796_000_000,
        hostname: "mx.test",
        peer: "127.0.0.1".parse().unwrap(),
        tls: false,
        token: "app",
    }
}

/// Renders request `json` for its recipient `i`.
fn render(json: &str, i: usize) -> Result<String, String> {
    let req = parse(json.as_bytes())?;
    let plan = plan(&req, None)?;
    let r = &req.recipients[i];
    let to = recipient(r)?;
    plan.render(r, &to, stamp(), 1 << 20).map(|m| String::from_utf8(m).unwrap())
}

#[test]
fn bad_requests_say_why() {
    let cases = [
        ("", "invalid request"),
        ("{", "invalid request"),
        ("[]", "invalid request"),
        (r#"{"content": "x", "recipients": [{"email": "a@b.test"}]}"#, "envelope_sender"),
        (r#"{"envelope_sender": "s@x.test", "recipients": [{"email": "a@b.test"}]}"#, "content"),
        (r#"{"envelope_sender": "s@x.test", "content": "x"}"#, "recipients"),
        (r#"{"envelope_sender": "s@x.test", "content": "x", "recipients": []}"#, "recipients is empty"),
        (r#"{"envelope_sender": "s@x.test", "content": "x", "recipients": [{"mail": "a@b.test"}]}"#, "mail"),
        (r#"{"envelope_sender": "s@x.test", "content": "x", "recipients": [], "extra": 1}"#, "extra"),
    ];
    for (json, want) in cases {
        let e = parse(json.as_bytes()).unwrap_err();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[test]
fn bad_plans_say_why() {
    let rcpt = r#""recipients": [{"email": "a@b.test"}]"#;
    let cases = [
        (r#""envelope_sender": "not an address", "content": "From: a@b.test\n\nx""#, "envelope_sender"),
        (r#""envelope_sender": "s@x.test", "content": 42"#, "must be a string"),
        (r#""envelope_sender": "s@x.test", "content": "{{ unclosed""#, "template error"),
        (
            r#""envelope_sender": "s@x.test", "content": "x", "template_dialect": "Handlebars""#,
            "template_dialect",
        ),
        (r#""envelope_sender": "s@x.test", "content": "x", "tenant": "bad\u0001""#, "tenant"),
        (r#""envelope_sender": "s@x.test", "content": "x", "campaign": """#, "campaign"),
        (r#""envelope_sender": "s@x.test", "content": {"subject": "x", "text_body": "x"}"#, "from"),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "nope"}, "text_body": "x"}"#,
            "content.from.email",
        ),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "f@x.test"}}"#,
            "text_body or html_body",
        ),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "f@x.test"}, "text_body": "x", "headers": {"Subject": "x"}}"#,
            "written from",
        ),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "f@x.test"}, "text_body": "x", "headers": {"Bad Name": "x"}}"#,
            "not a header field name",
        ),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "f@x.test"}, "text_body": "x", "attachments": [{"data": "!!", "base64": true}]}"#,
            "not base64",
        ),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "f@x.test"}, "text_body": "x", "attachments": [{"data": "x", "content_type": "text"}]}"#,
            "not a MIME type",
        ),
        (
            r#""envelope_sender": "s@x.test", "content": {"from": {"email": "f@x.test"}, "text_body": "x", "amp_html_body": "x"}"#,
            "amp_html_body",
        ),
    ];
    for (fields, want) in cases {
        let json = format!("{{{fields}, {rcpt}}}");
        let req = parse(json.as_bytes()).unwrap();
        let e = plan(&req, None).unwrap_err();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[test]
fn a_token_tenant_is_every_message_tenant() {
    let json = |tenant: &str| {
        format!(
            r#"{{"envelope_sender": "", "content": "From: a@b.test\n\nx", "recipients": [{{"email": "a@b.test"}}]{tenant}}}"#
        )
    };
    let req = parse(json("").as_bytes()).unwrap();
    assert_eq!(plan(&req, Some("acme")).unwrap().tenant.as_deref(), Some("acme"));
    assert_eq!(plan(&req, None).unwrap().tenant, None);
    assert_eq!(plan(&req, None).unwrap().sender, ReversePath::Null);
    let req = parse(json(r#", "tenant": "acme""#).as_bytes()).unwrap();
    assert_eq!(plan(&req, Some("acme")).unwrap().tenant.as_deref(), Some("acme"));
    let req = parse(json(r#", "tenant": "other""#).as_bytes()).unwrap();
    assert!(plan(&req, Some("acme")).unwrap_err().contains("acme"));
    assert_eq!(plan(&req, None).unwrap().tenant.as_deref(), Some("other"));
}

#[test]
fn raw_content_is_filled_and_completed() {
    let json = r#"{"envelope_sender": "s@x.test",
        "content": "From: news@x.test\nSubject: hi {{ name }}\n\nDear {{ name }} of {{ city }},\n{{ missing }}.",
        "substitutions": {"name": "shared", "city": "Paris"},
        "recipients": [{"email": "a@b.test", "substitutions": {"name": "Ann"}}, {"email": "c@d.test"}]}"#;
    let m = render(json, 0).unwrap();
    let (received, rest) = m.split_once(";\r\n\t").unwrap();
    assert!(received.starts_with("Received: from [127.0.0.1] (token app)\r\n\tby mx.test (ringpost) with HTTP id 0123456789ABCDEF\r\n\tfor <a@b.test>"), "{m}");
    let rest = &rest[rest.find("\r\n").unwrap() + 2..];
    assert_eq!(
        rest,
        "Date: Mon, 30 Nov 2026 00:53:20 +0000\r\nMessage-ID: <0123456789ABCDEF@mx.test>\r\n\
         From: news@x.test\r\nSubject: hi Ann\r\n\r\nDear Ann of Paris,\r\n.\r\n"
    );
    assert!(render(json, 1).unwrap().contains("Dear shared of Paris"));
    // Lines end in CRLF whatever the client sent; nothing bare is left.
    let m = render(
        r#"{"envelope_sender": "s@x.test", "content": "From: a@x.test\r\nDate: x\rMessage-ID: <y@x>\n\nbody\r\n", "recipients": [{"email": "a@b.test"}]}"#,
        0,
    )
    .unwrap();
    assert!(m.ends_with("From: a@x.test\r\nDate: x\r\nMessage-ID: <y@x>\r\n\r\nbody\r\n"), "{m:?}");
    assert_eq!(m.matches('\n').count(), m.matches("\r\n").count());
    assert_eq!(m.matches('\r').count(), m.matches("\r\n").count());
}

#[test]
fn static_dialect_leaves_braces_alone() {
    let json = r#"{"envelope_sender": "s@x.test", "template_dialect": "Static",
        "content": {"from": {"email": "f@x.test"}, "subject": "{{ name }}", "text_body": "{% raw %}{{ name }}"},
        "recipients": [{"email": "a@b.test", "substitutions": {"name": "Ann"}}]}"#;
    let m = render(json, 0).unwrap();
    assert!(m.contains("Subject: {{ name }}\r\n"), "{m}");
    assert!(m.contains("{% raw %}{{ name }}"), "{m}");
}

#[test]
fn raw_content_needs_a_from() {
    let json = r#"{"envelope_sender": "s@x.test", "content": "Subject: x\n\nbody", "recipients": [{"email": "a@b.test"}]}"#;
    assert!(render(json, 0).unwrap_err().contains("From"));
}

#[test]
fn built_content_is_proper_mime() {
    let json = r#"{"envelope_sender": "bounces@x.test",
        "content": {"from": {"email": "news@x.test", "name": "Les Nouvelles"},
                    "reply_to": {"email": "help@x.test"},
                    "subject": "Bonjour {{ name }} \u00e0 {{ city }}",
                    "text_body": "Hello {{ name }}",
                    "html_body": "<p>Hello <b>{{ name }}</b></p>",
                    "headers": {"X-Mailer-Id": "{{ id }}", "List-Unsubscribe": "<mailto:u@x.test>"},
                    "attachments": [{"data": "aGVsbG8=", "base64": true, "content_type": "text/plain", "file_name": "hi.txt"}]},
        "substitutions": {"city": "Z\u00fcrich"},
        "recipients": [{"email": "ann@b.test", "name": "Ann \u00c9", "substitutions": {"name": "Ann", "id": 7}}]}"#;
    let m = render(json, 0).unwrap();
    assert!(m.is_ascii(), "non-ASCII left unencoded: {m}");
    assert!(m.lines().all(|l| l.len() <= 998));
    let parsed = mail_parser::MessageParser::default().parse(m.as_bytes()).unwrap();
    assert_eq!(parsed.subject(), Some("Bonjour Ann \u{e0} Z\u{fc}rich"));
    assert_eq!(parsed.message_id(), Some("0123456789ABCDEF@mx.test"));
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!((from.name(), from.address()), (Some("Les Nouvelles"), Some("news@x.test")));
    let to = parsed.to().unwrap().first().unwrap();
    assert_eq!((to.name(), to.address()), (Some("Ann \u{c9}"), Some("ann@b.test")));
    assert_eq!(parsed.reply_to().unwrap().first().unwrap().address(), Some("help@x.test"));
    assert_eq!(parsed.date().unwrap().to_timestamp(), 1_796_000_000);
    assert_eq!(parsed.header_raw("X-Mailer-Id").map(str::trim), Some("7"));
    assert_eq!(parsed.header_raw("MIME-Version").map(str::trim), Some("1.0"));
    assert_eq!(parsed.body_text(0).as_deref(), Some("Hello Ann"));
    assert_eq!(parsed.body_html(0).as_deref(), Some("<p>Hello <b>Ann</b></p>"));
    use mail_parser::MimeHeaders as _;
    let attachment = parsed.attachment(0).unwrap();
    assert_eq!((attachment.attachment_name(), attachment.contents()), (Some("hi.txt"), &b"hello"[..]));
    // Our Received field comes first, before the built headers.
    assert!(m.starts_with("Received: from [127.0.0.1] (token app)"));
}

#[test]
fn a_recipient_fails_alone() {
    let json = r#"{"envelope_sender": "s@x.test",
        "content": {"from": {"email": "f@x.test"}, "subject": "{{ s }}", "text_body": "{{ body }}"},
        "recipients": [{"email": "a@b.test", "substitutions": {"s": "line\r\nBcc: evil@x.test"}},
                       {"email": "not-an-address"},
                       {"email": "big@b.test", "substitutions": {"body": "long"}},
                       {"email": "ok@b.test", "substitutions": {"s": "fine"}}]}"#;
    let req = parse(json.as_bytes()).unwrap();
    let plan = plan(&req, None).unwrap();
    let r = &req.recipients;
    let e = plan.render(&r[0], &recipient(&r[0]).unwrap(), stamp(), 1 << 20).unwrap_err();
    assert!(e.contains("line break"), "{e}");
    assert!(recipient(&r[1]).unwrap_err().contains("invalid address"));
    let e = plan.render(&r[2], &recipient(&r[2]).unwrap(), stamp(), 200).unwrap_err();
    assert!(e.contains("too big"), "{e}");
    let m = plan.render(&r[3], &recipient(&r[3]).unwrap(), stamp(), 1 << 20).unwrap();
    assert!(String::from_utf8(m).unwrap().contains("Subject: fine\r\n"));
}

#[test]
fn a_runaway_template_stops() {
    let json = r#"{"envelope_sender": "s@x.test",
        "content": "From: a@x.test\n\n{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "recipients": [{"email": "a@b.test"}]}"#;
    let e = render(json, 0).unwrap_err();
    assert!(e.contains("template error"), "{e}");
}

#[test]
fn the_answer_has_kumomta_shape() {
    let mut a = Answer { success_count: 2, ..Answer::default() };
    a.fail("x@y.test", "suppressed");
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"success_count": 2, "fail_count": 1, "failed_recipients": ["x@y.test"],
                           "errors": ["x@y.test: suppressed"]})
    );
}
