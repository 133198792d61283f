//! Relay control and local users: who may send where (SPEC "Relay control").

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::smtp::address::Mailbox;

/// The answer to "may this recipient be accepted?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// A local domain that lists its users, and this is not one (`550 5.1.1`).
    UnknownUser,
    /// Not ours, and the client may not relay (`554 5.7.1`).
    RelayDenied,
}

/// Built once from the config; shared read-only by all workers.
#[derive(Debug, Default)]
pub struct Policy {
    local_domains: HashSet<String>,
    relay_domains: HashSet<String>,
    relay_networks: Vec<IpNet>,
    /// Lower-cased address to PHC password hash.
    users: HashMap<String, String>,
    /// Local domains that have at least one `[[user]]`.
    domains_with_users: HashSet<String>,
    /// Lower-cased address to the user's `tenant`.
    tenants: HashMap<String, String>,
    /// `[feedback] addresses`: accepted from anyone (providers send reports).
    feedback: HashSet<String>,
}

impl Policy {
    pub fn new(
        local_domains: &[String],
        relay_domains: &[String],
        relay_networks: &[IpNet],
        users: impl IntoIterator<Item = (String, String)>,
    ) -> Policy {
        let lower = |v: &[String]| v.iter().map(|d| d.to_ascii_lowercase()).collect::<HashSet<_>>();
        let users: HashMap<String, String> =
            users.into_iter().map(|(addr, hash)| (addr.to_lowercase(), hash)).collect();
        let domains_with_users =
            users.keys().filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_owned())).collect();
        Policy {
            local_domains: lower(local_domains),
            relay_domains: lower(relay_domains),
            relay_networks: relay_networks.to_vec(),
            users,
            domains_with_users,
            tenants: HashMap::new(),
            feedback: HashSet::new(),
        }
    }

    /// Addresses that take complaint reports: accepted from anyone.
    pub fn with_feedback(mut self, addresses: &[String]) -> Policy {
        self.feedback = addresses.iter().map(|a| a.to_lowercase()).collect();
        self
    }

    /// The `tenant` of each user that has one: their mail is that tenant's,
    /// whatever its headers say.
    pub fn with_tenants(mut self, tenants: impl IntoIterator<Item = (String, String)>) -> Policy {
        self.tenants = tenants.into_iter().map(|(addr, t)| (addr.to_lowercase(), t)).collect();
        self
    }

    /// The tenant of an authenticated user, if configured.
    pub fn user_tenant(&self, address: &str) -> Option<&str> {
        self.tenants.get(&address.to_lowercase()).map(String::as_str)
    }

    /// Whether `ip` is in `relay_networks`.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.relay_networks.iter().any(|n| n.contains(&ip))
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains.contains(&domain.to_lowercase())
    }

    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// The PHC hash of a user's password.
    pub fn password_hash(&self, address: &str) -> Option<&str> {
        self.users.get(&address.to_lowercase()).map(String::as_str)
    }

    /// Decides on one recipient. `may_relay`: the client is trusted or authenticated.
    pub fn check_recipient(&self, rcpt: &Mailbox, may_relay: bool) -> RcptVerdict {
        let domain = rcpt.domain().to_lowercase();
        if !self.feedback.is_empty() && self.feedback.contains(&rcpt.to_string().to_lowercase()) {
            return RcptVerdict::Accept;
        }
        if self.local_domains.contains(&domain) {
            let listed = self.domains_with_users.contains(&domain);
            let known = rcpt.is_postmaster() || self.users.contains_key(&rcpt.to_string().to_lowercase());
            return if !listed || known { RcptVerdict::Accept } else { RcptVerdict::UnknownUser };
        }
        if may_relay || self.relay_domains.contains(&domain) {
            RcptVerdict::Accept
        } else {
            RcptVerdict::RelayDenied
        }
    }
}

/// Failed logins per client address (`[limits] auth_failures_per_ip`):
/// past `limit` failures within [`AUTH_WINDOW`], the address is refused
/// (SMTP `454 4.7.0`, POP3 `-ERR [AUTH]`) whatever it sends, until enough
/// of its failures are older than the window. Refused attempts are not
/// counted (the block ends). Pure: time comes in; bounded in addresses.
#[derive(Debug)]
pub struct AuthFailures {
    limit: usize,
    failures: HashMap<IpAddr, std::collections::VecDeque<std::time::Instant>>,
}

