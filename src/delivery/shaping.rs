//! Traffic shaping: how hard we may push each destination, and how we
//! react to what receivers say.
//!
//! A `[[shaping]]` rule matches mail by recipient `domain`, or by `mx`: a
//! glob over the next hop's host names, so every domain hosted by one
//! provider shares one budget (MX rollup). Its limits (connections,
//! messages per connection, a message rate) apply per source and budget.
//! Mail that no rule matches keeps the `[delivery]` limits, per next hop.
//!
//! `[[shaping.automation]]` rules watch replies: a regex over the reply
//! text, an action (`suspend` the budget, lower its `rate`, or `bounce` the
//! recipient at once), a duration and an optional threshold (act after N
//! matches within a period). A suspended budget opens no connection until
//! the suspension ends; its mail waits in the queue.
//!
//! Pure: rules are compiled from config data, time comes in as `Instant`s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::config::{ActionConfig, AutomationConfig, ShapingConfig};

/// Messages per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// `"300/min"`, `"10/s"`, `"5000/h"`, `"100000/day"`, or a count over a
    /// duration (`"10/30s"`).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, unit) =
            s.split_once('/').ok_or_else(|| format!("{s:?}: expected N/s, N/min, N/h or N/day"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("{s:?}: {n:?} is not a count"))?;
        if count == 0 {
            return Err(format!("{s:?}: the count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => crate::config::parse_duration(other).map_err(|e| format!("{s:?}: {e}"))?,
        };
        if per.is_zero() {
            return Err(format!("{s:?}: the period must be longer than zero"));
        }
        Ok(Rate { count, per })
    }

    /// The time between two messages at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }

    /// One node's share of this rate among `nodes` (at least one message
    /// per `per`).
    pub fn share(self, nodes: u32) -> Rate {
        Rate { count: (self.count / nodes.max(1)).max(1), per: self.per }
    }

    /// The slower of two rates.
    pub fn min(self, other: Rate) -> Rate {
        if self.interval() >= other.interval() {
            self
        } else {
            other
        }
    }
}

/// `*` matches any run of characters (dots included); the rest matches
/// itself, ASCII case-insensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Domain(String),
    Mx(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Suspend,
    Rate(Rate),
    Bounce,
}

/// What a suspension stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The budget (source x destination) that got the reply.
    Destination,
    /// Every message of the tenant whose message got the reply, wherever
    /// it goes: the fault is the sender's (SPF, DKIM, DMARC, content), not
    /// the destination's rate.
    Tenant,
}

#[derive(Debug, Clone)]
pub struct Automation {
    pub reply: Regex,
    pub action: Action,
    pub duration: Duration,
    /// Act after this many matches within the period; None: at once.
    pub threshold: Option<(u32, Duration)>,
    pub scope: Scope,
}

/// Limits for one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub connections: usize,
    pub messages_per_connection: usize,
    pub rate: Option<Rate>,
    /// Kept across nodes on Redis (`shared = true`).
    pub shared: bool,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: Matcher,
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
    pub rate: Option<Rate>,
    pub shared: bool,
    pub automation: Vec<Automation>,
}

impl Rule {
    /// A rule from its config (checked here: regexes, rates, actions).
    pub fn compile(c: &ShapingConfig) -> Result<Rule, String> {
        let matcher = match (&c.domain, &c.mx) {
            (Some(d), None) => Matcher::Domain(d.trim_end_matches('.').to_ascii_lowercase()),
            (None, Some(m)) => Matcher::Mx(m.trim_end_matches('.').to_ascii_lowercase()),
            _ => return Err("needs exactly one of domain and mx".into()),
        };
        let rate = c.rate.as_deref().map(Rate::parse).transpose().map_err(|e| format!("rate: {e}"))?;
        if c.connections.is_some_and(|n| !(1..=10_000).contains(&n)) {
            return Err("connections: must be between 1 and 10000".into());
        }
        if c.messages_per_connection.is_some_and(|n| !(1..=1_000_000).contains(&n)) {
            return Err("messages_per_connection: must be between 1 and 1000000".into());
        }
        let automation = c
            .automation
            .iter()
            .enumerate()
            .map(|(i, a)| compile_automation(a).map_err(|e| format!("automation[{i}].{e}")));
        Ok(Rule {
            matcher,
            connections: c.connections,
            messages_per_connection: c.messages_per_connection,
            rate,
            shared: c.shared,
            automation: automation.collect::<Result<_, _>>()?,
        })
    }
}

