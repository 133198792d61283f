//! The owner side of delivery: one per worker, for the messages in that
//! worker's spool family. It plans attempts, collects per-recipient results,
//! queues DSNs, records progress durably and schedules retries in a timer
//! wheel. The destination side is `dest`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::dsn::{self, Action, Report};
use super::local::{self, LocalError};
use super::route::{self, HopError};
use super::wheel::Wheel;
use super::{DeliveryConfig, Job, JobResult, Outcome, RcptOutcome};
use crate::dns::Resolver;
use crate::envelope::{BodyType, Envelope, QueueId, Recipient};
use crate::metrics::{inc, Metrics};
use crate::rt::clock::unix_secs;
use crate::rt::live::Live;
use crate::smtp::address::ReversePath;
use crate::smtp::session::IdSource;
use crate::spool::index::Location;
use crate::spool::record::{bounded_text, ProgressRecord, MAX_LAST_ERROR};
use crate::spool::{Compaction, Spool};

/// Planner tasks per worker (each resolves one message's next hops at a time).
const PLANNERS: usize = 64;
/// Attempts in flight per worker before planning pauses.
const MAX_IN_FLIGHT: usize = 100_000;

/// Sends a job to the worker that owns its destination.
pub type Dispatcher = Rc<dyn Fn(Job)>;

/// What `/queue` shows per domain.
#[derive(Debug, Clone, Default)]
pub struct DomainStatus {
    pub next_attempt: Option<u64>,
    pub last_error: Option<String>,
}

/// One attempt in progress.
struct Attempt {
    env: Rc<Envelope>,
    loc: Location,
    attempts_before: u32,
    groups_left: usize,
    outcomes: Vec<RcptOutcome>,
}

/// A message queued for the admin listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: QueueId,
    pub received_at: u64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub attempts: u32,
    pub next_attempt: Option<u64>,
    pub last_error: Option<String>,
}

/// The per-worker owner.
pub struct Owner {
    pub index: usize,
    /// Delivery settings: read when an attempt is planned or finished.
    live: Arc<Live>,
    /// `[delivery] hold` at startup (a restart changes it).
    hold: bool,
    spool: Spool,
    resolver: Resolver,
    dispatch: Dispatcher,
    ids: IdSource,
    metrics: Arc<Metrics>,
    wheel: RefCell<Wheel<QueueId>>,
    todo: RefCell<VecDeque<(QueueId, Option<Rc<Envelope>>)>>,
    todo_wakers: RefCell<Vec<Waker>>,
    attempts: RefCell<HashMap<QueueId, Attempt>>,
    domains: RefCell<HashMap<String, DomainStatus>>,
    /// Messages whose attempt is being finalized (not in `attempts` any more).
    finalizing: RefCell<std::collections::HashSet<QueueId>>,
    draining: Cell<bool>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("index", &self.index)
            .field("in_flight", &self.attempts.borrow().len())
            .finish()
    }
}

impl Owner {
    pub fn new(
        index: usize,
        live: Arc<Live>,
        spool: Spool,
        resolver: Resolver,
        dispatch: Dispatcher,
        ids: IdSource,
        metrics: Arc<Metrics>,
    ) -> Rc<Owner> {
        let hold = live.delivery().hold;
        Rc::new(Owner {
            index,
            live,
            hold,
            spool,
            resolver,
            dispatch,
            ids,
            metrics,
            wheel: RefCell::new(Wheel::new(unix_secs())),
            todo: RefCell::new(VecDeque::new()),
            todo_wakers: RefCell::new(Vec::new()),
            attempts: RefCell::new(HashMap::new()),
            domains: RefCell::new(HashMap::new()),
            finalizing: RefCell::new(std::collections::HashSet::new()),
            draining: Cell::new(false),
        })
    }

    /// Delivery settings in force now.
    fn cfg(&self) -> Arc<DeliveryConfig> {
        self.live.delivery()
    }

    /// Schedules every recovered message and starts the planner and wheel
    /// tasks. With `hold`, nothing is scheduled: mail only accumulates.
    pub fn start(self: &Rc<Self>) {
        if self.hold {
            tracing::info!(worker = self.index, "delivery is on hold: accepting and queueing only");
            monoio::spawn(self.clone().compactor());
            return;
        }
        let now = unix_secs();
        let mut due = Vec::new();
        let mut later = Vec::new();
        self.spool.for_each_entry(|id, e| match e.progress.as_ref().map(|p| p.next_attempt) {
            Some(t) if t > now => later.push((t, id)),
            _ => due.push(id),
        });
        due.sort_unstable();
        {
            let mut wheel = self.wheel.borrow_mut();
            for (t, id) in later {
                wheel.insert(t, id);
            }
        }
        for id in due {
            self.push(id, None);
        }
        for _ in 0..PLANNERS {
            monoio::spawn(self.clone().planner());
        }
        monoio::spawn(self.clone().ticker());
        monoio::spawn(self.clone().compactor());
    }

