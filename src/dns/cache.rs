//! One DNS cache for all workers: answers live for their TTL (negative ones
//! per RFC 2308), the size is bounded, and a name being looked up is looked up
//! once: other askers, on any worker, wait and are woken when it lands.
//!
//! No stampede when many answers expire together: each answer's lifetime is
//! cut by up to 10% (by a hash of its name), so answers cached in the same
//! moment do not expire in the same moment; and an answer that expired at
//! most [`STALE_FOR`] ago is still given out (RFC 8767's serve-stale), to
//! the asker who finds it expired (who refreshes it behind the answer:
//! [`Probe::Stale`]) and to everyone asking while that refresh runs, so
//! nobody waits for a name that had an answer moments ago.
//!
//! Time is a parameter; the cache never reads the clock.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::wire::{Response, Rtype};

/// A cached lookup: an answer, or a temporary failure (cached briefly).
pub type Lookup = Result<Response, String>;

/// Cache key: lower-case name and type.
pub type Key = (String, Rtype);

const SHARDS: usize = 16;

/// How long past its expiry an answer is still given to other askers while
/// one of them refreshes it.
pub const STALE_FOR: Duration = Duration::from_secs(30);

enum Slot {
    /// Someone is asking the name server; these tasks wait for the answer,
    /// unless the previous answer (and when it expired) may be served stale.
    Pending {
        waiters: Vec<Waker>,
        stale: Option<(Arc<Lookup>, Instant)>,
    },
    Ready {
        value: Arc<Lookup>,
        expires: Instant,
    },
}

/// Hit/miss counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Lookups that waited for another task's query instead of asking.
    pub coalesced: AtomicU64,
    /// Lookups answered with an expired answer while it was being refreshed.
    pub stale: AtomicU64,
}

/// The shared cache. Cheap to share (`Arc`); each shard has its own lock, held
/// only for a map operation, never across an await.
pub struct Cache {
    shards: Vec<Mutex<HashMap<Key, Slot>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    pub stats: CacheStats,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("capacity", &(self.per_shard * SHARDS)).finish()
    }
}