fn compile_automation(a: &AutomationConfig) -> Result<Automation, String> {
    // Bounded: a reply regex runs on every reply of its budget.
    let reply =
        regex::RegexBuilder::new(&a.reply).size_limit(1 << 20).build().map_err(|e| format!("reply: {e}"))?;
    let action = match &a.action {
        ActionConfig::Name(n) if n == "suspend" => Action::Suspend,
        ActionConfig::Name(n) if n == "bounce" => Action::Bounce,
        ActionConfig::Name(n) => {
            return Err(format!("action: {n:?}: expected \"suspend\", \"bounce\" or {{ rate = \"N/min\" }}"))
        }
        ActionConfig::Rate { rate } => {
            Action::Rate(Rate::parse(rate).map_err(|e| format!("action.rate: {e}"))?)
        }
    };
    let duration = match (a.duration, &action) {
        (Some(d), _) if d >= Duration::from_secs(1) && d <= Duration::from_secs(30 * 86_400) => d,
        (Some(_), _) => return Err("duration: must be between 1s and 30d".into()),
        (None, Action::Bounce) => Duration::ZERO,
        (None, _) => return Err("duration: needed for suspend and rate".into()),
    };
    let threshold = match a.threshold.as_deref() {
        None => None,
        Some(t) => {
            let r = Rate::parse(t).map_err(|e| format!("threshold: {e}"))?;
            Some((r.count, r.per))
        }
    };
    let scope = match (a.scope.as_deref(), &action) {
        (None | Some("destination"), _) => Scope::Destination,
        (Some("tenant"), Action::Suspend) => Scope::Tenant,
        (Some("tenant"), _) => return Err("scope: \"tenant\" goes with action = \"suspend\"".into()),
        (Some(other), _) => return Err(format!("scope: {other:?}: expected \"destination\" or \"tenant\"")),
    };
    Ok(Automation { reply, action, duration, threshold, scope })
}

/// Where a group of mail stands: its budget key and limits, and the rule
/// (with its automation) if one matched.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Budgets are per source and this key: `domain:<d>` or `mx:<glob>`
    /// for a rule, the next hop's key otherwise.
    pub key: String,
    pub limits: Limits,
    pub rule: Option<Arc<Rule>>,
}

/// All rules, in the order written (the config file's first, then each
/// shaping file's): the first domain rule for the domain wins, else the
/// first mx rule matching one of the hop's hosts.
#[derive(Debug, Clone)]
pub struct Shaping {
    rules: Vec<Arc<Rule>>,
    defaults: Limits,
}

impl Shaping {
    pub fn new(rules: Vec<Rule>, defaults: Limits) -> Shaping {
        Shaping { rules: rules.into_iter().map(Arc::new).collect(), defaults }
    }

    /// The shape of mail for `domain` through a next hop with key
    /// `hop_key` and host names `hosts`.
    pub fn shape(&self, domain: &str, hop_key: &str, hosts: &[&str]) -> Shape {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let by_domain = self.rules.iter().find(|r| matches!(&r.matcher, Matcher::Domain(d) if *d == domain));
        let rule = by_domain.or_else(|| {
            self.rules.iter().find(|r| match &r.matcher {
                Matcher::Mx(glob) => hosts.iter().any(|h| glob_match(glob, h.trim_end_matches('.'))),
                Matcher::Domain(_) => false,
            })
        });
        match rule {
            None => Shape { key: hop_key.to_owned(), limits: self.defaults.clone(), rule: None },
            Some(r) => Shape {
                key: match &r.matcher {
                    Matcher::Domain(d) => format!("domain:{d}"),
                    Matcher::Mx(m) => format!("mx:{m}"),
                },
                limits: Limits {
                    connections: r.connections.unwrap_or(self.defaults.connections),
                    messages_per_connection: r
                        .messages_per_connection
                        .unwrap_or(self.defaults.messages_per_connection),
                    rate: r.rate.or(self.defaults.rate),
                    shared: r.shared,
                },
                rule: Some(r.clone()),
            },
        }
    }
}

