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
use crate::envelope::QueueId;
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
    Configure(Settings),
    Flush(Arc<Done>),
}

/// Lines emitted and not yet taken by the event thread, with the callers
/// waiting for them to be durable. One lock for every emitting thread, held
/// for a copy (the lines are serialized before it is taken): the order of
/// the lines is the order of the calls, so a message's events reach the
/// file and the webhooks in the order they happened, whichever worker emits
/// them. The lines are serialized by the caller and the event thread takes
/// the buffer whole: an event's fields are allocated and freed on one
/// thread (a free from another thread costs the allocator more than the
/// serialization itself).
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    waiters: Vec<Arc<Done>>,
    /// Messages to hand back once durable: (finisher slot, id).
    finish: Vec<(u32, QueueId)>,
}

/// Messages whose outcome events are durable, handed back to the worker
/// that records their end in its spool ([`EventLog::emit_then_finish`]).
/// What waits for the event file's sync is one id per message, not a task:
/// a delivered message's attempt, outcomes and finalizing future are freed
/// at once, and the worker is woken once per sync, not once per message.
#[derive(Debug, Default)]
pub struct Finisher {
    ids: Mutex<Vec<QueueId>>,
    waker: AtomicWaker,
}

impl Finisher {
    /// The ids handed back since the last call; else registers `cx`.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Vec<QueueId>> {
        let take = |f: &Finisher| std::mem::take(&mut *f.ids.lock().unwrap_or_else(|p| p.into_inner()));
        let ids = take(self);
        if !ids.is_empty() {
            return Poll::Ready(ids);
        }
        self.waker.register(cx.waker());
        let ids = take(self);
        if ids.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(ids)
        }
    }

    fn hand_back(&self, ids: impl Iterator<Item = QueueId>) {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).extend(ids);
        self.waker.wake();
    }
}

