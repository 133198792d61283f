//! The destinations a worker owns (by hash of the next hop's key): a ready
//! queue, a connection limit, messages per connection, a message rate and a
//! backoff while the destination cannot be reached. Connections are reused
//! for every queued job of the destination.

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
use super::{outcome_of, status_of, Job, JobResult, Outcome, RcptOutcome};
use crate::metrics::{inc, Metrics};
use crate::rt::clock::instant;
use crate::rt::live::Live;

/// How long an idle connection waits for another job before QUIT.
const IDLE: Duration = Duration::from_millis(500);

/// Where results go: (owner worker, result).
pub type Reporter = Rc<dyn Fn(usize, JobResult)>;

struct Dest {
    hop: RefCell<Arc<NextHop>>,
    source: Option<Arc<Source>>,
    queue: RefCell<VecDeque<Job>>,
    active: Cell<usize>,
    backoff_until: Cell<Option<Instant>>,
    /// Rate limit: the earliest time the next message may start.
    next_send: Cell<Instant>,
    idle: RefCell<Vec<Waker>>,
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
    map: RefCell<HashMap<String, Rc<Dest>>>,
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
    ) -> Rc<Destinations> {
        Rc::new(Destinations {
            live,
            tls,
            spool_dir,
            report,
            metrics,
            map: RefCell::new(HashMap::new()),
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
    pub fn clear_backoff(self: &Rc<Self>) {
        let dests: Vec<(String, Rc<Dest>)> =
            self.map.borrow().iter().map(|(k, d)| (k.clone(), d.clone())).collect();
        for (key, dest) in dests {
            dest.backoff_until.set(None);
            self.maybe_start(&key, &dest);
        }
    }

    /// Takes a job for one of our destinations.
    pub fn submit(self: &Rc<Self>, job: Job) {
        let now = instant();
        let key = job.destination();
        let dest = self
            .map
            .borrow_mut()
            .entry(key.clone())
            .or_insert_with(|| {
                Rc::new(Dest {
                    hop: RefCell::new(job.hop.clone()),
                    source: job.source.clone(),
                    queue: RefCell::new(VecDeque::new()),
                    active: Cell::new(0),
                    backoff_until: Cell::new(None),
                    next_send: Cell::new(now),
                    idle: RefCell::new(Vec::new()),
                })
            })
            .clone();
        *dest.hop.borrow_mut() = job.hop.clone();
        if self.draining.get() {
            return self.fail(job, "4.3.2", "the server is shutting down");
        }
        if dest.backoff_until.get().is_some_and(|t| t > now) {
            return self.fail(
                job,
                "4.4.1",
                &format!("{key} was unreachable moments ago; not trying again yet"),
            );
        }
        dest.queue.borrow_mut().push_back(job);
        dest.wake_idle();
        self.maybe_start(&key, &dest);
    }

    fn fail(&self, job: Job, status: &str, text: &str) {
        let outcomes = RcptOutcome::all(&job.rcpts, Outcome::Temporary, status, text);
        (self.report)(job.owner, JobResult { id: job.id, domain: job.domain, outcomes });
    }

    /// Opens connections while jobs wait and the limit allows.
    fn maybe_start(self: &Rc<Self>, key: &str, dest: &Rc<Dest>) {
        let limit = self.live.delivery().connections_per_destination.max(1);
        while dest.active.get() < limit && dest.active.get() < dest.queue.borrow().len() {
            dest.active.set(dest.active.get() + 1);
            self.open.set(self.open.get() + 1);
            monoio::spawn(self.clone().connection(key.to_owned(), dest.clone()));
        }
    }

    /// One connection: open, send queued jobs, QUIT.
    async fn connection(self: Rc<Self>, key: String, dest: Rc<Dest>) {
        let hop = dest.hop.borrow().clone();
        let cfg = self.live.delivery();
        match Outbound::open(&hop, dest.source.as_deref(), &cfg, &self.tls).await {
            Err(e) => {
                tracing::warn!(target: "delivery", destination = %key, error = %e, "destination unreachable");
                dest.backoff_until.set(Some(instant() + cfg.destination_backoff));
                let jobs: Vec<Job> = dest.queue.borrow_mut().drain(..).collect();
                for job in jobs {
                    self.fail(job, "4.4.1", &e);
                }
            }
            Ok(mut conn) => {
                dest.backoff_until.set(None);
                let mut sent = 0;
                let mut alive = true;
                while sent < cfg.messages_per_connection.max(1) && !self.draining.get() {
                    let Some(job) = next_job(&dest).await else { break };
                    self.pace(&dest).await;
                    alive = self.deliver(&mut conn, job).await;
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
        dest.active.set(dest.active.get() - 1);
        self.open.set(self.open.get() - 1);
        if !dest.queue.borrow().is_empty() && dest.backoff_until.get().is_none() && !self.draining.get() {
            self.maybe_start(&key, &dest);
        } else if dest.active.get() == 0
            && dest.queue.borrow().is_empty()
            && dest.backoff_until.get().is_none()
        {
            self.map.borrow_mut().remove(&key);
        }
        if self.open.get() == 0 {
            if let Some(w) = self.drained.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Waits for the destination's rate limit.
    async fn pace(&self, dest: &Dest) {
        let rate = self.live.delivery().rate_per_destination;
        if rate <= 0.0 {
            return;
        }
        let now = instant();
        let at = dest.next_send.get().max(now);
        dest.next_send.set(at + Duration::from_secs_f64(1.0 / rate));
        if at > now {
            monoio::time::sleep_until(at.into()).await;
        }
    }

    /// Sends one job; reports its result. False if the connection died.
    async fn deliver(&self, conn: &mut Outbound, job: Job) -> bool {
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
        let (outcomes, alive) = match conn.send(msg, &content).await {
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
                        })
                    })
                    .collect();
                (outcomes, true)
            }
            Err(f) => {
                let text = format!("{remote}: {f}");
                (RcptOutcome::all(&job.rcpts, Outcome::Temporary, "4.4.2", &text), false)
            }
        };
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
        (self.report)(job.owner, JobResult { id: job.id, domain: job.domain, outcomes });
        alive
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
