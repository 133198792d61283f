//! The destinations a worker owns: per source and next hop, a ready queue
//! and a backoff while it cannot be reached; connections are reused for
//! every queued job of the destination. Destinations share a budget (per
//! source and shaping key, see `shaping`): its connection limit, messages
//! per connection, message rate and automation state (suspensions, rate
//! changes). A worker owns whole budgets (jobs go to the worker by hash of
//! the budget's key), so budgets need no locks.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::egress::Source;
use super::outbound::{outgoing, Outbound};
use super::route::NextHop;
use super::shaping::{self, AutoState, Automation, Limits};
use super::{outcome_of, status_of, Cause, Job, JobResult, Outcome, RcptOutcome, Reach, Via};
use crate::metrics::{inc, Metrics};
use crate::rt::clock::{instant, unix_millis, unix_secs};
use crate::rt::live::Live;

/// How long an idle connection waits for another job before QUIT.
const IDLE: Duration = Duration::from_millis(500);
/// A connection lease on Redis lives this long unless renewed (a node that
/// dies holding one gives it back by expiry).
const LEASE_TTL: Duration = Duration::from_secs(30);
/// Renewed at least this often while the connection lives.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Asked again this often while every lease is taken.
const LEASE_RETRY: Duration = Duration::from_millis(200);

/// Where results go: (owner worker, result).
pub type Reporter = Rc<dyn Fn(usize, JobResult)>;

struct Dest {
    hop: RefCell<Arc<NextHop>>,
    source: Option<Arc<Source>>,
    budget: Rc<Budget>,
    queue: RefCell<VecDeque<Job>>,
    active: Cell<usize>,
    backoff_until: Cell<Option<Instant>>,
    idle: RefCell<Vec<Waker>>,
}

/// What destinations of one source and shaping key share.
struct Budget {
    /// Source name ("" for the default address) and shaping key.
    source: String,
    shape_key: String,
    /// Whether a `[[shaping]]` rule made it (else the next hop's own).
    ruled: Cell<bool>,
    limits: RefCell<Limits>,
    automation: RefCell<Vec<Automation>>,
    auto: RefCell<AutoState>,
    active: Cell<usize>,
    /// Rate limit: the earliest time the next message may start.
    next_send: Cell<Instant>,
    /// Keys of the destinations in this budget.
    dests: RefCell<Vec<String>>,
}

impl Budget {
    fn suspended(&self, now: Instant) -> Option<(Instant, String)> {
        self.auto.borrow().suspended(now).map(|(t, why)| (t, why.to_owned()))
    }

    /// The budget as metrics and logs name it.
    fn label(&self) -> (String, String) {
        let dest = if self.ruled.get() { self.shape_key.clone() } else { "other".to_owned() };
        let source = if self.source.is_empty() { "default".to_owned() } else { self.source.clone() };
        (source, dest)
    }
}

impl Dest {
    fn wake_idle(&self) {
        for w in self.idle.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A worker's destinations.
pub struct Destinations {
    /// Delivery settings, read when a connection starts or a job is paced.
    live: Arc<Live>,
    tls: Arc<ClientConfig>,
    spool_dir: PathBuf,
    report: Reporter,
    metrics: Arc<Metrics>,
    /// `[redis]`: limits of `shared = true` budgets kept there.
    redis: Option<Arc<crate::redis::client::Shared>>,
    /// Leases taken by this worker (their names).
    leases: Cell<u64>,
    map: RefCell<HashMap<String, Rc<Dest>>>,
    budgets: RefCell<HashMap<String, Rc<Budget>>>,
    draining: Cell<bool>,
    /// Connections open now.
    open: Cell<usize>,
    drained: RefCell<Option<Waker>>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations")
            .field("count", &self.map.borrow().len())
            .field("connections", &self.open.get())
            .finish()
    }
}

impl Destinations {
    pub fn new(
        live: Arc<Live>,
        tls: Arc<ClientConfig>,
        spool_dir: PathBuf,
        report: Reporter,
        metrics: Arc<Metrics>,
        redis: Option<Arc<crate::redis::client::Shared>>,
    ) -> Rc<Destinations> {
        Rc::new(Destinations {
            live,
            tls,
            spool_dir,
            report,
            metrics,
            redis,
            leases: Cell::new(0),
            map: RefCell::new(HashMap::new()),
            budgets: RefCell::new(HashMap::new()),
            draining: Cell::new(false),
            open: Cell::new(0),
            drained: RefCell::new(None),
        })
    }

