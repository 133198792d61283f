//! The owner side of delivery: one per worker, for the messages in that
//! worker's spool family. It plans attempts, collects per-recipient results,
//! queues DSNs, records progress durably and schedules retries in a timer
//! wheel. The destination side is `dest`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::classify::Class;
use super::decide::{self, Group, Rules, Settled, Way};
use super::dsn::{self, Report};
use super::egress::{self, Pick, Rotation};
use super::local::{self, LocalError};
use super::route;
use super::wheel::Wheel;
use super::{dane, mta_sts, sts_fetch, tlsrpt};

mod tls_reports;

use super::down::{Admit, Down, Keep};
use super::{Cause, DeliveryConfig, Job, JobResult, Outcome, RcptOutcome, Reach, Via};
use crate::dns::Resolver;
use crate::envelope::{BodyType, Envelope, QueueId, Recipient};
use crate::events::log::{EventLog, Finisher};
use crate::events::{Event, EventType, Response};
use crate::metrics::{inc, Metrics};
use crate::rt::clock::{unix_millis, unix_secs};
use crate::rt::live::Live;
use crate::smtp::address::ReversePath;
use crate::smtp::session::IdSource;
use crate::spool::index::Location;
use crate::spool::record::{bounded_text, ProgressRecord, MAX_LAST_ERROR};
use crate::spool::Spool;
use crate::suppress::{Reason, Store};
pub use tls_reports::load_sts_policies;

/// Unusable feedback reports kept for inspection, at most.
const MAX_REJECTED_REPORTS: usize = 1000;

/// Planner tasks per worker (each resolves one message's next hops at a time).
const PLANNERS: usize = 64;
/// Longest an MTA-STS policy fetch may take.
const STS_FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts in flight per worker before planning pauses.
const MAX_IN_FLIGHT: usize = 100_000;
/// Local deliveries (Maildir writes on the blocking pool) per worker at
/// once. Each holds its message in memory from the spool read until the
/// write is done, so the bound is on memory too: without it every local
/// message planned at once (up to MAX_IN_FLIGHT) would be read in before
/// the pool's threads got to any of them. Postfix's local and virtual
/// agents default to a concurrency of 2 per mailbox and 20-100 processes.
const LOCAL_CONCURRENCY: usize = 8;

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
    /// The recipients this attempt covers (those not done before it).
    remaining: Vec<u32>,
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
    spool: Spool,
    resolver: Resolver,
    dispatch: Dispatcher,
    ids: IdSource,
    metrics: Arc<Metrics>,
    /// This worker's turn in each pool.
    rotation: RefCell<Rotation>,
    wheel: RefCell<Wheel<QueueId>>,
    todo: RefCell<VecDeque<(QueueId, Option<Rc<Envelope>>)>>,
    todo_wakers: RefCell<Vec<Waker>>,
    attempts: RefCell<HashMap<QueueId, Attempt>>,
    domains: RefCell<HashMap<String, DomainStatus>>,
    /// Messages whose attempt is being finalized (not in `attempts` any more).
    finalizing: RefCell<std::collections::HashSet<QueueId>>,
    draining: Cell<bool>,
    events: Arc<EventLog>,
    /// Where the event thread hands back delivered messages whose events
    /// are durable (this worker's slot, and the ids).
    finisher: (u32, Arc<Finisher>),
    suppression: Arc<dyn Store>,
    /// Messages held by a queue suspension: out of the wheel (unless the
    /// suspension has an end) until a resume plans them again.
    parked: RefCell<std::collections::HashSet<QueueId>>,
    /// Domains whose destination could not be reached, and the messages
    /// waiting for it (see `down`).
    down: RefCell<Down>,
    /// TLS clients for hosts with TLSA records, by host and domain (the
    /// names a DANE-TA certificate may carry), while the records
    /// stay the same (bounded: cleared when it grows past DANE_CLIENTS).
    dane_clients: RefCell<HashMap<String, DaneClient>>,
    /// Domains whose MTA-STS policy this worker is fetching, and the tasks
    /// waiting for that fetch (one fetch per domain at a time).
    sts_fetching: RefCell<HashMap<String, Vec<Waker>>>,
    /// Permits for local deliveries (LOCAL_CONCURRENCY).
    local_slots: Rc<local_sync::semaphore::Semaphore>,
}

/// A policy fetch in progress: ends (and wakes those waiting for it) when
/// dropped, also when the fetching task is cancelled.
struct StsFetching<'a> {
    map: &'a RefCell<HashMap<String, Vec<Waker>>>,
    domain: String,
}

impl<'a> StsFetching<'a> {
    fn start(map: &'a RefCell<HashMap<String, Vec<Waker>>>, domain: &str) -> StsFetching<'a> {
        map.borrow_mut().insert(domain.to_owned(), Vec::new());
        StsFetching { map, domain: domain.to_owned() }
    }
}

impl Drop for StsFetching<'_> {
    fn drop(&mut self) {
        let waiters = self.map.borrow_mut().remove(&self.domain).unwrap_or_default();
        for w in waiters {
            w.wake();
        }
    }
}

/// A host's TLSA records and the TLS client that checks them.
type DaneClient = (Vec<crate::dns::wire::Tlsa>, Arc<rustls::ClientConfig>);

/// Hosts whose DANE client a worker keeps.
const DANE_CLIENTS: usize = 10_000;

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("index", &self.index)
            .field("in_flight", &self.attempts.borrow().len())
            .finish()
    }
}