    /// A message was just accepted: plan its first attempt (nothing on hold;
    /// the envelope is copied only when it will be used).
    pub fn enqueue_new(&self, env: &Envelope) {
        if !self.hold {
            self.push(env.id, Some(Rc::new(env.clone())));
        }
    }

    fn push(&self, id: QueueId, env: Option<Rc<Envelope>>) {
        self.todo.borrow_mut().push_back((id, env));
        if let Some(w) = self.todo_wakers.borrow_mut().pop() {
            w.wake();
        }
    }

    /// Messages waiting for a retry, and attempts in flight.
    pub fn counts(&self) -> (usize, usize) {
        (self.wheel.borrow().len(), self.attempts.borrow().len())
    }

    /// Per-domain next attempt and last error.
    pub fn domain_status(&self) -> HashMap<String, DomainStatus> {
        self.domains.borrow().clone()
    }

    /// Retries every deferred message now. Returns how many.
    pub fn flush(&self) -> usize {
        if self.hold {
            return 0;
        }
        let ids = self.wheel.borrow_mut().drain();
        let n = ids.len();
        for id in ids {
            self.push(id, None);
        }
        n
    }

    /// Stops planning new attempts (shutdown).
    pub fn stop(&self) {
        self.draining.set(true);
        for w in self.todo_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn next_todo(&self) -> Option<(QueueId, Option<Rc<Envelope>>)> {
        poll_fn(|cx| {
            if self.draining.get() {
                return Poll::Ready(None);
            }
            if self.attempts.borrow().len() < MAX_IN_FLIGHT {
                if let Some(item) = self.todo.borrow_mut().pop_front() {
                    return Poll::Ready(Some(item));
                }
            }
            self.todo_wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn planner(self: Rc<Self>) {
        while let Some((id, env)) = self.next_todo().await {
            self.plan(id, env).await;
        }
    }

    /// Moves due retries to the planners, once a second.
    async fn ticker(self: Rc<Self>) {
        while !self.draining.get() {
            let due = self.wheel.borrow_mut().poll(unix_secs());
            for id in due {
                self.push(id, None);
            }
            monoio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One attempt for a message: group its remaining recipients by domain
    /// and hand each group to local delivery or to its destination.
    async fn plan(self: &Rc<Self>, id: QueueId, env: Option<Rc<Envelope>>) {
        if self.attempts.borrow().contains_key(&id) {
            return;
        }
        let Some((loc, received_at, remaining, attempts_before)) = self.spool.with_entry(id, |e| {
            (
                e.loc,
                e.received_at,
                e.remaining().collect::<Vec<u32>>(),
                e.progress.as_ref().map_or(0, |p| p.attempts),
            )
        }) else {
            return; // finished or deleted meanwhile
        };
        let env = match env {
            Some(env) => env,
            None => {
                let (dir, family) = self.spool.family();
                match crate::spool::read::read_message(&dir, family, loc).await {
                    Ok((env, _)) => Rc::new(env),
                    Err(e) => {
                        tracing::error!(%id, error = %e, "cannot read a queued message; retrying later");
                        self.wheel.borrow_mut().insert(unix_secs() + 300, id);
                        return;
                    }
                }
            }
        };
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for i in remaining {
            if let Some(r) = env.recipients.get(i as usize) {
                groups.entry(r.address.domain().to_lowercase()).or_default().push(i);
            }
        }
        let cfg = self.cfg();
        let expired = unix_secs().saturating_sub(received_at) > cfg.max_age.as_secs();
        self.attempts.borrow_mut().insert(
            id,
            Attempt {
                env: env.clone(),
                loc,
                attempts_before,
                groups_left: groups.len(),
                outcomes: Vec::new(),
            },
        );
        for (domain, rcpts) in groups {
            if expired {
                let last = self
                    .spool
                    .with_entry(id, |e| e.progress.as_ref().map(|p| p.last_error.clone()))
                    .flatten();
                let text = format!(
                    "message expired after {} days in the queue; last error: {}",
                    cfg.max_age.as_secs() / 86_400,
                    last.as_deref().unwrap_or("none")
                );
                self.job_done(JobResult {
                    id,
                    domain,
                    outcomes: RcptOutcome::all(&rcpts, Outcome::Permanent, "4.4.7", &text),
                });
            } else if cfg.local_domains.contains(&domain) {
                monoio::spawn(self.clone().deliver_local(id, loc, domain, rcpts, env.clone()));
            } else {
                self.route_group(id, loc, domain, rcpts).await;
            }
        }
    }

    async fn route_group(self: &Rc<Self>, id: QueueId, loc: Location, domain: String, rcpts: Vec<u32>) {
        let cfg = self.cfg();
        match route::resolve(&self.resolver, &cfg.routes, &domain, cfg.port).await {
            Ok(hop) => {
                let (_, family) = self.spool.family();
                (self.dispatch)(Job {
                    owner: self.index,
                    family,
                    id,
                    loc,
                    rcpts,
                    domain,
                    hop: Arc::new(hop),
                });
            }
            Err(e) => {
                let (outcome, status, text) = match &e {
                    HopError::Permanent(status, text) => (Outcome::Permanent, *status, text.clone()),
                    HopError::Temporary(text) => (Outcome::Temporary, "4.4.3", text.clone()),
                };
                tracing::info!(target: "delivery", %id, domain = %domain, status = ?outcome, reason = %text, "no next hop");
                self.job_done(JobResult {
                    id,
                    domain,
                    outcomes: RcptOutcome::all(&rcpts, outcome, status, &text),
                });
            }
        }
    }

    async fn deliver_local(
        self: Rc<Self>,
        id: QueueId,
        loc: Location,
        domain: String,
        rcpts: Vec<u32>,
        env: Rc<Envelope>,
    ) {
        let cfg = self.cfg();
        let (dir, family) = self.spool.family();
        let outcomes = match crate::spool::read::read_message(&dir, family, loc).await {
            Err(e) => RcptOutcome::all(
                &rcpts,
                Outcome::Temporary,
                "4.3.0",
                &format!("cannot read the spooled message: {e}"),
            ),
            Ok((_, body)) => {
                let body = Arc::new(body);
                let mut outcomes = Vec::new();
                for &i in &rcpts {
                    let Some(r) = env.recipients.get(i as usize) else { continue };
                    let (mail_dir, host, local) =
                        (cfg.mail_dir.clone(), cfg.hostname.clone(), r.address.local_part().to_owned());
                    let (dom, sender, body) = (domain.clone(), env.reverse_path.to_string(), body.clone());
                    let now = unix_secs();
                    let res = monoio::spawn_blocking(move || {
                        local::deliver(&mail_dir, &host, &dom, &local, &sender, &body, now)
                    })
                    .await;
                    let (outcome, status, text) = match res {
                        Ok(Ok(path)) => (
                            Outcome::Delivered,
                            "2.0.0".to_owned(),
                            format!("delivered to maildir {}", path.display()),
                        ),
                        Ok(Err(LocalError::Permanent(s, t))) => (Outcome::Permanent, s.to_owned(), t),
                        Ok(Err(LocalError::Temporary(t))) => (Outcome::Temporary, "4.3.0".to_owned(), t),
                        Err(_) => {
                            (Outcome::Temporary, "4.3.0".to_owned(), "local delivery task failed".to_owned())
                        }
                    };
                    tracing::info!(target: "delivery", %id, to = %r.address, relay = "local", status = ?outcome, reply = %text, "attempt");
                    inc(match outcome {
                        Outcome::Delivered => &self.metrics.delivered,
                        Outcome::Temporary => &self.metrics.deferred,
                        Outcome::Permanent => &self.metrics.bounced,
                    });
                    outcomes.push(RcptOutcome {
                        index: i,
                        outcome,
                        status,
                        text,
                        remote: None,
                        remote_dsn: false,
                    });
                }
                outcomes
            }
        };
        self.job_done(JobResult { id, domain, outcomes });
    }

    /// A destination (or local delivery) reports on one group.
    pub fn job_done(self: &Rc<Self>, r: JobResult) {
        let now = unix_secs();
        {
            let mut domains = self.domains.borrow_mut();
            let st = domains.entry(r.domain.clone()).or_default();
            if let Some(o) = r.outcomes.iter().find(|o| o.outcome != Outcome::Delivered) {
                st.last_error = Some(bounded_text(&format!("{} {}", o.status, o.text), MAX_LAST_ERROR));
            }
        }
        let finished = {
            let mut attempts = self.attempts.borrow_mut();
            let Some(a) = attempts.get_mut(&r.id) else { return };
            a.outcomes.extend(r.outcomes);
            a.groups_left = a.groups_left.saturating_sub(1);
            if a.groups_left > 0 {
                return;
            }
            attempts.remove(&r.id)
        };
        if let Some(a) = finished {
            self.finalizing.borrow_mut().insert(r.id);
            let owner = self.clone();
            monoio::spawn(async move {
                owner.clone().finalize(r.id, a, now).await;
                owner.finalizing.borrow_mut().remove(&r.id);
            });
        }
    }

    /// The attempt is over: DSNs first, then the durable record, then the retry.
    async fn finalize(self: Rc<Self>, id: QueueId, a: Attempt, now: u64) {
        let mut done: Vec<u32> =
            a.outcomes.iter().filter(|o| o.outcome != Outcome::Temporary).map(|o| o.index).collect();
        let reports = reports(&a.env, &a.outcomes);
        if !reports.is_empty() && !self.queue_dsn(&a.env, a.loc, &reports, now).await {
            // The DSN could not be stored: keep the failed recipients pending,
            // so they fail (and are reported) again at the next attempt.
            let failed: Vec<u32> =
                a.outcomes.iter().filter(|o| o.outcome == Outcome::Permanent).map(|o| o.index).collect();
            done.retain(|i| !failed.contains(i));
        }
        let temp: Vec<&RcptOutcome> = a.outcomes.iter().filter(|o| o.outcome == Outcome::Temporary).collect();
        let remaining_after =
            self.spool.with_entry(id, |e| e.remaining().filter(|i| !done.contains(i)).count()).unwrap_or(0);
        if remaining_after == 0 {
            let _ = self.spool.finish(id).await;
            self.wake_planners();
            return;
        }
        let attempts = a.attempts_before + 1;
        let received_at = a.env.received_at;
        let cfg = self.cfg();
        let expiry = received_at + cfg.max_age.as_secs();
        let next = (now + cfg.retry_after(attempts).as_secs()).min(expiry.max(now + 1));
        let last_error = temp.first().map(|o| format!("{} {}", o.status, o.text)).unwrap_or_default();
        for o in &temp {
            if let Some(r) = a.env.recipients.get(o.index as usize) {
                let mut domains = self.domains.borrow_mut();
                domains.entry(r.address.domain().to_lowercase()).or_default().next_attempt = Some(next);
            }
        }
        let record = ProgressRecord { id, attempts, next_attempt: next, last_error, done };
        if let Ok(Err(e)) = self.spool.progress(record).await {
            tracing::warn!(%id, error = %e, "could not record delivery progress; retrying anyway");
        }
        self.wheel.borrow_mut().insert(next, id);
        self.wake_planners();
    }

    /// Copies long-lived messages out of mostly-dead segments, so spent
    /// segments can be deleted (see the spool's durability order, step 10).
    async fn compactor(self: Rc<Self>) {
        const ROUND_BYTES: u64 = 64 << 20;
        while !self.draining.get() {
            monoio::time::sleep(Duration::from_secs(10)).await;
            let (dir, family) = self.spool.family();
            let mut budget = ROUND_BYTES;
            for work in self.spool.compaction_work() {
                let busy = |id: &QueueId| {
                    self.attempts.borrow().contains_key(id) || self.finalizing.borrow().contains(id)
                };
                match work {
                    Compaction::Copy { id, loc, progress } if !busy(&id) => {
                        if budget < u64::from(loc.len) {
                            break;
                        }
                        budget -= u64::from(loc.len);
                        match crate::spool::read::read_raw(&dir, family, loc).await {
                            Ok(raw) => {
                                let _ = self.spool.relocate(id, loc, &raw, progress).await;
                            }
                            Err(e) => tracing::error!(%id, error = %e, "cannot read a message to compact"),
                        }
                    }
                    Compaction::Progress(p) if !busy(&p.id) => {
                        let _ = self.spool.progress(p).await;
                    }
                    _ => {}
                }
            }
        }
    }

    fn wake_planners(&self) {
        if let Some(w) = self.todo_wakers.borrow_mut().pop() {
            w.wake();
        }
    }

    /// Builds and queues the DSN for `reports`. False if it could not be stored.
    async fn queue_dsn(&self, env: &Envelope, loc: Location, reports: &[Report], now: u64) -> bool {
        if matches!(env.reverse_path, ReversePath::Null) {
            return true; // never a DSN to <>: nothing to store
        }
        let (dir, family) = self.spool.family();
        let body = match crate::spool::read::read_message(&dir, family, loc).await {
            Ok((_, body)) => body,
            Err(e) => {
                tracing::error!(id = %env.id, error = %e, "cannot read the message to return in a DSN");
                return false;
            }
        };
        let dsn_id = self.ids.borrow_mut().next(now);
        let cfg = self.cfg();
        let Some(dsn) = dsn::build(&cfg.hostname, env, &body, reports, dsn_id, now) else { return true };
        let dsn_env = Envelope {
            id: dsn_id,
            received_at: now,
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient {
                address: dsn.to.clone(),
                notify: crate::envelope::Notify::default(),
                orcpt: None,
            }],
            body_type: if dsn.eight_bit { BodyType::EightBitMime } else { BodyType::SevenBit },
            smtputf8: !dsn.to.is_ascii(),
            ret: None,
            envid: None,
            client_ip: None,
            helo: cfg.hostname.clone(),
            auth_user: None,
        };
        match self.spool.append_message(&dsn_env, &dsn.body).await {
            Ok(Ok(_)) => {
                inc(&self.metrics.dsns);
                tracing::info!(target: "delivery", id = %env.id, dsn = %dsn_id, to = %dsn.to, "DSN queued");
                self.enqueue_new(&dsn_env);
                true
            }
            other => {
                tracing::warn!(id = %env.id, result = ?other.map(|r| r.map(|_| ())), "could not queue a DSN");
                false
            }
        }
    }

    /// Bounces every remaining recipient of `id` now (admin). False if unknown.
    pub async fn bounce(self: &Rc<Self>, id: QueueId) -> Result<bool, String> {
        let Some((loc, remaining, attempts_before)) = self.spool.with_entry(id, |e| {
            (e.loc, e.remaining().collect::<Vec<u32>>(), e.progress.as_ref().map_or(0, |p| p.attempts))
        }) else {
            return Ok(false);
        };
        let (dir, family) = self.spool.family();
        let (env, _) =
            crate::spool::read::read_message(&dir, family, loc).await.map_err(|e| e.to_string())?;
        let outcomes =
            RcptOutcome::all(&remaining, Outcome::Permanent, "5.0.0", "bounced by the administrator");
        let a = Attempt { env: Rc::new(env), loc, attempts_before, groups_left: 0, outcomes };
        self.attempts.borrow_mut().remove(&id);
        self.clone().finalize(id, a, unix_secs()).await;
        Ok(true)
    }

    /// Up to `limit` queued messages, oldest first, read from the spool.
    pub async fn list(&self, limit: usize) -> Vec<Listed> {
        type Row = (QueueId, Location, u64, Option<(u32, u64, String)>);
        let mut entries: Vec<Row> = Vec::new();
        self.spool.for_each_entry(|id, e| {
            let p = e.progress.as_ref().map(|p| (p.attempts, p.next_attempt, p.last_error.clone()));
            entries.push((id, e.loc, e.received_at, p));
        });
        entries.sort_unstable_by_key(|e| e.0);
        entries.truncate(limit);
        let (dir, family) = self.spool.family();
        let mut out = Vec::with_capacity(entries.len());
        for (id, loc, received_at, p) in entries {
            let Ok((env, _)) = crate::spool::read::read_message(&dir, family, loc).await else { continue };
            let remaining: Vec<u32> =
                self.spool.with_entry(id, |e| e.remaining().collect()).unwrap_or_default();
            out.push(Listed {
                id,
                received_at,
                sender: env.reverse_path.to_string(),
                recipients: remaining
                    .iter()
                    .filter_map(|&i| env.recipients.get(i as usize))
                    .map(|r| r.address.to_string())
                    .collect(),
                attempts: p.as_ref().map_or(0, |p| p.0),
                next_attempt: p.as_ref().map(|p| p.1),
                last_error: p.map(|p| p.2).filter(|e| !e.is_empty()),
            });
        }
        out
    }
}

/// The DSN reports due for an attempt's outcomes: failures, and successes
/// handed to a server that cannot report them itself.
fn reports(env: &Envelope, outcomes: &[RcptOutcome]) -> Vec<Report> {
    outcomes
        .iter()
        .filter_map(|o| {
            let recipient = env.recipients.get(o.index as usize)?.clone();
            let action = match o.outcome {
                Outcome::Permanent => Action::Failed,
                Outcome::Delivered if recipient.notify.success() && o.remote.is_none() => Action::Delivered,
                Outcome::Delivered if recipient.notify.success() && !o.remote_dsn => Action::Relayed,
                _ => return None,
            };
            Some(Report {
                recipient,
                action,
                status: o.status.clone(),
                diagnostic: o.text.clone(),
                remote_mta: o.remote.clone(),
            })
        })
        .collect()
}