/// What automation decided about one reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reaction {
    /// Fail this recipient now (its temporary failure becomes permanent).
    pub bounce: bool,
    /// A suspension or rate change started (for the log): its description.
    pub started: Vec<String>,
    /// Suspend the tenant of the message that got this reply: for how
    /// long, and why (a `scope = "tenant"` rule).
    pub suspend_tenant: Option<(Duration, String)>,
}

/// One budget's automation state: recent matches per rule, the suspension
/// and rate change in force.
#[derive(Debug, Default)]
pub struct AutoState {
    matches: Vec<VecDeque<Instant>>,
    suspended: Option<(Instant, String)>,
    rate: Option<(Instant, Rate)>,
}

impl AutoState {
    /// Feeds one reply (code, enhanced code and text, as one line).
    pub fn on_reply(&mut self, rules: &[Automation], reply: &str, now: Instant) -> Reaction {
        let mut out = Reaction::default();
        self.matches.resize_with(rules.len(), VecDeque::new);
        for (i, rule) in rules.iter().enumerate() {
            if !rule.reply.is_match(reply) {
                continue;
            }
            if let Some((n, period)) = rule.threshold {
                let seen = &mut self.matches[i];
                seen.push_back(now);
                while seen.front().is_some_and(|&t| now.saturating_duration_since(t) > period) {
                    seen.pop_front();
                }
                // Bounded: at most `n` kept.
                while seen.len() > n as usize {
                    seen.pop_front();
                }
                if seen.len() < n as usize {
                    continue;
                }
                seen.clear();
            }
            let until = now + rule.duration;
            match &rule.action {
                Action::Bounce => out.bounce = true,
                Action::Suspend if rule.scope == Scope::Tenant => {
                    let why = format!("reply matched {:?}: {}", rule.reply.as_str(), short(reply));
                    if out.suspend_tenant.as_ref().is_none_or(|(d, _)| *d < rule.duration) {
                        out.suspend_tenant = Some((rule.duration, why));
                    }
                }
                Action::Suspend => {
                    if self.suspended.as_ref().is_none_or(|(t, _)| *t < until) {
                        let why = format!("reply matched {:?}: {}", rule.reply.as_str(), short(reply));
                        self.suspended = Some((until, why));
                        out.started.push(format!("suspended for {}s", rule.duration.as_secs()));
                    }
                }
                Action::Rate(r) => {
                    let slower = match self.rate {
                        Some((t, cur)) if t > now => cur.min(*r),
                        _ => *r,
                    };
                    self.rate = Some((until.max(self.rate.map_or(until, |(t, _)| t)), slower));
                    out.started.push(format!(
                        "rate {}/{}s for {}s",
                        slower.count,
                        slower.per.as_secs(),
                        rule.duration.as_secs()
                    ));
                }
            }
        }
        out
    }

    /// Suspends the budget until `until` (a tenant-scoped rule fired for
    /// mail that has no tenant: its destination is held instead).
    pub fn suspend(&mut self, until: Instant, why: String) {
        if self.suspended.as_ref().is_none_or(|(t, _)| *t < until) {
            self.suspended = Some((until, why));
        }
    }

    /// Until when, and why, the budget is suspended.
    pub fn suspended(&self, now: Instant) -> Option<(Instant, &str)> {
        self.suspended.as_ref().filter(|(t, _)| *t > now).map(|(t, why)| (*t, why.as_str()))
    }

    /// The rate in force: the configured one, or a lower one automation set.
    pub fn rate(&self, now: Instant, configured: Option<Rate>) -> Option<Rate> {
        match (self.rate.filter(|(t, _)| *t > now), configured) {
            (Some((_, r)), Some(c)) => Some(r.min(c)),
            (Some((_, r)), None) => Some(r),
            (None, c) => c,
        }
    }

