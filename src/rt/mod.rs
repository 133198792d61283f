//! The I/O shell: worker threads on io_uring, listeners, signals, shutdown.
//!
//! ```text
//!   main thread: config, spool recovery, bind, spawn, then sigwait
//!        |  SIGTERM/SIGINT: stage DRAINING, after the grace period CLOSING
//!        |  SIGHUP: reload what can change without a restart
//!        v
//!   worker N (pinned, monoio IoUringDriver): accept -> conn::serve -> Session
//!                                            spool family N, group commit
//!   admin thread (monoio IoUringDriver): /health /metrics /queue
//! ```

pub mod clock;
pub mod conn;
pub mod ctx;
pub mod driver;
pub mod http;
pub mod inbox;
pub mod inject;
pub mod limits;
pub mod live;
pub mod pickup;
pub mod pop3;
pub mod stage;
pub mod store;
pub mod transport;
pub mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::config::{Config, ListenerConfig, ListenerKind, TlsMode};
use crate::dkim::{Key, Signer, Signers};
use crate::metrics::{inc, Metrics};
use crate::policy::Policy;
use crate::smtp::session::{Role, SessionConfig};
use crate::spool::{self, SpoolStats};
use ctx::{Control, ListenerCtx, Shared};
use inbox::Inbox;
use limits::{ConnLimits, MemoryBudget};
use live::{Live, Snapshot};
use stage::{Broadcast, Stage};
use worker::WorkerSetup;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration (exit code 2).
    #[error("{0}")]
    Config(String),
    /// Could not run (exit code 1).
    #[error("{0}")]
    Runtime(String),
}

/// Builds the relay policy from the config.
pub fn policy(config: &Config) -> Policy {
    let users = config.users.iter().map(|u| (u.get_ref().address.clone(), u.get_ref().password.clone()));
    let tenants = config.users.iter().filter_map(|u| {
        let u = u.get_ref();
        Some((u.address.clone(), u.tenant.clone()?))
    });
    Policy::new(&config.relay.local_domains, &config.relay.relay_domains, &config.relay.relay_networks, users)
        .with_tenants(tenants)
        .with_feedback(config.feedback.as_ref().map_or(&[][..], |f| &f.addresses))
}

/// Session settings for one listener.
pub fn session_config(
    config: &Config,
    l: &ListenerConfig,
    policy: Arc<Policy>,
    suppression: Arc<dyn crate::suppress::Store>,
) -> SessionConfig {
    SessionConfig {
        hostname: config.hostname(),
        role: if l.kind == ListenerKind::Submission { Role::Submission } else { Role::Mx },
        starttls: l.tls == TlsMode::Starttls,
        max_message_size: config.limits.message_size,
        max_recipients: config.limits.recipients,
        max_line: config.limits.line_length,
        command_timeout: config.limits.command_timeout,
        data_timeout: config.limits.data_timeout,
        max_errors: config.limits.errors,
        policy,
        suppression: Some(suppression),
    }
}

/// Delivery settings from the config.
pub fn delivery_config(config: &Config, file_key: &[u8]) -> crate::delivery::DeliveryConfig {
    let d = &config.delivery;
    crate::delivery::DeliveryConfig {
        hostname: config.hostname().to_string(),
        port: d.port,
        retry: d.retry.clone(),
        max_age: d.max_age,
        delay_warning: d.delay_warning,
        connect_timeout: d.connect_timeout,
        command_timeout: d.command_timeout,
        data_timeout: d.data_timeout,
        final_timeout: d.final_timeout,
        connections_per_destination: d.connections_per_destination,
        messages_per_connection: d.messages_per_connection,
        rate_per_destination: d.rate_per_destination,
        destination_backoff: d.destination_backoff,
        starttls: d.starttls,
        // Checked when the file was read: a bad ca_file is a config error.
        mta_sts: d
            .mta_sts
            .then(|| crate::rt::transport::verifying_client_config(d.ca_file.as_deref()).ok())
            .flatten(),
        dane: d.dane,
        tls_report_interval: d.tls_report_interval,
        verified_tls: crate::rt::transport::verifying_client_config(d.ca_file.as_deref()).ok(),
        routes: crate::delivery::route::Routes::new(&config.routes),
        local_domains: local_domains(config),
        mail_dir: config.local.mail_dir.clone(),
        // Checked when the file was read: an unknown user is a config error.
        mail_owner: config.local.user.as_deref().and_then(|u| crate::delivery::local::lookup_user(u).ok()),
        hold: d.hold,
        egress: Arc::new(crate::delivery::egress::Egress::new(config)),
        // Checked when the file was loaded.
        classifier: Arc::new(
            config.classifier().unwrap_or_else(|_| crate::delivery::classify::Classifier::defaults()),
        ),
        feedback: config.feedback.as_ref().map(|f| {
            let key = f.secret.as_deref().map_or(file_key, str::as_bytes);
            Arc::new(crate::feedback::Feedback::new(&f.addresses, key))
        }),
        shaping: Arc::new(crate::delivery::shaping::Shaping::new(
            config.shaping_rules(),
            crate::delivery::shaping::Limits {
                connections: d.connections_per_destination,
                messages_per_connection: d.messages_per_connection,
                rate: (d.rate_per_destination > 0.0).then(|| crate::delivery::shaping::Rate {
                    count: 1,
                    per: Duration::from_secs_f64(1.0 / d.rate_per_destination),
                }),
                shared: false,
            },
        )),
    }
}