    /// Outbound connections open now.
    pub fn connections(&self) -> usize {
        self.open.get()
    }

    /// Forgets every destination's backoff (an admin flush: the operator
    /// says the receiver is back). Destinations with queued jobs start.
    /// Returns how many were backing off.
    pub fn clear_backoff(self: &Rc<Self>) -> usize {
        let dests: Vec<(String, Rc<Dest>)> =
            self.map.borrow().iter().map(|(k, d)| (k.clone(), d.clone())).collect();
        let mut cleared = 0;
        for (key, dest) in dests {
            cleared += usize::from(dest.backoff_until.take().is_some());
            self.maybe_start(&key, &dest);
        }
        cleared
    }

    /// The budget of `job`, made if new; its limits and rules follow the
    /// job's (so a reload applies to the next job).
    fn budget(&self, job: &Job, now: Instant) -> Rc<Budget> {
        let budget = self
            .budgets
            .borrow_mut()
            .entry(job.budget())
            .or_insert_with(|| {
                let source = job.source.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                // What automation had in force before a restart.
                let auto = match self.metrics.automation.get(&source, &job.shape.key) {
                    Some(saved) => AutoState::restore(&saved, now, unix_secs()),
                    None => AutoState::default(),
                };
                Rc::new(Budget {
                    source,
                    shape_key: job.shape.key.clone(),
                    ruled: Cell::new(false),
                    limits: RefCell::new(job.shape.limits.clone()),
                    automation: RefCell::new(Vec::new()),
                    auto: RefCell::new(auto),
                    active: Cell::new(0),
                    next_send: Cell::new(now),
                    dests: RefCell::new(Vec::new()),
                })
            })
            .clone();
        budget.ruled.set(job.shape.rule.is_some());
        *budget.limits.borrow_mut() = job.shape.limits.clone();
        *budget.automation.borrow_mut() =
            job.shape.rule.as_ref().map(|r| r.automation.clone()).unwrap_or_default();
        budget
    }

    /// Takes a job for one of our destinations.
    pub fn submit(self: &Rc<Self>, job: Job) {
        let now = instant();
        let key = job.destination();
        let budget = self.budget(&job, now);
        let dest = self
            .map
            .borrow_mut()
            .entry(key.clone())
            .or_insert_with(|| {
                Rc::new(Dest {
                    hop: RefCell::new(job.hop.clone()),
                    source: job.source.clone(),
                    budget: budget.clone(),
                    queue: RefCell::new(VecDeque::new()),
                    active: Cell::new(0),
                    backoff_until: Cell::new(None),
                    idle: RefCell::new(Vec::new()),
                })
            })
            .clone();
        *dest.hop.borrow_mut() = job.hop.clone();
        if !budget.dests.borrow().contains(&key) {
            budget.dests.borrow_mut().push(key.clone());
        }
        if self.draining.get() {
            return self.fail(job, "4.3.2", "the server is shutting down");
        }
        if let Some((until, why)) = budget.suspended(now) {
            return self.fail_held(job, &budget, until, &why);
        }
        if let Some(until) = dest.backoff_until.get().filter(|&t| t > now) {
            return self.fail_down(
                job,
                until,
                &format!("{key} was unreachable moments ago; not trying again yet"),
            );
        }
        dest.queue.borrow_mut().push_back(job);
        dest.wake_idle();
        self.maybe_start(&key, &dest);
    }

    fn fail(&self, job: Job, status: &str, text: &str) {
        self.fail_with(job, status, text, Reach::Unknown);
    }

