//! SMTP TLS Reporting (RFC 8460): what outbound sessions are counted
//! under, the aggregate kept between reports, the `_smtp._tls` TXT record,
//! the JSON report and the mail that carries it.
//!
//! Pure: times are parameters; the delivery shell records sessions and, at
//! each `[delivery] tls_report_interval`, takes the aggregate, looks up each
//! domain's record and sends what this module builds.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Domains kept between two reports; sessions to others are not counted.
pub const MAX_DOMAINS: usize = 100_000;
/// Policies per domain (one per DANE host, MTA-STS, none).
const MAX_POLICIES: usize = 16;
/// Distinct failure details per policy; more are counted, not detailed.
const MAX_DETAILS: usize = 100;
/// Longest failure reason kept.
const MAX_REASON: usize = 300;

/// The policy type of RFC 8460 §4.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a session ran under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    pub kind: PolicyType,
    /// The policy's lines (MTA-STS) or records (TLSA), as text.
    pub strings: Vec<String>,
    /// MX patterns (MTA-STS) or the host (TLSA).
    pub mx_hosts: Vec<String>,
}

impl Policy {
    pub const NONE: Policy =
        Policy { kind: PolicyType::NoPolicyFound, strings: Vec::new(), mx_hosts: Vec::new() };

    /// An MTA-STS policy as the report shows it.
    pub fn sts(p: &super::mta_sts::Policy) -> Policy {
        let mode = match p.mode {
            super::mta_sts::Mode::Enforce => "enforce",
            super::mta_sts::Mode::Testing => "testing",
            super::mta_sts::Mode::None => "none",
        };
        let mut strings = vec!["version: STSv1".to_string(), format!("mode: {mode}")];
        strings.extend(p.mx.iter().map(|m| format!("mx: {m}")));
        strings.push(format!("max_age: {}", p.max_age));
        Policy { kind: PolicyType::Sts, strings, mx_hosts: p.mx.clone() }
    }

    /// A host's TLSA records as the report shows them.
    pub fn tlsa(host: &str, records: &[crate::dns::wire::Tlsa]) -> Policy {
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let strings = records
            .iter()
            .map(|r| format!("{} {} {} {}", r.usage, r.selector, r.matching, hex(&r.data)))
            .collect();
        Policy { kind: PolicyType::Tlsa, strings, mx_hosts: vec![host.to_string()] }
    }
}

/// RFC 8460 §4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    StsPolicyFetchError,
    StsPolicyInvalid,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
        }
    }

    /// The result type of a failed session, from the connection's error
    /// text (rustls's certificate errors, our policy messages).
    pub fn of(error: &str) -> ResultType {
        if error.contains("does not take STARTTLS") {
            ResultType::StarttlsNotSupported
        } else if error.contains("NotValidForName") || error.contains("not valid for") {
            ResultType::CertificateHostMismatch
        } else if error.contains("Expired") {
            ResultType::CertificateExpired
        } else if error.contains("UnknownIssuer") || error.contains("self-signed") {
            ResultType::CertificateNotTrusted
        } else if error.contains("TLSA lookup") {
            ResultType::DnssecInvalid
        } else {
            ResultType::ValidationFailure
        }
    }
}

/// One session (connection attempt) to an MX host, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub mx: String,
    pub sending_ip: Option<IpAddr>,
    pub receiving_ip: Option<IpAddr>,
    /// Err: the result type and the reason.
    pub result: Result<(), (ResultType, String)>,
}

/// One kind of failure and how often it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    pub result: ResultType,
    pub sending_ip: Option<IpAddr>,
    pub mx: String,
    pub receiving_ip: Option<IpAddr>,
    pub reason: String,
    pub count: u64,
}

/// What happened under one policy of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStats {
    pub policy: Policy,
    pub success: u64,
    pub failure: u64,
    pub details: Vec<Detail>,
}

/// Everything counted since `start` (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub start: u64,
    pub domains: HashMap<String, Vec<PolicyStats>>,
    /// Sessions not counted: too many domains or policies.
    pub dropped: u64,
    /// Sessions recorded (counted or not): changes since a save show here.
    #[serde(default)]
    pub changes: u64,
}

