//! Next hop: where mail for a domain goes (SPEC "Outbound delivery").
//!
//! 1. A `[[route]]` for the domain (or `*`): its hosts, in order.
//! 2. An address literal (`user@[192.0.2.1]`): that address.
//! 3. MX records: lowest preference first, equal preferences shuffled; each
//!    exchange's A and AAAA addresses.
//! 4. No MX (NODATA): the domain's own A/AAAA (RFC 5321 §5.1 implicit MX).
//!
//! A null MX (RFC 7505) and a domain that does not exist fail permanently;
//! DNS trouble fails temporarily. The destination key is the set of hosts, so
//! domains served by the same MXes share one destination.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::RouteConfig;
use crate::dns::cache::Lookup;
use crate::dns::wire::{Answer, Rtype};
use crate::dns::Resolver;

/// Something that answers DNS questions (the real resolver, or a test fake).
#[allow(async_fn_in_trait)] // reason: used with concrete types on one thread; no Send bound wanted
pub trait Dns {
    async fn lookup(&self, name: &str, rtype: Rtype) -> Arc<Lookup>;
}

impl Dns for Resolver {
    async fn lookup(&self, name: &str, rtype: Rtype) -> Arc<Lookup> {
        self.query(name, rtype).await
    }
}

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// Everything that led to it was validated by the resolver (the MX
    /// answer, when there is one, and the address answers): a condition
    /// for looking up its TLSA records (RFC 7672 §2.2).
    pub secure: bool,
    /// What DANE decided for it (set by the delivery owner).
    pub dane: HostDane,
}

/// DANE's verdict on one host (RFC 7672).
#[derive(Debug, Clone, Default)]
pub enum HostDane {
    /// No usable TLSA records: the hop's usual TLS (opportunistic, or MTA-STS).
    #[default]
    None,
    /// TLS, checked by this configuration against the host's TLSA records
    /// (the policy, as TLS reports show it); never plain text.
    Verify(Arc<rustls::ClientConfig>, Arc<super::tlsrpt::Policy>),
    /// Do not connect (the TLSA lookup failed or was not validated): why.
    Refuse(String),
}

