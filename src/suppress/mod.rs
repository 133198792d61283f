//! The suppression list: addresses we must not mail again (they do not
//! exist, complained, or unsubscribed), globally or for one tenant.
//!
//! This module is the list itself (pure: a hash map with compact entries,
//! time as a parameter) and the [`Store`] trait the server uses; [`file`] is
//! the store kept on disk beside the spool. A Redis store for several nodes
//! implements the same trait.
//!
//! Lookups are O(1) in memory (no I/O on the RCPT path). An entry costs its
//! key (`tenant\0address` or `address`, lower case, as a boxed str) plus 8
//! bytes of value and the map's slot: see `tuning/results/` for the measured
//! bytes per entry.

pub mod file;
pub mod shared;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::delivery::classify::Class;

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// A permanent failure of this class (`InvalidRecipient`).
    Bounce(Class),
    /// A complaint (ARF feedback report).
    Complaint,
    /// A one-click unsubscribe.
    Unsubscribe,
    /// Added by the administrator.
    Manual,
}

impl Reason {
    pub fn as_string(self) -> String {
        match self {
            Reason::Bounce(c) => format!("bounce:{c}"),
            Reason::Complaint => "complaint".into(),
            Reason::Unsubscribe => "unsubscribe".into(),
            Reason::Manual => "manual".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Some(match s {
            "complaint" => Reason::Complaint,
            "unsubscribe" => Reason::Unsubscribe,
            "manual" => Reason::Manual,
            _ => Reason::Bounce(Class::parse(s.strip_prefix("bounce:")?)?),
        })
    }

    fn pack(self) -> u8 {
        match self {
            Reason::Bounce(c) => c.index() as u8,
            Reason::Complaint => 100,
            Reason::Unsubscribe => 101,
            Reason::Manual => 102,
        }
    }

    fn unpack(b: u8) -> Reason {
        match b {
            100 => Reason::Complaint,
            101 => Reason::Unsubscribe,
            102 => Reason::Manual,
            n => Reason::Bounce(Class::ALL.get(n as usize).copied().unwrap_or(Class::Uncategorized)),
        }
    }
}

/// One suppression as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub address: String,
    /// None: every tenant.
    pub tenant: Option<String>,
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
}

/// A stored value: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Value {
    reason: u8,
    /// Unix seconds (u32 lasts until 2106).
    since: u32,
}

/// Longest address kept (RFC 5321: a path is at most 256 octets).
pub const MAX_ADDRESS: usize = 320;
/// Longest tenant name.
pub const MAX_TENANT: usize = 200;

/// The key of an (address, tenant): lower case, `tenant\0address` when
/// scoped. None if the address is not one (no `@`, too long, control bytes).
pub fn key(address: &str, tenant: Option<&str>) -> Option<String> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let ok = address.len() <= MAX_ADDRESS
        && address.rfind('@').is_some_and(|i| i > 0 && i + 1 < address.len())
        && !address.chars().any(|c| c.is_control() || c == ' ' || c == '\0');
    if !ok {
        return None;
    }
    let address = address.to_lowercase();
    match tenant {
        None => Some(address),
        Some(t) if t.len() <= MAX_TENANT && !t.is_empty() && !t.contains('\0') => {
            Some(format!("{t}\0{address}"))
        }
        Some(_) => None,
    }
}

pub(crate) fn split_key(k: &str) -> (Option<&str>, &str) {
    match k.split_once('\0') {
        Some((t, a)) => (Some(t), a),
        None => (None, k),
    }
}

/// The list in memory.
#[derive(Debug, Default)]
pub struct List {
    map: HashMap<Box<str>, Value>,
}

impl List {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds or replaces; false if the address is not one.
    pub fn add(&mut self, address: &str, tenant: Option<&str>, reason: Reason, since: u64) -> bool {
        let Some(k) = key(address, tenant) else { return false };
        let v = Value { reason: reason.pack(), since: u32::try_from(since).unwrap_or(u32::MAX) };
        self.map.insert(k.into_boxed_str(), v);
        true
    }

    /// Removes; whether it was there.
    pub fn remove(&mut self, address: &str, tenant: Option<&str>) -> bool {
        key(address, tenant).is_some_and(|k| self.map.remove(k.as_str()).is_some())
    }

