//! Concurrent connection limits: whole server and per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by all workers; held per connection through a [`ConnGuard`].
#[derive(Debug)]
pub struct ConnLimits {
    total: AtomicUsize,
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Total,
    PerIp,
}

/// Releases its connection slot when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            total: AtomicUsize::new(0),
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// New limits (config reload); connections above them are not closed.
    pub fn set(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    pub fn current(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip`. `exempt` skips the per-IP limit
    /// (clients in relay_networks, as Postfix exempts $mynetworks).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, exempt: bool) -> Result<ConnGuard, LimitHit> {
        let max = self.max_total.load(Ordering::Relaxed);
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::Total);
        }
        let mut guard = ConnGuard { limits: self.clone(), ip: None };
        if !exempt {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip.load(Ordering::Relaxed) {
                return Err(LimitHit::PerIp); // guard drop releases the total slot
            }
            *n += 1;
            guard.ip = Some(ip);
        }
        Ok(guard)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut map = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// A server-wide budget for message content held in memory.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(max: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { used: AtomicUsize::new(0), max: AtomicUsize::new(max) })
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit.
    pub fn try_charge(&self, n: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > max {
                return false;
            }
            match self.used.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    pub fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budget() {
        let b = MemoryBudget::new(100);
        assert!(b.try_charge(60));
        assert!(!b.try_charge(41));
        assert!(b.try_charge(40));
        b.release(100);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn limits_and_release() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = l.try_acquire(a, false).unwrap();
        let _g2 = l.try_acquire(a, false).unwrap();
        assert_eq!(l.try_acquire(a, false).unwrap_err(), LimitHit::PerIp);
        let _g3 = l.try_acquire(b, true).unwrap();
        assert_eq!(l.try_acquire(b, true).unwrap_err(), LimitHit::Total);
        assert_eq!(l.current(), 3);
        drop(g1);
        let _g4 = l.try_acquire(a, false).unwrap();
        assert_eq!(l.current(), 3);
    }
}