impl PartialEq for HostDane {
    fn eq(&self, other: &HostDane) -> bool {
        match (self, other) {
            (HostDane::None, HostDane::None) => true,
            (HostDane::Verify(a, p), HostDane::Verify(b, q)) => Arc::ptr_eq(a, b) && p == q,
            (HostDane::Refuse(a), HostDane::Refuse(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for HostDane {}

impl Host {
    fn new(name: &str, addrs: Vec<SocketAddr>, secure: bool) -> Host {
        Host { name: name.into(), addrs, secure, dane: HostDane::None }
    }
}

/// Where a domain's mail goes.
#[derive(Debug, Clone)]
pub struct NextHop {
    /// Same key, same destination (limits, connections).
    pub key: String,
    /// In the order to try.
    pub hosts: Vec<Host>,
    /// Speak LMTP (a `[[route]]` with `protocol = "lmtp"`).
    pub lmtp: bool,
    /// Only over TLS with a certificate valid for the host name, checked
    /// by this client (an enforced MTA-STS policy); never in plain text.
    pub verify_tls: Option<Arc<rustls::ClientConfig>>,
    /// Carries REQUIRETLS mail (RFC 8689): every host only over verified
    /// TLS (DANE, or `verify_tls`), and the next hop must take REQUIRETLS.
    pub requiretls: bool,
    /// TLS reporting is on: the policy sessions count under (MTA-STS, or
    /// none; DANE hosts have their own).
    pub report: Option<Arc<super::tlsrpt::Policy>>,
    /// An MTA-STS policy in `testing` mode: its hosts are tried with this
    /// verifying client first, and with opportunistic TLS when that fails
    /// (the failure is only reported).
    pub sts_testing: Option<(Arc<rustls::ClientConfig>, Arc<super::mta_sts::Policy>)>,
}

/// Why there is no next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopError {
    /// Bounce: enhanced status and text.
    Permanent(&'static str, String),
    /// Try again later.
    Temporary(String),
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HopError::Permanent(status, text) => write!(f, "{status} {text}"),
            HopError::Temporary(text) => write!(f, "4.4.3 {text}"),
        }
    }
}

/// Static routes from `[[route]]`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_domain: HashMap<String, Route>,
    wildcard: Option<Route>,
}

/// One route: its targets and whether they speak LMTP.
#[derive(Debug, Clone)]
struct Route {
    targets: Vec<(String, u16)>,
    lmtp: bool,
}

impl Routes {
    /// Builds the table from the configured routes.
    pub fn new(routes: &[RouteConfig]) -> Routes {
        let mut r = Routes::default();
        for route in routes {
            let targets: Vec<(String, u16)> = route.to.iter().map(|t| (t.host.clone(), t.port)).collect();
            let entry = Route { targets, lmtp: route.protocol == crate::config::RouteProtocol::Lmtp };
            if route.domain == "*" {
                r.wildcard = Some(entry);
            } else {
                r.by_domain.insert(route.domain.to_lowercase(), entry);
            }
        }
        r
    }

    fn get(&self, domain: &str) -> Option<&Route> {
        self.by_domain.get(domain).or(self.wildcard.as_ref())
    }
}

/// Why a host has no usable address.
#[derive(Debug)]
enum AddrError {
    /// DNS answered: no address (`gone`: the name does not exist at all).
    None { gone: bool, text: String },
    /// DNS did not answer.
    Temporary(String),
}

/// Addresses of `host` (A, then AAAA), and whether every answer was
/// validated (an address literal is not).
async fn addresses<D: Dns>(dns: &D, host: &str, port: u16) -> Result<(Vec<SocketAddr>, bool), AddrError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, port)], false));
    }
    let mut addrs = Vec::new();
    let mut nx = 0;
    let mut temp = None;
    let mut secure = true;
    for rtype in [Rtype::A, Rtype::Aaaa] {
        match &*dns.lookup(host, rtype).await {
            Ok(r) => {
                secure &= r.secure;
                match &r.answer {
                    Answer::Ips(ips) => addrs.extend(ips.iter().map(|ip| SocketAddr::new(*ip, port))),
                    Answer::NxDomain => nx += 1,
                    _ => {}
                }
            }
            Err(e) => {
                secure = false;
                temp = Some(e.clone());
            }
        }
    }
    match (addrs.is_empty(), temp) {
        (false, _) => Ok((addrs, secure)),
        (true, Some(e)) => Err(AddrError::Temporary(format!("DNS lookup of {host} failed: {e}"))),
        (true, None) => Err(AddrError::None { gone: nx == 2, text: format!("{host} has no address") }),
    }
}

/// Finds the next hop for `domain` (lower case). `port` is for MX hosts.
pub async fn resolve<D: Dns>(dns: &D, routes: &Routes, domain: &str, port: u16) -> Result<NextHop, HopError> {
    if let Some(route) = routes.get(domain) {
        return resolve_route(dns, &route.targets, route.lmtp).await;
    }
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip: IpAddr = literal
            .strip_prefix("IPv6:")
            .or_else(|| literal.strip_prefix("ipv6:"))
            .unwrap_or(literal)
            .parse()
            .map_err(|_| HopError::Permanent("5.1.2", format!("bad address literal {domain}")))?;
        let addr = SocketAddr::new(ip, port);
        return Ok(NextHop {
            key: format!("literal:{addr}"),
            hosts: vec![Host::new(domain, vec![addr], false)],
            lmtp: false,
            verify_tls: None,
            requiretls: false,
            report: None,
            sts_testing: None,
        });
    }
    let mx = dns.lookup(domain, Rtype::Mx).await;
    match &*mx {
        Err(e) => Err(HopError::Temporary(format!("DNS lookup of MX for {domain} failed: {e}"))),
        Ok(r) => match &r.answer {
            Answer::NxDomain => Err(HopError::Permanent("5.1.2", format!("domain {domain} does not exist"))),
            Answer::Mx(records) => resolve_mx(dns, domain, records, port, r.secure).await,
            // No MX: the domain itself is the mail host (implicit MX).
            _ => match addresses(dns, domain, port).await {
                Ok((addrs, secure)) => Ok(NextHop {
                    key: format!("mx:{domain}:{port}"),
                    hosts: vec![Host::new(domain, addrs, secure && r.secure)],
                    lmtp: false,
                    verify_tls: None,
                    requiretls: false,
                    report: None,
                    sts_testing: None,
                }),
                Err(AddrError::None { .. }) => {
                    Err(HopError::Permanent("5.1.2", format!("domain {domain} has no MX and no address")))
                }
                Err(AddrError::Temporary(text)) => Err(HopError::Temporary(text)),
            },
        },
    }
}

