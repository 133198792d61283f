//! The event log: one thread that takes events from the workers, appends
//! them in batches to `[events] file` and to the webhook journal, and makes
//! them durable when asked.
//!
//! Workers never wait for it on the SMTP path: `Reception` events are
//! handed over and forgotten (a crash in the moment between a message's 250
//! and its batch reaching the disk loses that event, never the message).
//! Outcome events (`Delivery`, `Bounce`, ...) are made durable (written and
//! fdatasync'd) before the delivery owner records the outcome in the spool,
//! so a crash repeats them rather than loses them: at least once.
//!
//! The journal (`<spool dir>/events/<seq>.jsonl`) exists for the webhooks:
//! each reads it from its own durable cursor (see [`super::webhook`]).
//! Segments are rotated at [`SEGMENT_BYTES`]; a segment every webhook has
//! passed is deleted, and past `[events] max_backlog` the oldest segments
//! are dropped with an error in the log and in `/metrics` (the one way
//! events are lost, bounded on purpose: a webhook that stays down must not
//! fill the spool's disk).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use super::webhook::{self, WebhookHandle, WebhookSettings};
use super::Event;
use crate::metrics::Metrics;

/// A journal segment is closed past this size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Most bytes written in one batch.
const BATCH_BYTES: usize = 4 << 20;
/// Waiting callers are made durable together, at most this often: one
/// fdatasync for many outcomes, so the event file does not double the
/// spool's syncs on the same disk.
const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// What `[events]` and `[[webhook]]` say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub file: Option<PathBuf>,
    /// Journal bytes kept for webhooks that are behind.
    pub max_backlog: u64,
    pub webhooks: Vec<WebhookSettings>,
}

impl Settings {
    fn enabled(&self) -> bool {
        self.file.is_some() || !self.webhooks.is_empty()
    }
}