/// The injection API's tokens.
fn http_tokens(config: &Config) -> Arc<crate::auth::Tokens> {
    let tokens = config.http_tokens.iter().map(|t| {
        let t = t.get_ref();
        crate::auth::Token { name: t.name.clone(), hash: t.hash.clone(), tenant: t.tenant.clone() }
    });
    Arc::new(crate::auth::Tokens::new(tokens.collect()))
}

fn unsubscribe(config: &Config) -> Option<Arc<crate::feedback::unsubscribe::Unsubscribe>> {
    let u = config.unsubscribe.as_ref()?;
    Some(Arc::new(crate::feedback::unsubscribe::Unsubscribe::new(&u.base_url, &u.secret)))
}

/// The key of `X-Ringpost-Ref` when `[feedback] secret` is not set: 32
/// random bytes kept in `<spool dir>/feedback.key` (made once, durably), so
/// references stay valid across restarts.
fn feedback_key(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join("feedback.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => return Err(format!("{}: too short; remove it to make a new one", path.display())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", path.display())),
        Err(_) => {}
    }
    let mut key = vec![0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| format!("random key: {e}"))?;
    let tmp = dir.join("feedback.key.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))?;
    spool::recover::sync_dir(dir).map_err(|e| e.to_string())?;
    Ok(key)
}

/// Checks that every `[[source]]` address is one of ours: a socket can be
/// bound to it. A source that cannot be used is a config error at startup
/// (and a refused reload), not a stream of failed deliveries.
fn check_sources(config: &Config) -> Result<(), String> {
    for (i, s) in config.sources.iter().enumerate() {
        let s = s.get_ref();
        let domain = if s.address.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .map_err(|e| format!("source[{i}] {}: {e}", s.name))?;
        sock.bind(&std::net::SocketAddr::new(s.address, 0).into())
            .map_err(|e| format!("source[{i}] {}: cannot bind {}: {e}", s.name, s.address))?;
    }
    Ok(())
}

/// `[relay] local_domains`, in lower case.
fn local_domains(config: &Config) -> std::collections::HashSet<String> {
    config.relay.local_domains.iter().map(|d| d.to_lowercase()).collect()
}

/// Reads every `[[dkim]]` key. An entry whose key does not load is an error
/// naming its file.
fn load_dkim(config: &Config) -> Result<Arc<Signers>, String> {
    let mut signers = Vec::new();
    for (i, d) in config.dkim.iter().enumerate() {
        let d = d.get_ref();
        let pem = std::fs::read(&d.key).map_err(|e| format!("dkim[{i}].key: {}: {e}", d.key.display()))?;
        let key = Key::from_pem(&pem).map_err(|e| format!("dkim[{i}].key: {}: {e}", d.key.display()))?;
        signers.push(Signer::new(&d.domain, &d.selector, key, &d.headers));
    }
    Ok(Arc::new(Signers::new(signers)))
}

fn load_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match &config.tls {
        Some(t) => transport::load_server_config(&t.cert, &t.key).map(Some),
        None => Ok(None),
    }
}