impl Owner {
    #[allow(clippy::too_many_arguments)] // reason: the worker's handles, each distinct; built once
    pub fn new(
        index: usize,
        live: Arc<Live>,
        spool: Spool,
        resolver: Resolver,
        dispatch: Dispatcher,
        ids: IdSource,
        metrics: Arc<Metrics>,
        events: Arc<EventLog>,
        suppression: Arc<dyn Store>,
    ) -> Rc<Owner> {
        Rc::new(Owner {
            index,
            live,
            spool,
            resolver,
            dispatch,
            ids,
            metrics,
            rotation: RefCell::new(Rotation::default()),
            wheel: RefCell::new(Wheel::new(unix_secs())),
            todo: RefCell::new(VecDeque::new()),
            todo_wakers: RefCell::new(Vec::new()),
            attempts: RefCell::new(HashMap::new()),
            domains: RefCell::new(HashMap::new()),
            finalizing: RefCell::new(std::collections::HashSet::new()),
            draining: Cell::new(false),
            finisher: events.finisher(),
            events,
            suppression,
            parked: RefCell::new(std::collections::HashSet::new()),
            down: RefCell::new(Down::default()),
            dane_clients: RefCell::new(HashMap::new()),
            sts_fetching: RefCell::new(HashMap::new()),
            local_slots: Rc::new(local_sync::semaphore::Semaphore::new(LOCAL_CONCURRENCY)),
        })
    }

    /// Where this worker's events go.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The suppression list.
    pub fn suppression(&self) -> &dyn Store {
        &*self.suppression
    }

    /// Delivery settings in force now.
    fn cfg(&self) -> Arc<DeliveryConfig> {
        self.live.delivery()
    }

