//! The suppression list shared through Redis (`[redis]`): every node keeps
//! its own list (the file store: the RCPT path reads memory and never waits
//! on Redis) and Redis holds the list all nodes agree on, a hash, with a
//! channel announcing each change.
//!
//! - A change made here is applied locally at once (durably, as without
//!   Redis), then queued in an outbox that a sync thread writes through to
//!   Redis (HSET/HDEL and PUBLISH). While Redis is away the outbox keeps
//!   them (at most [`MAX_OUTBOX`]); they go when it is back.
//! - The sync thread subscribes to the channel and applies other nodes'
//!   changes. On every (re)connect, after the outbox is written, it reads
//!   the whole hash and the tombstones of removed entries and brings both
//!   sides together (`redis::sync`): what Redis has and we lack is taken,
//!   what we have and Redis lacks is written to it (an entry added while
//!   away, or a Redis that lost its data), unless a newer tombstone says it
//!   was removed elsewhere. When in doubt the list suppresses.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;

use super::file::FileStore;
use super::{key, split_key, Entry, Reason, Store};
use crate::events::log::Durable;
use crate::redis::client::{Client, Conn};
use crate::redis::{backoff, cmd, hash_value, message_payload, sync, Change, SyncStep, Url};
use crate::rt::clock::unix_secs;

/// Tombstones of removed entries are kept this long (a node away longer
/// may bring an entry back: the list errs on the side of suppressing).
const TOMBSTONE_DAYS: u64 = 30;

/// Changes kept for Redis while it is away; past it the oldest are
/// dropped (logged): the next full sync then decides.
pub const MAX_OUTBOX: usize = 100_000;

/// The shared store.
#[derive(Debug)]
pub struct SharedStore {
    local: Arc<FileStore>,
    /// Changes for Redis; the sync thread looks every 250 ms.
    outbox: Mutex<VecDeque<Change>>,
    client: Arc<Client>,
    hash: String,
    /// Tombstones: removed keys scored by when.
    removed: String,
    channel: String,
    /// The local list matches Redis (the last full sync succeeded and the
    /// subscription is up).
    synced: AtomicBool,
}

impl SharedStore {
    /// Wraps the local store and starts the sync thread.
    pub fn start(
        local: Arc<FileStore>,
        client: Arc<Client>,
        url: Url,
        prefix: &str,
    ) -> std::io::Result<Arc<SharedStore>> {
        let s = Arc::new(SharedStore {
            local,
            outbox: Mutex::new(VecDeque::new()),
            client,
            hash: format!("{prefix}:suppression"),
            removed: format!("{prefix}:suppression:removed"),
            channel: format!("{prefix}:suppression:changes"),
            synced: AtomicBool::new(false),
        });
        let t = s.clone();
        std::thread::Builder::new().name("suppression-sync".into()).spawn(move || t.run(url))?;
        Ok(s)
    }