/// One socket per worker per listener, all with SO_REUSEPORT on one address.
fn bind_all(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers {
        let domain = if addr.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        // Port 0: every further socket joins the port the first one got.
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Lifecycle notifications for a service manager (systemd's sd_notify).
pub trait Notify {
    /// `READY=1`, `RELOADING=1`, `STOPPING=1`, ...
    fn notify(&self, state: &str);
}

/// No service manager.
#[derive(Debug)]
pub struct NoNotify;

impl Notify for NoNotify {
    fn notify(&self, _state: &str) {}
}

/// Runs the server until SIGTERM/SIGINT and a clean drain.
pub fn serve(config: Config, config_path: Option<PathBuf>, notify: &dyn Notify) -> Result<(), ServeError> {
    block_signals();
    if !monoio::utils::detect_uring() {
        return Err(ServeError::Runtime(
            "io_uring is not available on this kernel (or is disabled by sysctl kernel.io_uring_disabled, \
             seccomp or a container policy); ringpost requires io_uring and does not fall back to epoll"
                .into(),
        ));
    }
    let workers = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if workers > 255 {
        return Err(ServeError::Config("threads: at most 255 workers".into()));
    }
    let tls = load_tls(&config).map_err(|e| ServeError::Config(format!("[tls]: {e}")))?;
    let dkim = load_dkim(&config).map_err(ServeError::Config)?;
    check_sources(&config).map_err(ServeError::Config)?;
    for s in config.dkim.iter() {
        let s = s.get_ref();
        tracing::info!(domain = %s.domain, selector = %s.selector, key = %s.key.display(), "DKIM signing");
    }

    let dir = config.spool.dir.clone();
    let lock = spool::recover::lock(&dir).map_err(|e| ServeError::Runtime(e.to_string()))?;
    let recovery =
        spool::recover::scan(&dir).map_err(|e| ServeError::Runtime(format!("spool recovery: {e}")))?;
    let max_id = recovery.max_id;
    let (families, report) = spool::recover::assign(&dir, recovery, workers as u32)
        .map_err(|e| ServeError::Runtime(format!("spool recovery: {e}")))?;
    for (path, at, dropped) in &report.torn {
        tracing::warn!(path = %path.display(), valid_bytes = at, dropped_bytes = dropped,
            "spool segment had a torn tail (a batch never acknowledged)");
    }
    for (path, at, bytes) in &report.corrupt {
        tracing::error!(path = %path.display(), offset = at, bytes,
            "spool segment was damaged; the records in these bytes are lost, the rest were recovered");
    }

    let (file_store, loaded) = crate::suppress::file::FileStore::open(&dir.join("suppression.jsonl"))
        .map_err(|e| ServeError::Runtime(format!("suppression list: {e}")))?;
    // [redis]: shared limits, and the suppression list kept in step.
    let (redis, shared_suppression) = match &config.redis {
        None => (None, None),
        Some(r) => {
            let url = crate::redis::Url::parse(&r.url)
                .map_err(|e| ServeError::Config(format!("redis.url: {e}")))?;
            let client = crate::redis::client::Client::start(url.clone(), r.timeout)
                .map_err(|e| ServeError::Runtime(format!("cannot start the redis thread: {e}")))?;
            let store = crate::suppress::shared::SharedStore::start(
                file_store.clone(),
                client.clone(),
                url,
                &r.prefix,
            )
            .map_err(|e| ServeError::Runtime(format!("cannot start the suppression sync thread: {e}")))?;
            let node = format!("{}:{}", config.hostname(), std::process::id());
            let shared =
                crate::redis::client::Shared { client, prefix: r.prefix.clone(), nodes: r.nodes, node };
            (Some(Arc::new(shared)), Some(store))
        }
    };
    let suppression: Arc<dyn crate::suppress::Store> = match &shared_suppression {
        Some(s) => s.clone(),
        None => file_store,
    };
    let policy = Arc::new(policy(&config));
    let sessions = config
        .listeners
        .iter()
        .map(|l| Arc::new(session_config(&config, l.get_ref(), policy.clone(), suppression.clone())));
    let feedback_key = feedback_key(&dir).map_err(ServeError::Runtime)?;
    pickup::prepare(&dir)
        .map_err(|e| ServeError::Runtime(format!("cannot prepare the maildrop in {}: {e}", dir.display())))?;
    let delivery = delivery_config(&config, &feedback_key);
    let live = Live::new(Snapshot {
        sessions: sessions.collect(),
        tls,
        delivery: Arc::new(delivery),
        dkim,
        unsubscribe: unsubscribe(&config),
        http_tokens: http_tokens(&config),
        inject_size: config.limits.inject_size,
    });
    let mut bound = Vec::new();
    let mut ctxs = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let l = l.get_ref();
        let sockets = bind_all(l.address, workers)
            .map_err(|e| ServeError::Runtime(format!("cannot listen on {}: {e}", l.address)))?;
        let local = sockets[0].local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;
        bound.push((local, l.clone(), sockets));
        ctxs.push(Arc::new(ListenerCtx {
            index,
            live: live.clone(),
            implicit_tls: l.tls == TlsMode::Implicit,
            pop3: l.kind == ListenerKind::Pop3,
            http: l.kind == ListenerKind::Http,
        }));
    }

    let dns_servers = if config.delivery.dns_servers.is_empty() {
        crate::dns::servers_from_resolv_conf(Path::new("/etc/resolv.conf"))
    } else {
        config.delivery.dns_servers.clone()
    };
    if dns_servers.is_empty() {
        tracing::warn!("no DNS servers (delivery.dns_servers is empty and /etc/resolv.conf names none): MX lookups will fail");
    }
    let client_tls = transport::opportunistic_client_config().map_err(ServeError::Runtime)?;
    let metrics = Arc::new(Metrics::default());
    // Known MTA-STS policies, before any worker delivers.
    *metrics.mta_sts.lock().unwrap_or_else(|p| p.into_inner()) =
        crate::delivery::owner::load_sts_policies(&dir, crate::rt::clock::unix_secs());
    *metrics.queue_holds.lock().unwrap_or_else(|p| p.into_inner()) =
        crate::admin::load_holds(&dir).map_err(|e| ServeError::Runtime(format!("queue suspensions: {e}")))?;
    load_automation(&dir, &metrics).map_err(ServeError::Runtime)?;
    start_automation_saver(&dir, &metrics).map_err(ServeError::Runtime)?;
    let events = crate::events::log::EventLog::start(&dir, config.event_settings(), metrics.clone())
        .map_err(|e| ServeError::Config(format!("[events]: {e}")))?;
    let shared = Arc::new(Shared {
        live: live.clone(),
        dns_cache: Arc::new(crate::dns::cache::Cache::new(config.delivery.dns_cache_size)),
        dns_servers,
        dns_timeout: config.delivery.dns_timeout,
        client_tls,
        metrics,
        spool_stats: Arc::new(SpoolStats {
            recovery_corrupt: (report.corrupt.len() as u64).into(),
            recovery_undecodable: (report.bad_records as u64).into(),
            ..SpoolStats::default()
        }),
        limits: ConnLimits::new(config.limits.connections, config.limits.connections_per_ip),
        memory: MemoryBudget::new(usize::try_from(config.limits.message_memory).unwrap_or(usize::MAX)),
        stage: Broadcast::new(workers),
        inboxes: (0..workers).map(|_| Arc::new(Inbox::new())).collect(),
        events,
        suppression,
        spool_dir: dir.clone(),
        redis,
        shared_suppression,
        feedback_key,
        auth_failures: Arc::new(std::sync::Mutex::new(crate::policy::AuthFailures::new(
            config.limits.auth_failures_per_ip as usize,
        ))),
    });
    let serving = Arc::new(AtomicBool::new(false));
    let admin_addr = crate::admin::start(
        config.admin.address,
        config.admin.token.clone(),
        shared.clone(),
        serving.clone(),
    )
    .map_err(|e| ServeError::Runtime(format!("cannot listen on {} (admin): {e}", config.admin.address)))?;

    let cpus = worker::allowed_cpus();
    // The blocking pool runs file work (Maildirs), password checks and RSA
    // DKIM signatures, the last two CPU-bound: one thread per CPU, so
    // signing can use every core, not only the worker's.
    let pool = monoio::blocking::DefaultThreadPool::new(cpus.len().max(2));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut per_worker_sockets: Vec<Vec<(std::net::TcpListener, Arc<ListenerCtx>)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for ((_, _, sockets), ctx) in bound.iter_mut().zip(&ctxs) {
        for (w, s) in sockets.drain(..).enumerate() {
            per_worker_sockets[w].push((s, ctx.clone()));
        }
    }
    let mut handles = Vec::new();
    for (index, (sockets, family)) in per_worker_sockets.into_iter().zip(families).enumerate() {
        let setup = WorkerSetup {
            index,
            cpu: if cpus.is_empty() { None } else { Some(cpus[index % cpus.len()]) },
            listeners: sockets,
            family,
            spool_dir: dir.clone(),
            fsync: config.spool.fsync,
            segment_size: config.spool.segment_size,
            max_id,
            shared: shared.clone(),
            pool: pool.clone(),
            ready: ready_tx.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("ringpost-w{index}"))
            .spawn(move || worker::run(setup))
            .map_err(|e| ServeError::Runtime(format!("cannot start worker thread: {e}")))?;
        handles.push(h);
    }
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ServeError::Runtime(e)),
            Err(_) => return Err(ServeError::Runtime("a worker died while starting".into())),
        }
    }
    serving.store(true, Ordering::Release);

    for (addr, l, _) in &bound {
        let kind = format!("{:?}", l.kind).to_lowercase();
        let tls = format!("{:?}", l.tls).to_lowercase();
        println!("ringpost: listening {kind} {addr} tls={tls}");
    }
    println!("ringpost: admin http://{admin_addr}");
    println!(
        "ringpost: spool {} fsync={} ({} messages, {} recipients recovered from {} segments)",
        dir.display(),
        if config.spool.fsync { "on" } else { "off" },
        report.messages,
        report.recipients,
        report.segments
    );
    println!("ringpost: suppression list: {} entries", loaded.entries);
    println!(
        "ringpost: {workers} workers, io_uring driver (monoio IoUringDriver, {} entries per ring)",
        worker::RING_ENTRIES
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    notify.notify("READY=1");
    let mut reload = Reload { config, path: config_path, shared: shared.clone() };
    wait_for_shutdown(&shared, &mut reload, notify);
    for h in handles {
        if h.join().is_err() {
            return Err(ServeError::Runtime("a worker thread panicked".into()));
        }
    }
    // Events handed over during the drain reach the disk before we exit.
    shared.events.flush(Duration::from_secs(5));
    // Automation state changed in the last second is kept too.
    save_automation(&dir, &shared.metrics);
    drop(lock);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Where shaping automation's state is kept across restarts.
const AUTOMATION_FILE: &str = "automation.json";

/// Loads what shaping automation had in force before the last stop: tenant
/// holds, budget suspensions and lowered rates that have not ended yet. A
/// file that cannot be read is a startup error naming it.
fn load_automation(spool: &Path, metrics: &Metrics) -> Result<(), String> {
    let path = spool.join(AUTOMATION_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let now = crate::rt::clock::unix_secs();
    let suspended = metrics.automation.load(&text, &metrics.tenant_holds, now).map_err(|e| {
        format!(
            "{}: {e} (fix it, or remove it to forget what shaping automation had in force)",
            path.display()
        )
    })?;
    let mut s = metrics.suspensions.lock().unwrap_or_else(|p| p.into_inner());
    for (source, key, until, why) in suspended {
        let source = if source.is_empty() { "default".to_owned() } else { source };
        s.insert((source, key), (until, why));
    }
    let tenants = metrics.tenant_holds.all(now).len();
    tracing::info!(budgets = s.len(), tenants, "shaping automation state restored");
    Ok(())
}

/// A thread that writes `automation.json` durably
/// ([`spool::recover::replace_file_durable`]) within a second of a change
/// automation made.
fn start_automation_saver(spool: &Path, metrics: &Arc<Metrics>) -> Result<(), String> {
    let (spool, metrics) = (spool.to_path_buf(), metrics.clone());
    std::thread::Builder::new()
        .name("ringpost-autosave".into())
        .spawn(move || loop {
            #[allow(clippy::disallowed_methods)] // reason: its own thread, not a worker's event loop
            std::thread::sleep(Duration::from_secs(1));
            save_automation(&spool, &metrics);
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the automation saver thread: {e}"))
}

/// Writes `automation.json` if automation changed something since the last
/// save; a failed write is logged and tried again at the next save.
fn save_automation(spool: &Path, metrics: &Metrics) {
    let Some(json) = metrics.automation.take_dirty(&metrics.tenant_holds, crate::rt::clock::unix_secs())
    else {
        return;
    };
    if let Err(e) = spool::recover::replace_file_durable(&spool.join(AUTOMATION_FILE), json.as_bytes()) {
        tracing::error!(error = %e, "cannot save shaping automation state; trying again");
        metrics.automation.touch();
    }
}

/// What SIGHUP may change.
struct Reload {
    config: Config,
    path: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl Reload {
    fn run(&mut self) {
        let Some(path) = self.path.clone() else {
            tracing::warn!("SIGHUP: running on built-in defaults, no file to reload");
            return;
        };
        let list = |v: &[&str]| if v.is_empty() { "nothing".to_owned() } else { v.join(", ") };
        match self.try_reload(&path) {
            Ok((changed, restart)) if restart.is_empty() => {
                tracing::info!(path = %path.display(), changed = %list(&changed), "configuration reloaded")
            }
            Ok((changed, restart)) => tracing::warn!(
                path = %path.display(),
                changed = %list(&changed),
                "configuration reloaded; these changes need a restart and were not applied: {}",
                restart.join(", ")
            ),
            Err(e) => {
                inc(&self.shared.metrics.config_reload_failures);
                tracing::error!("SIGHUP: keeping the old configuration: {e}");
                return;
            }
        }
        inc(&self.shared.metrics.config_reloads);
    }

    /// Reads the file again and puts what may change without a restart in
    /// force, as one snapshot: sessions that start from now on and delivery
    /// attempts planned from now on use it; the queue, open sessions and
    /// attempts under way go on. Returns what changed and was applied, and
    /// what changed but needs a restart.
    fn try_reload(&mut self, path: &Path) -> Result<(Vec<&'static str>, Vec<&'static str>), String> {
        let new = Config::load(path).map_err(|e| e.to_string())?;
        let tls = load_tls(&new).map_err(|e| format!("[tls]: {e}"))?;
        let dkim = load_dkim(&new)?;
        check_sources(&new)?;
        crate::events::log::check(&new.event_settings())?;
        let restart = needs_restart(&self.config, &new);
        let current = self.shared.live.get();
        let policy = Arc::new(policy(&new));
        // The listeners running now keep their address, kind and TLS mode.
        let sessions = self.config.listeners.iter().map(|l| {
            Arc::new(session_config(&new, l.get_ref(), policy.clone(), self.shared.suppression.clone()))
        });
        let tls = if tls.is_some() && current.tls.is_some() { tls } else { current.tls.clone() };
        let delivery = delivery_config(&new, &self.shared.feedback_key);
        let changed = changed(&self.config, &new);
        self.shared.live.set(Snapshot {
            sessions: sessions.collect(),
            tls,
            delivery: Arc::new(delivery),
            dkim,
            unsubscribe: unsubscribe(&new),
            http_tokens: http_tokens(&new),
            inject_size: new.limits.inject_size,
        });
        // Reopens the events file even when unchanged (logrotate).
        self.shared.events.configure(new.event_settings());
        self.shared.limits.set(new.limits.connections, new.limits.connections_per_ip);
        self.shared
            .auth_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_limit(new.limits.auth_failures_per_ip as usize);
        self.shared.memory.set_max(usize::try_from(new.limits.message_memory).unwrap_or(usize::MAX));
        for inbox in &self.shared.inboxes {
            inbox.send(Control::Reloaded);
        }
        // What was not applied stays as it runs, so the next reload compares
        // against what is in force.
        let mut new = new;
        new.listeners = std::mem::take(&mut self.config.listeners);
        new.threads = self.config.threads;
        new.spool = self.config.spool.clone();
        new.admin = self.config.admin.clone();
        new.delivery.dns_servers = self.config.delivery.dns_servers.clone();
        new.delivery.dns_timeout = self.config.delivery.dns_timeout;
        new.delivery.dns_cache_size = self.config.delivery.dns_cache_size;
        if new.tls.is_some() != self.config.tls.is_some() {
            new.tls = self.config.tls.take();
        }
        self.config = new;
        Ok((changed, restart))
    }
}

fn debug(v: &dyn std::fmt::Debug) -> String {
    format!("{v:?}")
}

/// The sections and keys that differ between `old` and `new` but are only
/// read at startup.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let listeners = |c: &Config| c.listeners.iter().map(|l| debug(l.get_ref())).collect::<Vec<_>>();
    let (od, nd) = (&old.delivery, &new.delivery);
    let checks: [(bool, &'static str); 9] = [
        (listeners(old) != listeners(new), "[[listener]]"),
        (old.redis != new.redis, "[redis]"),
        (old.threads != new.threads, "threads"),
        (debug(&old.spool) != debug(&new.spool), "[spool]"),
        (debug(&old.admin) != debug(&new.admin), "[admin]"),
        (old.tls.is_some() != new.tls.is_some(), "[tls] (added or removed)"),
        (od.dns_servers != nd.dns_servers, "delivery.dns_servers"),
        (od.dns_timeout != nd.dns_timeout, "delivery.dns_timeout"),
        (od.dns_cache_size != nd.dns_cache_size, "delivery.dns_cache_size"),
    ];
    checks.into_iter().filter(|c| c.0).map(|c| c.1).collect()
}

/// The reloadable sections that differ between `old` and `new`, for the log.
fn changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let users = |c: &Config| c.users.iter().map(|u| debug(u.get_ref())).collect::<Vec<_>>();
    let tls = |c: &Config| c.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
    let dkim = |c: &Config| c.dkim.iter().map(|d| d.get_ref().clone()).collect::<Vec<_>>();
    let egress = |c: &Config| {
        let sources = c.sources.iter().map(|s| debug(s.get_ref())).collect::<Vec<_>>();
        let pools = c.pools.iter().map(|p| debug(p.get_ref())).collect::<Vec<_>>();
        let tenants = c.tenants.iter().map(|t| debug(t.get_ref())).collect::<Vec<_>>();
        (sources, pools, tenants)
    };
    let tokens = |c: &Config| c.http_tokens.iter().map(|t| debug(t.get_ref())).collect::<Vec<_>>();
    let checks: [(bool, &'static str); 17] = [
        (old.hostname() != new.hostname(), "hostname"),
        (debug(&old.shaping) != debug(&new.shaping), "[[shaping]]"),
        (dkim(old) != dkim(new), "[[dkim]]"),
        (egress(old) != egress(new), "[[source]], [[pool]], [[tenant]]"),
        (tls(old) != tls(new), "[tls]"),
        (debug(&old.limits) != debug(&new.limits), "[limits]"),
        (debug(&old.relay) != debug(&new.relay), "[relay]"),
        (users(old) != users(new), "[[user]]"),
        (debug(&old.routes) != debug(&new.routes), "[[route]]"),
        (debug(&old.delivery) != debug(&new.delivery), "[delivery]"),
        (debug(&old.local) != debug(&new.local), "[local]"),
        (old.events != new.events, "[events]"),
        (old.feedback != new.feedback, "[feedback]"),
        (old.unsubscribe != new.unsubscribe, "[unsubscribe]"),
        (debug(&old.webhooks) != debug(&new.webhooks), "[[webhook]]"),
        (tokens(old) != tokens(new), "[[http_token]]"),
        (debug(&old.log) != debug(&new.log), "[log] (needs a restart)"),
    ];
    checks.into_iter().filter(|c| c.0).map(|c| c.1).collect()
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the signals we handle, in this thread and every thread spawned
/// after; the main thread then takes them synchronously with sigtimedwait.
fn block_signals() {
    let set = signal_set();
    // SAFETY: pthread_sigmask reads a valid sigset_t; no old mask is requested.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for `timeout` (or forever); returns the signal number, if any.
fn wait_signal(timeout: Option<Duration>) -> Option<i32> {
    let set = signal_set();
    let ts = timeout
        .map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: valid sigset and timespec pointers (or null for no timeout).
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), ts_ptr) };
    (sig > 0).then_some(sig)
}

fn wait_for_shutdown(shared: &Shared, reload: &mut Reload, notify: &dyn Notify) {
    loop {
        match wait_signal(None) {
            Some(libc::SIGHUP) => {
                notify.notify("RELOADING=1");
                reload.run();
                notify.notify("READY=1");
            }
            Some(_) => break,
            None => {}
        }
    }
    notify.notify("STOPPING=1");
    let grace = reload.config.limits.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: no new connections; open transactions may finish");
    shared.stage.advance(Stage::Draining);
    let deadline = clock::instant() + grace;
    loop {
        let left = deadline.saturating_duration_since(clock::instant());
        if left.is_zero() {
            break;
        }
        match wait_signal(Some(left.min(Duration::from_millis(50)))) {
            Some(libc::SIGHUP) => reload.run(),
            Some(_) => break, // a second SIGTERM/SIGINT: do not wait
            None => {}
        }
        if shared.limits.current() == 0 {
            break;
        }
    }
    shared.stage.advance(Stage::Closing);
}