impl Aggregate {
    pub fn new(start: u64) -> Aggregate {
        Aggregate { start, ..Aggregate::default() }
    }

    /// Counts one session to `domain`'s MX host under `policy`.
    pub fn record(&mut self, domain: &str, policy: &Policy, session: &Session) {
        self.changes += 1;
        if !self.domains.contains_key(domain) && self.domains.len() >= MAX_DOMAINS {
            self.dropped += 1;
            return;
        }
        let policies = self.domains.entry(domain.to_string()).or_default();
        let at = match policies.iter().position(|p| p.policy == *policy) {
            Some(i) => i,
            None if policies.len() < MAX_POLICIES => {
                policies.push(PolicyStats {
                    policy: policy.clone(),
                    success: 0,
                    failure: 0,
                    details: Vec::new(),
                });
                policies.len() - 1
            }
            None => {
                self.dropped += 1;
                return;
            }
        };
        let stats = &mut policies[at];
        let (result, reason) = match &session.result {
            Ok(()) => {
                stats.success += 1;
                return;
            }
            Err(e) => e,
        };
        stats.failure += 1;
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let same = |d: &&mut Detail| {
            d.result == *result
                && d.mx == session.mx
                && d.receiving_ip == session.receiving_ip
                && d.sending_ip == session.sending_ip
                && d.reason == reason
        };
        if let Some(d) = stats.details.iter_mut().find(same) {
            d.count += 1;
        } else if stats.details.len() < MAX_DETAILS {
            stats.details.push(Detail {
                result: *result,
                sending_ip: session.sending_ip,
                mx: session.mx.clone(),
                receiving_ip: session.receiving_ip,
                reason,
                count: 1,
            });
        }
    }

    /// Everything counted so far, and a new period from `now`.
    pub fn take(&mut self, now: u64) -> Aggregate {
        let changes = self.changes + 1;
        let mut taken = std::mem::replace(self, Aggregate::new(now));
        self.changes = changes;
        taken.changes = 0;
        taken
    }

    /// Adds what `saved` (read back after a restart) counted: its period
    /// start, when earlier, and its sessions.
    pub fn merge(&mut self, saved: Aggregate) {
        if saved.start != 0 && (self.start == 0 || saved.start < self.start) {
            self.start = saved.start;
        }
        self.dropped += saved.dropped;
        for (domain, policies) in saved.domains {
            if !self.domains.contains_key(&domain) && self.domains.len() >= MAX_DOMAINS {
                self.dropped += policies.iter().map(|p| p.success + p.failure).sum::<u64>();
                continue;
            }
            let mine = self.domains.entry(domain).or_default();
            for p in policies {
                let Some(at) = mine.iter().position(|m| m.policy == p.policy) else {
                    if mine.len() < MAX_POLICIES {
                        mine.push(p);
                    } else {
                        self.dropped += p.success + p.failure;
                    }
                    continue;
                };
                let m = &mut mine[at];
                m.success += p.success;
                m.failure += p.failure;
                for d in p.details {
                    match m.details.iter().position(|x| Detail { count: x.count, ..d.clone() } == *x) {
                        Some(i) => m.details[i].count += d.count,
                        None if m.details.len() < MAX_DETAILS => m.details.push(d),
                        None => {}
                    }
                }
            }
        }
        self.changes += 1;
    }
}

/// Where reports go: the `rua` of a `v=TLSRPTv1` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    Mailto(crate::smtp::address::Mailbox),
    Https(String),
}