    /// Forgets the suspension and rate change (an operator's flush).
    pub fn clear(&mut self) {
        self.suspended = None;
        self.rate = None;
        self.matches.clear();
    }
}

/// What of one budget's automation outlives a restart: the suspension and
/// the lowered rate in force, their ends in Unix seconds (an `Instant`
/// means nothing to the next process). Match counts toward thresholds are
/// not kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SavedAuto {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_until: Option<u64>,
    /// The lowered rate: messages per `rate_per_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_secs: Option<u64>,
}

impl SavedAuto {
    pub fn is_empty(&self) -> bool {
        self.suspended_until.is_none() && self.rate_until.is_none()
    }
}

impl AutoState {
    /// What is in force at `now` (`unix` is the same moment in Unix seconds).
    pub fn save(&self, now: Instant, unix: u64) -> SavedAuto {
        let at = |t: Instant| unix + t.saturating_duration_since(now).as_secs().max(1);
        let mut out = SavedAuto::default();
        if let Some((t, why)) = self.suspended.as_ref().filter(|(t, _)| *t > now) {
            out.suspended_until = Some(at(*t));
            out.why = why.clone();
        }
        if let Some((t, r)) = self.rate.filter(|(t, _)| *t > now) {
            out.rate_until = Some(at(t));
            out.rate_count = Some(r.count);
            out.rate_per_secs = Some(r.per.as_secs());
        }
        out
    }

    /// The state `saved` describes, as of `now` (`unix`): what has ended
    /// since is dropped; a rate that cannot be one (zero count or period)
    /// is ignored.
    pub fn restore(saved: &SavedAuto, now: Instant, unix: u64) -> AutoState {
        let until = |t: u64| (t > unix).then(|| now + Duration::from_secs(t - unix));
        let suspended = saved.suspended_until.and_then(until).map(|t| (t, saved.why.clone()));
        let rate = match (saved.rate_until.and_then(until), saved.rate_count, saved.rate_per_secs) {
            (Some(t), Some(count), Some(per)) if count > 0 && per > 0 => {
                Some((t, Rate { count, per: Duration::from_secs(per) }))
            }
            _ => None,
        };
        AutoState { matches: Vec::new(), suspended, rate }
    }
}

/// Automation state kept across restarts (`<spool>/automation.json`): the
/// tenant holds and every budget's [`SavedAuto`], by source name ("" for
/// the default address) and shaping key. The shell writes it when
/// [`SavedAutomation::take_dirty`] says so; this is the data and its JSON form.
#[derive(Debug, Default)]
pub struct SavedAutomation {
    inner: std::sync::Mutex<SavedInner>,
}

#[derive(Debug, Default)]
struct SavedInner {
    budgets: std::collections::BTreeMap<(String, String), SavedAuto>,
    dirty: bool,
}