async fn resolve_route<D: Dns>(dns: &D, targets: &[(String, u16)], lmtp: bool) -> Result<NextHop, HopError> {
    let kind = if lmtp { "lmtp" } else { "route" };
    let key =
        format!("{kind}:{}", targets.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>().join(","));
    let mut hosts = Vec::new();
    let mut last = String::new();
    for (host, port) in targets {
        match addresses(dns, host, *port).await {
            Ok((addrs, _)) => hosts.push(Host::new(host, addrs, false)),
            Err(AddrError::None { text, .. } | AddrError::Temporary(text)) => last = text,
        }
    }
    if hosts.is_empty() {
        return Err(HopError::Temporary(format!("no route target resolves: {last}")));
    }
    Ok(NextHop { key, hosts, lmtp, verify_tls: None, requiretls: false, report: None, sts_testing: None })
}

async fn resolve_mx<D: Dns>(
    dns: &D,
    domain: &str,
    records: &[crate::dns::wire::Mx],
    port: u16,
    secure_mx: bool,
) -> Result<NextHop, HopError> {
    if records.len() == 1 && records[0].exchange.is_empty() {
        return Err(HopError::Permanent(
            "5.1.10",
            format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
        ));
    }
    let mut sorted: Vec<_> = records.iter().filter(|r| !r.exchange.is_empty()).collect();
    // Shuffle, then a stable sort by preference: equal preferences end up in
    // random order (RFC 5321 §5.1).
    fastrand::shuffle(&mut sorted);
    sorted.sort_by_key(|r| r.preference);
    let mut names: Vec<String> = sorted.iter().map(|r| r.exchange.clone()).collect();
    names.dedup();
    let mut hosts = Vec::new();
    let (mut nx, mut last) = (0, String::new());
    for name in &names {
        match addresses(dns, name, port).await {
            Ok((addrs, secure)) => hosts.push(Host::new(name, addrs, secure && secure_mx)),
            Err(AddrError::None { gone, text }) => {
                nx += usize::from(gone);
                last = text;
            }
            Err(AddrError::Temporary(text)) => last = text,
        }
    }
    if hosts.is_empty() {
        return Err(if nx == names.len() {
            HopError::Permanent("5.4.4", format!("no MX host of {domain} exists"))
        } else {
            HopError::Temporary(format!("no MX host of {domain} resolves: {last}"))
        });
    }
    let mut key_names = names.clone();
    key_names.sort();
    Ok(NextHop {
        key: format!("mx:{}:{port}", key_names.join(",")),
        hosts,
        lmtp: false,
        verify_tls: None,
        requiretls: false,
        report: None,
        sts_testing: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::{Mx, Response};
    use std::cell::RefCell;

    #[derive(Default)]
    struct FakeDns {
        answers: HashMap<(String, Rtype), Lookup>,
        asked: RefCell<Vec<(String, Rtype)>>,
    }

    impl FakeDns {
        fn set(&mut self, name: &str, rtype: Rtype, answer: Answer) {
            self.answers.insert((name.into(), rtype), Ok(Response { answer, ttl: 60, secure: false }));
        }
        fn set_secure(&mut self, name: &str, rtype: Rtype, answer: Answer) {
            self.answers.insert((name.into(), rtype), Ok(Response { answer, ttl: 60, secure: true }));
        }
        fn fail(&mut self, name: &str, rtype: Rtype) {
            self.answers.insert((name.into(), rtype), Err("SERVFAIL".into()));
        }
    }

    impl Dns for FakeDns {
        async fn lookup(&self, name: &str, rtype: Rtype) -> Arc<Lookup> {
            self.asked.borrow_mut().push((name.into(), rtype));
            Arc::new(self.answers.get(&(name.into(), rtype)).cloned().unwrap_or(Ok(Response {
                answer: Answer::NxDomain,
                ttl: 60,
                secure: false,
            })))
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build().unwrap();
        rt.block_on(f)
    }

    fn ip(s: &str) -> Answer {
        Answer::Ips(vec![s.parse().unwrap()])
    }

    fn mx(list: &[(u16, &str)]) -> Answer {
        Answer::Mx(list.iter().map(|(p, e)| Mx { preference: *p, exchange: (*e).into() }).collect())
    }

    #[test]
    fn mx_order_addresses_and_key() {
        let mut d = FakeDns::default();
        d.set("a.test", Rtype::Mx, mx(&[(20, "mx2.a.test"), (10, "mx1.a.test")]));
        d.set("mx1.a.test", Rtype::A, ip("127.0.0.2"));
        d.set("mx1.a.test", Rtype::Aaaa, Answer::NoData);
        d.set("mx2.a.test", Rtype::A, ip("127.0.0.3"));
        d.set("mx2.a.test", Rtype::Aaaa, ip("::1"));
        let hop = run(resolve(&d, &Routes::default(), "a.test", 2525)).unwrap();
        assert_eq!(hop.hosts[0].name, "mx1.a.test");
        assert_eq!(hop.hosts[0].addrs, vec!["127.0.0.2:2525".parse().unwrap()]);
        assert_eq!(hop.hosts[1].addrs.len(), 2);
        assert_eq!(hop.key, "mx:mx1.a.test,mx2.a.test:2525");
    }

    /// A host is secure (DANE may apply) only when the MX answer and both
    /// address answers were validated.
    #[test]
    fn hosts_are_secure_only_when_every_answer_was_validated() {
        let mut d = FakeDns::default();
        d.set_secure("s.test", Rtype::Mx, mx(&[(10, "mx1.s.test"), (20, "mx2.s.test"), (30, "mx3.s.test")]));
        d.set_secure("mx1.s.test", Rtype::A, ip("127.0.0.2"));
        d.set_secure("mx1.s.test", Rtype::Aaaa, Answer::NoData);
        d.set_secure("mx2.s.test", Rtype::A, ip("127.0.0.3"));
        d.set("mx2.s.test", Rtype::Aaaa, Answer::NoData);
        d.set_secure("mx3.s.test", Rtype::A, ip("127.0.0.4"));
        d.fail("mx3.s.test", Rtype::Aaaa);
        let hop = run(resolve(&d, &Routes::default(), "s.test", 25)).unwrap();
        let secure: Vec<(&str, bool)> = hop.hosts.iter().map(|h| (h.name.as_str(), h.secure)).collect();
        assert_eq!(secure, [("mx1.s.test", true), ("mx2.s.test", false), ("mx3.s.test", false)]);
        // The same hosts under an MX answer that was not validated.
        d.set("s.test", Rtype::Mx, mx(&[(10, "mx1.s.test")]));
        let hop = run(resolve(&d, &Routes::default(), "s.test", 25)).unwrap();
        assert!(!hop.hosts[0].secure);
        // Implicit MX: the domain's own validated addresses.
        d.set_secure("i.test", Rtype::Mx, Answer::NoData);
        d.set_secure("i.test", Rtype::A, ip("127.0.0.5"));
        d.set_secure("i.test", Rtype::Aaaa, Answer::NoData);
        assert!(run(resolve(&d, &Routes::default(), "i.test", 25)).unwrap().hosts[0].secure);
    }

    #[test]
    fn equal_preferences_are_shuffled_and_share_a_key() {
        let mut d = FakeDns::default();
        d.set("b.test", Rtype::Mx, mx(&[(10, "x.test"), (10, "y.test"), (10, "z.test")]));
        d.set("c.test", Rtype::Mx, mx(&[(5, "z.test"), (7, "y.test"), (9, "x.test")]));
        for h in ["x.test", "y.test", "z.test"] {
            d.set(h, Rtype::A, ip("127.0.0.9"));
        }
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..60 {
            let hop = run(resolve(&d, &Routes::default(), "b.test", 25)).unwrap();
            firsts.insert(hop.hosts[0].name.clone());
        }
        assert_eq!(firsts.len(), 3, "each equal-preference host comes first sometimes");
        let b = run(resolve(&d, &Routes::default(), "b.test", 25)).unwrap();
        let c = run(resolve(&d, &Routes::default(), "c.test", 25)).unwrap();
        assert_eq!(b.key, c.key, "same MX hosts: same destination");
    }

    #[test]
    fn implicit_mx_null_mx_and_nxdomain() {
        let mut d = FakeDns::default();
        d.set("amx.test", Rtype::Mx, Answer::NoData);
        d.set("amx.test", Rtype::A, ip("127.0.0.3"));
        let hop = run(resolve(&d, &Routes::default(), "amx.test", 25)).unwrap();
        assert_eq!(hop.hosts[0].name, "amx.test");
        d.set("nullmx.test", Rtype::Mx, mx(&[(0, "")]));
        assert!(matches!(
            run(resolve(&d, &Routes::default(), "nullmx.test", 25)),
            Err(HopError::Permanent("5.1.10", _))
        ));
        assert!(matches!(
            run(resolve(&d, &Routes::default(), "nowhere.test", 25)),
            Err(HopError::Permanent("5.1.2", _))
        ));
        d.set("noaddr.test", Rtype::Mx, Answer::NoData);
        d.set("noaddr.test", Rtype::A, Answer::NoData);
        d.set("noaddr.test", Rtype::Aaaa, Answer::NoData);
        assert!(matches!(
            run(resolve(&d, &Routes::default(), "noaddr.test", 25)),
            Err(HopError::Permanent("5.1.2", _))
        ));
    }

    #[test]
    fn dns_trouble_is_temporary() {
        let mut d = FakeDns::default();
        d.fail("t.test", Rtype::Mx);
        assert!(matches!(run(resolve(&d, &Routes::default(), "t.test", 25)), Err(HopError::Temporary(_))));
        d.set("u.test", Rtype::Mx, mx(&[(1, "m.u.test")]));
        d.fail("m.u.test", Rtype::A);
        assert!(matches!(run(resolve(&d, &Routes::default(), "u.test", 25)), Err(HopError::Temporary(_))));
        d.set("v.test", Rtype::Mx, mx(&[(1, "gone.v.test")]));
        assert!(matches!(
            run(resolve(&d, &Routes::default(), "v.test", 25)),
            Err(HopError::Permanent("5.4.4", _))
        ));
    }

    #[test]
    fn routes_and_literals_skip_mx() {
        let target = |t: &str| crate::config::parse_route_target(t).unwrap();
        let routes = Routes::new(&[
            RouteConfig {
                domain: "example.net".into(),
                to: vec![target("127.0.0.1:2526"), target("[::1]:2527")],
                protocol: crate::config::RouteProtocol::Lmtp,
            },
            RouteConfig {
                domain: "*".into(),
                to: vec![target("relay.test:25")],
                protocol: crate::config::RouteProtocol::Smtp,
            },
        ]);
        let mut d = FakeDns::default();
        d.set("relay.test", Rtype::A, ip("127.0.0.5"));
        let hop = run(resolve(&d, &routes, "example.net", 25)).unwrap();
        assert_eq!(
            hop.hosts.iter().map(|h| h.addrs[0].to_string()).collect::<Vec<_>>(),
            ["127.0.0.1:2526", "[::1]:2527"]
        );
        assert!(hop.lmtp && hop.key.starts_with("lmtp:"), "{hop:?}");
        let hop = run(resolve(&d, &routes, "anything.test", 25)).unwrap();
        assert_eq!(hop.hosts[0].addrs[0], "127.0.0.5:25".parse().unwrap());
        assert!(!hop.lmtp && hop.key.starts_with("route:"));
        assert!(d.asked.borrow().iter().all(|(_, t)| *t != Rtype::Mx), "routes never ask for MX");
        let hop = run(resolve(&d, &Routes::default(), "[127.0.0.8]", 2525)).unwrap();
        assert_eq!(hop.hosts[0].addrs[0], "127.0.0.8:2525".parse().unwrap());
    }
}
