//! One worker: an OS thread pinned to a core, running its own monoio runtime
//! on the io_uring driver. It owns its accepted connections and its spool
//! family; other threads reach it only through its [`Inbox`].

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use monoio::blocking::DefaultThreadPool;
use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use super::conn;
use super::ctx::{Control, ListenerCtx, Shared, WorkerCtx, WorkerQueue};
use super::inbox::Inbox;
use super::limits::ConnLimits;
use super::stage::{Broadcast, LocalSignal, Stage};
use crate::delivery::dest::Destinations;
use crate::delivery::owner::Owner;
use crate::delivery::Job;
use crate::envelope::{QueueId, QueueIdGen};
use crate::metrics::inc;
use crate::policy::canonical;
use crate::spool::recover::Family;
use crate::spool::{AppendError, Spool};

/// Everything a worker thread starts with.
pub struct WorkerSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<(std::net::TcpListener, Arc<ListenerCtx>)>,
    pub family: Family,
    pub spool_dir: PathBuf,
    pub fsync: bool,
    pub segment_size: u64,
    pub max_id: QueueId,
    pub shared: Arc<Shared>,
    pub pool: DefaultThreadPool,
    /// Told once the worker serves (or why it cannot).
    pub ready: mpsc::Sender<Result<(), String>>,
}

impl std::fmt::Debug for WorkerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSetup").field("index", &self.index).field("cpu", &self.cpu).finish()
    }
}

/// io_uring submission queue size per worker.
pub const RING_ENTRIES: u32 = 2048;

/// The worker thread's body. Returns when the server has drained.
pub fn run(setup: WorkerSetup) {
    if let Some(cpu) = setup.cpu {
        pin_to_cpu(cpu);
    }
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .enable_timer()
        .attach_thread_pool(Box::new(setup.pool.clone()))
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let msg = format!("worker {}: cannot start an io_uring runtime: {e}", setup.index);
            let _ = setup.ready.send(Err(msg));
            return;
        }
    };
    rt.block_on(serve(setup));
}

async fn serve(setup: WorkerSetup) {
    let shared = setup.shared.clone();
    let index = setup.index;
    let workers = shared.inboxes.len();
    let spool = Spool::new(
        setup.spool_dir.clone(),
        setup.family,
        setup.fsync,
        setup.segment_size,
        shared.spool_stats.clone(),
    );
    let committer = monoio::spawn(spool.clone().run_committer());
    let ids = Rc::new(RefCell::new(QueueIdGen::new(index as u8, setup.max_id)));
    let live = shared.live.clone();
    let resolver = crate::dns::Resolver::new(
        shared.dns_cache.clone(),
        shared.dns_servers.clone(),
        shared.dns_timeout,
        2,
    );
    // Destinations of this worker; results go back to their owner.
    let dests = {
        let inboxes = shared.inboxes.clone();
        let me: Rc<RefCell<Option<Rc<Owner>>>> = Rc::new(RefCell::new(None));
        let me2 = me.clone();
        let report: crate::delivery::dest::Reporter = Rc::new(move |owner, result| {
            if owner == index {
                if let Some(o) = me2.borrow().as_ref() {
                    o.job_done(result);
                }
            } else {
                inboxes[owner].send(Control::JobDone(Box::new(result)));
            }
        });
        let dests = Destinations::new(
            live.clone(),
            shared.client_tls.clone(),
            setup.spool_dir.clone(),
            report,
            shared.metrics.clone(),
            shared.redis.clone(),
        );
        (dests, me)
    };
    let (dests, owner_slot) = dests;
    let dispatch: crate::delivery::owner::Dispatcher = {
        let (inboxes, dests) = (shared.inboxes.clone(), dests.clone());
        Rc::new(move |job: Job| {
            let target = destination_worker(&job.budget(), workers);
            if target == index {
                dests.submit(job);
            } else {
                inboxes[target].send(Control::Deliver(Box::new(job)));
            }
        })
    };
    let owner = Owner::new(
        index,
        live,
        spool.clone(),
        resolver,
        dispatch,
        ids.clone(),
        shared.metrics.clone(),
        shared.events.clone(),
        shared.suppression.clone(),
    );
    *owner_slot.borrow_mut() = Some(owner.clone());
    let w = Rc::new(WorkerCtx {
        index,
        spool: spool.clone(),
        ids,
        signal: LocalSignal::default(),
        metrics: shared.metrics.clone(),
        memory: shared.memory.clone(),
        auth_failures: shared.auth_failures.clone(),
        owner: owner.clone(),
        dests: dests.clone(),
        live: Cell::new(0),
        idle: RefCell::new(None),
    });
    monoio::spawn(relay_stage(w.clone(), shared.stage.clone()));
    monoio::spawn(control_loop(w.clone(), shared.inboxes[index].clone()));
    let mut accepts = Vec::new();
    for (std_listener, l) in setup.listeners {
        match TcpListener::from_std(std_listener) {
            Ok(listener) => {
                accepts.push(monoio::spawn(accept_loop(listener, l, w.clone(), shared.limits.clone())))
            }
            Err(e) => {
                let _ = setup.ready.send(Err(format!("worker {index}: listener: {e}")));
                return;
            }
        }
    }
    owner.start();
    // One worker picks up what `ringpost sendmail` leaves in the maildrop.
    let pickup = (index == 0)
        .then(|| monoio::spawn(super::pickup::run(w.clone(), setup.spool_dir.clone(), shared.live.clone())));
    let _ = setup.ready.send(Ok(()));
    for a in accepts {
        a.await;
    }
    // Draining: no new attempts; let outbound connections finish their
    // current message (until the grace period ends); inbound sessions finish.
    owner.stop();
    monoio::select! {
        _ = dests.drain() => {}
        _ = w.signal.changed(Stage::Draining) => {}
    }
    w.all_closed().await;
    if let Some(p) = pickup {
        p.await;
    }
    // Attempts that ended are recorded before the spool closes (a
    // delivered message whose end was not recorded is sent again).
    owner.settled(SETTLE_LIMIT).await;
    spool.close();
    committer.await;
    tracing::debug!(worker = index, "worker drained");
}