/// The `rua` targets of `_smtp._tls.<domain>`'s TXT records: exactly one
/// must start with `v=TLSRPTv1` (RFC 8460 §3); unknown schemes and bad
/// addresses are skipped.
pub fn parse_record(records: &[String]) -> Result<Vec<Rua>, String> {
    let ours: Vec<&String> = records.iter().filter(|r| r.trim_start().starts_with("v=TLSRPTv1")).collect();
    let record = match ours.as_slice() {
        [one] => one,
        [] => return Err("no v=TLSRPTv1 record".into()),
        _ => return Err("more than one v=TLSRPTv1 record".into()),
    };
    let mut fields = record.split(';').map(str::trim);
    if fields.next() != Some("v=TLSRPTv1") {
        return Err("the record does not start with v=TLSRPTv1".into());
    }
    let rua = fields
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("rua"))
        .map(|(_, v)| v)
        .ok_or("no rua")?;
    let mut out = Vec::new();
    for uri in rua.split(',').map(str::trim) {
        if let Some(addr) = uri.strip_prefix("mailto:") {
            let addr = crate::smtp::params::decode_hex_escapes(addr, b'%');
            if let Ok(m) = crate::smtp::address::Mailbox::parse(&addr) {
                out.push(Rua::Mailto(m));
            }
        } else if uri.starts_with("https://") {
            out.push(Rua::Https(uri.to_string()));
        }
    }
    if out.is_empty() {
        return Err("no usable rua".into());
    }
    out.truncate(8);
    Ok(out)
}

/// Unix seconds as RFC 3339 in UTC, without fractions.
fn datetime(secs: u64) -> String {
    let (y, mo, d) = crate::smtp::session::received::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Who sends the reports.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// Our host name: organization-name and the report's From domain.
    pub hostname: String,
    pub contact: String,
}

/// The JSON report (RFC 8460 §4.4) for one domain's policies.
pub fn report_json(
    who: &Submitter,
    report_id: &str,
    start: u64,
    end: u64,
    domain: &str,
    policies: &[PolicyStats],
) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| {
            let details: Vec<serde_json::Value> = p
                .details
                .iter()
                .map(|d| {
                    let mut v = serde_json::json!({
                        "result-type": d.result.as_str(),
                        "failed-session-count": d.count,
                        "failure-reason-code": d.reason,
                    });
                    if !d.mx.is_empty() {
                        v["receiving-mx-hostname"] = d.mx.clone().into();
                    }
                    if let Some(ip) = d.sending_ip {
                        v["sending-mta-ip"] = ip.to_string().into();
                    }
                    if let Some(ip) = d.receiving_ip {
                        v["receiving-ip"] = ip.to_string().into();
                    }
                    v
                })
                .collect();
            let mut policy = serde_json::json!({
                "policy-type": p.policy.kind.as_str(),
                "policy-domain": domain,
            });
            if !p.policy.strings.is_empty() {
                policy["policy-string"] = p.policy.strings.clone().into();
            }
            if !p.policy.mx_hosts.is_empty() {
                policy["mx-host"] = p.policy.mx_hosts.clone().into();
            }
            serde_json::json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": p.success,
                    "total-failure-session-count": p.failure,
                },
                "failure-details": details,
            })
        })
        .collect();
    serde_json::json!({
        "organization-name": who.hostname,
        "date-range": {"start-datetime": datetime(start), "end-datetime": datetime(end)},
        "contact-info": who.contact,
        "report-id": report_id,
        "policies": policies,
    })
}

/// The report file's name (RFC 8460 §5.1).
pub fn file_name(who: &Submitter, domain: &str, start: u64, end: u64) -> String {
    format!("{}!{domain}!{start}!{end}.json.gz", who.hostname)
}