    /// Defers a job whose destination cannot be reached before `until`:
    /// its owner parks the domain's other mail meanwhile.
    fn fail_down(&self, job: Job, until: Instant, text: &str) {
        let left = until.saturating_duration_since(instant()).as_millis() as u64;
        // In whole seconds, rounded up: not tried again before the backoff ends.
        let until = (unix_millis() + left).div_ceil(1000);
        self.fail_with(job, "4.4.1", text, Reach::Down { until });
    }

    fn fail_with(&self, job: Job, status: &str, text: &str, reach: Reach) {
        // Attempts that failed temporarily, as counted for replies.
        self.metrics.deferred.fetch_add(job.rcpts.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let outcomes = RcptOutcome::all(&job.rcpts, Outcome::Temporary, status, text);
        (self.report)(job.owner, JobResult { id: job.id, domain: job.domain, outcomes, reach });
    }

    /// Defers a job of a suspended budget: not to be tried before the
    /// suspension ends (the owner's retry waits for it).
    fn fail_held(&self, job: Job, budget: &Budget, until: Instant, why: &str) {
        let left = until.saturating_duration_since(instant());
        let text = format!(
            "{} from {}: suspended for {}s more ({why})",
            budget.shape_key,
            budget.label().0,
            left.as_secs()
        );
        let not_before = unix_secs() + left.as_secs() + 1;
        let mut outcomes = RcptOutcome::all(&job.rcpts, Outcome::Temporary, "4.7.0", &text);
        for o in &mut outcomes {
            o.not_before = Some(not_before);
        }
        (self.report)(job.owner, JobResult::new(job.id, job.domain, outcomes));
    }

    /// Defers every queued job of a budget that was just suspended.
    fn hold_budget(&self, budget: &Budget, until: Instant, why: &str) {
        let keys = budget.dests.borrow().clone();
        for key in keys {
            let Some(dest) = self.map.borrow().get(&key).cloned() else { continue };
            let jobs: Vec<Job> = dest.queue.borrow_mut().drain(..).collect();
            for job in jobs {
                self.fail_held(job, budget, until, why);
            }
            dest.wake_idle();
        }
    }

    /// Opens connections while jobs wait and the budget allows.
    fn maybe_start(self: &Rc<Self>, key: &str, dest: &Rc<Dest>) {
        let budget = &dest.budget;
        if budget.suspended(instant()).is_some() {
            return;
        }
        let limit = self.connection_limit(budget);
        while budget.active.get() < limit && dest.active.get() < dest.queue.borrow().len() {
            dest.active.set(dest.active.get() + 1);
            budget.active.set(budget.active.get() + 1);
            self.open.set(self.open.get() + 1);
            monoio::spawn(self.clone().connection(key.to_owned(), dest.clone()));
        }
    }

    /// Connections this worker may open for `budget`: its limit, or, for a
    /// shared budget while Redis is away, this node's share of it (the
    /// leases on Redis keep the total otherwise).
    fn connection_limit(&self, budget: &Budget) -> usize {
        let l = budget.limits.borrow();
        let limit = l.connections.max(1);
        match &self.redis {
            Some(r) if l.shared && !r.client.up() => (limit / r.nodes.max(1) as usize).max(1),
            _ => limit,
        }
    }

    /// A connection of `budget` ended: its destinations with waiting jobs
    /// may start one.
    fn kick(self: &Rc<Self>, budget: &Budget) {
        let keys = budget.dests.borrow().clone();
        for key in keys {
            let dest = self.map.borrow().get(&key).cloned();
            if let Some(dest) = dest {
                if !dest.queue.borrow().is_empty() && dest.backoff_until.get().is_none() {
                    self.maybe_start(&key, &dest);
                }
            }
        }
    }

    /// Feeds a reply to the budget's automation. Returns whether it says to
    /// bounce the recipient; a suspension it starts defers what is queued.
    fn react(&self, budget: &Budget, reply: &str, tenant: Option<&str>) -> bool {
        let automation = budget.automation.borrow();
        if automation.is_empty() {
            return false;
        }
        let now = instant();
        let mut reaction = budget.auto.borrow_mut().on_reply(&automation, reply, now);
        drop(automation);
        if let Some((duration, why)) = reaction.suspend_tenant.take() {
            match tenant {
                Some(t) => {
                    let until = unix_secs() + duration.as_secs();
                    self.metrics.tenant_holds.hold(t, until, &why, unix_secs());
                    self.metrics.automation.touch();
                    tracing::warn!(target: "delivery", tenant = %t, seconds = duration.as_secs(), reason = %why,
                        "shaping automation: tenant suspended");
                }
                // Mail of no tenant: hold the destination instead.
                None => {
                    budget.auto.borrow_mut().suspend(now + duration, why);
                    reaction
                        .started
                        .push(format!("suspended for {}s (no tenant to hold)", duration.as_secs()));
                }
            }
        }
        if !reaction.started.is_empty() {
            let saved = budget.auto.borrow().save(now, unix_secs());
            self.metrics.automation.put(&budget.source, &budget.shape_key, saved);
            let (source, dest) = budget.label();
            tracing::warn!(target: "delivery", source = %source, destination = %budget.shape_key,
                action = %reaction.started.join(", "), reply = %reply, "shaping automation");
            if let Some((until, why)) = budget.suspended(now) {
                let until_unix = unix_secs() + until.saturating_duration_since(now).as_secs();
                let mut s = self.metrics.suspensions.lock().unwrap_or_else(|p| p.into_inner());
                s.insert((source, dest), (until_unix, why.clone()));
                drop(s);
                self.hold_budget(budget, until, &why);
            }
        }
        reaction.bounce
    }

    /// One connection: open, send queued jobs, QUIT.
    async fn connection(self: Rc<Self>, key: String, dest: Rc<Dest>) {
        let hop = dest.hop.borrow().clone();
        let cfg = self.live.delivery();
        let budget = dest.budget.clone();
        let lease = self.lease(&budget).await;
        let mut sessions = Vec::new();
        let opened = match &lease {
            // Shutting down while waiting for a lease.
            Err(()) => Err(None),
            Ok(_) => Outbound::open(&hop, dest.source.as_deref(), &cfg, &self.tls, &mut sessions)
                .await
                .map_err(Some),
        };
        // TLS report sessions count for each recipient domain this
        // connection served (or failed to).
        let mut reported: Vec<String> = Vec::new();
        let mut report_for = |domain: &str| {
            if sessions.is_empty() || reported.iter().any(|d| d == domain) {
                return;
            }
            reported.push(domain.to_string());
            let mut agg = self.metrics.tls_report.lock().unwrap_or_else(|p| p.into_inner());
            for (policy, session) in &sessions {
                agg.record(domain, policy, session);
            }
        };
        match opened {
            Err(None) => {}
            Err(Some(e)) if hop.requiretls && e.tls_only => {
                // Reachable, but not over the TLS REQUIRETLS mail needs
                // (RFC 8689 §4.2.1): such mail is returned, not retried.
                tracing::warn!(target: "delivery", destination = %key, error = %e.text, "no verified TLS for REQUIRETLS mail");
                let text = format!("no next hop with verified TLS: {}", e.text);
                let jobs: Vec<Job> = dest.queue.borrow_mut().drain(..).collect();
                for job in jobs {
                    report_for(&job.domain);
                    self.metrics
                        .bounced
                        .fetch_add(job.rcpts.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let outcomes = RcptOutcome::all(&job.rcpts, Outcome::Permanent, "5.7.10", &text);
                    (self.report)(job.owner, JobResult::new(job.id, job.domain, outcomes));
                }
            }
            Err(Some(e)) => {
                tracing::warn!(target: "delivery", destination = %key, error = %e.text, "destination unreachable");
                // A greeting like 421 4.7.0 [TSS04] is a reply too.
                self.react(&budget, &e.text, None);
                let until = instant() + cfg.destination_backoff;
                dest.backoff_until.set(Some(until));
                let jobs: Vec<Job> = dest.queue.borrow_mut().drain(..).collect();
                for job in jobs {
                    report_for(&job.domain);
                    self.fail_down(job, until, &e.text);
                }
            }
            Ok(mut conn) => {
                dest.backoff_until.set(None);
                let mut sent = 0;
                let mut alive = true;
                let per_connection = budget.limits.borrow().messages_per_connection.max(1);
                let mut renewed = instant();
                while sent < per_connection && !self.draining.get() && budget.suspended(instant()).is_none() {
                    let Some(job) = next_job(&dest).await else { break };
                    if let Ok(Some(name)) = &lease {
                        if renewed.elapsed() >= LEASE_RENEW {
                            self.renew(&budget, name).await;
                            renewed = instant();
                        }
                    }
                    self.pace(&budget).await;
                    report_for(&job.domain);
                    alive = self.deliver(&mut conn, &budget, job).await;
                    sent += 1;
                    if !alive {
                        break;
                    }
                }
                if alive {
                    conn.quit().await;
                }
            }
        }
        if let Ok(Some(name)) = &lease {
            self.release(&budget, name).await;
        }
        dest.active.set(dest.active.get() - 1);
        budget.active.set(budget.active.get() - 1);
        self.open.set(self.open.get() - 1);
        if !self.draining.get() {
            self.kick(&budget);
        }
        if dest.active.get() == 0 && dest.queue.borrow().is_empty() && dest.backoff_until.get().is_none() {
            self.map.borrow_mut().remove(&key);
            budget.dests.borrow_mut().retain(|k| *k != key);
            // Budgets of a rule keep their automation state; others go.
            if budget.dests.borrow().is_empty() && budget.active.get() == 0 && !budget.ruled.get() {
                self.budgets.borrow_mut().remove(&format!("{}@{}", budget.source, budget.shape_key));
            }
        }
        if self.open.get() == 0 {
            if let Some(w) = self.drained.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Waits for the budget's rate (the configured one, or a lower one
    /// automation set).
    async fn pace(&self, budget: &Budget) {
        let now = instant();
        let mut rate = budget.auto.borrow().rate(now, budget.limits.borrow().rate);
        // Not held across the await below: another task may set the limits.
        let shared = budget.limits.borrow().shared;
        if let (true, Some(r), Some(redis)) = (shared, rate, &self.redis) {
            match self.shared_pace(budget, r, redis).await {
                Ok(()) => {
                    // Redis paced it; the local pace starts from here.
                    budget.next_send.set(instant());
                    return;
                }
                // Redis away: this node's share of the rate, locally.
                Err(_) => rate = Some(r.share(redis.nodes)),
            }
        }
        let (at, next) = shaping::pace(budget.next_send.get(), now, rate);
        budget.next_send.set(next);
        if at > now {
            monoio::time::sleep_until(at.into()).await;
        }
    }

    /// Waits until Redis's GCRA for the budget lets a message go (every
    /// node's messages count). Err when Redis cannot answer.
    async fn shared_pace(
        &self,
        budget: &Budget,
        rate: shaping::Rate,
        redis: &crate::redis::client::Shared,
    ) -> Result<(), String> {
        let key =
            crate::redis::key(&redis.prefix, "rate", &format!("{}@{}", budget.source, budget.shape_key));
        let c = &redis.client;
        loop {
            let q = crate::redis::throttle(&key, rate.interval(), Duration::ZERO, c.cell(), &c.gcra_sha);
            let answers = c.call(vec![q]).await?;
            let first = answers.first().ok_or("no answer")?;
            match crate::redis::throttle_answer(first, c.cell())? {
                None => return Ok(()),
                Some(wait) => monoio::time::sleep(wait.min(Duration::from_secs(60))).await,
            }
            if self.draining.get() {
                return Ok(());
            }
        }
    }

    /// A connection lease of a shared budget: waits until one is free on
    /// Redis. `Ok(None)`: not shared, or Redis is away (then
    /// [`Destinations::connection_limit`] keeps this node to its share);
    /// `Ok(Some(name))`: the lease held; `Err(())`: shutting down.
    async fn lease(&self, budget: &Budget) -> Result<Option<String>, ()> {
        let (shared, limit) = {
            let l = budget.limits.borrow();
            (l.shared, l.connections.max(1))
        };
        let Some(redis) = self.redis.as_ref().filter(|_| shared) else { return Ok(None) };
        let key =
            crate::redis::key(&redis.prefix, "conn", &format!("{}@{}", budget.source, budget.shape_key));
        self.leases.set(self.leases.get() + 1);
        let name = format!("{}:{}", redis.node, self.leases.get());
        loop {
            let q = crate::redis::lease(&key, limit, &name, LEASE_TTL, &redis.client.lease_sha);
            let answer = redis.client.call(vec![q]).await;
            match answer.and_then(|a| crate::redis::lease_answer(a.first().ok_or("no answer")?)) {
                Ok(true) => return Ok(Some(name)),
                Ok(false) if !self.draining.get() => monoio::time::sleep(LEASE_RETRY).await,
                Ok(false) => return Err(()),
                Err(_) => return Ok(None),
            }
        }
    }

    /// Renews a held lease (between messages).
    async fn renew(&self, budget: &Budget, name: &str) {
        let Some(redis) = &self.redis else { return };
        let key =
            crate::redis::key(&redis.prefix, "conn", &format!("{}@{}", budget.source, budget.shape_key));
        let limit = budget.limits.borrow().connections.max(1);
        let _ = redis
            .client
            .call(vec![crate::redis::lease(&key, limit, name, LEASE_TTL, &redis.client.lease_sha)])
            .await;
    }

    /// Gives a lease back.
    async fn release(&self, budget: &Budget, name: &str) {
        let Some(redis) = &self.redis else { return };
        let key =
            crate::redis::key(&redis.prefix, "conn", &format!("{}@{}", budget.source, budget.shape_key));
        let _ = redis.client.call(vec![crate::redis::cmd(&["ZREM", key.as_str(), name])]).await;
    }

    /// Defers a job whose tenant automation holds; false if it is not held.
    fn hold_tenant_job(&self, job: &Job) -> bool {
        let Some(tenant) = job.tenant.as_deref() else { return false };
        let Some((until, why)) = self.metrics.tenant_holds.held(tenant, unix_secs()) else { return false };
        let text =
            format!("tenant {tenant} is suspended for {}s more ({why})", until.saturating_sub(unix_secs()));
        let mut outcomes = RcptOutcome::all(&job.rcpts, Outcome::Temporary, "4.7.0", &text);
        for o in &mut outcomes {
            o.not_before = Some(until + 1);
        }
        (self.report)(job.owner, JobResult::new(job.id, job.domain.clone(), outcomes));
        true
    }

    /// Sends one job; reports its result. False if the connection died.
    async fn deliver(&self, conn: &mut Outbound, budget: &Budget, job: Job) -> bool {
        // Queued before its tenant was held: not sent.
        if self.hold_tenant_job(&job) {
            return true;
        }
        let started = instant();
        let (env, content) = match crate::spool::read::read_message(&self.spool_dir, job.family, job.loc)
            .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(target: "delivery", id = %job.id, error = %e, "cannot read the spooled message");
                self.fail(job, "4.3.0", &format!("cannot read the spooled message: {e}"));
                return true;
            }
        };
        let msg = outgoing(&env, &job.rcpts, &content);
        let remote = format!("{}[{}]:{}", conn.host, conn.addr.ip(), conn.addr.port());
        let tls = conn.tls.as_ref().map_or("none".to_owned(), |t| format!("{} {}", t.version, t.cipher));
        let via = Arc::new(Via {
            source: job.source.as_ref().map(|s| s.name.clone()),
            next_hop: remote.clone(),
            tls: conn.tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher)),
        });
        // With [feedback], each copy carries a signed reference, so a
        // complaint about it can be tied back (not signed by DKIM: added
        // on the way out, above the stored message).
        let reference = self.live.delivery().feedback.as_ref().map(|f| {
            let recipient = match job.rcpts.as_slice() {
                [one] => env.recipients.get(*one as usize).map(|r| r.address.to_string()),
                _ => None,
            };
            f.ref_field(&crate::feedback::token::Ref {
                id: job.id.to_string(),
                recipient,
                tenant: env.tenant.clone(),
                campaign: env.campaign.clone(),
            })
        });
        let (mut outcomes, alive) =
            match conn.send(msg, reference.as_deref().unwrap_or_default(), &content).await {
                Ok(results) => {
                    let dsn = conn.remote_dsn();
                    let outcomes = results
                        .into_iter()
                        .filter_map(|r| {
                            let index = *job.rcpts.get(r.index)?;
                            Some(RcptOutcome {
                                index,
                                outcome: outcome_of(r.reply.code),
                                status: status_of(r.reply.code, r.reply.enhanced()),
                                text: r.reply.one_line(),
                                remote: Some(conn.host.clone()),
                                remote_dsn: dsn,
                                not_before: None,
                                code: Some(r.reply.code),
                                via: Some(via.clone()),
                                cause: Cause::Reply,
                                class: None,
                            })
                        })
                        .collect();
                    (outcomes, true)
                }
                Err(f) => {
                    let text = format!("{remote}: {f}");
                    let mut outcomes = RcptOutcome::all(&job.rcpts, Outcome::Temporary, "4.4.2", &text);
                    for o in &mut outcomes {
                        o.via = Some(via.clone());
                    }
                    (outcomes, false)
                }
            };
        for o in outcomes.iter_mut().filter(|o| o.outcome != Outcome::Delivered) {
            if self.react(budget, &o.text, job.tenant.as_deref()) && o.outcome == Outcome::Temporary {
                o.outcome = Outcome::Permanent;
                o.status.replace_range(..1, "5");
                o.text.push_str(" (bounced by shaping automation)");
            }
        }
        self.count(budget, &outcomes);
        let ms = started.elapsed().as_millis() as u64;
        for o in &outcomes {
            let rcpt =
                env.recipients.get(o.index as usize).map(|r| r.address.to_string()).unwrap_or_default();
            let status = match o.outcome {
                Outcome::Delivered => "sent",
                Outcome::Temporary => "deferred",
                Outcome::Permanent => "bounced",
            };
            tracing::info!(target: "delivery", id = %job.id, to = %rcpt, relay = %remote, tls = %tls, status,
                reply = %o.text, duration_ms = ms, "attempt");
            inc(match o.outcome {
                Outcome::Delivered => &self.metrics.delivered,
                Outcome::Temporary => &self.metrics.deferred,
                Outcome::Permanent => &self.metrics.bounced,
            });
        }
        (self.report)(
            job.owner,
            JobResult { id: job.id, domain: job.domain, outcomes, reach: Reach::Reached },
        );
        alive
    }