/// Most budgets kept (budgets come from config: sources x rules).
pub const MAX_SAVED_BUDGETS: usize = 100_000;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedFile {
    #[serde(default)]
    tenants: Vec<SavedTenant>,
    #[serde(default)]
    budgets: Vec<SavedBudget>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedTenant {
    tenant: String,
    until: u64,
    why: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedBudget {
    source: String,
    key: String,
    #[serde(flatten)]
    state: SavedAuto,
}

impl SavedAutomation {
    /// Records a budget's state (none left: forgotten); marks it to save.
    pub fn put(&self, source: &str, key: &str, state: SavedAuto) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let k = (source.to_owned(), key.to_owned());
        if state.is_empty() {
            i.budgets.remove(&k);
        } else if i.budgets.len() < MAX_SAVED_BUDGETS || i.budgets.contains_key(&k) {
            i.budgets.insert(k, state);
        }
        i.dirty = true;
    }

    /// The saved state of a budget, if any.
    pub fn get(&self, source: &str, key: &str) -> Option<SavedAuto> {
        let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.budgets.get(&(source.to_owned(), key.to_owned())).cloned()
    }

    /// Something changed that is saved (a tenant hold): save it.
    pub fn touch(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
    }

    /// The JSON to save, if anything changed since the last call: what is
    /// in force at `unix` (ended suspensions are dropped from the map too).
    pub fn take_dirty(&self, tenants: &TenantHolds, unix: u64) -> Option<String> {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !std::mem::take(&mut i.dirty) {
            return None;
        }
        let live = |t: Option<u64>| t.is_some_and(|t| t > unix);
        i.budgets.retain(|_, s| live(s.suspended_until) || live(s.rate_until));
        let file = SavedFile {
            tenants: tenants
                .all(unix)
                .into_iter()
                .map(|(tenant, until, why)| SavedTenant { tenant, until, why })
                .collect(),
            budgets: i
                .budgets
                .iter()
                .map(|((source, key), state)| SavedBudget {
                    source: source.clone(),
                    key: key.clone(),
                    state: state.clone(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&file).ok()
    }

    /// Loads a saved file: tenant holds into `tenants`, budgets kept for
    /// [`SavedAutomation::get`]; what ended before `unix` is dropped.
    /// Returns the budget suspensions in force (source, key, until, why)
    /// for `/queue`.
    pub fn load(
        &self,
        json: &str,
        tenants: &TenantHolds,
        unix: u64,
    ) -> Result<Vec<(String, String, u64, String)>, String> {
        let file: SavedFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for t in file.tenants.into_iter().take(MAX_TENANT_HOLDS) {
            if t.until > unix {
                tenants.hold(&t.tenant, t.until, &t.why, unix);
            }
        }
        let mut suspended = Vec::new();
        for b in file.budgets.into_iter().take(MAX_SAVED_BUDGETS) {
            let live = |t: Option<u64>| t.is_some_and(|t| t > unix);
            if !(live(b.state.suspended_until) || live(b.state.rate_until)) {
                continue;
            }
            if let Some(until) = b.state.suspended_until.filter(|&t| t > unix) {
                suspended.push((b.source.clone(), b.key.clone(), until, b.state.why.clone()));
            }
            i.budgets.insert((b.source, b.key), b.state);
        }
        Ok(suspended)
    }
}

/// A reply cut to a length fit for a log line or `/queue`.
fn short(reply: &str) -> String {
    let mut end = reply.len().min(200);
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    reply[..end].to_owned()
}

/// When a message may start at `rate`, given when the last one was due
/// (`next`): returns (start at, next due).
pub fn pace(next: Instant, now: Instant, rate: Option<Rate>) -> (Instant, Instant) {
    match rate {
        None => (now, now),
        Some(r) => {
            let at = next.max(now);
            (at, at + r.interval())
        }
    }
}

#[cfg(test)]
mod tests;

/// Tenants held by `scope = "tenant"` automation, shared by every worker:
/// tenant -> (until, Unix seconds; why). Pure: time comes in.
#[derive(Debug, Default)]
pub struct TenantHolds {
    held: std::sync::Mutex<std::collections::BTreeMap<String, (u64, String)>>,
}

/// Most tenants held at once (tenant names come from mail headers; the
/// map must stay bounded). Past it, the hold that ends first is dropped.
pub const MAX_TENANT_HOLDS: usize = 10_000;

impl TenantHolds {
    /// Holds `tenant` until `until` (extends, never shortens).
    pub fn hold(&self, tenant: &str, until: u64, why: &str, now: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|_, (t, _)| *t > now);
        if held.get(tenant).is_some_and(|(t, _)| *t >= until) {
            return;
        }
        if held.len() >= MAX_TENANT_HOLDS && !held.contains_key(tenant) {
            if let Some(first) = held.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone()) {
                held.remove(&first);
            }
        }
        held.insert(tenant.to_owned(), (until, why.to_owned()));
    }

    /// Whether `tenant` is held now: until when, and why.
    pub fn held(&self, tenant: &str, now: u64) -> Option<(u64, String)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(tenant).filter(|(t, _)| *t > now).cloned()
    }

    /// Every hold in force.
    pub fn all(&self, now: u64) -> Vec<(String, u64, String)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().filter(|(_, (t, _))| *t > now).map(|(k, (t, w))| (k.clone(), *t, w.clone())).collect()
    }
}
