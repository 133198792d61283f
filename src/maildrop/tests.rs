#![allow(clippy::unwrap_used)] // reason: tests fail loudly

use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn postfix_flags() {
    let inv =
        parse_args(&args("-t -oi -f bounces@x.test -FJane -C /etc/r.toml a@b.test,c@d.test e")).unwrap();
    assert!(inv.extract && !inv.dot_ends);
    assert_eq!(inv.sender.as_deref(), Some("bounces@x.test"));
    assert_eq!(inv.full_name.as_deref(), Some("Jane"));
    assert_eq!(inv.config.as_deref(), Some("/etc/r.toml"));
    assert_eq!(inv.recipients, ["a@b.test", "c@d.test", "e"]);
    let inv = parse_args(&args(
        "-i -rme@x.test -odi -oem -v -bm -N success,failure -R hdrs -V env1 -- -odd@x.test",
    ))
    .unwrap();
    assert!(!inv.dot_ends && !inv.extract);
    assert_eq!(inv.sender.as_deref(), Some("me@x.test"));
    assert_eq!(
        (inv.notify.as_deref(), inv.ret.as_deref(), inv.envid.as_deref()),
        (Some("success,failure"), Some("hdrs"), Some("env1"))
    );
    assert_eq!(inv.recipients, ["-odd@x.test"]);
    assert!(parse_args(&[]).unwrap().dot_ends);
    for (bad, why) in
        [("-x", "unknown option"), ("-bs", "not supported"), ("-bp", "only -bm"), ("-f", "needs a value")]
    {
        let e = parse_args(&args(bad)).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn stdin_becomes_crlf_and_a_dot_ends_it_without_i() {
    let input = b"Subject: x\n\nline\r\n.\nafter\n";
    assert_eq!(read_message(input, true), b"Subject: x\r\n\r\nline\r\n");
    assert_eq!(read_message(input, false), b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n");
    assert_eq!(read_message(b"no newline at end", false), b"no newline at end\r\n");
    assert_eq!(read_message(b"", true), b"");
}

#[test]
fn submissions_check_and_qualify_addresses() {
    let inv = parse_args(&args("root b@x.test")).unwrap();
    let file = submission(&inv, b"Subject: s\r\n\r\nbody\r\n".to_vec(), "alice", "mx.test").unwrap();
    let (meta, message) = decode(&file).unwrap();
    assert_eq!(meta.sender, "alice@mx.test");
    assert_eq!(meta.recipients, ["root@mx.test", "b@x.test"]);
    assert_eq!(message, b"Subject: s\r\n\r\nbody\r\n");

    let inv = parse_args(&args("-t -f <> extra@x.test")).unwrap();
    let message = b"To: \"A, B\" <a@x.test>, c@x.test\r\nCc: group: d@x.test, e@x.test;\r\nBcc: hidden@x.test\r\nSubject: s\r\n\r\nTo: not@header.test\r\n";
    let file = submission(&inv, message.to_vec(), "alice", "mx.test").unwrap();
    let (meta, message) = decode(&file).unwrap();
    assert_eq!(meta.sender, "");
    assert_eq!(
        meta.recipients,
        ["extra@x.test", "a@x.test", "c@x.test", "d@x.test", "e@x.test", "hidden@x.test"]
    );
    assert!(!String::from_utf8_lossy(message).contains("hidden"), "Bcc removed");

    let cases: [(&str, &[u8], u8, &str); 5] = [
        ("", b"Subject: s\r\n\r\n", exit::USAGE, "no recipients"),
        ("-t", b"Subject: s\r\n\r\n", exit::USAGE, "no recipients"),
        ("bad@@x", b"\r\n", exit::USAGE, "not an address"),
        ("-N sometimes a@x.test", b"\r\n", exit::USAGE, "-N"),
        ("-f bad@ a@x.test", b"\r\n", exit::USAGE, "not an address"),
    ];
    for (line, message, code, why) in cases {
        let inv = parse_args(&args(line)).unwrap();
        let (c, e) = submission(&inv, message.to_vec(), "alice", "mx.test").unwrap_err();
        assert_eq!(c, code, "{line}: {e}");
        assert!(e.contains(why), "{line}: {e}");
    }
}

#[test]
fn duplicate_recipients_are_one() {
    let inv = parse_args(&args("-t a@x.test")).unwrap();
    let file = submission(&inv, b"To: A@x.test, b@x.test\r\n\r\n".to_vec(), "alice", "mx.test").unwrap();
    assert_eq!(decode(&file).unwrap().0.recipients, ["a@x.test", "b@x.test"]);
}

#[test]
fn bad_drop_files_say_why() {
    for (file, why) in [
        (&b"no newline"[..], "no envelope line"),
        (b"{\"v\": 1}\nx", "bad envelope line"),
        (b"{\"v\": 2, \"sender\": \"\", \"recipients\": [\"a@b\"]}\n", "version"),
        (b"{\"v\": 1, \"sender\": \"\", \"recipients\": []}\n", "no recipients"),
    ] {
        assert!(decode(file).unwrap_err().contains(why), "{why}");
    }
}

#[test]
fn pickup_completes_the_message() {
    let meta = Meta {
        v: 1,
        sender: "cron@mx.test".into(),
        recipients: vec!["root@mx.test".into()],
        full_name: Some("Cron Daemon \u{e9}".into()),
        notify: Some("never".into()),
        ret: Some("hdrs".into()),
        envid: None,
    };
    let id = crate::envelope::QueueId(0xABCD);
    let p = pickup(&meta, b"Subject: job\r\n\r\nout\r\n", 1000, id, 1_796_000_000, "mx.test").unwrap();
    let m = String::from_utf8(p.message).unwrap();
    assert!(m.starts_with(
        "Received: by mx.test (ringpost, from userid 1000)\r\n\tid 000000000000ABCD\r\n\tfor <root@mx.test>;\r\n\tMon, 30 Nov 2026 00:53:20 +0000\r\n"
    ), "{m}");
    assert!(m.contains("From: \"=?utf-8?") || m.contains("From: =?utf-8?"), "encoded full name: {m}");
    assert!(m.contains("<cron@mx.test>\r\nDate: Mon, 30 Nov 2026 00:53:20 +0000\r\nMessage-ID: <000000000000ABCD@mx.test>\r\nSubject: job\r\n\r\nout\r\n"), "{m}");
    assert!(p.recipients[0].notify.never());
    assert_eq!(p.ret, Some(crate::envelope::Ret::Headers));
    let parsed = mail_parser::MessageParser::default().parse(m.as_bytes()).unwrap();
    assert_eq!(parsed.from().unwrap().first().unwrap().name(), Some("Cron Daemon \u{e9}"));

    // A message with its own From, Date and Message-ID keeps them.
    let own = b"From: me@x.test\r\nDate: x\r\nMessage-ID: <y@x>\r\n\r\n";
    let m = pickup(&meta, own, 0, id, 0, "mx.test").unwrap().message;
    assert!(m.ends_with(own) && String::from_utf8_lossy(&m).matches("From:").count() == 1);
    let null = Meta { sender: String::new(), full_name: None, ..meta };
    let m = pickup(&null, b"\r\nbody\r\n", 0, id, 0, "mx.test").unwrap();
    assert_eq!(m.sender, ReversePath::Null);
    assert!(String::from_utf8_lossy(&m.message).contains("From: MAILER-DAEMON@mx.test\r\n"));
}
