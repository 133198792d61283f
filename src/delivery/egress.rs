//! Egress: which local address (source) a message leaves from. A tenant's
//! mail goes through its pool (`[[tenant]] pool`, else `[delivery] pool`);
//! a pool takes its sources in turn, in proportion to their weights (smooth
//! weighted round robin: with weights 2 and 1 the order is a, b, a, ...,
//! never a, a, b); a source past its daily cap (`max_per_day`, warm-up) is
//! skipped until the next UTC day. Mail with no pool leaves from the host's
//! default address.
//!
//! Pure: the shell keeps the day's counts (shared by workers) and a
//! [`Rotation`] per worker, and passes the day in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;

/// One `[[source]]`, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub address: IpAddr,
    /// The name it says EHLO with.
    pub ehlo: String,
    pub max_per_day: Option<u64>,
}

/// One `[[pool]]`: indexes into [`Egress::sources`] with their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    members: Vec<(usize, u32)>,
}

/// Sources, pools and which pool each tenant uses.
#[derive(Debug, Default)]
pub struct Egress {
    pub sources: Vec<Arc<Source>>,
    pools: HashMap<String, Pool>,
    /// Tenant name to its pool (None: the default pool).
    tenants: HashMap<String, Option<String>>,
    default_pool: Option<String>,
}

impl Egress {
    /// From a checked config (names refer to what exists).
    pub fn new(config: &Config) -> Egress {
        let hostname = config.hostname().to_string();
        let sources: Vec<Arc<Source>> = config
            .sources
            .iter()
            .map(|s| {
                let s = s.get_ref();
                Arc::new(Source {
                    name: s.name.clone(),
                    address: s.address,
                    ehlo: s.ehlo.clone().unwrap_or_else(|| hostname.clone()),
                    max_per_day: s.max_per_day,
                })
            })
            .collect();
        let index = |name: &str| sources.iter().position(|s| s.name == name);
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let p = p.get_ref();
                let members =
                    p.sources.iter().filter_map(|m| Some((index(m.name())?, m.weight().max(1)))).collect();
                (p.name.clone(), Pool { name: p.name.clone(), members })
            })
            .collect();
        let tenants =
            config.tenants.iter().map(|t| (t.get_ref().name.clone(), t.get_ref().pool.clone())).collect();
        Egress { sources, pools, tenants, default_pool: config.delivery.pool.clone() }
    }

    /// The pool for a tenant's mail (or mail with no tenant): the tenant's,
    /// else the default one. An unknown tenant is treated as none.
    /// Whether all mail leaves from one address (the host's default, or
    /// one source every pool uses): then a destination found down is down
    /// for every message to it (see `delivery::down`).
    pub fn one_path(&self) -> bool {
        let mut used = self.pools.values().flat_map(|p| p.members.iter().map(|&(i, _)| i));
        match used.next() {
            None => true,
            Some(first) => self.default_pool.is_some() && used.all(|i| i == first),
        }
    }

    pub fn pool_for(&self, tenant: Option<&str>) -> Option<&Pool> {
        let own = tenant.and_then(|t| self.tenants.get(t)).and_then(Option::as_deref);
        own.or(self.default_pool.as_deref()).and_then(|p| self.pools.get(p))
    }
}

/// The UTC day of a Unix time, for daily caps.
pub fn day_of(unix_secs: u64) -> u64 {
    unix_secs / 86_400
}

/// Messages handed to each source today (shared by the workers).
#[derive(Debug, Default)]
pub struct DailyCounts {
    day: u64,
    counts: HashMap<String, u64>,
}

impl DailyCounts {
    /// Today's count for `source`, on `day`.
    pub fn get(&self, day: u64, source: &str) -> u64 {
        if day == self.day {
            self.counts.get(source).copied().unwrap_or(0)
        } else {
            0
        }
    }

    /// Counts one message for `source` on `day` (a new day starts at zero).
    pub fn add(&mut self, day: u64, source: &str) {
        if day != self.day {
            self.day = day;
            self.counts.clear();
        }
        *self.counts.entry(source.to_owned()).or_default() += 1;
    }
}

/// What a pool gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Source(Arc<Source>),
    /// Every source of the pool has reached its daily cap.
    Exhausted,
}

/// The smooth weighted round robin state of each pool (one per worker).
#[derive(Debug, Default)]
pub struct Rotation {
    current: HashMap<String, Vec<i64>>,
}

