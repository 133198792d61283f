//! The Redis connection: one thread with one connection, shared by every
//! worker. Requests queue from any thread; the thread writes everything
//! queued in one go and reads the answers in order (pipelining across
//! workers), with `[redis] timeout` on every read and write. When Redis
//! cannot be reached, requests fail at once (callers fall back to local
//! state: nothing waits for Redis), the outage is logged once, and the
//! thread reconnects with a backoff (100 ms doubling to 5 s).
//!
//! Why a thread and not the workers' io_uring runtimes: a worker must never
//! wait on Redis, and the reconnect loop, timeouts and pipelining are
//! simplest as blocking code on their own thread; the workers await an
//! answer through an `Inbox`, as they do the admin thread's.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame as _};

use super::{cmd, hello, sha1_hex, Url, GCRA, LEASE};
use crate::rt::inbox::Inbox;

/// Largest answer read (a full suppression list comes in one).
const MAX_REPLY: usize = 256 << 20;
/// Requests written together.
const MAX_BATCH: usize = 1024;
/// Most requests waiting; past it new ones fail at once.
const MAX_QUEUE: usize = 100_000;

type Answer = Result<Vec<OwnedFrame>, String>;

enum Reply {
    Async(Arc<Inbox<Answer>>),
    Blocking(std::sync::mpsc::SyncSender<Answer>),
}

impl Reply {
    fn send(self, a: Answer) {
        match self {
            Reply::Async(i) => i.send(a),
            Reply::Blocking(tx) => {
                let _ = tx.send(a);
            }
        }
    }
}

struct Req {
    frames: Vec<OwnedFrame>,
    reply: Reply,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub connects: AtomicU64,
}

/// The shared connection's handle.
pub struct Client {
    url: Url,
    timeout: Duration,
    queue: Mutex<VecDeque<Req>>,
    ready: Condvar,
    up: AtomicBool,
    stop: AtomicBool,
    /// redis-cell's `CL.THROTTLE` is there (checked at each connect).
    cell: AtomicBool,
    pub gcra_sha: String,
    pub lease_sha: String,
    pub stats: Stats,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("redis::Client").field("addr", &self.url.addr).field("up", &self.up()).finish()
    }
}

impl Client {
    /// Starts the connection thread.
    pub fn start(url: Url, timeout: Duration) -> std::io::Result<Arc<Client>> {
        let c = Arc::new(Client {
            url,
            timeout,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            cell: AtomicBool::new(false),
            gcra_sha: sha1_hex(GCRA),
            lease_sha: sha1_hex(LEASE),
            stats: Stats::default(),
        });
        let t = c.clone();
        std::thread::Builder::new().name("redis".into()).spawn(move || t.run())?;
        Ok(c)
    }

    /// Connected now.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether redis-cell answers `CL.THROTTLE`.
    pub fn cell(&self) -> bool {
        self.cell.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> &str {
        &self.url.addr
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ends the thread (at its next wake-up).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.ready.notify_all();
    }

    fn push(&self, frames: Vec<OwnedFrame>, reply: Reply) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if !self.up() || q.len() >= MAX_QUEUE {
            drop(q);
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return reply.send(Err("redis unavailable".into()));
        }
        q.push_back(Req { frames, reply });
        drop(q);
        self.ready.notify_one();
    }

    /// Sends `frames` and awaits their answers (from a worker). Fails at
    /// once when Redis is not connected.
    pub async fn call(&self, frames: Vec<OwnedFrame>) -> Answer {
        let inbox = Arc::new(Inbox::new());
        self.push(frames, Reply::Async(inbox.clone()));
        inbox.recv().await
    }

    /// The same from a thread that may block.
    pub fn call_blocking(&self, frames: Vec<OwnedFrame>) -> Answer {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.push(frames, Reply::Blocking(tx));
        rx.recv().unwrap_or_else(|_| Err("redis thread gone".into()))
    }

    fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        let mut said_down = false;
        while !self.stop.load(Ordering::Acquire) {
            match Conn::open(&self.url, self.timeout).and_then(|c| self.prepare(c)) {
                Ok(conn) => {
                    failures = 0;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.up.store(true, Ordering::Release);
                    if said_down {
                        tracing::warn!(redis = %self.url.addr, "redis reachable again: shared limits and suppressions resume");
                    }
                    said_down = false;
                    let e = self.serve(conn);
                    self.up.store(false, Ordering::Release);
                    self.fail_queued(&e);
                    if !self.stop.load(Ordering::Acquire) {
                        tracing::error!(redis = %self.url.addr, error = %e,
                            "redis connection lost: local limits apply until it is back");
                        said_down = true;
                    }
                }
                Err(e) => {
                    self.fail_queued(&e);
                    if !said_down {
                        tracing::error!(redis = %self.url.addr, error = %e,
                            "redis unreachable: local limits apply until it is back");
                        said_down = true;
                    }
                    failures = failures.saturating_add(1);
                    let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = self.ready.wait_timeout(q, super::backoff(failures));
                }
            }
        }
    }

    /// Loads the scripts and asks for redis-cell.
    fn prepare(&self, mut c: Conn) -> Result<Conn, String> {
        let mut frames = hello(&self.url);
        let n = frames.len();
        frames.push(cmd(&["SCRIPT", "LOAD", GCRA]));
        frames.push(cmd(&["SCRIPT", "LOAD", LEASE]));
        frames.push(cmd(&["COMMAND", "INFO", "CL.THROTTLE"]));
        c.send(&frames)?;
        for i in 0..frames.len() {
            let f = c.read()?;
            if let OwnedFrame::Error(e) = &f {
                return Err(if i < n { format!("login refused: {e}") } else { e.clone() });
            }
            if i == frames.len() - 1 {
                let cell =
                    matches!(&f, OwnedFrame::Array(a) if a.first().is_some_and(|x| *x != OwnedFrame::Null));
                self.cell.store(cell, Ordering::Relaxed);
            }
        }
        Ok(c)
    }

    /// Serves requests until the connection fails; the error.
    fn serve(&self, mut c: Conn) -> String {
        loop {
            let batch: Vec<Req> = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.is_empty() {
                    q = self
                        .ready
                        .wait_timeout(q, Duration::from_secs(1))
                        .map(|(q, _)| q)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                if self.stop.load(Ordering::Acquire) {
                    return "stopping".into();
                }
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                // Idle: a PING notices a dead connection before a request does.
                if let Err(e) = c.send(&[cmd(&["PING"])]).and_then(|()| c.read()) {
                    return e;
                }
                continue;
            }
            let frames: Vec<OwnedFrame> = batch.iter().flat_map(|r| r.frames.iter().cloned()).collect();
            if let Err(e) = c.send(&frames) {
                for r in batch {
                    r.reply.send(Err(e.clone()));
                }
                return e;
            }
            let mut noscript = false;
            let mut reqs = batch.into_iter();
            while let Some(r) = reqs.next() {
                let mut answers = Vec::with_capacity(r.frames.len());
                for _ in 0..r.frames.len() {
                    match c.read() {
                        Ok(f) => {
                            noscript |= matches!(&f, OwnedFrame::Error(e) if e.starts_with("NOSCRIPT"));
                            answers.push(f);
                        }
                        Err(e) => {
                            self.stats.failures.fetch_add(1, Ordering::Relaxed);
                            r.reply.send(Err(e.clone()));
                            for rest in reqs {
                                rest.reply.send(Err(e.clone()));
                            }
                            return e;
                        }
                    }
                }
                r.reply.send(Ok(answers));
            }
            if noscript {
                // The scripts were flushed (SCRIPT FLUSH, a failover): load them again.
                let load = [cmd(&["SCRIPT", "LOAD", GCRA]), cmd(&["SCRIPT", "LOAD", LEASE])];
                if let Err(e) = c.send(&load).and_then(|()| c.read()).and_then(|_| c.read()) {
                    return e;
                }
            }
        }
    }

    fn fail_queued(&self, why: &str) {
        let queued: Vec<Req> = self.queue.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for r in queued {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            r.reply.send(Err(why.to_owned()));
        }
    }
}

/// One connection: frames out, frames in, every read and write bounded in
/// time.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects and logs in (AUTH, SELECT).
    pub fn open(url: &Url, timeout: Duration) -> Result<Conn, String> {
        let addrs: Vec<_> = url.addr.to_socket_addrs().map_err(|e| format!("{}: {e}", url.addr))?.collect();
        let mut last = format!("{}: no address", url.addr);
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
                    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
                    return Ok(Conn { stream, buf: Vec::with_capacity(4096) });
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err(last)
    }

    /// Opens and logs in, for a connection of its own (pub/sub).
    pub fn login(url: &Url, timeout: Duration) -> Result<Conn, String> {
        let mut c = Conn::open(url, timeout)?;
        let frames = hello(url);
        c.send(&frames)?;
        for _ in 0..frames.len() {
            if let OwnedFrame::Error(e) = c.read()? {
                return Err(format!("login refused: {e}"));
            }
        }
        Ok(c)
    }

    pub fn set_read_timeout(&self, t: Duration) -> Result<(), String> {
        self.stream.set_read_timeout(Some(t)).map_err(|e| e.to_string())
    }

    pub fn send(&mut self, frames: &[OwnedFrame]) -> Result<(), String> {
        let mut out = Vec::new();
        for f in frames {
            let at = out.len();
            out.resize(at + f.encode_len(false), 0);
            redis_protocol::resp2::encode::encode(&mut out[at..], f, false).map_err(|e| e.to_string())?;
        }
        self.stream.write_all(&out).map_err(|e| e.to_string())
    }

    /// The next frame. A read timeout is `Err("timeout")`.
    pub fn read(&mut self) -> Result<OwnedFrame, String> {
        loop {
            match redis_protocol::resp2::decode::decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad answer from redis: {e}")),
            }
            if self.buf.len() > MAX_REPLY {
                return Err("answer from redis too large".into());
            }
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("redis closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Err("timeout".into())
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// What the shared limits need: the connection, the key prefix, how many
/// nodes share (for the local fallback) and this node's name (leases).
#[derive(Debug)]
pub struct Shared {
    pub client: Arc<Client>,
    pub prefix: String,
    pub nodes: u32,
    /// Unique per process: host name and process id.
    pub node: String,
}
