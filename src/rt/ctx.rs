//! What the threads of the server share and hand each other: the shared
//! state ([`Shared`]), each listener's settings ([`ListenerCtx`]), a
//! worker's state as its tasks see it ([`WorkerCtx`]), and the requests a
//! worker takes from other threads ([`Control`]). Kept apart from the worker
//! loop (`worker`) and the connection drivers (`conn`, `pop3`) that use them,
//! so neither depends on the other.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::inbox::Inbox;
use super::limits::{ConnLimits, MemoryBudget};
use super::live::Live;
use super::stage::{Broadcast, LocalSignal};
use crate::delivery::dest::Destinations;
use crate::delivery::owner::{DomainStatus, Listed, Owner};
use crate::delivery::{Job, JobResult};
use crate::envelope::QueueId;
use crate::metrics::Metrics;
use crate::smtp::session::{IdSource, SessionConfig};
use crate::spool::index::DomainCount;
use crate::spool::{MessageSummary, Spool, SpoolStats};

/// Requests from other threads (the admin API) to a worker.
#[derive(Debug)]
pub enum Control {
    /// Reply with this worker's queue summary.
    Queue(Arc<Inbox<WorkerQueue>>),
    /// Remove a message from the queue; reply whether this worker had it.
    Delete(QueueId, Arc<Inbox<Result<bool, String>>>),
    /// Reply with one message's summary, if this worker has it.
    Show(QueueId, Arc<Inbox<Option<MessageSummary>>>),
    /// A delivery job for one of this worker's destinations.
    Deliver(Box<Job>),
    /// The result of a job for one of this worker's messages.
    JobDone(Box<JobResult>),
    /// Retry every deferred message now; reply how many.
    Flush(Arc<Inbox<usize>>),
    /// Forget destination backoffs (first step of a flush, on every worker
    /// before any retries: a retried job may go to another worker's
    /// destination). Answers how many were cleared.
    ClearBackoff(Arc<Inbox<usize>>),
    /// Queue suspensions changed (a resume): plan parked messages again;
    /// reply with how many.
    Release(Arc<Inbox<usize>>),
    /// Bounce a message now; reply whether this worker had it.
    Bounce(QueueId, Arc<Inbox<Result<bool, String>>>),
    /// List up to N queued messages.
    List(usize, Arc<Inbox<Vec<Listed>>>),
    /// A new configuration is in force (SIGHUP).
    Reloaded,
}

/// One worker's share of `/queue`.
#[derive(Debug, Default)]
pub struct WorkerQueue {
    pub messages: usize,
    pub recipients: u64,
    pub domains: Vec<(String, DomainCount)>,
    /// Next attempt and last error by domain.
    pub status: HashMap<String, DomainStatus>,
    /// Messages waiting for a retry, attempts in flight.
    pub deferred: usize,
    pub in_flight: usize,
    pub outbound_connections: usize,
}

/// One listening socket, shared by all workers. Its settings come from the
/// live snapshot (see [`Live`]), so they follow reloads.
#[derive(Debug)]
pub struct ListenerCtx {
    /// This listener's place in the snapshot's `sessions`.
    pub index: usize,
    pub live: Arc<Live>,
    pub implicit_tls: bool,
    /// A POP3 listener (else SMTP, unless `http`).
    pub pop3: bool,
    /// An HTTP listener.
    pub http: bool,
}

impl ListenerCtx {
    pub fn session_config(&self) -> Arc<SessionConfig> {
        self.live.get().sessions[self.index].clone()
    }

    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.live.get().tls.clone()
    }

    /// Where POP3 finds the Maildirs (`[local] mail_dir`).
    pub fn mail_dir(&self) -> std::path::PathBuf {
        self.live.delivery().mail_dir.clone()
    }
}

/// What all threads share.
#[derive(Debug)]
pub struct Shared {
    /// What SIGHUP can change.
    pub live: Arc<Live>,
    pub dns_cache: Arc<crate::dns::cache::Cache>,
    pub dns_servers: Vec<std::net::SocketAddr>,
    pub dns_timeout: Duration,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub metrics: Arc<Metrics>,
    pub spool_stats: Arc<SpoolStats>,
    pub limits: Arc<ConnLimits>,
    pub memory: Arc<MemoryBudget>,
    pub stage: Arc<Broadcast>,
    pub inboxes: Vec<Arc<Inbox<Control>>>,
    /// Delivery events: the file and the webhooks.
    pub events: Arc<crate::events::log::EventLog>,
    /// The suppression list.
    pub suppression: Arc<dyn crate::suppress::Store>,
    /// The spool directory (files the admin thread writes: holds.json).
    pub spool_dir: std::path::PathBuf,
    /// `[redis]`: shared limits.
    pub redis: Option<Arc<crate::redis::client::Shared>>,
    /// The suppression list as kept in step with Redis, when it is.
    pub shared_suppression: Option<Arc<crate::suppress::shared::SharedStore>>,
    /// The `X-Ringpost-Ref` key when `[feedback] secret` is not set.
    pub feedback_key: Vec<u8>,
    /// Failed logins per client address (`[limits] auth_failures_per_ip`).
    pub auth_failures: Arc<std::sync::Mutex<crate::policy::AuthFailures>>,
}

/// Per-worker state visible to its tasks.
pub struct WorkerCtx {
    pub index: usize,
    pub spool: Spool,
    pub ids: IdSource,
    pub signal: LocalSignal,
    pub metrics: Arc<Metrics>,
    pub memory: Arc<MemoryBudget>,
    pub owner: Rc<Owner>,
    pub dests: Rc<Destinations>,
    /// Failed logins per client address, shared by all workers.
    pub auth_failures: Arc<std::sync::Mutex<crate::policy::AuthFailures>>,
    /// Connections open on this worker.
    pub(super) live: Cell<usize>,
    /// The drain, waiting for the last connection to close.
    pub(super) idle: RefCell<Option<Waker>>,
}

impl std::fmt::Debug for WorkerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtx").field("index", &self.index).field("live", &self.live.get()).finish()
    }
}

impl WorkerCtx {
    /// Whether logins from `ip` are refused now (counted when they are).
    pub fn auth_blocked(&self, ip: std::net::IpAddr) -> bool {
        let blocked =
            self.auth_failures.lock().unwrap_or_else(|p| p.into_inner()).blocked(ip, super::clock::instant());
        if blocked {
            crate::metrics::inc(&self.metrics.auth_throttled);
        }
        blocked
    }

    /// Counts a failed login from `ip`; says so once it is refused.
    pub fn auth_failed(&self, ip: std::net::IpAddr) {
        let now_blocked =
            self.auth_failures.lock().unwrap_or_else(|p| p.into_inner()).failed(ip, super::clock::instant());
        if now_blocked {
            tracing::warn!(client = %ip, "too many failed logins: this address is refused for up to 10 minutes");
        }
    }

    pub(super) fn opened(&self) {
        self.live.set(self.live.get() + 1);
    }

    pub(super) fn closed(&self) {
        self.live.set(self.live.get() - 1);
        if self.live.get() == 0 {
            if let Some(w) = self.idle.borrow_mut().take() {
                w.wake();
            }
        }
    }

    pub(super) async fn all_closed(&self) {
        poll_fn(|cx| {
            if self.live.get() == 0 {
                return Poll::Ready(());
            }
            *self.idle.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