    /// Changes waiting for Redis.
    pub fn pending(&self) -> usize {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the local list is known to match Redis.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    fn queue(&self, c: Change) {
        let mut o = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if o.len() >= MAX_OUTBOX {
            o.pop_front();
            tracing::warn!(
                "suppression changes for Redis past {MAX_OUTBOX}: the oldest dropped (the next sync decides)"
            );
        }
        o.push_back(c);
    }

    fn run(self: Arc<Self>, url: Url) {
        let mut failures = 0u32;
        loop {
            match self.session(&url) {
                Ok(()) => failures = 0,
                Err(e) => {
                    if self.synced.swap(false, Ordering::Relaxed) || failures == 0 {
                        tracing::warn!(error = %e, "suppression list: not in step with Redis until it is back");
                    }
                    failures = failures.saturating_add(1);
                }
            }
            self.synced.store(false, Ordering::Relaxed);
            #[allow(clippy::disallowed_methods)]
            // reason: not a worker: the suppression sync thread
            std::thread::sleep(backoff(failures));
        }
    }

    /// One connection's life: subscribe, write the outbox, sync, follow.
    fn session(&self, url: &Url) -> Result<(), String> {
        let timeout = self.client.timeout();
        let mut sub = Conn::login(url, timeout)?;
        sub.send(&[cmd(&["SUBSCRIBE", &self.channel])])?;
        sub.read()?;
        self.flush_outbox()?;
        self.full_sync()?;
        self.synced.store(true, Ordering::Relaxed);
        tracing::info!(entries = self.local.len(), "suppression list in step with Redis");
        sub.set_read_timeout(Duration::from_millis(250))?;
        let mut idle = 0u32;
        loop {
            match sub.read() {
                Ok(f) => {
                    idle = 0;
                    if let Some(change) = message_payload(&f).and_then(Change::decode) {
                        self.apply(&change);
                    }
                }
                Err(e) if e == "timeout" => {
                    idle += 1;
                    // Every ~10 s of quiet, make sure the subscription lives.
                    if idle >= 40 {
                        idle = 0;
                        sub.set_read_timeout(timeout)?;
                        sub.send(&[cmd(&["PING"])])?;
                        sub.read()?;
                        sub.set_read_timeout(Duration::from_millis(250))?;
                    }
                }
                Err(e) => return Err(e),
            }
            self.flush_outbox()?;
        }
    }

    /// Writes queued changes to Redis, oldest first.
    fn flush_outbox(&self) -> Result<(), String> {
        loop {
            let Some(c) = self.outbox.lock().unwrap_or_else(|p| p.into_inner()).front().cloned() else {
                return Ok(());
            };
            let answers = self.client.call_blocking(c.commands(&self.hash, &self.removed, &self.channel))?;
            if let Some(OwnedFrame::Error(e)) = answers.iter().find(|f| matches!(f, OwnedFrame::Error(_))) {
                return Err(e.clone());
            }
            let mut o = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            if o.front() == Some(&c) {
                o.pop_front();
            }
        }
    }

    /// Brings the local list and Redis's together (see [`sync`]): Redis's
    /// entries taken, ours it lacks written to it, ours removed elsewhere
    /// since removed; keys still in the outbox left alone.
    fn full_sync(&self) -> Result<(), String> {
        let cutoff = unix_secs().saturating_sub(TOMBSTONE_DAYS * 86_400).to_string();
        let answers = self.client.call_blocking(vec![
            cmd(&["ZREMRANGEBYSCORE", &self.removed, "-inf", &cutoff]),
            cmd(&["HGETALL", &self.hash]),
            cmd(&["ZRANGE", &self.removed, "0", "-1", "WITHSCORES"]),
        ])?;
        let (Some(OwnedFrame::Array(items)), Some(OwnedFrame::Array(tombs))) =
            (answers.get(1), answers.get(2))
        else {
            return Err("unexpected answer to HGETALL or ZRANGE".into());
        };
        let text = |f: &OwnedFrame| match f {
            OwnedFrame::BulkString(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        };
        let mut remote: HashMap<String, (String, u64)> = HashMap::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            if let (Some(k), Some(OwnedFrame::BulkString(v))) = (pair.first().and_then(text), pair.get(1)) {
                if let Some(v) = hash_value(v) {
                    remote.insert(k, v);
                }
            }
        }
        let mut removed: HashMap<String, u64> = HashMap::with_capacity(tombs.len() / 2);
        for pair in tombs.chunks(2) {
            if let (Some(k), Some(at)) = (pair.first().and_then(text), pair.get(1).and_then(text)) {
                if let Ok(at) = at.parse::<f64>() {
                    removed.insert(k, at as u64);
                }
            }
        }
        let local: HashMap<String, Entry> = self
            .local
            .list(None, usize::MAX)
            .into_iter()
            .filter_map(|e| Some((key(&e.address, e.tenant.as_deref())?, e)))
            .collect();
        let pending: std::collections::HashSet<String> = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.key().to_owned())
            .collect();
        let (mut taken, mut pushed, mut dropped) = (0, 0, 0);
        let keys: std::collections::HashSet<&String> = remote.keys().chain(local.keys()).collect();
        for k in keys {
            if pending.contains(k) {
                continue;
            }
            let l = local.get(k);
            let r = remote.get(k);
            match sync(l.map(|e| e.since), r.map(|r| r.1), removed.get(k).copied()) {
                SyncStep::Keep => {}
                SyncStep::TakeRemote => {
                    if let Some((reason, since)) = r {
                        self.apply(&Change::Add(k.clone(), reason.clone(), *since));
                        taken += 1;
                    }
                }
                SyncStep::PushLocal => {
                    if let Some(e) = l {
                        self.queue(Change::Add(k.clone(), e.reason.clone(), e.since));
                        pushed += 1;
                    }
                }
                SyncStep::RemoveLocal => {
                    self.apply(&Change::Remove(k.clone(), removed.get(k).copied().unwrap_or(0)));
                    dropped += 1;
                }
            }
        }
        if taken + pushed + dropped > 0 {
            tracing::info!(taken, pushed, dropped, "suppression list: caught up with Redis");
        }
        self.flush_outbox()
    }

    /// Applies a change from Redis to the local list (not written back);
    /// whether it changed anything.
    fn apply(&self, c: &Change) -> bool {
        let (tenant, address) = split_key(c.key());
        match c {
            Change::Add(_, reason, since) => {
                let Some(reason) = Reason::parse(reason) else { return false };
                let same = self
                    .local
                    .check(address, tenant)
                    .is_some_and(|e| e.reason == reason.as_string() && e.since == *since);
                !same && self.local.add(address, tenant, reason, *since).is_ok()
            }
            // An add made after the removal stands.
            Change::Remove(_, at) => {
                self.local.check(address, tenant).is_some_and(|e| e.since <= *at)
                    && self.local.remove(address, tenant).0
            }
        }
    }
}

impl Store for SharedStore {
    fn check(&self, address: &str, tenant: Option<&str>) -> Option<Entry> {
        self.local.check(address, tenant)
    }

    fn add(
        &self,
        address: &str,
        tenant: Option<&str>,
        reason: Reason,
        since: u64,
    ) -> Result<Durable, String> {
        let durable = self.local.add(address, tenant, reason, since)?;
        if let Some(k) = key(address, tenant) {
            self.queue(Change::Add(k, reason.as_string(), since));
        }
        Ok(durable)
    }

    fn remove(&self, address: &str, tenant: Option<&str>) -> (bool, Durable) {
        let (was, durable) = self.local.remove(address, tenant);
        if let Some(k) = key(address, tenant) {
            self.queue(Change::Remove(k, unix_secs()));
        }
        (was, durable)
    }

    fn list(&self, address: Option<&str>, limit: usize) -> Vec<Entry> {
        self.local.list(address, limit)
    }

    fn len(&self) -> usize {
        self.local.len()
    }
}