/// The window failures are counted in.
pub const AUTH_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Most addresses tracked; past it, the ones whose last failure is oldest go.
pub const AUTH_MAX_ADDRESSES: usize = 100_000;

impl AuthFailures {
    /// `limit` 0: no limit.
    pub fn new(limit: usize) -> AuthFailures {
        AuthFailures { limit, failures: HashMap::new() }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn prune(&mut self, ip: IpAddr, now: std::time::Instant) -> usize {
        let Some(q) = self.failures.get_mut(&ip) else { return 0 };
        while q.front().is_some_and(|&t| now.saturating_duration_since(t) >= AUTH_WINDOW) {
            q.pop_front();
        }
        let n = q.len();
        if n == 0 {
            self.failures.remove(&ip);
        }
        n
    }

    /// Whether `ip` is refused now.
    pub fn blocked(&mut self, ip: IpAddr, now: std::time::Instant) -> bool {
        self.limit > 0 && self.prune(canonical(ip), now) >= self.limit
    }

    /// Counts a failed login; true if `ip` is refused from now on.
    pub fn failed(&mut self, ip: IpAddr, now: std::time::Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let ip = canonical(ip);
        self.prune(ip, now);
        if self.failures.len() >= AUTH_MAX_ADDRESSES && !self.failures.contains_key(&ip) {
            let oldest = self.failures.iter().min_by_key(|(_, q)| q.back().copied()).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.failures.remove(&k);
            }
        }
        let q = self.failures.entry(ip).or_default();
        q.push_back(now);
        // Bounded: no more than the limit is needed to decide.
        while q.len() > self.limit {
            q.pop_front();
        }
        q.len() >= self.limit
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &["Example.test".into(), "open.test".into()],
            &["relay.test".into()],
            &["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            [("Alice@example.test".to_owned(), "$argon2id$x".to_owned())],
        )
    }

    #[test]
    fn recipients() {
        let p = policy();
        let m = |s: &str| Mailbox::parse(s).unwrap();
        let cases = [
            ("alice@example.test", false, RcptVerdict::Accept),
            ("ALICE@EXAMPLE.TEST", false, RcptVerdict::Accept),
            ("bob@example.test", false, RcptVerdict::UnknownUser),
            ("bob@example.test", true, RcptVerdict::UnknownUser),
            ("postmaster@example.test", false, RcptVerdict::Accept),
            ("anyone@open.test", false, RcptVerdict::Accept),
            ("x@relay.test", false, RcptVerdict::Accept),
            ("x@elsewhere.test", false, RcptVerdict::RelayDenied),
            ("x@elsewhere.test", true, RcptVerdict::Accept),
        ];
        for (addr, relay, want) in cases {
            assert_eq!(p.check_recipient(&m(addr), relay), want, "{addr} relay={relay}");
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // reason: a start time; the rest is simulated
    fn failed_logins_block_an_address_for_the_window() {
        let t0 = std::time::Instant::now();
        let s = |n: u64| t0 + std::time::Duration::from_secs(n);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut f = AuthFailures::new(3);
        assert!(!f.failed(a, s(0)) && !f.failed(a, s(100)));
        assert!(!f.blocked(a, s(101)));
        assert!(f.failed(a, s(200)), "the third failure blocks");
        assert!(f.blocked(a, s(201)) && !f.blocked(b, s(201)), "only that address");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(f.blocked(mapped, s(201)), "the same client over IPv6-mapped");
        assert!(f.blocked(a, s(599)));
        assert!(!f.blocked(a, s(600)), "the first failure left the window");
        let mut off = AuthFailures::new(0);
        for i in 0..100 {
            assert!(!off.failed(a, s(i)));
        }
        assert!(!off.blocked(a, s(100)));
    }

    #[test]
    fn networks() {
        let p = policy();
        assert!(p.is_trusted("127.0.0.5".parse().unwrap()));
        assert!(p.is_trusted("::1".parse().unwrap()));
        assert!(p.is_trusted("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.is_trusted("192.0.2.1".parse().unwrap()));
        assert_eq!(p.password_hash("alice@EXAMPLE.test"), Some("$argon2id$x"));
    }
}
