//! MTA-STS (RFC 8461): a recipient domain's `_mta-sts` TXT record, its
//! policy (fetched over HTTPS by `delivery::sts_fetch`), which MX hosts the
//! policy allows, and when a cached policy is used or fetched again. Pure:
//! text and time in, decisions out.

/// Longest policy accepted (RFC 8461 §3.3 suggests 64 KiB at most).
pub const MAX_POLICY: usize = 64 << 10;
/// Longest `max_age` a policy may ask for (RFC 8461 §3.2: about a year).
pub const MAX_AGE: u64 = 31_557_600;
/// Domains whose policies are kept.
pub const MAX_CACHED: usize = 100_000;

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Only the listed MX hosts, only over TLS with a valid certificate.
    Enforce,
    /// Deliver as without a policy; failures would only be reported.
    Testing,
    /// The domain withdrew its policy.
    None,
}

/// A policy file, parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns: `mail.example.com` or `*.example.com` (lower case).
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

/// The policy id of the `_mta-sts.<domain>` TXT records, if exactly one of
/// them is a valid `v=STSv1` record (RFC 8461 §3.1; anything else means no
/// policy).
pub fn txt_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> =
        records.iter().filter(|r| r.starts_with("v=STSv1;") || r.as_str() == "v=STSv1").collect();
    let [record] = sts.as_slice() else { return None };
    let mut id = None;
    for field in record.split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, v) = field.split_once('=')?;
        match k.trim() {
            "v" if v.trim() == "STSv1" => {}
            "id" => {
                let v = v.trim();
                if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return None;
                }
                id = Some(v.to_owned());
            }
            _ => {}
        }
    }
    id
}

/// Parses a policy file (RFC 8461 §3.2): `key: value` lines, `version:
/// STSv1`, `mode`, `max_age`, and `mx` lines (at least one unless the mode
/// is `none`). Unknown keys are ignored.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    if text.len() > MAX_POLICY {
        return Err("policy larger than 64 KiB".into());
    }
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.trim().is_empty()) {
        let (k, v) = line.split_once(':').ok_or_else(|| format!("not a key: value line: {line:.80}"))?;
        let v = v.trim();
        match k.trim() {
            "version" => version = Some(v.to_owned()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(format!("mode {v:?} is not enforce, testing or none")),
                })
            }
            "max_age" => {
                let n: u64 = v.parse().map_err(|_| format!("max_age {v:?} is not a number"))?;
                max_age = Some(n.min(MAX_AGE));
            }
            "mx" => {
                let p = v.to_ascii_lowercase();
                let name = p.strip_prefix("*.").unwrap_or(&p);
                if crate::smtp::address::Domain::parse_host_name(name).is_err() {
                    return Err(format!("mx {v:?} is not a host name pattern"));
                }
                mx.push(p);
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no version: STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// Whether MX host `host` matches pattern `pattern`: exactly, or `*.` plus
/// a single leftmost label (RFC 8461 §4.1). Case-insensitive.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// A policy kept for a domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cached {
    pub id: String,
    pub policy: Policy,
    /// Unix seconds.
    pub expires: u64,
}

/// What to do for a domain, from its TXT id (`None`: no record, or a
/// lookup that failed) and what is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Use the cached policy.
    UseCached,
    /// Fetch the policy (then use what was cached if the fetch fails).
    Fetch,
    /// No policy applies.
    NoPolicy,
}

/// RFC 8461 §5.1: a valid cached policy stands until it expires, even if
/// the TXT record goes away; a new id means a new policy.
pub fn step(cached: Option<&Cached>, txt_id: Option<&str>, now: u64) -> Step {
    let fresh = cached.filter(|c| c.expires > now);
    match (fresh, txt_id) {
        (Some(c), Some(id)) if c.id == id => Step::UseCached,
        (_, Some(_)) => Step::Fetch,
        (Some(_), None) => Step::UseCached,
        (None, None) => Step::NoPolicy,
    }
}

/// Under an enforced policy, the MX hosts (indexes into `hosts`) that may
/// be used; Err when none may.
pub fn allowed(policy: &Policy, hosts: &[&str]) -> Result<Vec<usize>, String> {
    let ok: Vec<usize> =
        (0..hosts.len()).filter(|&i| policy.mx.iter().any(|p| mx_matches(p, hosts[i]))).collect();
    if ok.is_empty() {
        return Err(format!(
            "no MX host ({}) matches the MTA-STS policy (mx: {})",
            hosts.join(", "),
            policy.mx.join(", ")
        ));
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn txt_records() {
        let v = |r: &[&str]| txt_id(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["v=STSv1; id=20261130T1200;"]), Some("20261130T1200".into()));
        assert_eq!(v(&["v=STSv1;id=abc", "v=spf1 -all"]), Some("abc".into()));
        assert_eq!(v(&["v=STSv1; id=a", "v=STSv1; id=b"]), None, "two STS records: none");
        assert_eq!(v(&["v=STSv1;"]), None, "no id");
        assert_eq!(v(&["v=STSv1; id=not-alnum"]), None);
        assert_eq!(v(&["v=STSv2; id=a"]), None);
        assert_eq!(v(&[]), None);
    }

    #[test]
    fn policies() {
        let p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net\r\nmax_age: 86400\r\n").unwrap();
        assert_eq!(
            p,
            Policy {
                mode: Mode::Enforce,
                mx: vec!["mail.example.com".into(), "*.example.net".into()],
                max_age: 86400
            }
        );
        let p =
            parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\nextension: ignored\n").unwrap();
        assert_eq!((p.mode, p.max_age), (Mode::None, MAX_AGE));
        for (bad, why) in [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
            ("version: STSv1\nmx: a.test\nmax_age: 1\n", "mode"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx"),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
            ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "strict"),
            ("version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n", "pattern"),
            ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: soon\n", "number"),
            ("<html>not a policy</html>", "key: value"),
        ] {
            assert!(parse_policy(bad).unwrap_err().contains(why), "{bad:?}");
        }
        assert!(parse_policy(&"x".repeat(MAX_POLICY + 1)).is_err());
    }

    #[test]
    fn mx_patterns() {
        for (pattern, host, want) in [
            ("mail.example.com", "MAIL.example.com.", true),
            ("mail.example.com", "mail2.example.com", false),
            ("*.example.com", "mx1.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", ".example.com", false),
        ] {
            assert_eq!(mx_matches(pattern, host), want, "{pattern} {host}");
        }
        let p = Policy { mode: Mode::Enforce, mx: vec!["*.good.test".into()], max_age: 1 };
        assert_eq!(allowed(&p, &["mx.bad.test", "mx.good.test"]), Ok(vec![1]));
        assert!(allowed(&p, &["mx.bad.test"]).unwrap_err().contains("mx.bad.test"));
    }

    #[test]
    fn when_to_fetch() {
        let p = Policy { mode: Mode::Enforce, mx: vec!["a.test".into()], max_age: 100 };
        let c = Cached { id: "1".into(), policy: p, expires: 200 };
        for (cached, id, now, want) in [
            (None, None, 0, Step::NoPolicy),
            (None, Some("1"), 0, Step::Fetch),
            (Some(&c), Some("1"), 100, Step::UseCached),
            (Some(&c), Some("2"), 100, Step::Fetch),
            (Some(&c), None, 100, Step::UseCached),
            (Some(&c), None, 200, Step::NoPolicy),
            (Some(&c), Some("1"), 200, Step::Fetch),
        ] {
            assert_eq!(step(cached, id, now), want, "{id:?} at {now}");
        }
    }
}
