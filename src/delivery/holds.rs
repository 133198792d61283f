//! Queue suspensions the administrator makes (`ringpost queue suspend`,
//! `POST /suspend`): mail for a recipient domain, of a tenant or of a
//! campaign stays queued, is not tried and does not age into bounces until
//! it is resumed or the suspension's time is up. Pure: time comes in; the
//! list is saved by the admin shell (`<spool>/holds.json`) and read by the
//! delivery owners when they plan an attempt.

use serde::{Deserialize, Serialize};

/// Most suspensions at once.
pub const MAX_HOLDS: usize = 10_000;

/// What a suspension covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Recipients in this domain (lower case).
    Domain(String),
    Tenant(String),
    Campaign(String),
}

impl Scope {
    /// From the selector an admin request or the CLI names; Err says why.
    pub fn parse(kind: &str, value: &str) -> Result<Scope, String> {
        let v = value.trim();
        if v.is_empty() || v.len() > crate::mail::MAX_NAME || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{kind}: {value:?} must be 1-{} printable ASCII characters",
                crate::mail::MAX_NAME
            ));
        }
        match kind {
            "domain" => Ok(Scope::Domain(v.trim_end_matches('.').to_ascii_lowercase())),
            "tenant" => Ok(Scope::Tenant(v.to_owned())),
            "campaign" => Ok(Scope::Campaign(v.to_owned())),
            _ => Err(format!("{kind}: not domain, tenant or campaign")),
        }
    }

    /// `domain example.com` and the like, for logs and replies.
    pub fn describe(&self) -> String {
        match self {
            Scope::Domain(d) => format!("domain {d}"),
            Scope::Tenant(t) => format!("tenant {t}"),
            Scope::Campaign(c) => format!("campaign {c}"),
        }
    }
}

/// One suspension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub scope: Scope,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds; none: until resumed.
    pub until: Option<u64>,
}

/// The suspensions in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    holds: Vec<Hold>,
}

impl Holds {
    /// Suspends `scope` (a second suspension of it replaces the first).
    /// Err when there are too many.
    pub fn suspend(&mut self, scope: Scope, now: u64, until: Option<u64>) -> Result<(), String> {
        self.expire(now);
        self.holds.retain(|h| h.scope != scope);
        if self.holds.len() >= MAX_HOLDS {
            return Err(format!("at most {MAX_HOLDS} suspensions at once"));
        }
        self.holds.push(Hold { scope, since: now, until });
        Ok(())
    }

    /// Ends the suspension of `scope`; whether there was one.
    pub fn resume(&mut self, scope: &Scope) -> bool {
        let before = self.holds.len();
        self.holds.retain(|h| h.scope != *scope);
        self.holds.len() != before
    }

    /// Drops suspensions whose time is up; whether any ended.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.holds.len();
        self.holds.retain(|h| h.until.is_none_or(|u| u > now));
        self.holds.len() != before
    }

    /// The suspensions in force at `now`.
    pub fn active(&self, now: u64) -> impl Iterator<Item = &Hold> {
        self.holds.iter().filter(move |h| h.until.is_none_or(|u| u > now))
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// The suspension that holds mail to `domain` of this tenant and
    /// campaign at `now`, if any.
    pub fn holding(
        &self,
        domain: &str,
        tenant: Option<&str>,
        campaign: Option<&str>,
        now: u64,
    ) -> Option<&Hold> {
        self.active(now).find(|h| match &h.scope {
            Scope::Domain(d) => d.eq_ignore_ascii_case(domain.trim_end_matches('.')),
            Scope::Tenant(t) => tenant == Some(t.as_str()),
            Scope::Campaign(c) => campaign == Some(c.as_str()),
        })
    }

    /// The next time a suspension ends, if one has an end.
    pub fn next_end(&self, now: u64) -> Option<u64> {
        self.active(now).filter_map(|h| h.until).min()
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The file read back; Err says why it is not usable.
    pub fn from_json(text: &str) -> Result<Holds, String> {
        let mut h: Holds = serde_json::from_str(text).map_err(|e| e.to_string())?;
        h.holds.truncate(MAX_HOLDS);
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn scopes_match_what_they_name() {
        let mut h = Holds::default();
        h.suspend(Scope::parse("domain", "Example.COM.").unwrap(), 100, None).unwrap();
        h.suspend(Scope::parse("tenant", "acme").unwrap(), 100, Some(200)).unwrap();
        h.suspend(Scope::parse("campaign", "spring").unwrap(), 100, None).unwrap();
        // (domain, tenant, campaign, now, the hold that holds it)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, u64, Option<&'a str>);
        let table: [Case; 7] = [
            ("example.com", None, None, 150, Some("domain example.com")),
            ("EXAMPLE.com", Some("x"), None, 150, Some("domain example.com")),
            ("sub.example.com", None, None, 150, None),
            ("other.test", Some("acme"), None, 150, Some("tenant acme")),
            ("other.test", Some("acme"), None, 200, None), // over at its until
            ("other.test", Some("Acme"), None, 150, None),
            ("other.test", None, Some("spring"), 150, Some("campaign spring")),
        ];
        for (domain, tenant, campaign, now, want) in table {
            let got = h.holding(domain, tenant, campaign, now).map(|h| h.scope.describe());
            assert_eq!(got.as_deref(), want, "{domain} {tenant:?} {campaign:?} at {now}");
        }
        assert_eq!(h.next_end(150), Some(200));
        assert_eq!(h.next_end(250), None);
        assert!(h.expire(250));
        assert!(!h.expire(250));
        assert!(h.resume(&Scope::Domain("example.com".into())));
        assert!(!h.resume(&Scope::Domain("example.com".into())));
        assert_eq!(h.active(0).count(), 1);
    }

    #[test]
    fn a_second_suspension_replaces_the_first_and_the_file_round_trips() {
        let mut h = Holds::default();
        let d = Scope::Domain("a.test".into());
        h.suspend(d.clone(), 1, Some(10)).unwrap();
        h.suspend(d.clone(), 5, None).unwrap();
        assert_eq!(h.active(100).collect::<Vec<_>>(), [&Hold { scope: d, since: 5, until: None }]);
        assert_eq!(Holds::from_json(&h.to_json()).unwrap(), h);
        assert!(Holds::from_json("{").is_err());
        assert!(Holds::from_json("{\"holds\": [{\"scope\": {\"planet\": \"x\"}, \"since\": 1}]}").is_err());
    }

    #[test]
    fn bad_selectors_and_too_many() {
        for (kind, v) in [("domain", ""), ("tenant", "a b"), ("campaign", &"x".repeat(300)), ("planet", "x")]
        {
            assert!(Scope::parse(kind, v).is_err(), "{kind} {v}");
        }
        let mut h = Holds::default();
        for i in 0..MAX_HOLDS {
            h.suspend(Scope::Tenant(format!("t{i}")), 0, None).unwrap();
        }
        assert!(h.suspend(Scope::Tenant("one more".into()), 0, None).is_err());
        // Replacing one is fine.
        h.suspend(Scope::Tenant("t0".into()), 0, Some(5)).unwrap();
    }
}
