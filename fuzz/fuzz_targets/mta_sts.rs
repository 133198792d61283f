//! Raw bytes as an MTA-STS policy answer (HTTP), a policy file and TXT
//! records: never a panic; a policy that parses is within its bounds and
//! every MX pattern it keeps is matched by a host it names. The same TXT
//! records as `_smtp._tls` (TLS-RPT): at most 8 targets, each a parsed
//! address or an https URL; a report built for them is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::delivery::mta_sts::{mx_matches, parse_policy, txt_id, Mode, MAX_AGE};
use ringpost::delivery::sts_fetch::body;
use ringpost::delivery::tlsrpt;

fuzz_target!(|data: &[u8]| {
    let _ = body(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = parse_policy(&text) {
        assert!(p.max_age <= MAX_AGE);
        assert!(p.mode == Mode::None || !p.mx.is_empty());
        for pattern in &p.mx {
            let host = pattern.strip_prefix("*.").map_or(pattern.clone(), |rest| format!("mx.{rest}"));
            assert!(mx_matches(pattern, &host), "{pattern} {host}");
        }
    }
    let records: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if let Some(id) = txt_id(&records) {
        assert!(!id.is_empty() && id.len() <= 32);
    }
    if let Ok(ruas) = tlsrpt::parse_record(&records) {
        assert!(!ruas.is_empty() && ruas.len() <= 8);
        for r in &ruas {
            if let tlsrpt::Rua::Https(u) = r {
                assert!(u.starts_with("https://"));
            }
        }
        let mut agg = tlsrpt::Aggregate::new(1);
        let session = tlsrpt::Session {
            mx: text.chars().take(40).collect(),
            sending_ip: None,
            receiving_ip: None,
            result: Err((tlsrpt::ResultType::of(&text), text.to_string())),
        };
        agg.record("x.test", &tlsrpt::Policy::NONE, &session);
        let who = tlsrpt::Submitter { hostname: "h.test".into(), contact: "mailto:p@h.test".into() };
        let json = tlsrpt::report_json(&who, "r", 1, 2, "x.test", &agg.domains["x.test"]);
        assert!(serde_json::from_str::<serde_json::Value>(&json.to_string()).is_ok());
    }
});