/// How long a stopping worker waits for ended attempts to be recorded
/// (outcome events are synced at most 50 ms apart).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The worker that owns a destination: a stable hash of its key, so every
/// worker sends a destination's jobs to the same place.
pub fn destination_worker(key: &str, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same on every thread and run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

/// Mirrors the process-wide stage into this worker's local signal.
async fn relay_stage(w: Rc<WorkerCtx>, stage: Arc<Broadcast>) {
    let mut seen = Stage::Running;
    loop {
        seen = stage.changed(w.index, seen).await;
        w.signal.set(seen);
        if seen >= Stage::Closing {
            return;
        }
    }
}

async fn control_loop(w: Rc<WorkerCtx>, inbox: Arc<Inbox<Control>>) {
    loop {
        match inbox.recv().await {
            Control::Queue(reply) => {
                let (messages, recipients) = w.spool.counts();
                let (deferred, in_flight) = w.owner.counts();
                reply.send(WorkerQueue {
                    messages,
                    recipients,
                    domains: w.spool.domains(),
                    status: w.owner.domain_status(),
                    deferred,
                    in_flight,
                    outbound_connections: w.dests.connections(),
                });
            }
            Control::Deliver(job) => w.dests.submit(*job),
            Control::JobDone(result) => w.owner.job_done(*result),
            Control::ClearBackoff(reply) => reply.send(w.dests.clear_backoff()),
            Control::Flush(reply) => reply.send(w.owner.flush()),
            Control::Release(reply) => reply.send(w.owner.release_parked()),
            Control::Bounce(id, reply) => {
                let owner = w.owner.clone();
                monoio::spawn(async move { reply.send(owner.bounce(id).await) });
            }
            Control::List(limit, reply) => {
                let owner = w.owner.clone();
                monoio::spawn(async move { reply.send(owner.list(limit).await) });
            }
            Control::Show(id, reply) => reply.send(w.spool.summary(id)),
            Control::Reloaded => w.owner.config_changed(),
            Control::Delete(id, reply) => {
                if !w.spool.contains(id) {
                    reply.send(Ok(false));
                    continue;
                }
                let ticket = w.spool.finish(id);
                monoio::spawn(async move {
                    let r = match ticket.await {
                        Ok(Ok(_)) => Ok(true),
                        Ok(Err(AppendError::NotFound)) => Ok(false),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("spool closed".into()),
                    };
                    reply.send(r);
                });
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, l: Arc<ListenerCtx>, w: Rc<WorkerCtx>, limits: Arc<ConnLimits>) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = w.signal.changed(Stage::Running) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ip = canonical(peer.ip());
                let exempt = l.session_config().policy.is_trusted(ip);
                match limits.try_acquire(ip, exempt) {
                    Ok(guard) => {
                        inc(&w.metrics.connections_accepted);
                        w.opened();
                        let (l, w) = (l.clone(), w.clone());
                        monoio::spawn(async move {
                            if l.pop3 {
                                super::pop3::serve(stream, peer, l, w.clone()).await;
                            } else if l.http {
                                super::http::serve(stream, peer, l, w.clone()).await;
                            } else {
                                conn::serve(stream, peer, l, w.clone()).await;
                            }
                            drop(guard);
                            w.closed();
                        });
                    }
                    Err(hit) => {
                        inc(&w.metrics.connections_refused);
                        tracing::debug!(%peer, ?hit, "connection refused by limit");
                        monoio::spawn(refuse(stream, l.clone()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM)) {
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Answers a connection over the limits in its listener's protocol, and
/// closes it.
async fn refuse(mut stream: TcpStream, l: Arc<ListenerCtx>) {
    let mut reply = Vec::new();
    if l.pop3 {
        reply.extend_from_slice(crate::pop3::session::TOO_MANY_CONNECTIONS);
    } else if l.http {
        reply.extend_from_slice(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\nConnection: close\r\n\r\n",
        );
    } else {
        crate::smtp::reply::canned::TOO_MANY_CONNECTIONS.write_to(&mut reply);
    }
    let _ = monoio::time::timeout(Duration::from_secs(10), stream.write_all(reply)).await;
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write into it, and
    // sched_setaffinity reads it. pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, "could not pin worker to its CPU");
        }
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in pin_to_cpu; sched_getaffinity writes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}