    /// Schedules every recovered message and starts the planner and wheel
    /// tasks. With `hold`, planners plan nothing (mail only accumulates)
    /// until a reload lifts it.
    pub fn start(self: &Rc<Self>) {
        if self.cfg().hold {
            tracing::info!(worker = self.index, "delivery is on hold: accepting and queueing only");
        }
        let now = unix_secs();
        let mut due = Vec::new();
        let mut later = Vec::new();
        self.spool.for_each_entry(|id, e| match e.progress.as_ref().map(|p| p.next_attempt()) {
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
        // Oldest first; past the first few thousand, spread over the next seconds.
        let spread = due.len() > decide::RECOVERY_PER_SECOND;
        if spread {
            tracing::info!(
                worker = self.index,
                messages = due.len(),
                seconds = due.len() / decide::RECOVERY_PER_SECOND,
                "due messages spread after the restart"
            );
        }
        for (i, id) in due.into_iter().enumerate() {
            match decide::recovery_slot(i, now) {
                t if t <= now => self.push(id, None),
                t => self.wheel.borrow_mut().insert(t, id),
            }
        }
        for _ in 0..PLANNERS {
            monoio::spawn(self.clone().planner());
        }
        monoio::spawn(self.clone().ticker());
        monoio::spawn(self.clone().finisher());
        if self.index == 0 {
            monoio::spawn(self.clone().tls_reporter());
        }
        // Compaction is the spool's; a message with an attempt in flight
        // is not moved meanwhile.
        let owner = Rc::downgrade(self);
        let busy = move |id: QueueId| {
            owner
                .upgrade()
                .is_none_or(|o| o.attempts.borrow().contains_key(&id) || o.finalizing.borrow().contains(&id))
        };
        monoio::spawn(self.spool.clone().run_compactor(busy));
    }

    /// A message was just accepted: plan its first attempt (on hold, it
    /// waits for the hold to be lifted).
    pub fn enqueue_new(&self, env: &Envelope) {
        // On hold, queued messages can pile up: keep no envelope copy for
        // them (it is read back from the spool when they are planned).
        let copy = (!self.cfg().hold).then(|| Rc::new(env.clone()));
        self.push(env.id, copy);
    }

    /// The configuration changed (SIGHUP): planners waiting because
    /// delivery was on hold look again.
    pub fn config_changed(&self) {
        for w in self.todo_wakers.borrow_mut().drain(..) {
            w.wake();
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
        (self.wheel.borrow().len() + self.down.borrow().parked(), self.attempts.borrow().len())
    }

    /// Per-domain next attempt and last error.
    pub fn domain_status(&self) -> HashMap<String, DomainStatus> {
        self.domains.borrow().clone()
    }

    /// Retries every deferred message now. Returns how many.
    pub fn flush(&self) -> usize {
        if self.cfg().hold {
            return 0;
        }
        let mut ids = self.wheel.borrow_mut().drain();
        ids.extend(self.with_down(|d| d.clear()));
        let n = ids.len();
        for id in ids {
            self.push(id, None);
        }
        n
    }

    /// DANE (RFC 7672): looks up the TLSA records of each host whose names
    /// were validated and marks it (verify against them, or do not connect
    /// when the lookup failed). True when DANE applies to some host; the
    /// hop then gets a key of its own, so its connections are not shared
    /// with opportunistic ones.
    async fn apply_dane(&self, hop: &mut route::NextHop, domain: &str, port: u16) -> bool {
        let mut applies = false;
        for host in hop.hosts.iter_mut().filter(|h| h.secure) {
            let lookup = self
                .resolver
                .query(&format!("_{port}._tcp.{}", host.name), crate::dns::wire::Rtype::Tlsa)
                .await;
            host.dane = match dane::decide(&host.name, &lookup) {
                dane::Decision::None => continue,
                dane::Decision::Refuse(why) => {
                    tracing::warn!(target: "delivery", domain = %domain, host = %host.name, reason = %why, "MX host not tried");
                    self.metrics.dane_refused_hosts.fetch_add(1, Ordering::Relaxed);
                    route::HostDane::Refuse(why)
                }
                dane::Decision::Verify(records) => {
                    let policy = Arc::new(tlsrpt::Policy::tlsa(&host.name, &records));
                    match self.dane_client(&host.name, domain, records) {
                        Ok(client) => route::HostDane::Verify(client, policy),
                        Err(e) => route::HostDane::Refuse(format!("DANE: no TLS client: {e}")),
                    }
                }
            };
            applies = true;
        }
        if applies {
            hop.key = format!("dane:{}", hop.key);
        }
        applies
    }

    /// The TLS client for `host` with these TLSA records (kept while the
    /// records stay the same).
    fn dane_client(
        &self,
        host: &str,
        domain: &str,
        records: Vec<crate::dns::wire::Tlsa>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = format!("{host} {domain}");
        let mut clients = self.dane_clients.borrow_mut();
        if let Some((r, c)) = clients.get(&key) {
            if *r == records {
                return Ok(c.clone());
            }
        }
        if clients.len() >= DANE_CLIENTS {
            clients.clear();
        }
        let client =
            crate::rt::transport::dane_client_config(records.clone(), vec![host.into(), domain.into()])?;
        clients.insert(key, (records, client.clone()));
        Ok(client)
    }

    /// Whether sessions are counted for TLS reports (RFC 8460): with a TLS
    /// policy on (MTA-STS or DANE) and a report interval.
    fn reporting(&self) -> bool {
        let cfg = self.cfg();
        (cfg.mta_sts.is_some() || cfg.dane) && !cfg.tls_report_interval.is_zero()
    }

    /// The MTA-STS policy of `domain` (RFC 8461 §5.1): the TXT record's id
    /// through the DNS cache, the cached policy while it is valid and the id
    /// has not changed, else a fetch (whose failure leaves the cached
    /// policy, if any, in force).
    async fn sts_policy(&self, domain: &str, verify: &Arc<rustls::ClientConfig>) -> Option<mta_sts::Policy> {
        let now = unix_secs();
        let txt = self.resolver.query(&format!("_mta-sts.{domain}"), crate::dns::wire::Rtype::Txt).await;
        let id = match &*txt {
            Ok(r) => match &r.answer {
                crate::dns::wire::Answer::Txt(records) => mta_sts::txt_id(records),
                _ => None,
            },
            Err(_) => None,
        };
        let cached = self.metrics.mta_sts.lock().unwrap_or_else(|p| p.into_inner()).get(domain).cloned();
        let valid = cached.as_ref().filter(|c| c.expires > now).map(|c| c.policy.clone());
        match mta_sts::step(cached.as_ref(), id.as_deref(), now) {
            mta_sts::Step::UseCached => valid,
            mta_sts::Step::NoPolicy => None,
            mta_sts::Step::Fetch => {
                // Another task is fetching it: its result (or, if it failed,
                // what was cached) is the answer.
                if self.sts_fetching.borrow().contains_key(domain) {
                    self.sts_fetched(domain).await;
                    let cache = self.metrics.mta_sts.lock().unwrap_or_else(|p| p.into_inner());
                    return cache.get(domain).filter(|c| c.expires > now).map(|c| c.policy.clone());
                }
                let _fetching = StsFetching::start(&self.sts_fetching, domain);
                self.metrics.mta_sts_fetches.fetch_add(1, Ordering::Relaxed);
                let fetched =
                    match sts_fetch::fetch(&self.resolver, domain, verify.clone(), STS_FETCH_TIMEOUT).await {
                        Ok(text) => mta_sts::parse_policy(&text)
                            .map_err(|e| (tlsrpt::ResultType::StsPolicyInvalid, e)),
                        Err(e) => Err((tlsrpt::ResultType::StsPolicyFetchError, e)),
                    };
                match (fetched, id) {
                    (Ok(policy), Some(id)) => {
                        tracing::info!(target: "delivery", %domain, mode = ?policy.mode, max_age = policy.max_age,
                            "MTA-STS policy fetched");
                        let mut cache = self.metrics.mta_sts.lock().unwrap_or_else(|p| p.into_inner());
                        if cache.len() >= mta_sts::MAX_CACHED {
                            cache.retain(|_, c| c.expires > now);
                            if cache.len() >= mta_sts::MAX_CACHED {
                                cache.clear();
                            }
                        }
                        let expires = now + policy.max_age;
                        cache.insert(
                            domain.to_owned(),
                            mta_sts::Cached { id, policy: policy.clone(), expires },
                        );
                        self.metrics.mta_sts_changes.fetch_add(1, Ordering::Relaxed);
                        Some(policy)
                    }
                    (Err((result, e)), _) => {
                        self.metrics.mta_sts_fetch_failures.fetch_add(1, Ordering::Relaxed);
                        if self.reporting() {
                            let policy =
                                tlsrpt::Policy { kind: tlsrpt::PolicyType::Sts, ..tlsrpt::Policy::NONE };
                            let session = tlsrpt::Session {
                                mx: String::new(),
                                sending_ip: None,
                                receiving_ip: None,
                                result: Err((result, e.clone())),
                            };
                            self.metrics
                                .tls_report
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .record(domain, &policy, &session);
                        }
                        tracing::warn!(target: "delivery", %domain, error = %e,
                            "MTA-STS policy could not be fetched; the cached one (if any) stays in force");
                        valid
                    }
                    (Ok(_), None) => valid,
                }
            }
        }
    }

    /// Waits until the fetch of `domain`'s policy by another task is over.
    async fn sts_fetched(&self, domain: &str) {
        poll_fn(|cx| match self.sts_fetching.borrow_mut().get_mut(domain) {
            Some(waiters) => {
                waiters.push(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(()),
        })
        .await
    }

    /// A queue suspension ended: plans every parked message again (those
    /// still held park again). Returns how many.
    pub fn release_parked(&self) -> usize {
        let ids: Vec<QueueId> = self.parked.borrow().iter().copied().collect();
        let mut n = 0;
        for id in ids {
            // Deleted or bounced by the administrator while parked.
            if !self.spool.contains(id) {
                self.unpark(id);
                continue;
            }
            self.push(id, None);
            n += 1;
        }
        n
    }

    fn unpark(&self, id: QueueId) -> bool {
        let was = self.parked.borrow_mut().remove(&id);
        if was {
            self.metrics.held_messages.fetch_sub(1, Ordering::Relaxed);
        }
        was
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
            // On hold nothing is planned; a reload that lifts it wakes us.
            if self.cfg().hold {
                self.todo_wakers.borrow_mut().push(cx.waker().clone());
                return Poll::Pending;
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
            let now = unix_secs();
            let due = self.wheel.borrow_mut().poll(now);
            for id in due {
                self.push(id, None);
            }
            // Down domains whose backoff is over: a probe each (and the
            // parked messages that expired meanwhile).
            if !self.down.borrow().is_empty() {
                let cfg = self.cfg();
                let wait = cfg.destination_backoff.as_secs();
                let go = if cfg.egress.one_path() {
                    self.with_down(|d| {
                        d.tick(now, wait, |id| {
                            match self.spool.with_entry(id, |e| self.must_try(e, now, &cfg)) {
                                None => Keep::Drop,
                                Some(true) => Keep::Release,
                                Some(false) => Keep::Keep,
                            }
                        })
                    })
                } else {
                    // Sources were added (a reload): no more parking.
                    self.with_down(Down::clear)
                };
                for id in go {
                    self.push(id, None);
                }
            }
            monoio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Changes the down domains, keeping the parked-messages gauge true.
    fn with_down<R>(&self, f: impl FnOnce(&mut Down) -> R) -> R {
        let mut down = self.down.borrow_mut();
        let before = down.parked();
        let r = f(&mut down);
        let after = down.parked();
        if after >= before {
            self.metrics.parked_messages.fetch_add((after - before) as u64, Ordering::Relaxed);
        } else {
            self.metrics.parked_messages.fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
        r
    }

    /// See `decide::must_try`.
    fn must_try(&self, e: &crate::spool::index::Entry, now: u64, cfg: &DeliveryConfig) -> bool {
        let notified = e.progress.as_ref().is_some_and(|p| p.delay_notified());
        decide::must_try(e.received_at(), now, cfg.max_age, cfg.delay_warning, notified)
    }

    /// Parks a due message whose remaining recipients are all in one
    /// domain that is down (see `down`): no read, no plan, no record.
    /// Each worker learns which domains are down from its own attempts.
    fn park_if_down(&self, id: QueueId, remaining: &[u32]) -> bool {
        if self.down.borrow().is_empty() || remaining.is_empty() || self.parked.borrow().contains(&id) {
            return false;
        }
        let cfg = self.cfg();
        if !cfg.egress.one_path() {
            return false;
        }
        let now = unix_secs();
        let Some(domain) = self
            .spool
            .with_entry(id, |e| {
                // One that expired or is due a delay warning is tried.
                if self.must_try(e, now, &cfg) {
                    return None;
                }
                let ids = e.rcpt_domains();
                let first = ids.get(*remaining.first()? as usize).copied()?;
                remaining.iter().all(|&i| ids.get(i as usize) == Some(&first)).then_some(first)
            })
            .flatten()
            .and_then(|d| self.spool.domain_name(d))
        else {
            return false;
        };
        let wait = cfg.destination_backoff.as_secs();
        self.with_down(|d| d.admit(id, &domain, now, wait)) == Admit::Parked
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
                e.received_at(),
                e.remaining().collect::<Vec<u32>>(),
                e.progress.as_ref().map_or(0, |p| p.attempts()),
            )
        }) else {
            return; // finished or deleted meanwhile
        };
        if self.park_if_down(id, &remaining) {
            return;
        }
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
        let cfg = self.cfg();
        let last_error =
            self.spool.with_entry(id, |e| e.progress.as_ref().map(|p| p.last_error_shared())).flatten();
        let rules = Rules {
            max_age: cfg.max_age,
            retry: &cfg.retry,
            local_domains: &cfg.local_domains,
            feedback: cfg.feedback.as_ref().map(|f| &f.addresses),
        };
        // Recipients suppressed since the message was queued are not sent.
        let mut suppressed = Vec::new();
        let to_plan: Vec<u32> = remaining
            .iter()
            .copied()
            .filter(|&i| {
                let Some(r) = env.recipients.get(i as usize) else { return true };
                match self.suppression.check(&r.address.to_string(), env.tenant.as_deref()) {
                    Some(e) => {
                        suppressed.push(decide::suppressed(i, &e.reason));
                        false
                    }
                    None => true,
                }
            })
            .collect();
        // Recipients a queue suspension holds are not tried (and do not
        // expire); a message with nothing else to try is parked.
        let now = unix_secs();
        let was_parked = self.unpark(id);
        // `held`: some recipient is held; `wake`: the earliest end of a
        // suspension holding one (none: only a resume frees them).
        let (to_plan, held, wake) = {
            let mut holds = self.metrics.queue_holds.lock().unwrap_or_else(|p| p.into_inner());
            holds.expire(now);
            let (mut held, mut wake) = (false, None::<u64>);
            let free: Vec<u32> = to_plan
                .into_iter()
                .filter(|&i| {
                    if holds.is_empty() {
                        return true;
                    }
                    let Some(r) = env.recipients.get(i as usize) else { return true };
                    let domain = r.address.domain().to_lowercase();
                    match holds.holding(&domain, env.tenant.as_deref(), env.campaign.as_deref(), now) {
                        Some(h) => {
                            held = true;
                            if let Some(u) = h.until {
                                wake = Some(wake.map_or(u, |w| w.min(u)));
                            }
                            false
                        }
                        None => true,
                    }
                })
                .collect();
            (free, held, wake)
        };
        if held && to_plan.is_empty() && suppressed.is_empty() {
            self.parked.borrow_mut().insert(id);
            self.metrics.held_messages.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = wake {
                self.wheel.borrow_mut().insert(t, id);
            }
            return;
        }
        let groups = decide::plan(&env, &to_plan, received_at, last_error.as_deref(), now, was_parked, rules);
        self.attempts.borrow_mut().insert(
            id,
            Attempt {
                env: env.clone(),
                loc,
                attempts_before,
                remaining,
                groups_left: groups.len() + usize::from(!suppressed.is_empty()),
                outcomes: Vec::new(),
            },
        );
        if !suppressed.is_empty() {
            tracing::info!(target: "delivery", %id, recipients = suppressed.len(), "suppressed recipients dropped");
            self.job_done(JobResult::new(id, String::new(), suppressed));
        }
        for Group { domain, rcpts, way } in groups {
            match way {
                Way::Expired(text) => {
                    tracing::info!(target: "delivery", %id, %domain, recipients = rcpts.len(), reason = %text, "expired");
                    let n = rcpts.len() as u64;
                    self.metrics.bounced.fetch_add(n, Ordering::Relaxed);
                    self.metrics.expired.fetch_add(n, Ordering::Relaxed);
                    let mut outcomes = RcptOutcome::all(&rcpts, Outcome::Permanent, decide::EXPIRED, &text);
                    for o in &mut outcomes {
                        o.cause = Cause::Expired;
                    }
                    self.job_done(JobResult::new(id, domain, outcomes))
                }
                Way::Local => {
                    monoio::spawn(self.clone().deliver_local(id, loc, domain, rcpts, env.clone()));
                }
                Way::Remote => self.route_group(id, loc, domain, rcpts, &env).await,
                Way::Feedback => {
                    monoio::spawn(self.clone().read_reports(id, loc, domain, rcpts));
                }
            }
        }
    }

    async fn route_group(
        self: &Rc<Self>,
        id: QueueId,
        loc: Location,
        domain: String,
        rcpts: Vec<u32>,
        env: &Envelope,
    ) {
        let cfg = self.cfg();
        let (tenant, requiretls) = (env.tenant.as_deref(), env.requiretls);
        // A DSN (null sender) goes back to the tenant's own systems: a hold
        // on the tenant does not stop it.
        let holdable = !matches!(env.reverse_path, ReversePath::Null);
        // A tenant held by automation sends nothing until the hold ends.
        let held = tenant.filter(|_| holdable).and_then(|t| self.metrics.tenant_holds.held(t, unix_secs()));
        if let Some((until, why)) = held {
            let text = format!(
                "tenant {} is suspended for {}s more ({why})",
                tenant.unwrap_or_default(),
                until.saturating_sub(unix_secs())
            );
            let mut outcomes = RcptOutcome::all(&rcpts, Outcome::Temporary, "4.7.0", &text);
            for o in &mut outcomes {
                o.not_before = Some(until + 1);
            }
            return self.job_done(JobResult::new(id, domain, outcomes));
        }
        let source = match cfg.egress.pool_for(tenant) {
            None => None,
            Some(pool) => {
                let day = egress::day_of(unix_secs());
                let mut daily = self.metrics.egress_daily.lock().unwrap_or_else(|p| p.into_inner());
                match self.rotation.borrow_mut().pick(&cfg.egress, pool, day, &mut daily) {
                    Pick::Source(s) => Some(s),
                    Pick::Exhausted => {
                        let text = format!("every source of pool {} has sent its daily maximum", pool.name);
                        tracing::info!(target: "delivery", %id, domain = %domain, reason = %text, "deferred");
                        self.metrics.deferred.fetch_add(rcpts.len() as u64, Ordering::Relaxed);
                        let outcomes = RcptOutcome::all(&rcpts, Outcome::Temporary, "4.7.0", &text);
                        return self.job_done(JobResult::new(id, domain, outcomes));
                    }
                }
            }
        };
        match route::resolve(&self.resolver, &cfg.routes, &domain, cfg.port).await {
            Ok(mut hop) => {
                // DANE, then MTA-STS (RFC 8461 §2: validated TLSA records
                // win), only for MX next hops (a route is the operator's own choice).
                // `TLS-Required: No` (RFC 8689 §5) lifts the domain's
                // policies, unless the message also has REQUIRETLS.
                let policies = requiretls || !env.tls_not_required;
                let mx = hop.key.starts_with("mx:") && policies;
                if mx && self.reporting() {
                    hop.report = Some(Arc::new(tlsrpt::Policy::NONE));
                }
                let dane = cfg.dane && mx && self.apply_dane(&mut hop, &domain, cfg.port).await;
                if dane {
                    self.metrics.dane_groups.fetch_add(1, Ordering::Relaxed);
                }
                if let (Some(verify), true, false) = (&cfg.mta_sts, mx, dane) {
                    if let Some(policy) = self.sts_policy(&domain, verify).await {
                        if policy.mode == mta_sts::Mode::Testing && hop.report.is_some() {
                            // Delivered as without a policy; what enforcing
                            // it would have done is only reported.
                            hop.key = format!("sts-testing:{}", hop.key);
                            hop.report = Some(Arc::new(tlsrpt::Policy::sts(&policy)));
                            hop.sts_testing = Some((verify.clone(), Arc::new(policy.clone())));
                        }
                        if policy.mode == mta_sts::Mode::Enforce {
                            let names: Vec<&str> = hop.hosts.iter().map(|h| h.name.as_str()).collect();
                            match mta_sts::allowed(&policy, &names) {
                                Ok(keep) => {
                                    let hosts = std::mem::take(&mut hop.hosts);
                                    hop.hosts = hosts
                                        .into_iter()
                                        .enumerate()
                                        .filter(|(i, _)| keep.contains(i))
                                        .map(|(_, h)| h)
                                        .collect();
                                    hop.key = format!("sts:{}", hop.key);
                                    hop.verify_tls = Some(verify.clone());
                                    if hop.report.is_some() {
                                        hop.report = Some(Arc::new(tlsrpt::Policy::sts(&policy)));
                                    }
                                    self.metrics.mta_sts_enforced.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(text) => {
                                    let text = format!("MTA-STS policy of {domain}: {text}");
                                    if hop.report.is_some() {
                                        // No session: the MX hosts were not tried.
                                        let session = tlsrpt::Session {
                                            mx: names.join(","),
                                            sending_ip: None,
                                            receiving_ip: None,
                                            result: Err((
                                                tlsrpt::ResultType::ValidationFailure,
                                                text.clone(),
                                            )),
                                        };
                                        let mut report =
                                            self.metrics.tls_report.lock().unwrap_or_else(|p| p.into_inner());
                                        report.record(&domain, &tlsrpt::Policy::sts(&policy), &session);
                                    }
                                    tracing::warn!(target: "delivery", %id, domain = %domain, reason = %text, "deferred");
                                    self.metrics.mta_sts_refused.fetch_add(1, Ordering::Relaxed);
                                    self.metrics.deferred.fetch_add(rcpts.len() as u64, Ordering::Relaxed);
                                    let outcomes =
                                        RcptOutcome::all(&rcpts, Outcome::Temporary, "4.7.5", &text);
                                    return self.job_done(JobResult::new(id, domain, outcomes));
                                }
                            }
                        }
                    }
                }
                if requiretls {
                    // RFC 8689: verified TLS to every host (DANE's where it
                    // applies, else a certificate valid for the host name),
                    // on connections of their own.
                    hop.requiretls = true;
                    hop.key = format!("requiretls:{}", hop.key);
                    if hop.verify_tls.is_none() {
                        match &cfg.verified_tls {
                            Some(v) => hop.verify_tls = Some(v.clone()),
                            None => {
                                let text =
                                    "REQUIRETLS: no trust anchors to verify a certificate with".to_string();
                                let outcomes = RcptOutcome::all(&rcpts, Outcome::Permanent, "5.7.10", &text);
                                return self.job_done(JobResult::new(id, domain, outcomes));
                            }
                        }
                    }
                }
                let (_, family) = self.spool.family();
                let hosts: Vec<&str> = hop.hosts.iter().map(|h| h.name.as_str()).collect();
                let shape = Arc::new(cfg.shaping.shape(&domain, &hop.key, &hosts));
                (self.dispatch)(Job {
                    owner: self.index,
                    family,
                    id,
                    loc,
                    rcpts,
                    domain,
                    hop: Arc::new(hop),
                    source,
                    shape,
                    tenant: tenant.filter(|_| holdable).map(str::to_owned),
                });
            }
            Err(e) => {
                tracing::info!(target: "delivery", %id, domain = %domain, reason = %e, "no next hop");
                self.job_done(JobResult::new(id, domain, decide::no_hop(&rcpts, &e)));
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
        // Never closed, so acquiring cannot fail; held until the outcomes
        // are handed over.
        let _permit = self.local_slots.clone().acquire_owned().await;
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
                    // Named by reception time, queue id and recipient: the
                    // same name again after a crash (see local::deliver).
                    let (when, key) = (env.received_at, format!("{id}_{i}"));
                    let owner = cfg.mail_owner;
                    let res = monoio::spawn_blocking(move || {
                        local::deliver(
                            &mail_dir,
                            &host,
                            &dom,
                            &local,
                            &sender,
                            &body,
                            when,
                            Some(&key),
                            owner,
                        )
                    })
                    .await;
                    let (outcome, status, text) = match res {
                        Ok(Ok((path, found))) => {
                            if found {
                                inc(&self.metrics.local_found);
                            }
                            let how = if found {
                                "already in maildir (delivered before a crash)"
                            } else {
                                "delivered to maildir"
                            };
                            (Outcome::Delivered, "2.0.0".to_owned(), format!("{how} {}", path.display()))
                        }
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
                        not_before: None,
                        code: None,
                        via: Some(Arc::new(Via { source: None, next_hop: "local".into(), tls: None })),
                        cause: Cause::Reply,
                        class: None,
                    });
                }
                outcomes
            }
        };
        self.job_done(JobResult::new(id, domain, outcomes));
    }

    /// A message to a `[feedback]` address: an ARF complaint report. One
    /// tied back to what we sent becomes a `Feedback` event and suppresses
    /// its recipient for its tenant (unless the report says `not-spam`);
    /// one that is not (malformed, forged, not ARF) is logged and kept in
    /// `<spool>/feedback-rejected/`. Either way the recipient is done.
    async fn read_reports(self: Rc<Self>, id: QueueId, loc: Location, domain: String, rcpts: Vec<u32>) {
        let cfg = self.cfg();
        let (dir, family) = self.spool.family();
        let (feedback, body) =
            match (cfg.feedback.clone(), crate::spool::read::read_message(&dir, family, loc).await) {
                (Some(f), Ok((_, body))) => (f, body),
                (_, Err(e)) => {
                    let text = format!("cannot read the spooled report: {e}");
                    let outcomes = RcptOutcome::all(&rcpts, Outcome::Temporary, "4.3.0", &text);
                    return self.job_done(JobResult::new(id, domain, outcomes));
                }
                (None, Ok(_)) => {
                    // [feedback] was removed by a reload meanwhile: plan again.
                    let text = "[feedback] is no longer configured";
                    let outcomes = RcptOutcome::all(&rcpts, Outcome::Temporary, "4.3.0", text);
                    return self.job_done(JobResult::new(id, domain, outcomes));
                }
            };
        let reject_dir = dir.join("feedback-rejected");
        let read = monoio::spawn_blocking(move || match crate::feedback::read_complaint(&feedback, &body) {
            Ok(c) => Ok(c),
            Err(why) => Err((why, keep_rejected(&reject_dir, id, &body, MAX_REJECTED_REPORTS))),
        })
        .await;
        let text = match read {
            Ok(Ok(c)) => {
                inc(&self.metrics.feedback_accepted);
                let r = &c.reference;
                let rcpt = r.recipient.clone().unwrap_or_default();
                tracing::info!(target: "delivery", %id, original = %r.id, recipient = %rcpt, tenant = ?r.tenant,
                    feedback_type = %c.report.feedback_type, "complaint report");
                if c.report.feedback_type != "not-spam" {
                    if let Ok(d) =
                        self.suppression.add(&rcpt, r.tenant.as_deref(), Reason::Complaint, unix_secs())
                    {
                        d.await;
                    }
                }
                if self.events.enabled() {
                    let e =
                        feedback_event(r, &c.report.feedback_type, c.report.original_mail_from.as_deref());
                    self.events.emit_durable(vec![e]).await;
                }
                format!("complaint report read: {} about {rcpt}", c.report.feedback_type)
            }
            Ok(Err((why, kept))) => {
                inc(&self.metrics.feedback_rejected);
                let kept = match kept {
                    Ok(p) => format!("kept in {}", p.display()),
                    Err(e) => format!("could not be kept: {e}"),
                };
                tracing::warn!(target: "delivery", %id, reason = %why, %kept, "feedback report not usable");
                format!("feedback report not usable ({why}); {kept}")
            }
            Err(_) => "feedback report task failed".to_owned(),
        };
        let mut outcomes = RcptOutcome::all(&rcpts, Outcome::Delivered, "2.0.0", &text);
        for o in &mut outcomes {
            o.via = Some(Arc::new(Via { source: None, next_hop: "feedback".into(), tls: None }));
        }
        self.job_done(JobResult::new(id, domain, outcomes));
    }

    /// A destination (or local delivery) reports on one group.
    pub fn job_done(self: &Rc<Self>, r: JobResult) {
        let now = unix_secs();
        match r.reach {
            Reach::Unknown => {}
            // Parking by domain is right only when every message to it
            // leaves from the same address.
            Reach::Down { until } if self.cfg().egress.one_path() => {
                self.with_down(|d| d.failed(&r.domain, until, now))
            }
            Reach::Down { .. } => {}
            Reach::Reached => {
                if !self.down.borrow().is_empty() {
                    let released = self.with_down(|d| d.reached(&r.domain));
                    if !released.is_empty() {
                        tracing::info!(target: "delivery", domain = %r.domain, messages = released.len(), "destination reachable again: parked mail released");
                    }
                    for id in released {
                        self.push(id, None);
                    }
                }
            }
        }
        {
            let mut domains = self.domains.borrow_mut();
            let st = domains.entry(r.domain.clone()).or_default();
            if let Some(e) = decide::group_error(&r.outcomes) {
                st.last_error = Some(bounded_text(&e, MAX_LAST_ERROR));
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
                if !owner.clone().finalize(r.id, a, now).await {
                    owner.finalizing.borrow_mut().remove(&r.id);
                }
            });
        }
    }

    /// The attempt is over: DSNs first, then the durable record, then the
    /// retry. Returns true when the message was handed to the event thread
    /// to be finished once its events are durable (it stays `finalizing`
    /// until then; see [`Owner::finisher`]).
    async fn finalize(self: Rc<Self>, id: QueueId, mut a: Attempt, now: u64) -> bool {
        let cfg = self.cfg();
        // Failures get a class; a suppressed recipient or an administrator's
        // bounce is no receiver's verdict and gets none.
        for o in a.outcomes.iter_mut().filter(|o| {
            o.outcome != Outcome::Delivered && !matches!(o.cause, Cause::Suppressed | Cause::Admin)
        }) {
            let class = match o.cause {
                Cause::Expired => Class::MessageExpired,
                _ => cfg.classifier.classify(o.code, &o.status, &o.text),
            };
            o.class = Some(class);
            let counts = if o.outcome == Outcome::Permanent {
                &self.metrics.bounces_by_class
            } else {
                &self.metrics.deferrals_by_class
            };
            counts[class.index()].fetch_add(1, Ordering::Relaxed);
        }
        let reports = decide::reports(&a.env, &a.outcomes);
        let dsn_stored = reports.is_empty() || self.queue_dsn(&a.env, a.loc, &reports, now).await;
        // Addresses that do not exist are suppressed, before the spool
        // records the bounce (a crash repeats the bounce, the addition).
        let mut added = Vec::new();
        for o in a.outcomes.iter().filter(|o| {
            o.outcome == Outcome::Permanent
                && o.cause == Cause::Reply
                && o.class == Some(Class::InvalidRecipient)
        }) {
            let Some(r) = a.env.recipients.get(o.index as usize) else { continue };
            let reason = Reason::Bounce(Class::InvalidRecipient);
            if let Ok(d) = self.suppression.add(&r.address.to_string(), None, reason, now) {
                added.push(d);
            }
        }
        for d in added {
            d.await;
        }
        let rules = Rules {
            max_age: cfg.max_age,
            retry: &cfg.retry,
            local_domains: &cfg.local_domains,
            feedback: cfg.feedback.as_ref().map(|f| &f.addresses),
        };
        let settled = decide::settle(
            &a.outcomes,
            dsn_stored,
            &a.remaining,
            a.attempts_before,
            a.env.received_at,
            now,
            rules,
        );
        // Events before the spool records the outcome: a crash repeats
        // them, never loses them. A finished message's end is recorded by
        // the finisher once the event thread has synced its events; what
        // waits meanwhile is its id.
        if self.events.enabled() {
            let events = outcome_events(&a, unix_millis());
            if matches!(settled, Settled::Finished) {
                if self.events.emit_then_finish(events, self.finisher.0, id) {
                    self.wake_planners();
                    return true;
                }
            } else {
                self.events.emit_durable(events).await;
            }
        }
        match settled {
            Settled::Finished => {
                let _ = self.spool.finish(id).await;
            }
            Settled::Retry { .. } if !self.spool.contains(id) => {} // deleted meanwhile
            Settled::Retry { done, attempts, next_attempt, last_error } => {
                for o in a.outcomes.iter().filter(|o| o.outcome == Outcome::Temporary) {
                    if let Some(r) = a.env.recipients.get(o.index as usize) {
                        let mut domains = self.domains.borrow_mut();
                        domains.entry(r.address.domain().to_lowercase()).or_default().next_attempt =
                            Some(next_attempt);
                    }
                }
                // `[delivery] delay_warning`: the sender hears once that it is late.
                let mut delay_notified = self
                    .spool
                    .with_entry(id, |e| e.progress.as_ref().is_some_and(|p| p.delay_notified()))
                    .unwrap_or(false);
                let due = decide::delay_reports(
                    &a.env,
                    &a.outcomes,
                    now,
                    cfg.delay_warning,
                    cfg.max_age,
                    delay_notified,
                );
                if let Some(reports) = due {
                    delay_notified = reports.is_empty() || self.queue_dsn(&a.env, a.loc, &reports, now).await;
                    if delay_notified && !reports.is_empty() {
                        tracing::info!(target: "delivery", %id, recipients = reports.len(), "delay warning queued");
                    }
                }
                let record = ProgressRecord { id, attempts, next_attempt, last_error, done, delay_notified };
                if let Ok(Err(e)) = self.spool.progress(record).await {
                    tracing::warn!(%id, error = %e, "could not record delivery progress; retrying anyway");
                }
                self.wheel.borrow_mut().insert(next_attempt, id);
            }
        }
        self.wake_planners();
        false
    }

    /// Records the end of delivered messages whose outcome events the
    /// event thread has made durable, a batch per sync of the event file.
    async fn finisher(self: Rc<Self>) {
        loop {
            let ids = poll_fn(|cx| self.finisher.1.poll_take(cx)).await;
            let tickets: Vec<_> = ids.iter().map(|&id| self.spool.finish(id)).collect();
            let owner = self.clone();
            monoio::spawn(async move {
                for t in tickets {
                    let _ = t.await;
                }
                let mut finalizing = owner.finalizing.borrow_mut();
                for id in ids {
                    finalizing.remove(&id);
                }
            });
        }
    }

    /// Waits (at most `limit`) until every attempt that ended has been
    /// recorded in the spool (shutdown: before the spool closes).
    pub async fn settled(&self, limit: Duration) {
        let start = crate::rt::clock::instant();
        while !self.finalizing.borrow().is_empty() && start.elapsed() < limit {
            monoio::time::sleep(Duration::from_millis(5)).await;
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
            // Out through the sender's pool; a DSN is no campaign's mail.
            tenant: env.tenant.clone(),
            campaign: None,
            // The report about REQUIRETLS mail quotes none of it (dsn::build),
            // so it can reach the sender without the requirement.
            requiretls: false,
            tls_not_required: false,
        };
        match self.spool.append_message(&dsn_env, b"", &dsn.body).await {
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
            (e.loc, e.remaining().collect::<Vec<u32>>(), e.progress.as_ref().map_or(0, |p| p.attempts()))
        }) else {
            return Ok(false);
        };
        let (dir, family) = self.spool.family();
        let (env, _) =
            crate::spool::read::read_message(&dir, family, loc).await.map_err(|e| e.to_string())?;
        let mut outcomes =
            RcptOutcome::all(&remaining, Outcome::Permanent, "5.0.0", "bounced by the administrator");
        for o in &mut outcomes {
            o.cause = Cause::Admin;
        }
        let a = Attempt { env: Rc::new(env), loc, attempts_before, remaining, groups_left: 0, outcomes };
        self.attempts.borrow_mut().remove(&id);
        self.clone().finalize(id, a, unix_secs()).await;
        Ok(true)
    }

    /// Up to `limit` queued messages, oldest first, read from the spool.
    pub async fn list(&self, limit: usize) -> Vec<Listed> {
        type Row = (QueueId, Location, u64, Option<(u32, u64, crate::spool::index::ErrorText)>);
        let mut entries: Vec<Row> = Vec::new();
        self.spool.for_each_entry(|id, e| {
            let p = e.progress.as_ref().map(|p| (p.attempts(), p.next_attempt(), p.last_error_shared()));
            entries.push((id, e.loc, e.received_at(), p));
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
                last_error: p.map(|p| p.2.to_string()).filter(|e| !e.is_empty()),
            });
        }
        out
    }
}

/// Keeps an unusable feedback report in `dir` for inspection: at most
/// `max` files there (anyone can mail the feedback address: junk must not
/// fill the spool's disk). Blocking; the path kept, or why not.
fn keep_rejected(
    dir: &std::path::Path,
    id: QueueId,
    body: &[u8],
    max: usize,
) -> std::io::Result<std::path::PathBuf> {
    if std::fs::read_dir(dir).is_ok_and(|rd| rd.count() >= max) {
        return Err(std::io::Error::other(format!("{} holds {max} reports already", dir.display())));
    }
    let path = dir.join(format!("{id}.eml"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&path, body)?;
    Ok(path)
}

/// One event per outcome of an attempt.
fn outcome_events(a: &Attempt, at_ms: u64) -> Vec<Event> {
    let attempt = a.attempts_before + 1;
    a.outcomes
        .iter()
        .map(|o| {
            let kind = match (o.outcome, o.cause) {
                (Outcome::Delivered, _) => EventType::Delivery,
                (Outcome::Temporary, _) => EventType::TransientFailure,
                (Outcome::Permanent, Cause::Expired) => EventType::Expiration,
                (Outcome::Permanent, Cause::Suppressed) => EventType::Suppressed,
                (Outcome::Permanent, Cause::Admin) => EventType::AdminBounce,
                (Outcome::Permanent, Cause::Reply) => EventType::Bounce,
            };
            let mut e = Event::about(kind, &a.env, u64::from(a.loc.len), at_ms);
            e.recipient = a.env.recipients.get(o.index as usize).map(|r| r.address.to_string());
            e.attempt = attempt;
            e.class = o.class;
            e.response = Some(Response { code: o.code, enhanced: o.status.clone(), text: o.text.clone() });
            if let Some(via) = &o.via {
                e.source = via.source.clone();
                e.next_hop = Some(via.next_hop.clone());
                e.tls = via.tls.clone();
            }
            if o.cause == Cause::Suppressed {
                e.reason = Some(decide::suppression_reason(&o.text).to_owned());
            }
            e.peer = None;
            e
        })
        .collect()
}

/// The `Feedback` event of a complaint (or unsubscribe): about the original
/// message and recipient the reference names.
pub fn feedback_event(r: &crate::feedback::token::Ref, feedback_type: &str, sender: Option<&str>) -> Event {
    Event {
        kind: EventType::Feedback,
        id: Some(r.id.clone()),
        timestamp: crate::events::Timestamp(unix_millis()),
        sender: sender.unwrap_or_default().to_owned(),
        recipient: r.recipient.clone(),
        recipients: Vec::new(),
        tenant: r.tenant.clone(),
        campaign: r.campaign.clone(),
        source: None,
        class: None,
        response: None,
        size: 0,
        attempt: 0,
        next_hop: None,
        tls: None,
        peer: None,
        feedback_type: Some(feedback_type.to_owned()),
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn rejected_reports_kept_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("feedback-rejected");
        let a = keep_rejected(&dir, QueueId(1), b"one", 2).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        keep_rejected(&dir, QueueId(2), b"two", 2).unwrap();
        let e = keep_rejected(&dir, QueueId(3), b"three", 2).unwrap_err();
        assert!(e.to_string().contains("holds 2 reports"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    }
}