/// What a probe found.
#[derive(Debug)]
pub enum Probe<'a> {
    Hit(Arc<Lookup>),
    /// Nobody is asking: the caller must fetch and call [`Fetch::finish`].
    Fetch(Fetch<&'a Cache>),
    /// Someone else is asking: await this.
    Wait(Wait<'a>),
    /// An answer that expired moments ago: use it, and refresh it (the
    /// fetch may outlive the asker: [`Fetch::owned`]).
    Stale(Arc<Lookup>, Fetch<&'a Cache>),
}

impl Cache {
    /// A cache holding at most about `capacity` answers.
    pub fn new(capacity: usize) -> Cache {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
            stats: CacheStats::default(),
        }
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Slot>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `key` up at time `now`.
    pub fn probe(&self, key: Key, now: Instant) -> Probe<'_> {
        let mut shard = self.shard(&key);
        match shard.get(&key) {
            Some(Slot::Ready { value, expires }) if *expires > now => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Probe::Hit(value.clone());
            }
            Some(Slot::Pending { stale: Some((value, expired)), .. }) if now < *expired + STALE_FOR => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                return Probe::Hit(value.clone());
            }
            Some(Slot::Pending { .. }) => {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                return Probe::Wait(Wait { cache: self, key, registered: None });
            }
            _ => {}
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // An answer (not a failure) that expired moments ago is served to
        // this asker and to others while it is refreshed.
        let stale = match shard.remove(&key) {
            Some(Slot::Ready { value, expires }) if value.is_ok() && now < expires + STALE_FOR => {
                Some((value, expires))
            }
            _ => None,
        };
        shard.insert(key.clone(), Slot::Pending { waiters: Vec::new(), stale: stale.clone() });
        let fetch = Fetch { cache: self, key: Some(key) };
        match stale {
            Some((value, _)) => {
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                Probe::Stale(value, fetch)
            }
            None => Probe::Fetch(fetch),
        }
    }

    /// The cached value or a fresh one: `fetch` runs at most once per key at a
    /// time across all callers. `now` is read when needed.
    pub async fn get_or_fetch<F, Fut>(&self, key: Key, now: impl Fn() -> Instant, fetch: F) -> Arc<Lookup>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = (Lookup, Duration)>,
    {
        loop {
            match self.probe(key.clone(), now()) {
                Probe::Hit(v) => return v,
                Probe::Wait(w) => {
                    if let Some(v) = w.await {
                        return v;
                    }
                    // The fetcher gave up: try again (perhaps as the fetcher).
                }
                // Here the caller refreshes before answering (one that can
                // answer first and refresh in the background, as the
                // resolver does, handles Probe::Stale itself).
                Probe::Fetch(f) | Probe::Stale(_, f) => {
                    let (value, ttl) = fetch().await;
                    return f.finish(value, now(), ttl);
                }
            }
        }
    }

    /// Number of entries (ready and pending).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room in a shard: expired answers first, then any answers.
    fn evict(&self, shard: &mut HashMap<Key, Slot>, now: Instant) {
        if shard.len() < self.per_shard {
            return;
        }
        shard.retain(|_, s| !matches!(s, Slot::Ready { expires, .. } if *expires <= now));
        let mut excess = shard.len().saturating_sub(self.per_shard - 1);
        if excess > 0 {
            shard.retain(|_, s| {
                if excess > 0 && matches!(s, Slot::Ready { .. }) {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// The duty to fetch one key. Dropping it unfinished releases the waiters,
/// who then retry. `C` is how it reaches the cache: borrowed, or shared
/// (`Arc`) for a refresh that runs on its own.
#[derive(Debug)]
pub struct Fetch<C: std::ops::Deref<Target = Cache>> {
    cache: C,
    key: Option<Key>,
}

impl Fetch<&Cache> {
    /// The same duty, holding the cache itself: `cache` must be the cache
    /// this came from.
    pub fn owned(mut self, cache: Arc<Cache>) -> Fetch<Arc<Cache>> {
        debug_assert!(std::ptr::eq(self.cache, &*cache), "a fetch moved to another cache");
        Fetch { cache, key: self.key.take() }
    }
}

impl<C: std::ops::Deref<Target = Cache>> Fetch<C> {
    /// Stores the answer for `ttl` from `now` (cut by up to 10%, see the
    /// module) and wakes everyone waiting for it.
    pub fn finish(mut self, value: Lookup, now: Instant, ttl: Duration) -> Arc<Lookup> {
        let value = Arc::new(value);
        let Some(key) = self.key.take() else { return value };
        let ttl = jittered(ttl, self.cache.hasher.hash_one(&key));
        let mut shard = self.cache.shard(&key);
        self.cache.evict(&mut shard, now);
        let old = shard.insert(key, Slot::Ready { value: value.clone(), expires: now + ttl });
        drop(shard);
        if let Some(Slot::Pending { waiters, .. }) = old {
            waiters.into_iter().for_each(Waker::wake);
        }
        value
    }
}

/// `ttl` less up to 10%, by `hash`: answers of different names cached in
/// the same moment expire at different moments.
fn jittered(ttl: Duration, hash: u64) -> Duration {
    ttl - ttl.mul_f64((hash % 1000) as f64 / 10_000.0)
}

impl<C: std::ops::Deref<Target = Cache>> Drop for Fetch<C> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut shard = self.cache.shard(&key);
            if let Some(Slot::Pending { waiters, .. }) = shard.remove(&key) {
                drop(shard);
                waiters.into_iter().for_each(Waker::wake);
            }
        }
    }
}

/// Waits for another task's fetch. Resolves to `None` if that fetch was
/// abandoned.
#[derive(Debug)]
pub struct Wait<'a> {
    cache: &'a Cache,
    key: Key,
    registered: Option<Waker>,
}

impl Future for Wait<'_> {
    type Output = Option<Arc<Lookup>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut shard = this.cache.shard(&this.key);
        match shard.get_mut(&this.key) {
            Some(Slot::Ready { value, .. }) => Poll::Ready(Some(value.clone())),
            Some(Slot::Pending { waiters, .. }) => {
                let fresh = this.registered.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
                if fresh {
                    waiters.push(cx.waker().clone());
                    this.registered = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // reason: a real Instant as the test clock's origin
mod tests {
    use super::*;
    use crate::dns::wire::{Answer, Response};

    fn resp(ttl: u32) -> Lookup {
        Ok(Response { answer: Answer::NoData, ttl, secure: false })
    }

    #[test]
    fn hits_until_expiry() {
        let c = Cache::new(100);
        let t0 = Instant::now();
        let key = ("a.test".to_owned(), Rtype::Mx);
        let Probe::Fetch(f) = c.probe(key.clone(), t0) else { panic!("miss first") };
        f.finish(resp(30), t0, Duration::from_secs(30));
        assert!(matches!(c.probe(key.clone(), t0 + Duration::from_secs(26)), Probe::Hit(_)));
        assert!(matches!(c.probe(key.clone(), t0 + Duration::from_secs(30)), Probe::Stale(..)), "expired");
        // Long expired: nothing to give, fetch and wait.
        let other = ("b.test".to_owned(), Rtype::Mx);
        let Probe::Fetch(f) = c.probe(other.clone(), t0) else { panic!() };
        f.finish(resp(30), t0, Duration::from_secs(30));
        assert!(matches!(c.probe(other, t0 + Duration::from_secs(30) + STALE_FOR), Probe::Fetch(_)));
    }

    #[test]
    fn expiries_are_spread_by_name() {
        let c = Cache::new(10_000);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(100);
        let mut alive_at_95 = 0;
        for i in 0..1000 {
            let key = (format!("n{i}.test"), Rtype::A);
            let Probe::Fetch(f) = c.probe(key.clone(), t0) else { panic!() };
            f.finish(resp(100), t0, ttl);
            assert!(
                matches!(c.probe(key.clone(), t0 + Duration::from_secs(89)), Probe::Hit(_)),
                "at least 90%"
            );
            if matches!(c.probe(key.clone(), t0 + Duration::from_secs(95)), Probe::Hit(_)) {
                alive_at_95 += 1;
            }
        }
        assert!((200..800).contains(&alive_at_95), "{alive_at_95} of 1000 still cached at 95%: not spread");
        for (ttl, hash) in [(100, 0), (100, 999), (100, 123_456_789), (0, 5)] {
            let j = jittered(Duration::from_secs(ttl), hash);
            assert!(j <= Duration::from_secs(ttl) && j >= Duration::from_secs(ttl).mul_f64(0.9), "{j:?}");
        }
    }

    #[test]
    fn others_get_the_old_answer_while_one_refreshes_it() {
        let c = Cache::new(100);
        let t0 = Instant::now();
        let key = ("a.test".to_owned(), Rtype::A);
        let Probe::Fetch(f) = c.probe(key.clone(), t0) else { panic!() };
        f.finish(resp(10), t0, Duration::from_secs(10));
        let later = t0 + Duration::from_secs(11);
        let Probe::Stale(old, refresh) = c.probe(key.clone(), later) else {
            panic!("the first asker gets the old answer and refreshes it")
        };
        assert_eq!(old.as_ref().as_ref().map(|r| r.ttl), Ok(10));
        assert!(matches!(c.probe(key.clone(), later), Probe::Hit(_)), "others do not wait");
        assert_eq!(c.stats.stale.load(Ordering::Relaxed), 2);
        // Too long past its expiry: wait for the refresh like before.
        assert!(matches!(c.probe(key.clone(), t0 + Duration::from_secs(10) + STALE_FOR), Probe::Wait(_)));
        refresh.finish(resp(10), later, Duration::from_secs(10));
        assert!(matches!(c.probe(key.clone(), later), Probe::Hit(_)));
        // A failure is never served stale.
        let bad = ("b.test".to_owned(), Rtype::A);
        let Probe::Fetch(f) = c.probe(bad.clone(), t0) else { panic!() };
        f.finish(Err("timeout".into()), t0, Duration::from_secs(5));
        let Probe::Fetch(_refresh) = c.probe(bad.clone(), t0 + Duration::from_secs(6)) else { panic!() };
        assert!(matches!(c.probe(bad, t0 + Duration::from_secs(6)), Probe::Wait(_)));
    }

    #[test]
    fn concurrent_askers_share_one_fetch_across_threads() {
        let c = Arc::new(Cache::new(100));
        let fetches = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, fetches) = (c.clone(), fetches.clone());
                std::thread::spawn(move || {
                    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .enable_timer()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let v = c
                            .get_or_fetch(
                                ("shared.test".into(), Rtype::A),
                                || t0,
                                || async {
                                    fetches.fetch_add(1, Ordering::SeqCst);
                                    monoio::time::sleep(Duration::from_millis(100)).await;
                                    (resp(60), Duration::from_secs(60))
                                },
                            )
                            .await;
                        assert!(v.is_ok());
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one query for eight askers on eight threads");
        assert_eq!(c.stats.misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn abandoned_fetch_releases_waiters() {
        let c = Cache::new(100);
        let t0 = Instant::now();
        let key = ("x.test".to_owned(), Rtype::A);
        let Probe::Fetch(f) = c.probe(key.clone(), t0) else { panic!() };
        let Probe::Wait(mut w) = c.probe(key.clone(), t0) else { panic!() };
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        drop(f);
        assert!(matches!(Pin::new(&mut w).poll(&mut cx), Poll::Ready(None)));
        assert!(matches!(c.probe(key, t0), Probe::Fetch(_)), "the next asker fetches");
    }

    #[test]
    fn size_is_bounded() {
        let c = Cache::new(64);
        let t0 = Instant::now();
        for i in 0..10_000 {
            if let Probe::Fetch(f) = c.probe((format!("n{i}.test"), Rtype::A), t0) {
                f.finish(resp(60), t0, Duration::from_secs(60));
            }
        }
        assert!(c.len() <= 64 + SHARDS, "{} entries", c.len());
    }
}
