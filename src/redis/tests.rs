#![allow(clippy::unwrap_used)] // reason: tests fail loudly

use super::*;

#[test]
fn urls() {
    let u = Url::parse("redis://127.0.0.1:6390").unwrap();
    assert_eq!((u.addr.as_str(), u.user, u.password, u.db), ("127.0.0.1:6390", None, None, 0));
    let u = Url::parse("redis://:s3cret@localhost/2").unwrap();
    assert_eq!((u.addr.as_str(), u.password.as_deref(), u.db), ("localhost:6379", Some("s3cret"), 2));
    let u = Url::parse("redis://app:pw@[::1]:7000/").unwrap();
    assert_eq!(
        (u.addr.as_str(), u.user.as_deref(), u.password.as_deref()),
        ("[::1]:7000", Some("app"), Some("pw"))
    );
    assert_eq!(Url::parse("redis://[::1]").unwrap().addr, "[::1]:6379");
    for (bad, why) in [
        ("http://x", "redis://"),
        ("rediss://x", "TLS"),
        ("redis://", "no host"),
        ("redis://h:port", "port"),
        ("redis://h/db", "database"),
    ] {
        assert!(Url::parse(bad).unwrap_err().contains(why), "{bad}");
    }
    assert_eq!(
        hello(&Url::parse("redis://:pw@h/3").unwrap()),
        vec![cmd(&["AUTH", "pw"]), cmd(&["SELECT", "3"])]
    );
    assert!(hello(&Url::parse("redis://h").unwrap()).is_empty());
}

#[test]
fn throttle_answers() {
    use OwnedFrame::*;
    assert_eq!(throttle_answer(&Integer(0), false), Ok(None));
    assert_eq!(throttle_answer(&Integer(1500), false), Ok(Some(Duration::from_micros(1500))));
    assert!(throttle_answer(&Error("NOSCRIPT x".into()), false).unwrap_err().contains("NOSCRIPT"));
    assert!(throttle_answer(&Null, false).is_err());
    let cell =
        |limited, retry| Array(vec![Integer(limited), Integer(10), Integer(0), Integer(retry), Integer(5)]);
    assert_eq!(throttle_answer(&cell(0, -1), true), Ok(None));
    assert_eq!(throttle_answer(&cell(1, 3), true), Ok(Some(Duration::from_secs(3))));
    assert_eq!(throttle_answer(&cell(1, 0), true), Ok(Some(Duration::from_secs(1))));
    assert!(throttle_answer(&Array(vec![Integer(0)]), true).is_err());
    assert_eq!(lease_answer(&Integer(1)), Ok(true));
    assert_eq!(lease_answer(&Integer(0)), Ok(false));
    assert!(lease_answer(&BulkString(b"x".to_vec())).is_err());
}

#[test]
fn throttle_questions() {
    let q = throttle("rp:rate:k", Duration::from_millis(200), Duration::ZERO, false, "abc");
    assert_eq!(q, cmd(&["EVALSHA", "abc", "1", "rp:rate:k", "200000", "0"]));
    // 300/min = one per 200 ms: 5 per second for redis-cell.
    let q = throttle("k", Duration::from_millis(200), Duration::from_millis(400), true, "abc");
    assert_eq!(q, cmd(&["CL.THROTTLE", "k", "2", "5", "1", "1"]));
    // 10/h: one per 360 s.
    let q = throttle("k", Duration::from_secs(360), Duration::ZERO, true, "abc");
    assert_eq!(q, cmd(&["CL.THROTTLE", "k", "0", "1", "360", "1"]));
    assert_eq!(
        lease("k", 3, "n1", Duration::from_secs(60), "s"),
        cmd(&["EVALSHA", "s", "1", "k", "3", "n1", "60000"])
    );
    // What Redis computes for `SCRIPT LOAD` (SHA-1 of the text).
    assert_eq!(sha1_hex(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
}

#[test]
fn suppression_changes_round_trip() {
    for c in [
        Change::Add("a@b.test".into(), "bounce:InvalidRecipient".into(), 17),
        Change::Add("acme\0a@b.test".into(), "unsubscribe".into(), 0),
        Change::Remove("acme\0a@b.test".into(), 99),
        Change::Remove("odd\tkey@b.test".into(), 1),
    ] {
        assert_eq!(Change::decode(&c.encode()), Some(c.clone()));
    }
    for bad in [&b""[..], b"*x", b"+k\treason", b"+k\tr\tnot a number", b"\xff", b"-k", b"-k\tsoon"] {
        assert_eq!(Change::decode(bad), None, "{bad:?}");
    }
    assert_eq!(hash_value(b"manual\t12"), Some(("manual".into(), 12)));
    assert_eq!(hash_value(b"manual"), None);
    let push = OwnedFrame::Array(vec![
        OwnedFrame::BulkString(b"message".to_vec()),
        OwnedFrame::BulkString(b"ch".to_vec()),
        OwnedFrame::BulkString(b"-k\t1".to_vec()),
    ]);
    assert_eq!(message_payload(&push), Some(&b"-k\t1"[..]));
    assert_eq!(message_payload(&OwnedFrame::Integer(1)), None);
}

#[test]
fn backoff_doubles_to_five_seconds() {
    let b: Vec<u64> = (0..9).map(|n| backoff(n).as_millis() as u64).collect();
    assert_eq!(b, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
}

#[test]
fn full_sync_errs_on_the_side_of_suppressing() {
    use SyncStep::*;
    let table = [
        // (local since, remote since, tombstone) -> what to do
        (None, Some(5), None, TakeRemote),
        (None, Some(5), Some(9), TakeRemote),
        (Some(5), Some(7), None, TakeRemote),
        (Some(5), Some(5), None, Keep),
        (None, None, Some(3), Keep),
        (Some(5), None, None, PushLocal),
        (Some(5), None, Some(5), PushLocal),
        (Some(5), None, Some(4), PushLocal),
        (Some(5), None, Some(6), RemoveLocal),
    ];
    for (local, remote, removed, want) in table {
        assert_eq!(sync(local, remote, removed), want, "{local:?} {remote:?} {removed:?}");
    }
    let add = Change::Add("k".into(), "manual".into(), 3);
    assert_eq!(
        add.commands("h", "r", "c"),
        vec![
            cmd(&["HSET", "h", "k", "manual\t3"]),
            cmd(&["ZREM", "r", "k"]),
            cmd(&["PUBLISH", "c", "+k\tmanual\t3"])
        ]
    );
    let rm = Change::Remove("k".into(), 8);
    assert_eq!(
        rm.commands("h", "r", "c"),
        vec![cmd(&["HDEL", "h", "k"]), cmd(&["ZADD", "r", "8", "k"]), cmd(&["PUBLISH", "c", "-k\t8"])]
    );
}
