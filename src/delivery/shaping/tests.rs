//! Shaping decisions with tables and simulated time.
#![allow(clippy::disallowed_methods)] // reason: a real Instant as the simulated clock's origin

use super::*;
use crate::config::Config;

fn rules(text: &str) -> Result<Vec<Rule>, String> {
    let c = Config::parse(&format!("hostname = \"mx.test\"\n{text}"), "t.toml").map_err(|e| e.to_string())?;
    Ok(c.shaping_rules())
}

fn defaults() -> Limits {
    Limits { connections: 20, messages_per_connection: 100, rate: None, shared: false }
}

#[test]
fn rates_parse() {
    let table: &[(&str, Option<(u32, u64)>)] = &[
        ("300/min", Some((300, 60))),
        ("10/s", Some((10, 1))),
        ("5000/h", Some((5000, 3600))),
        ("100000/day", Some((100_000, 86_400))),
        ("10/30s", Some((10, 30))),
        (" 7 / d ", Some((7, 86_400))),
        ("0/min", None),
        ("x/min", None),
        ("10", None),
        ("10/fortnight", None),
        ("10/0s", None),
    ];
    for (text, want) in table {
        let got = Rate::parse(text).ok().map(|r| (r.count, r.per.as_secs()));
        assert_eq!(got, *want, "{text}");
    }
    assert_eq!(Rate::parse("300/min").unwrap().interval(), Duration::from_millis(200));
}

