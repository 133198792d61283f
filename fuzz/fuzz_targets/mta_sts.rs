//! Raw bytes as an MTA-STS policy answer (HTTP), a policy file and TXT
//! records: never a panic; a policy that parses is within its bounds and
//! every MX pattern it keeps is matched by a host it names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::delivery::mta_sts::{mx_matches, parse_policy, txt_id, Mode, MAX_AGE};
use ringpost::delivery::sts_fetch::body;

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
});