thread_local! {
    /// Where a thread serializes its events before taking the lock.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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

/// What the event thread takes, on its own cadence ([`TICK`]): emitted
/// lines ([`Pending`]) and requests (a lock-free queue). Emitting an event
/// is an append, never a wake-up (a wake-up per event cost a fifth of the
/// 1 KiB rate in context switches); only a caller that finds the thread in
/// a long idle sleep wakes it.
#[derive(Debug)]
struct Queue {
    items: crossbeam_queue::SegQueue<Req>,
    pending: Mutex<Pending>,
    /// One per worker that finishes messages after their events.
    finishers: Mutex<Vec<Arc<Finisher>>>,
    /// The thread sleeps long (idle): a caller that needs it soon unparks it.
    dozing: AtomicBool,
    /// Set once the event thread exists.
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Set when the handle is dropped: the thread finishes and ends.
    closed: AtomicBool,
}

impl Queue {
    /// Whether no emitted line waits to be taken.
    fn is_drained(&self) -> bool {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).bytes.is_empty()
    }

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
            pending: Mutex::new(Pending::default()),
            finishers: Mutex::new(Vec::new()),
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

    /// Serializes `events` and appends them to what the event thread takes
    /// next, with `done` among the waiters.
    fn append(&self, events: &[Event], done: Option<Arc<Done>>, finish: Option<(u32, QueueId)>) {
        self.count(events);
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            for e in events {
                e.write_line(scratch);
            }
            let mut p = self.queue.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.bytes.extend_from_slice(scratch);
            p.waiters.extend(done);
            p.finish.extend(finish);
            // A burst's scratch is not kept for good.
            if scratch.capacity() > 64 << 10 {
                *scratch = Vec::new();
            }
        });
        if self.queue.dozing.load(Ordering::Acquire) {
            if let Some(t) = self.queue.thread.get() {
                t.unpark();
            }
        }
    }

    /// Hands events over; does not wait.
    pub fn emit(&self, events: Vec<Event>) {
        if !self.enabled() || events.is_empty() {
            return;
        }
        self.append(&events, None, None);
    }

    /// Hands events over; the future resolves once they are on disk.
    pub fn emit_durable(&self, events: Vec<Event>) -> Durable {
        if !self.enabled() || events.is_empty() {
            return Durable(None);
        }
        let done = Arc::new(Done::default());
        self.append(&events, Some(done.clone()), None);
        Durable(Some(done))
    }

    /// A worker's slot for [`EventLog::emit_then_finish`] and where its
    /// ids come back.
    pub fn finisher(&self) -> (u32, Arc<Finisher>) {
        let mut all = self.queue.finishers.lock().unwrap_or_else(|p| p.into_inner());
        let f = Arc::new(Finisher::default());
        all.push(f.clone());
        ((all.len() - 1) as u32, f)
    }

    /// Hands events over; once they are on disk, `id` is handed back to
    /// the finisher in `slot`. Returns false (and keeps nothing) when no
    /// sink is configured: the caller finishes at once.
    pub fn emit_then_finish(&self, events: Vec<Event>, slot: u32, id: QueueId) -> bool {
        if !self.enabled() || events.is_empty() {
            return false;
        }
        self.append(&events, None, Some((slot, id)));
        true
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

/// What the event thread completes after its next sync.
#[derive(Debug, Default)]
struct Waiters {
    done: Vec<Arc<Done>>,
    finish: Vec<(u32, QueueId)>,
}

impl Waiters {
    fn is_empty(&self) -> bool {
        self.done.is_empty() && self.finish.is_empty()
    }

    /// What was written is durable: wake the callers, hand the ids back
    /// (in the order they came, one wake-up per worker).
    fn complete(&mut self, queue: &Queue) {
        for w in self.done.drain(..) {
            w.complete();
        }
        if self.finish.is_empty() {
            return;
        }
        let finishers = queue.finishers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.finish.sort_by_key(|&(slot, _)| slot);
        for group in self.finish.chunk_by(|a, b| a.0 == b.0) {
            if let Some(f) = finishers.get(group[0].0 as usize) {
                f.hand_back(group.iter().map(|&(_, id)| id));
            }
        }
        self.finish.clear();
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
        let mut waiters = Waiters::default();
        let mut last_sync = crate::rt::clock::instant();
        let mut quiet_ticks = 0u32;
        // The buffer handed back to the emitters at the next take.
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let mut force = false;
            let mut got = false;
            while let Some(req) = queue.items.pop() {
                got = true;
                match req {
                    Req::Flush(done) => {
                        waiters.done.push(done);
                        force = true;
                    }
                    Req::Configure(s) => {
                        // Lines before a reconfiguration go where they were meant to.
                        got |= self.take(queue, &mut spare, &mut waiters);
                        self.sync();
                        waiters.complete(queue);
                        if let Err(e) = self.configure(s) {
                            tracing::error!("events: {e}");
                        }
                    }
                }
            }
            got |= self.take(queue, &mut spare, &mut waiters);
            // Group commit: one fdatasync for everything waiting, at most
            // once per SYNC_INTERVAL (at once after a quiet spell).
            let now = crate::rt::clock::instant();
            if !waiters.is_empty() && (force || now >= last_sync + SYNC_INTERVAL) {
                self.sync();
                last_sync = crate::rt::clock::instant();
                waiters.complete(queue);
            }
            if queue.closed.load(Ordering::Acquire) && queue.items.is_empty() && queue.is_drained() {
                break;
            }
            quiet_ticks = if got { 0 } else { quiet_ticks.saturating_add(1) };
            // Drain every TICK while events flow; after a quiet second,
            // doze (a caller with an event or a request wakes us).
            if quiet_ticks > 100 && waiters.is_empty() {
                queue.dozing.store(true, Ordering::Release);
                if queue.items.is_empty() && queue.is_drained() {
                    std::thread::park_timeout(IDLE_TICK);
                }
                queue.dozing.store(false, Ordering::Release);
            } else {
                std::thread::park_timeout(TICK);
            }
        }
        self.take(queue, &mut spare, &mut waiters);
        self.sync();
        waiters.complete(queue);
        for h in self.hooks.drain(..) {
            h.stop();
        }
    }

    /// Takes the lines emitted so far (and their waiters) and writes them
    /// out, in batches of at most [`BATCH_BYTES`]. Returns whether there
    /// were any.
    fn take(&mut self, queue: &Queue, spare: &mut Vec<u8>, waiters: &mut Waiters) -> bool {
        spare.clear();
        {
            let mut p = queue.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut p.bytes, spare);
            waiters.done.append(&mut p.waiters);
            waiters.finish.append(&mut p.finish);
        }
        if spare.is_empty() {
            return false;
        }
        for chunk in batches(spare, BATCH_BYTES) {
            self.write(chunk);
        }
        // A burst's buffer is not kept for good.
        if spare.capacity() > 4 * BATCH_BYTES {
            *spare = Vec::new();
        }
        true
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

/// `bytes` (whole lines) cut into pieces of at most `max` bytes, each
/// ending at a line's end where one line is not longer than `max`.
fn batches(bytes: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= max {
            rest.len()
        } else {
            match rest[..max].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => max,
            }
        };
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
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
    use crate::events::{EventType, Timestamp};

    fn event(id: &str) -> Event {
        Event {
            kind: EventType::Delivery,
            id: Some(id.into()),
            timestamp: Timestamp(0),
            sender: "s@a.test".into(),
            recipient: Some("r@b.test".into()),
            recipients: Vec::new(),
            tenant: None,
            campaign: None,
            source: None,
            class: None,
            response: None,
            size: 1,
            attempt: 1,
            next_hop: None,
            tls: None,
            peer: None,
            feedback_type: None,
            reason: None,
        }
    }

    /// Waits (bounded) for the ids `f` hands back.
    fn take(f: &Finisher) -> Vec<QueueId> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..500 {
            if let Poll::Ready(ids) = f.poll_take(&mut cx) {
                return ids;
            }
            #[allow(clippy::disallowed_methods)] // reason: a test thread, not a worker
            std::thread::sleep(Duration::from_millis(10));
        }
        Vec::new()
    }

    #[test]
    fn delivered_ids_come_back_to_their_worker_after_their_events_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let settings = Settings { file: Some(file.clone()), ..Settings::default() };
        let log = EventLog::start(dir.path(), settings, Arc::new(Metrics::default())).unwrap();
        let (w0, f0) = log.finisher();
        let (w1, f1) = log.finisher();
        assert!(log.emit_then_finish(vec![event("a")], w0, QueueId(1)));
        assert!(log.emit_then_finish(vec![event("b")], w1, QueueId(2)));
        log.emit(vec![event("c")]);
        assert!(log.emit_then_finish(vec![event("d")], w0, QueueId(3)));
        assert_eq!(take(&f0), [QueueId(1), QueueId(3)]);
        assert_eq!(take(&f1), [QueueId(2)]);
        // Written (and synced) before they came back, in the order emitted.
        let text = std::fs::read_to_string(&file).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        // Without a sink nothing is kept: the caller finishes at once.
        log.configure(Settings::default());
        assert!(!log.emit_then_finish(vec![event("e")], w0, QueueId(4)));
    }

    #[test]
    fn batches_end_at_line_ends() {
        type Case<'a> = (&'a [u8], usize, &'a [&'a [u8]]);
        let cases: &[Case] = &[
            (b"", 4, &[]),
            (b"ab\ncd\n", 100, &[b"ab\ncd\n"]),
            (b"ab\ncd\n", 4, &[b"ab\n", b"cd\n"]),
            (b"ab\ncd\nef\n", 6, &[b"ab\ncd\n", b"ef\n"]),
            // A line longer than a batch is cut where the batch is full.
            (b"abcdefg\nh\n", 4, &[b"abcd", b"efg\n", b"h\n"]),
        ];
        for (bytes, max, want) in cases {
            let got: Vec<&[u8]> = batches(bytes, *max).collect();
            assert_eq!(&got, want, "{:?} by {max}", String::from_utf8_lossy(bytes));
        }
    }

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