#[test]
fn globs() {
    let table = [
        ("*.google.com", "aspmx.l.google.com", true),
        ("*.google.com", "ALT1.ASPMX.L.GOOGLE.COM", true),
        ("*.google.com", "google.com", false),
        ("*.google.com", "evilgoogle.com", false),
        ("*.google.com", "x.google.com.evil.test", false),
        ("mx*.mail.icloud.com", "mx01.mail.icloud.com", true),
        ("*", "anything", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("exact.test", "exact.test", true),
    ];
    for (p, t, want) in table {
        assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
    }
}

#[test]
fn domain_rules_win_then_mx_rollup_then_defaults() {
    let r = rules(
        "[[shaping]]\nmx = \"*.google.com\"\nconnections = 5\nrate = \"300/min\"\n\
         [[shaping]]\ndomain = \"gmail.com\"\nconnections = 10\n\
         [[shaping]]\ndomain = \"gmail.com\"\nconnections = 99\n",
    )
    .unwrap();
    let s = Shaping::new(r, defaults());
    let google = ["aspmx.l.google.com", "alt1.aspmx.l.google.com"];
    let gmail = s.shape("Gmail.com", "hop-gmail", &google);
    assert_eq!((gmail.key.as_str(), gmail.limits.connections), ("domain:gmail.com", 10), "first domain rule");
    assert_eq!(gmail.limits.rate, None, "a domain rule does not inherit the mx rule's rate");
    assert_eq!(gmail.limits.messages_per_connection, 100, "unset: the default");
    // Two hosted domains share the mx budget.
    let a = s.shape("customer-a.test", "hop-a", &google);
    let b = s.shape("customer-b.test", "hop-b", &["aspmx.l.google.com."]);
    assert_eq!((a.key.as_str(), b.key.as_str()), ("mx:*.google.com", "mx:*.google.com"));
    assert_eq!(a.limits.rate, Some(Rate { count: 300, per: Duration::from_secs(60) }));
    let other = s.shape("other.test", "hop-o", &["mx.other.test"]);
    assert_eq!((other.key.as_str(), other.limits), ("hop-o", defaults()));
    assert!(other.rule.is_none());
}

#[test]
fn bad_rules_are_refused_with_their_line() {
    let table = [
        ("[[shaping]]\nconnections = 1\n", "exactly one of domain and mx"),
        ("[[shaping]]\ndomain = \"a\"\nmx = \"b\"\n", "exactly one of domain and mx"),
        ("[[shaping]]\ndomain = \"a\"\nrate = \"fast\"\n", "rate:"),
        ("[[shaping]]\ndomain = \"a\"\nconnections = 0\n", "connections"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"(\"\naction = \"suspend\"\nduration = \"1m\"\n", "reply:"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"x\"\naction = \"explode\"\nduration = \"1m\"\n", "action"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"x\"\naction = \"suspend\"\n", "duration: needed"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"x\"\naction = { rate = \"1/0s\" }\nduration = \"1m\"\n", "action.rate"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"x\"\naction = \"bounce\"\nthreshold = \"many\"\n", "threshold"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"x\"\naction = \"bounce\"\nscope = \"tenant\"\n", "scope: \"tenant\" goes with"),
        ("[[shaping]]\ndomain = \"a\"\n[[shaping.automation]]\nreply = \"x\"\naction = \"suspend\"\nduration = \"1m\"\nscope = \"world\"\n", "scope:"),
    ];
    for (text, want) in table {
        let e = rules(text).unwrap_err();
        assert!(e.contains(want) && e.contains("t.toml: line "), "{text:?}: {e}");
    }
    let shared = "[[shaping]]\ndomain = \"a\"\nshared = true\n";
    assert!(rules(shared).unwrap_err().contains("shaping[0].shared: shared = true needs a [redis] section"));
    assert!(rules(&format!("{shared}[redis]\nurl = \"redis://127.0.0.1:6379\"\n")).is_ok());
}

fn automation(text: &str) -> Vec<Automation> {
    let r = rules(&format!("[[shaping]]\nmx = \"*\"\n{text}")).unwrap();
    r.into_iter().next().unwrap().automation
}

#[test]
fn suspend_at_once_and_end_on_time() {
    let a = automation(
        "[[shaping.automation]]\nreply = '4\\.7\\.28'\naction = \"suspend\"\nduration = \"30m\"\n",
    );
    let t0 = Instant::now();
    let mut s = AutoState::default();
    assert_eq!(s.on_reply(&a, "250 2.0.0 ok", t0), Reaction::default());
    assert!(s.suspended(t0).is_none());
    let r = s.on_reply(&a, "421 4.7.28 unusual rate of mail", t0);
    assert_eq!(r.started, ["suspended for 1800s"]);
    assert!(!r.bounce);
    let (until, why) = s.suspended(t0 + Duration::from_secs(60)).unwrap();
    assert_eq!(until, t0 + Duration::from_secs(1800));
    assert!(why.contains("4.7.28 unusual rate"), "{why}");
    assert!(s.suspended(t0 + Duration::from_secs(1801)).is_none(), "it ends");
    // A second match extends it; an earlier end never shortens it.
    s.on_reply(&a, "421 4.7.28", t0 + Duration::from_secs(600));
    assert_eq!(s.suspended(t0 + Duration::from_secs(2000)).unwrap().0, t0 + Duration::from_secs(2400));
    s.clear();
    assert!(s.suspended(t0 + Duration::from_secs(700)).is_none(), "a flush ends it");
}

#[test]
fn thresholds_count_matches_within_their_period() {
    let a = automation(
        "[[shaping.automation]]\nreply = 'TSS04'\naction = \"suspend\"\nduration = \"1h\"\nthreshold = \"3/10m\"\n",
    );
    let t0 = Instant::now();
    let at = |m: u64| t0 + Duration::from_secs(m * 60);
    let mut s = AutoState::default();
    // (minute, reply, suspended after it)
    let table = [
        (0, "421 4.7.0 [TSS04] deferred", false),
        (5, "421 4.7.0 [TSS04] deferred", false),
        (11, "421 4.7.0 [TSS04] deferred", false), // the first fell out of the window
        (12, "250 ok", false),
        (14, "421 4.7.0 [TSS04] deferred", true), // 5, 11, 14
        (20, "421 4.7.0 [TSS04] deferred", true), // counting starts again, still suspended
    ];
    for (m, reply, suspended) in table {
        s.on_reply(&a, reply, at(m));
        assert_eq!(s.suspended(at(m)).is_some(), suspended, "minute {m}");
    }
    assert_eq!(s.suspended(at(20)).unwrap().0, at(14 + 60));
}

#[test]
fn rate_actions_slow_down_for_a_while_and_bounce_acts_per_reply() {
    let a = automation(
        "[[shaping.automation]]\nreply = '4\\.7\\.28'\naction = { rate = \"10/min\" }\nduration = \"1h\"\n\
         [[shaping.automation]]\nreply = '(?i)mailbox (does not exist|unavailable)'\naction = \"bounce\"\n",
    );
    let t0 = Instant::now();
    let configured = Some(Rate::parse("300/min").unwrap());
    let mut s = AutoState::default();
    assert_eq!(s.rate(t0, configured), configured);
    let r = s.on_reply(&a, "421 4.7.28 slow down", t0);
    assert!(!r.bounce && r.started.len() == 1);
    assert_eq!(s.rate(t0, configured), Some(Rate::parse("10/min").unwrap()));
    assert_eq!(s.rate(t0, None), Some(Rate::parse("10/min").unwrap()));
    assert_eq!(s.rate(t0 + Duration::from_secs(3601), configured), configured, "it ends");
    assert!(s.on_reply(&a, "450 4.2.1 Mailbox does not exist", t0).bounce);
    assert!(s.suspended(t0).is_none(), "bounce suspends nothing");
}

#[test]
fn pacing_spaces_messages_by_the_rate() {
    let t0 = Instant::now();
    let r = Some(Rate::parse("10/s").unwrap());
    let (at, next) = pace(t0, t0, r);
    assert_eq!((at, next), (t0, t0 + Duration::from_millis(100)));
    let (at2, next2) = pace(next, t0 + Duration::from_millis(10), r);
    assert_eq!((at2, next2), (t0 + Duration::from_millis(100), t0 + Duration::from_millis(200)));
    // Idle for a while: no burst credit is saved up.
    let later = t0 + Duration::from_secs(5);
    assert_eq!(pace(next2, later, r), (later, later + Duration::from_millis(100)));
    assert_eq!(pace(next2, later, None), (later, later));
}

/// The shipped tuning/shaping.toml loads through `shaping_files`, its rules
/// match the providers' MX hosts, and its automation reacts to their
/// published replies as intended.
#[test]
fn the_shipped_provider_rules_load_and_match() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/shaping.toml");
    let path = dir.path().join("ringpost.toml");
    std::fs::write(&path, format!("hostname = \"mx.test\"\n[delivery]\nshaping_files = [{:?}]\n", shipped))
        .unwrap();
    let config = Config::load(&path).unwrap();
    let s = Shaping::new(config.shaping_rules(), defaults());
    // (domain, an MX host, budget key)
    let table = [
        ("gmail.com", "gmail-smtp-in.l.google.com", "mx:*.google.com"),
        ("workspace-customer.test", "aspmx.l.google.com", "mx:*.google.com"),
        ("yahoo.com", "mta5.am0.yahoodns.net", "mx:*.yahoodns.net"),
        ("aol.com", "mx-aol.mail.gm0.yahoodns.net", "mx:*.yahoodns.net"),
        ("hotmail.com", "hotmail-com.olc.protection.outlook.com", "mx:*.olc.protection.outlook.com"),
        ("icloud.com", "mx01.mail.icloud.com", "mx:*.mail.icloud.com"),
        ("example.org", "mail.example.org", "hop"),
    ];
    for (domain, mx, key) in table {
        assert_eq!(s.shape(domain, "hop", &[mx]).key, key, "{domain}");
    }
    let t0 = Instant::now();
    // (MX host, reply, what is suspended at once: D the destination, T the tenant, - nothing)
    let replies = [
        ("aspmx.l.google.com", "421 4.7.28 Our system has detected an unusual rate of unsolicited mail", '-'),
        (
            "aspmx.l.google.com",
            "550 5.7.26 Unauthenticated email from example.com is not accepted due to DMARC",
            'T',
        ),
        (
            "aspmx.l.google.com",
            "550 5.7.25 The IP address sending this message does not have a PTR record",
            'D',
        ),
        ("aspmx.l.google.com", "452 4.2.2 The email account that you tried to reach is over quota", '-'),
        ("mta5.am0.yahoodns.net", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", 'D'),
        (
            "mta5.am0.yahoodns.net",
            "553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred",
            'D',
        ),
        (
            "x.olc.protection.outlook.com",
            "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent (S3150)",
            'D',
        ),
        (
            "x.olc.protection.outlook.com",
            "550 5.7.515 Access denied, sending domain does not meet the required authentication level",
            'T',
        ),
        (
            "x.olc.protection.outlook.com",
            "421 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited",
            '-',
        ),
    ];
    for (mx, reply, what) in replies {
        let shape = s.shape("d.test", "hop", &[mx]);
        let rule = shape.rule.unwrap();
        let mut state = AutoState::default();
        let r = state.on_reply(&rule.automation, reply, t0);
        assert_eq!(state.suspended(t0).is_some(), what == 'D', "{reply}");
        assert_eq!(r.suspend_tenant.is_some(), what == 'T', "{reply}");
    }
    // Gmail's 4.7.28 slows the source down first, and pauses it if it goes on.
    let rule = s.shape("gmail.com", "hop", &["aspmx.l.google.com"]).rule.unwrap();
    let mut state = AutoState::default();
    state.on_reply(&rule.automation, "421 4.7.28 unusual rate", t0);
    assert_eq!(state.rate(t0, None), Some(Rate::parse("100/min").unwrap()));
    for i in 1..5 {
        state.on_reply(&rule.automation, "421 4.7.28 unusual rate", t0 + Duration::from_secs(60 * i));
    }
    assert!(state.suspended(t0 + Duration::from_secs(240)).is_some());
}

/// A tenant-scoped rule suspends the tenant, not the budget; holds extend,
/// never shorten, end on time, and stay bounded.
#[test]
fn tenant_scope() {
    let a = automation(
        "[[shaping.automation]]\nreply = '5\\.7\\.26'\naction = \"suspend\"\nduration = \"1h\"\nscope = \"tenant\"\n",
    );
    let t0 = Instant::now();
    let mut state = AutoState::default();
    let r = state.on_reply(&a, "550 5.7.26 unauthenticated", t0);
    assert_eq!(r.suspend_tenant.as_ref().map(|(d, _)| *d), Some(Duration::from_secs(3600)));
    assert!(r.suspend_tenant.unwrap().1.contains("5.7.26"));
    assert!(state.suspended(t0).is_none(), "the destination goes on for other tenants");
    assert!(state.on_reply(&a, "250 ok", t0).suspend_tenant.is_none());

    let holds = TenantHolds::default();
    holds.hold("acme", 1_000, "why", 0);
    holds.hold("acme", 500, "shorter", 0);
    assert_eq!(holds.held("acme", 10), Some((1_000, "why".into())));
    assert_eq!(holds.held("acme", 1_000), None, "ended");
    assert_eq!(holds.held("other", 10), None);
    for i in 0..MAX_TENANT_HOLDS + 10 {
        holds.hold(&format!("t{i}"), 2_000 + i as u64, "x", 0);
    }
    assert_eq!(holds.all(0).len(), MAX_TENANT_HOLDS, "bounded");
    assert!(holds.held(&format!("t{}", MAX_TENANT_HOLDS + 9), 0).is_some(), "the newest kept");
}

/// What automation had in force comes back after a restart, in simulated
/// time: suspensions and lowered rates keep their Unix ends, what ended
/// meanwhile is gone, match counts start over, bad rates are ignored.
#[test]
fn saved_state_outlives_a_restart() {
    let a = automation(
        "[[shaping.automation]]\nreply = '4\\.7\\.28'\naction = \"suspend\"\nduration = \"1h\"\n\
         [[shaping.automation]]\nreply = '4\\.7\\.0 slow'\naction = { rate = \"10/min\" }\nduration = \"10m\"\n",
    );
    let (t0, unix0) = (Instant::now(), 1_800_000_000u64);
    let mut state = AutoState::default();
    state.on_reply(&a, "421 4.7.28 unusual rate", t0);
    state.on_reply(&a, "451 4.7.0 slow down", t0);
    let saved = state.save(t0 + Duration::from_secs(60), unix0 + 60);
    assert_eq!(saved.suspended_until, Some(unix0 + 3600));
    assert!(saved.why.contains("4.7.28"));
    assert_eq!(
        (saved.rate_until, saved.rate_count, saved.rate_per_secs),
        (Some(unix0 + 600), Some(10), Some(60))
    );

    // The next process: its own Instants, the same Unix clock.
    let t1 = Instant::now() + Duration::from_secs(7);
    // (seconds after the save, suspended?, the lowered rate in force?);
    // the rate ends 540 s after the save, the suspension 3,540 s after.
    let cases =
        [(0, true, true), (539, true, true), (540, true, false), (3539, true, false), (3540, false, false)];
    for (after, suspended, slowed) in cases {
        let unix = unix0 + 60 + after;
        let back = AutoState::restore(&saved, t1, unix);
        assert_eq!(back.suspended(t1).is_some(), suspended, "{after}s after");
        assert_eq!(back.rate(t1, None).is_some(), slowed, "{after}s after");
        if let Some((until, why)) = back.suspended(t1) {
            assert_eq!(until.duration_since(t1).as_secs(), unix0 + 3600 - unix);
            assert!(why.contains("4.7.28"));
        }
        assert!(back.suspended(t1 + Duration::from_secs(unix0 + 3600 - unix)).is_none(), "ends on time");
    }
    let nonsense =
        SavedAuto { rate_until: Some(unix0 + 600), rate_count: Some(0), rate_per_secs: Some(60), ..saved };
    assert!(AutoState::restore(&nonsense, t1, unix0).rate(t1, None).is_none(), "a zero rate is no rate");
    assert!(AutoState::default().save(t0, unix0).is_empty());
}

/// The saved file: written only after a change, round-trips tenant holds
/// and budgets, drops what ended, refuses what it cannot read.
#[test]
fn saved_file_round_trips() {
    let unix = 1_800_000_000u64;
    let (saved, holds) = (SavedAutomation::default(), TenantHolds::default());
    assert_eq!(saved.take_dirty(&holds, unix), None, "nothing changed");
    holds.hold("acme", unix + 3600, "550 5.7.26", unix);
    saved.touch();
    let busy = SavedAuto { suspended_until: Some(unix + 60), why: "421 4.7.28".into(), ..Default::default() };
    saved.put("ip1", "mx:*.google.com", busy.clone());
    let ended = SavedAuto { suspended_until: Some(unix - 1), why: "old".into(), ..Default::default() };
    saved.put("", "domain:old.test", ended);
    let json = saved.take_dirty(&holds, unix).unwrap();
    assert_eq!(saved.take_dirty(&holds, unix), None, "saved once per change");
    assert!(!json.contains("old.test"), "what ended is not saved: {json}");

    let (back, back_holds) = (SavedAutomation::default(), TenantHolds::default());
    let suspended = back.load(&json, &back_holds, unix + 10).unwrap();
    assert_eq!(suspended, vec![("ip1".into(), "mx:*.google.com".into(), unix + 60, "421 4.7.28".into())]);
    assert_eq!(back.get("ip1", "mx:*.google.com"), Some(busy));
    assert_eq!(back_holds.held("acme", unix + 10), Some((unix + 3600, "550 5.7.26".into())));
    // Loaded after everything ended: nothing comes back.
    let (late, late_holds) = (SavedAutomation::default(), TenantHolds::default());
    assert!(late.load(&json, &late_holds, unix + 4000).unwrap().is_empty());
    assert!(late.get("ip1", "mx:*.google.com").is_none() && late_holds.all(unix + 4000).is_empty());
    // Forgetting a budget (nothing left in force) is a change too.
    back.put("ip1", "mx:*.google.com", SavedAuto::default());
    assert!(!back.take_dirty(&back_holds, unix + 10).unwrap().contains("google"));

    for bad in ["", "{", "{\"tenants\": 5}", "{\"budgets\": [{\"source\": \"a\"}]}", "{\"other\": []}"] {
        assert!(SavedAutomation::default().load(bad, &TenantHolds::default(), unix).is_err(), "{bad:?}");
    }
}