/// The report as mail (RFC 8460 §5.3): `multipart/report;
/// report-type=tlsrpt`, a short text and the gzipped JSON as
/// `application/tlsrpt+gzip`.
pub fn report_mail(
    who: &Submitter,
    to: &crate::smtp::address::Mailbox,
    domain: &str,
    report_id: &str,
    (start, end): (u64, u64),
    gz: &[u8],
    now: u64,
) -> Vec<u8> {
    use mail_builder::headers::content_type::ContentType;
    use mail_builder::mime::{BodyPart, MimePart};
    let text = format!(
        "This is an aggregate TLS report from {} for {domain}, {} to {} (RFC 8460).\r\n",
        who.hostname,
        datetime(start),
        datetime(end)
    );
    let parts = vec![
        MimePart::new("text/plain", BodyPart::Text(text.into())),
        MimePart::new("application/tlsrpt+gzip", BodyPart::Binary(gz.to_vec().into()))
            .attachment(file_name(who, domain, start, end)),
    ];
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
        BodyPart::Multipart(parts),
    );
    let from = format!("postmaster@{}", who.hostname);
    mail_builder::MessageBuilder::new()
        .from(("TLS report", from.as_str()))
        .to(to.to_string())
        .header(
            "Subject",
            mail_builder::headers::raw::Raw::new(format!(
                "Report Domain: {domain} Submitter: {} Report-ID: <{report_id}>",
                who.hostname
            )),
        )
        .header("TLS-Report-Domain", mail_builder::headers::raw::Raw::new(domain.to_string()))
        .header("TLS-Report-Submitter", mail_builder::headers::raw::Raw::new(who.hostname.clone()))
        .message_id(format!("{report_id}@{}", who.hostname))
        .date(now as i64)
        .body(body)
        .write_to_vec()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(mx: &str, result: Result<(), (ResultType, String)>) -> Session {
        Session { mx: mx.into(), sending_ip: None, receiving_ip: Some("127.0.0.1".parse().unwrap()), result }
    }

    #[test]
    fn records_and_their_rua() {
        let m = |a: &str| Rua::Mailto(crate::smtp::address::Mailbox::parse(a).unwrap());
        let ok = |r: &[&str]| parse_record(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(ok(&["v=TLSRPTv1; rua=mailto:tls@x.test"]).unwrap(), vec![m("tls@x.test")]);
        assert_eq!(
            ok(&["v=spf1 -all", "v=TLSRPTv1;rua=mailto:tls%2Breports@x.test, https://r.x.test/v1"]).unwrap(),
            vec![m("tls+reports@x.test"), Rua::Https("https://r.x.test/v1".into())]
        );
        // An unknown scheme is skipped, the rest kept.
        assert_eq!(ok(&["v=TLSRPTv1; rua=ftp://x.test,mailto:a@x.test"]).unwrap(), vec![m("a@x.test")]);
        let two = ["v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"];
        for bad in [
            &[][..],
            &two[..],
            &["v=TLSRPTv1"][..],
            &["v=TLSRPTv1; rua=ftp://x"][..],
            &["v=TLSRPTv12; rua=mailto:a@x.test"][..],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn result_types_from_errors() {
        for (text, want) in [
            (
                "MTA-STS: the server does not take STARTTLS (a policy requires TLS)",
                ResultType::StarttlsNotSupported,
            ),
            (
                "MTA-STS: TLS with a certificate valid for mx.x: invalid peer certificate: NotValidForName",
                ResultType::CertificateHostMismatch,
            ),
            ("invalid peer certificate: Expired", ResultType::CertificateExpired),
            ("invalid peer certificate: UnknownIssuer", ResultType::CertificateNotTrusted),
            ("DANE: TLSA lookup for mx.x failed: SERVFAIL", ResultType::DnssecInvalid),
            (
                "DANE: TLS with a certificate matching the TLSA records of mx: no TLSA record matches",
                ResultType::ValidationFailure,
            ),
        ] {
            assert_eq!(ResultType::of(text), want, "{text}");
        }
    }

    #[test]
    fn sessions_are_counted_per_domain_and_policy_with_bounded_details() {
        let mut a = Aggregate::new(100);
        let sts = Policy {
            kind: PolicyType::Sts,
            strings: vec!["mode: enforce".into()],
            mx_hosts: vec!["mx.a".into()],
        };
        a.record("a.test", &sts, &session("mx.a", Ok(())));
        a.record("a.test", &sts, &session("mx.a", Ok(())));
        let fail = || session("mx.a", Err((ResultType::CertificateExpired, "expired".into())));
        a.record("a.test", &sts, &fail());
        a.record("a.test", &sts, &fail());
        a.record("a.test", &Policy::NONE, &session("mx.a", Ok(())));
        let p = &a.domains["a.test"];
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].success, p[0].failure, p[0].details.len(), p[0].details[0].count), (2, 2, 1, 2));
        // Details are bounded; the failures are still counted.
        for i in 0..(MAX_DETAILS + 10) {
            a.record(
                "b.test",
                &sts,
                &session(&format!("mx{i}"), Err((ResultType::ValidationFailure, "x".into()))),
            );
        }
        let b = &a.domains["b.test"][0];
        assert_eq!((b.failure, b.details.len()), ((MAX_DETAILS + 10) as u64, MAX_DETAILS));
        // Reasons are cut.
        a.record("c.test", &sts, &session("m", Err((ResultType::ValidationFailure, "r".repeat(5000)))));
        assert_eq!(a.domains["c.test"][0].details[0].reason.len(), MAX_REASON);
        let taken = a.take(200);
        assert_eq!((taken.start, a.start, a.domains.len(), taken.domains.len()), (100, 200, 0, 3));
        assert!(a.changes > 0, "a take is a change (the saved file must be emptied)");
        // Read back after a restart, and merged with what came since.
        let mut now = Aggregate::new(300);
        now.record("a.test", &sts, &session("mx.a", Ok(())));
        now.merge(taken.clone());
        assert_eq!(now.start, 100);
        let p = &now.domains["a.test"];
        assert_eq!((p[0].success, p[0].failure, p[0].details[0].count), (3, 2, 2));
        assert_eq!(now.domains["b.test"][0].failure, (MAX_DETAILS + 10) as u64);
        // Survives a round trip through the file it is saved in.
        let text = serde_json::to_string(&taken).unwrap();
        assert_eq!(serde_json::from_str::<Aggregate>(&text).unwrap(), taken);
    }

    #[test]
    fn the_report_has_rfc8460s_fields() {
        let who =
            Submitter { hostname: "mx.ours.test".into(), contact: "mailto:postmaster@ours.test".into() };
        let mut a = Aggregate::new(1_800_000_000);
        let sts = Policy::sts(&crate::delivery::mta_sts::Policy {
            mode: crate::delivery::mta_sts::Mode::Enforce,
            mx: vec!["*.mail.x.test".into()],
            max_age: 86400,
        });
        a.record("x.test", &sts, &session("mx1.mail.x.test", Ok(())));
        let mut s =
            session("mx2.mail.x.test", Err((ResultType::CertificateHostMismatch, "NotValidForName".into())));
        s.sending_ip = Some("192.0.2.1".parse().unwrap());
        a.record("x.test", &sts, &s);
        let v = report_json(&who, "r1", 1_800_000_000, 1_800_086_400, "x.test", &a.domains["x.test"]);
        assert_eq!(v["organization-name"], "mx.ours.test");
        assert_eq!(v["date-range"]["start-datetime"], "2027-01-15T08:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "2027-01-16T08:00:00Z");
        assert_eq!(v["report-id"], "r1");
        let p = &v["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "x.test");
        assert_eq!(p["policy"]["mx-host"][0], "*.mail.x.test");
        assert_eq!(p["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        let d = &p["failure-details"][0];
        assert_eq!(d["result-type"], "certificate-host-mismatch");
        assert_eq!(d["sending-mta-ip"], "192.0.2.1");
        assert_eq!(d["receiving-ip"], "127.0.0.1");
        assert_eq!(d["receiving-mx-hostname"], "mx2.mail.x.test");
        assert_eq!(d["failed-session-count"], 1);
        let to = crate::smtp::address::Mailbox::parse("tls@x.test").unwrap();
        let mail = report_mail(
            &who,
            &to,
            "x.test",
            "r1",
            (1_800_000_000, 1_800_086_400),
            b"\x1f\x8bgz",
            1_800_086_400,
        );
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default().parse(&mail).unwrap();
        let ct = parsed.root_part().content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        assert_eq!(parsed.subject(), Some("Report Domain: x.test Submitter: mx.ours.test Report-ID: <r1>"));
        let gz = parsed.attachment(0).unwrap();
        assert_eq!(gz.contents(), b"\x1f\x8bgz");
        assert_eq!(gz.attachment_name(), Some("mx.ours.test!x.test!1800000000!1800086400.json.gz"));
        let text = String::from_utf8_lossy(&mail);
        assert!(
            text.contains("TLS-Report-Domain: x.test") && text.contains("TLS-Report-Submitter: mx.ours.test")
        );
        assert!(text.contains("application/tlsrpt+gzip"));
    }
}