impl Rotation {
    /// The next source of `pool`, skipping those at their cap on `day`.
    /// Counts the message for the source picked.
    pub fn pick(&mut self, egress: &Egress, pool: &Pool, day: u64, counts: &mut DailyCounts) -> Pick {
        let current = self.current.entry(pool.name.clone()).or_default();
        current.resize(pool.members.len(), 0);
        let usable = |&(i, _): &(usize, u32)| {
            let s = &egress.sources[i];
            s.max_per_day.is_none_or(|cap| counts.get(day, &s.name) < cap)
        };
        let total: i64 = pool.members.iter().filter(|m| usable(m)).map(|&(_, w)| i64::from(w)).sum();
        if total == 0 {
            return Pick::Exhausted;
        }
        let mut best: Option<usize> = None;
        for (k, m) in pool.members.iter().enumerate() {
            if usable(m) {
                current[k] += i64::from(m.1);
                if best.is_none_or(|b| current[k] > current[b]) {
                    best = Some(k);
                }
            }
        }
        let Some(k) = best else { return Pick::Exhausted };
        current[k] -= total;
        let source = egress.sources[pool.members[k].0].clone();
        counts.add(day, &source.name);
        Pick::Source(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(text: &str) -> Egress {
        Egress::new(&Config::parse(&format!("hostname = \"mx.test\"\n{text}"), "test").unwrap())
    }

    const SOURCES: &str = "[[source]]\nname = \"a\"\naddress = \"127.0.0.2\"\nehlo = \"a.test\"\n\
        [[source]]\nname = \"b\"\naddress = \"127.0.0.3\"\n\
        [[source]]\nname = \"c\"\naddress = \"127.0.0.4\"\nmax_per_day = 2\n";

    fn picks(e: &Egress, tenant: Option<&str>, n: usize, day: u64, counts: &mut DailyCounts) -> String {
        let mut r = Rotation::default();
        let pool = e.pool_for(tenant).unwrap();
        (0..n)
            .map(|_| match r.pick(e, pool, day, counts) {
                Pick::Source(s) => s.name.clone(),
                Pick::Exhausted => "-".into(),
            })
            .collect()
    }

    #[test]
    fn pools_rotate_by_weight() {
        let e = egress(&format!(
            "{SOURCES}[[pool]]\nname = \"even\"\nsources = [\"a\", \"b\"]\n\
             [[pool]]\nname = \"heavy\"\nsources = [{{ name = \"a\", weight = 3 }}, \"b\"]\n\
             [[tenant]]\nname = \"t1\"\npool = \"even\"\n[[tenant]]\nname = \"t2\"\npool = \"heavy\"\n"
        ));
        let mut counts = DailyCounts::default();
        assert_eq!(picks(&e, Some("t1"), 6, 1, &mut counts), "ababab");
        assert_eq!(picks(&e, Some("t2"), 8, 1, &mut counts), "aabaaaba");
        assert_eq!(e.sources[0].ehlo, "a.test");
        assert_eq!(e.sources[1].ehlo, "mx.test", "the host name by default");
    }

    #[test]
    fn tenants_without_a_pool_take_the_default_one() {
        let e = egress(&format!(
            "{SOURCES}[[pool]]\nname = \"p\"\nsources = [\"b\"]\n[[tenant]]\nname = \"t\"\n[delivery]\npool = \"p\"\n"
        ));
        let mut counts = DailyCounts::default();
        for tenant in [None, Some("t"), Some("unknown")] {
            assert_eq!(picks(&e, tenant, 2, 1, &mut counts), "bb", "{tenant:?}");
        }
        let none = egress(SOURCES);
        assert!(none.pool_for(None).is_none() && none.pool_for(Some("t")).is_none());
    }

    #[test]
    fn one_path_only_when_every_message_leaves_from_one_address() {
        let pool =
            |name: &str, sources: &str| format!("[[pool]]\nname = \"{name}\"\nsources = [{sources}]\n");
        let cases = [
            (String::new(), true, "no sources used: the host's address"),
            (format!("{}[delivery]\npool = \"p\"\n", pool("p", "\"b\"")), true, "one source for all"),
            (format!("{}[delivery]\npool = \"p\"\n", pool("p", "\"a\", \"b\"")), false, "two in rotation"),
            (
                format!("{}[[tenant]]\nname = \"t\"\npool = \"p\"\n", pool("p", "\"b\"")),
                false,
                "a tenant's source and the host's address",
            ),
            (
                format!("{}{}[delivery]\npool = \"p\"\n", pool("p", "\"b\""), pool("q", "\"a\"")),
                false,
                "two pools, two sources",
            ),
        ];
        for (text, want, why) in cases {
            assert_eq!(egress(&format!("{SOURCES}{text}")).one_path(), want, "{why}");
        }
    }

    #[test]
    fn capped_sources_overflow_and_come_back_the_next_day() {
        let e = egress(&format!(
            "{SOURCES}[[pool]]\nname = \"p\"\nsources = [\"c\", \"b\"]\n[delivery]\npool = \"p\"\n"
        ));
        let mut counts = DailyCounts::default();
        assert_eq!(picks(&e, None, 6, 10, &mut counts), "cbcbbb", "c takes 2, then b takes all");
        assert_eq!(counts.get(10, "c"), 2);
        assert_eq!(picks(&e, None, 4, 11, &mut counts), "cbcb", "a new day");
        let only = egress(&format!(
            "{SOURCES}[[pool]]\nname = \"p\"\nsources = [\"c\"]\n[delivery]\npool = \"p\"\n"
        ));
        let mut counts = DailyCounts::default();
        assert_eq!(picks(&only, None, 4, 10, &mut counts), "cc--", "nothing left today");
    }

    #[test]
    fn days_are_utc_days() {
        assert_eq!(day_of(86_399), 0);
        assert_eq!(day_of(86_400), 1);
    }
}