    /// Per (source, budget) outcome counters for `/metrics`.
    fn count(&self, budget: &Budget, outcomes: &[RcptOutcome]) {
        let mut egress = self.metrics.egress.lock().unwrap_or_else(|p| p.into_inner());
        let c = egress.entry(budget.label()).or_default();
        for o in outcomes {
            match o.outcome {
                Outcome::Delivered => c.delivered += 1,
                Outcome::Temporary => c.deferred += 1,
                Outcome::Permanent => c.bounced += 1,
            }
        }
    }

    /// Stops taking jobs; queued jobs are returned as deferred. Resolves when
    /// every connection has finished its message and closed.
    pub async fn drain(&self) {
        self.draining.set(true);
        let dests: Vec<Rc<Dest>> = self.map.borrow().values().cloned().collect();
        for d in dests {
            let jobs: Vec<Job> = d.queue.borrow_mut().drain(..).collect();
            for job in jobs {
                self.fail(job, "4.3.2", "the server is shutting down");
            }
            d.wake_idle();
        }
        poll_fn(|cx| {
            if self.open.get() == 0 {
                return Poll::Ready(());
            }
            *self.drained.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// The next job of `dest`, waiting up to [`IDLE`] for one to arrive.
async fn next_job(dest: &Dest) -> Option<Job> {
    if let Some(job) = dest.queue.borrow_mut().pop_front() {
        return Some(job);
    }
    let wait = poll_fn(|cx| {
        if !dest.queue.borrow().is_empty() {
            return Poll::Ready(());
        }
        dest.idle.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    });
    let _ = monoio::time::timeout(IDLE, wait).await;
    dest.queue.borrow_mut().pop_front()
}