/// Completion of a durable write, awaited by a worker task.
#[derive(Debug, Default)]
struct Done {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl Done {
    fn complete(&self) {
        self.flag.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Resolves once what it stands for is on disk (or could not be written:
/// that is logged and counted, and mail goes on).
#[derive(Debug)]
pub struct Durable(Option<Arc<Done>>);

/// The other end of a [`Durable`]: completed by the thread that wrote.
#[derive(Debug)]
pub struct Completion(Arc<Done>);

impl Completion {
    pub fn complete(self) {
        self.0.complete();
    }
}

impl Durable {
    /// Already durable (or nothing to wait for).
    pub fn ready() -> Durable {
        Durable(None)
    }

    /// A pending one and what completes it.
    pub fn pending() -> (Durable, Completion) {
        let done = Arc::new(Done::default());
        (Durable(Some(done.clone())), Completion(done))
    }

    /// Blocks this (non-worker) thread until durable, at most `limit`.
    pub fn wait(&self, limit: Duration) -> bool {
        let Some(done) = &self.0 else { return true };
        let start = crate::rt::clock::instant();
        while !done.flag.load(Ordering::Acquire) {
            if start.elapsed() >= limit {
                return false;
            }
            #[allow(clippy::disallowed_methods)] // reason: not a worker: the admin or main thread
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

impl Future for Durable {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(done) = &self.0 else { return Poll::Ready(()) };
        if done.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        done.waker.register(cx.waker());
        if done.flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

enum Req {
    /// Serialized on the event thread, not on the worker that emits them.
    Lines {
        events: Vec<Event>,
        done: Option<Arc<Done>>,
    },
    Configure(Settings),
    Flush(Arc<Done>),
}

/// Tells webhook threads that the journal grew.
#[derive(Debug, Default)]
pub struct Wakeup {
    generation: Mutex<u64>,
    cond: Condvar,
}

impl Wakeup {
    fn bump(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cond.notify_all();
    }

    /// Waits until the journal grows after `seen`, or `timeout`. Returns the
    /// generation now.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        if *g != seen {
            return *g;
        }
        let (g, _) = self.cond.wait_timeout(g, timeout).unwrap_or_else(|p| p.into_inner());
        *g
    }

    pub fn current(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Requests for the event thread: a lock-free queue it drains on its own
/// cadence ([`TICK`]), so emitting an event is a push, never a wake-up (a
/// wake-up per event cost a fifth of the 1 KiB rate in context switches).
/// Only a caller that finds the thread in a long idle sleep wakes it.
#[derive(Debug)]
struct Queue {
    items: crossbeam_queue::SegQueue<Req>,
    /// The thread sleeps long (idle): a caller that needs it soon unparks it.
    dozing: AtomicBool,
    /// Set once the event thread exists.
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Set when the handle is dropped: the thread finishes and ends.
    closed: AtomicBool,
}

impl Queue {
    fn push(&self, req: Req, urgent: bool) {
        self.items.push(req);
        if urgent || self.dozing.load(Ordering::Acquire) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

/// How often the event thread drains its queue while events flow.
const TICK: Duration = Duration::from_millis(10);
/// Its sleep once nothing has come for a while.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// The handle workers emit events through.
#[derive(Debug)]
pub struct EventLog {
    queue: Arc<Queue>,
    enabled: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        if let Some(t) = self.queue.thread.get() {
            t.unpark();
        }
    }
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Req::Lines { .. } => "Lines",
            Req::Configure(_) => "Configure",
            Req::Flush(_) => "Flush",
        })
    }
}

impl EventLog {
    /// Starts the event thread (and a thread per webhook). Errors: the
    /// journal directory or the events file cannot be opened.
    pub fn start(
        spool_dir: &Path,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<EventLog>, String> {
        let dir = spool_dir.join("events");
        crate::spool::recover::create_dir_durable(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut writer = Writer {
            dir,
            file: None,
            journal: None,
            settings: Settings::default(),
            hooks: Vec::new(),
            wakeup: Arc::new(Wakeup::default()),
            metrics: metrics.clone(),
        };
        writer.configure(settings.clone())?;
        let queue = Arc::new(Queue {
            items: crossbeam_queue::SegQueue::new(),
            dozing: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
            closed: AtomicBool::new(false),
        });
        let q = queue.clone();
        let handle = std::thread::Builder::new()
            .name("ringpost-events".into())
            .spawn(move || writer.run(&q))
            .map_err(|e| format!("cannot start the event thread: {e}"))?;
        let _ = queue.thread.set(handle.thread().clone());
        Ok(Arc::new(EventLog { queue, enabled: AtomicBool::new(settings.enabled()), metrics }))
    }

    /// Whether any sink is configured (else emitting is skipped).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn send(&self, req: Req, urgent: bool) -> bool {
        self.queue.push(req, urgent);
        true
    }

    fn count(&self, events: &[Event]) {
        for e in events {
            self.metrics.events[e.kind.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands events over; does not wait.
    pub fn emit(&self, events: Vec<Event>) {
        if !self.enabled() || events.is_empty() {
            return;
        }
        self.count(&events);
        self.send(Req::Lines { events, done: None }, false);
    }

    /// Hands events over; the future resolves once they are on disk.
    pub fn emit_durable(&self, events: Vec<Event>) -> Durable {
        if !self.enabled() || events.is_empty() {
            return Durable(None);
        }
        self.count(&events);
        let done = Arc::new(Done::default());
        if self.send(Req::Lines { events, done: Some(done.clone()) }, false) {
            Durable(Some(done))
        } else {
            Durable(None)
        }
    }

    /// New settings (SIGHUP); the events file is reopened either way, so
    /// logrotate can move it away first.
    pub fn configure(&self, settings: Settings) {
        self.enabled.store(settings.enabled(), Ordering::Relaxed);
        self.send(Req::Configure(settings), true);
    }

    /// Waits (up to `limit`) until everything emitted so far is on disk.
    pub fn flush(&self, limit: Duration) {
        let done = Arc::new(Done::default());
        if !self.send(Req::Flush(done.clone()), true) {
            return;
        }
        let start = crate::rt::clock::instant();
        while !done.flag.load(Ordering::Acquire) && start.elapsed() < limit {
            #[allow(clippy::disallowed_methods)]
            // reason: not a worker: the main thread at exit / a webhook thread
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The event thread's state.
struct Writer {
    dir: PathBuf,
    file: Option<File>,
    journal: Option<Journal>,
    settings: Settings,
    hooks: Vec<WebhookHandle>,
    wakeup: Arc<Wakeup>,
    metrics: Arc<Metrics>,
}

struct Journal {
    seq: u64,
    file: File,
    size: u64,
}

/// `<dir>/<seq>.jsonl`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.jsonl"))
}

/// The journal segments in `dir`, oldest first, with their sizes.
pub fn segments(dir: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse().ok())
            else {
                continue;
            };
            out.push((seq, e.metadata().map_or(0, |m| m.len())));
        }
    }
    out.sort_unstable();
    out
}

/// Whether the events file of `settings` can be opened (a reload that
/// names one that cannot is refused).
pub fn check(settings: &Settings) -> Result<(), String> {
    if let Some(path) = &settings.file {
        open_append(path).map_err(|e| format!("[events] file {}: {e}", path.display()))?;
    }
    for w in settings.webhooks.iter().filter(|w| w.url.tls) {
        super::webhook::tls_config(w).map_err(|e| format!("webhook {}: {e}", w.url.text))?;
    }
    Ok(())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl Writer {
    fn configure(&mut self, settings: Settings) -> Result<(), String> {
        // The events file: (re)opened every time, for logrotate.
        self.file = match &settings.file {
            Some(path) => {
                Some(open_append(path).map_err(|e| format!("[events] file {}: {e}", path.display()))?)
            }
            None => None,
        };
        // Webhooks: keep those still configured, stop the others.
        let mut keep = Vec::new();
        for h in self.hooks.drain(..) {
            if settings.webhooks.contains(&h.settings) {
                keep.push(h);
            } else {
                h.stop();
            }
        }
        for w in &settings.webhooks {
            if !keep.iter().any(|h| h.settings == *w) {
                keep.push(webhook::start(
                    w.clone(),
                    self.dir.clone(),
                    self.wakeup.clone(),
                    self.metrics.clone(),
                )?);
            }
        }
        self.hooks = keep;
        if self.hooks.is_empty() {
            self.journal = None;
        } else if self.journal.is_none() {
            // A new segment at every start: a torn line can only end an
            // older one, where readers skip it.
            let seq = segments(&self.dir).last().map_or(1, |s| s.0 + 1);
            let path = segment_path(&self.dir, seq);
            let file = open_append(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let _ = crate::spool::recover::sync_dir(&self.dir);
            self.journal = Some(Journal { seq, file, size: 0 });
        }
        self.settings = settings;
        self.collect();
        Ok(())
    }

    fn run(mut self, queue: &Queue) {
        let mut waiters: Vec<Arc<Done>> = Vec::new();
        let mut last_sync = crate::rt::clock::instant();
        let mut quiet_ticks = 0u32;
        loop {
            let mut bytes = Vec::new();
            let mut force = false;
            let mut got = false;
            while bytes.len() < BATCH_BYTES {
                let Some(req) = queue.items.pop() else { break };
                got = true;
                match req {
                    Req::Lines { events, done } => {
                        for e in &events {
                            e.write_line(&mut bytes);
                        }
                        waiters.extend(done);
                    }
                    Req::Flush(done) => {
                        waiters.push(done);
                        force = true;
                    }
                    Req::Configure(s) => {
                        // Lines before a reconfiguration go where they were meant to.
                        self.write(&bytes);
                        bytes.clear();
                        self.sync();
                        for w in waiters.drain(..) {
                            w.complete();
                        }
                        if let Err(e) = self.configure(s) {
                            tracing::error!("events: {e}");
                        }
                    }
                }
            }
            self.write(&bytes);
            // Group commit: one fdatasync for everything waiting, at most
            // once per SYNC_INTERVAL (at once after a quiet spell).
            let now = crate::rt::clock::instant();
            if !waiters.is_empty() && (force || now >= last_sync + SYNC_INTERVAL) {
                self.sync();
                last_sync = crate::rt::clock::instant();
                for w in waiters.drain(..) {
                    w.complete();
                }
            }
            if queue.closed.load(Ordering::Acquire) && queue.items.is_empty() {
                break;
            }
            if bytes.len() >= BATCH_BYTES {
                continue;
            }
            quiet_ticks = if got { 0 } else { quiet_ticks.saturating_add(1) };
            // Drain every TICK while events flow; after a quiet second,
            // doze (a caller with a waiting event or a request wakes us).
            if quiet_ticks > 100 && waiters.is_empty() {
                queue.dozing.store(true, Ordering::Release);
                if queue.items.is_empty() {
                    std::thread::park_timeout(IDLE_TICK);
                }
                queue.dozing.store(false, Ordering::Release);
            } else {
                std::thread::park_timeout(TICK);
            }
        }
        self.sync();
        for w in waiters {
            w.complete();
        }
        for h in self.hooks.drain(..) {
            h.stop();
        }
    }

    /// Appends `bytes` to the file and the journal (not synced).
    fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(bytes) {
                self.failed("[events] file", &e);
            }
        }
        if let Some(j) = self.journal.as_mut() {
            match j.file.write_all(bytes) {
                Ok(()) => j.size += bytes.len() as u64,
                Err(e) => self.failed("events journal", &e),
            }
            self.wakeup.bump();
        }
        if self.journal.as_ref().is_some_and(|j| j.size >= SEGMENT_BYTES) {
            self.rotate();
        }
    }

    /// Makes what was written durable.
    fn sync(&self) {
        if let Some(f) = self.file.as_ref() {
            if let Err(e) = f.sync_data() {
                self.failed("[events] file", &e);
            }
        }
        if let Some(j) = self.journal.as_ref() {
            if let Err(e) = j.file.sync_data() {
                self.failed("events journal", &e);
            }
        }
    }

    fn failed(&self, what: &str, e: &std::io::Error) {
        self.metrics.events_write_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "cannot write the {what}; events are being lost");
    }

    fn rotate(&mut self) {
        let Some(j) = self.journal.as_mut() else { return };
        let _ = j.file.sync_data();
        let seq = j.seq + 1;
        let path = segment_path(&self.dir, seq);
        match open_append(&path) {
            Ok(file) => {
                *j = Journal { seq, file, size: 0 };
                let _ = crate::spool::recover::sync_dir(&self.dir);
            }
            Err(e) => self.failed("events journal", &e),
        }
        self.collect();
    }

    /// Deletes segments every webhook has read, then, past `max_backlog`,
    /// the oldest ones still unread.
    fn collect(&mut self) {
        let current = self.journal.as_ref().map(|j| j.seq);
        let oldest_needed = self.hooks.iter().map(|h| h.position()).min();
        let (read, dropped) = doomed(&segments(&self.dir), current, oldest_needed, self.settings.max_backlog);
        for seq in read {
            let _ = std::fs::remove_file(segment_path(&self.dir, seq));
        }
        for (seq, size) in dropped {
            tracing::error!(
                segment = seq,
                bytes = size,
                max_backlog = self.settings.max_backlog,
                "events: the webhook backlog is over [events] max_backlog; dropping its oldest segment"
            );
            self.metrics.events_dropped_bytes.fetch_add(size, Ordering::Relaxed);
            let _ = std::fs::remove_file(segment_path(&self.dir, seq));
        }
    }
}

/// Journal segments: (sequence, bytes).
type Segments = Vec<(u64, u64)>;

/// Which journal segments go: those every webhook has read (all of them
/// when there is no webhook: `current` is None), then, oldest first, unread
/// ones until the rest fit in `max_backlog` (never the one being written).
/// `segments` are (sequence, bytes), oldest first. Returns (read, dropped).
fn doomed(
    segments: &[(u64, u64)],
    current: Option<u64>,
    oldest_needed: Option<u64>,
    max_backlog: u64,
) -> (Vec<u64>, Vec<(u64, u64)>) {
    let (read, kept): (Segments, Segments) =
        segments.iter().partition(|&&(seq, _)| match (current, oldest_needed) {
            (None, _) => true,
            (Some(c), Some(o)) => seq < o.min(c),
            (Some(c), None) => seq < c,
        });
    let mut total: u64 = kept.iter().map(|s| s.1).sum();
    let mut dropped = Vec::new();
    for (seq, size) in kept {
        if total <= max_backlog || Some(seq) == current {
            break;
        }
        dropped.push((seq, size));
        total -= size;
    }
    (read.into_iter().map(|s| s.0).collect(), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_segments_go() {
        let segs = [(1, 100), (2, 100), (3, 100), (4, 40)];
        // (current, oldest a webhook needs, max_backlog) -> (read, dropped)
        type Case<'a> = (Option<u64>, Option<u64>, u64, &'a [u64], &'a [(u64, u64)]);
        let table: &[Case] = &[
            (None, None, 1000, &[1, 2, 3, 4], &[]),
            (Some(4), Some(2), 1000, &[1], &[]),
            (Some(4), Some(4), 1000, &[1, 2, 3], &[]),
            (Some(4), None, 1000, &[1, 2, 3], &[]),
            // A webhook far behind: the oldest unread go until the rest fit.
            (Some(4), Some(1), 150, &[], &[(1, 100), (2, 100)]),
            (Some(4), Some(2), 140, &[1], &[(2, 100)]),
            // Never the segment being written, even over the limit.
            (Some(4), Some(1), 10, &[], &[(1, 100), (2, 100), (3, 100)]),
        ];
        for &(current, needed, max, read, dropped) in table {
            let (r, d) = doomed(&segs, current, needed, max);
            assert_eq!((r.as_slice(), d.as_slice()), (read, dropped), "{current:?} {needed:?} {max}");
        }
    }
}