    /// The suppression that applies to mail for `address` from `tenant`:
    /// a global one, else one of that tenant.
    pub fn check(&self, address: &str, tenant: Option<&str>) -> Option<Entry> {
        let global = key(address, None)?;
        if let Some(v) = self.map.get(global.as_str()) {
            return Some(entry(&global, *v));
        }
        let k = key(address, Some(tenant?))?;
        self.map.get(k.as_str()).map(|v| entry(&k, *v))
    }

    /// Entries for `address` (every scope), or all entries, sorted by
    /// address then tenant, at most `limit`.
    pub fn list(&self, address: Option<&str>, limit: usize) -> Vec<Entry> {
        let wanted = address.and_then(|a| key(a, None));
        let mut out: Vec<Entry> = self
            .map
            .iter()
            .filter(|(k, _)| wanted.as_deref().is_none_or(|w| split_key(k).1 == w))
            .map(|(k, v)| entry(k, *v))
            .collect();
        out.sort_unstable_by(|a, b| (&a.address, &a.tenant).cmp(&(&b.address, &b.tenant)));
        out.truncate(limit);
        out
    }

    /// Every entry, unsorted (for rewriting the file).
    pub fn all(&self) -> impl Iterator<Item = Entry> + '_ {
        self.map.iter().map(|(k, v)| entry(k, *v))
    }
}

fn entry(k: &str, v: Value) -> Entry {
    let (tenant, address) = split_key(k);
    Entry {
        address: address.to_owned(),
        tenant: tenant.map(str::to_owned),
        reason: Reason::unpack(v.reason).as_string(),
        since: u64::from(v.since),
    }
}

/// Where suppressions live: checked on the RCPT path and when mail is
/// planned (must not block), changed by bounces, complaints, unsubscribes
/// and the administrator.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn check(&self, address: &str, tenant: Option<&str>) -> Option<Entry>;
    /// Adds (or replaces); the returned future resolves once it is durable.
    /// Err if the address is not one.
    fn add(
        &self,
        address: &str,
        tenant: Option<&str>,
        reason: Reason,
        since: u64,
    ) -> Result<crate::events::log::Durable, String>;
    /// Removes; whether it was there. Durable when the future resolves.
    fn remove(&self, address: &str, tenant: Option<&str>) -> (bool, crate::events::log::Durable);
    fn list(&self, address: Option<&str>, limit: usize) -> Vec<Entry>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key("A@Example.TEST", None).unwrap(), "a@example.test");
        assert_eq!(key("<a@b.test>", Some("acme")).unwrap(), "acme\0a@b.test");
        for bad in ["", "a", "@b", "a@", "a b@c", "a\r@b", &format!("{}@b.test", "x".repeat(400))] {
            assert_eq!(key(bad, None), None, "{bad:?}");
        }
        assert_eq!(key("a@b.test", Some("")), None);
    }

    #[test]
    fn global_and_tenant_scopes() {
        let mut l = List::default();
        assert!(l.add("Bad@X.test", None, Reason::Bounce(Class::InvalidRecipient), 100));
        assert!(l.add("unsub@x.test", Some("acme"), Reason::Unsubscribe, 200));
        assert!(!l.add("nope", None, Reason::Manual, 0));
        let e = l.check("bad@x.test", Some("other")).unwrap();
        assert_eq!((e.reason.as_str(), e.since, e.tenant), ("bounce:InvalidRecipient", 100, None));
        assert_eq!(l.check("unsub@x.test", Some("acme")).unwrap().reason, "unsubscribe");
        assert_eq!(l.check("unsub@x.test", Some("other")), None);
        assert_eq!(l.check("unsub@x.test", None), None);
        assert_eq!(l.check("fine@x.test", Some("acme")), None);
        assert_eq!(l.list(None, 10).len(), 2);
        assert_eq!(l.list(Some("UNSUB@x.test"), 10)[0].tenant.as_deref(), Some("acme"));
        assert!(l.remove("unsub@x.test", Some("acme")));
        assert!(!l.remove("unsub@x.test", Some("acme")));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn reasons_round_trip() {
        for r in [Reason::Complaint, Reason::Unsubscribe, Reason::Manual]
            .into_iter()
            .chain(Class::ALL.into_iter().map(Reason::Bounce))
        {
            assert_eq!(Reason::parse(&r.as_string()), Some(r));
            assert_eq!(Reason::unpack(r.pack()), r);
        }
        assert_eq!(Reason::parse("bounce:Nope"), None);
        assert_eq!(Reason::parse("whatever"), None);
    }
}
