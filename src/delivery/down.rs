//! Domains whose destination could not be reached: their mail waits
//! together instead of failing one message at a time (PowerMTA's backoff
//! mode, in small).
//!
//! When a connection to a domain's next hop fails (refused, timed out, a
//! 421 greeting), the domain is *down* until the destination's backoff
//! ends. A message due meanwhile whose remaining recipients are all in that
//! domain is parked on the domain: no plan, no route, no attempt, no spool
//! record, no event; its id joins the domain's list (8 bytes). When the
//! backoff ends, one parked message goes as a probe. If the probe reaches
//! the destination (delivered, or any reply after connecting), every parked
//! message is released at once; if not, the domain is down for another
//! backoff and the rest stay parked. So a down destination costs one real
//! attempt per backoff period, not one per message.
//!
//! Parking counts no attempt and does not move a message's own retry
//! schedule: the probe and the released messages are planned as usual
//! (DSNs, expiry, events). A parked message past `max_age`, or due a delay
//! warning, is released (to expire, or to be tried and warn its sender)
//! when its domain's next probe goes. Nothing here is durable: after
//! a restart every message is planned by its spool record again, and the
//! first failure marks its domain down again.
//!
//! Pure: no clock, no I/O. `now` is Unix seconds, given by the caller.

use std::collections::{HashMap, VecDeque};

use crate::envelope::QueueId;

/// What to do with a message about to be planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Plan it as usual (its domain is not down, or it is the probe).
    Go,
    /// It was parked on its domain.
    Parked,
}

/// What the sweep of a parked message decides (see [`Down::tick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Still queued and not expired: stays parked.
    Keep,
    /// Expired or due a delay warning: release it to be planned.
    Release,
    /// Gone from the queue (delivered elsewhere, deleted): forget it.
    Drop,
}

#[derive(Debug)]
struct Domain {
    /// Not tried again before this (Unix seconds).
    until: u64,
    parked: VecDeque<QueueId>,
    /// The message sent to find out whether the destination is back, and
    /// when to give up waiting for its result and send another.
    probe: Option<(QueueId, u64)>,
}

/// The down domains of one owner, by lowercase domain name.
#[derive(Debug, Default)]
pub struct Down {
    domains: HashMap<String, Domain>,
    parked: usize,
}

impl Down {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Messages parked, over all domains.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Domains down (or being probed).
    pub fn domains(&self) -> usize {
        self.domains.len()
    }

    /// Until when `domain` is down, if it is (or a probe is out).
    pub fn until(&self, domain: &str) -> Option<u64> {
        self.domains.get(domain).map(|d| d.until)
    }

    /// Message `id`, whose remaining recipients are all in `domain`, is
    /// due. Parks it while the domain is down or a probe is out; otherwise
    /// it goes (and becomes the probe when the backoff is over). `wait` is
    /// how long a probe's result is waited for before another goes.
    pub fn admit(&mut self, id: QueueId, domain: &str, now: u64, wait: u64) -> Admit {
        let Some(d) = self.domains.get_mut(domain) else { return Admit::Go };
        if d.until > now {
            d.parked.push_back(id);
            self.parked += 1;
            return Admit::Parked;
        }
        match d.probe {
            Some((p, _)) if p == id => Admit::Go,
            Some((_, deadline)) if deadline > now => {
                d.parked.push_back(id);
                self.parked += 1;
                Admit::Parked
            }
            _ => {
                d.probe = Some((id, now + wait.max(1)));
                Admit::Go
            }
        }
    }

    /// A delivery to `domain` found its destination unreachable, not to be
    /// tried before `until`. Parked messages stay parked.
    pub fn failed(&mut self, domain: &str, until: u64, now: u64) {
        if until <= now {
            return; // no backoff configured: nothing to wait for
        }
        let d = self.domains.entry(domain.to_owned()).or_insert_with(|| Domain {
            until,
            parked: VecDeque::new(),
            probe: None,
        });
        d.until = d.until.max(until);
        d.probe = None;
    }

    /// A delivery to `domain` reached its destination: the domain is up.
    /// Returns the parked messages, to be planned now.
    pub fn reached(&mut self, domain: &str) -> Vec<QueueId> {
        match self.domains.remove(domain) {
            Some(d) => {
                self.parked -= d.parked.len();
                d.parked.into()
            }
            None => Vec::new(),
        }
    }

    /// Once a second: for each domain whose backoff is over and that has
    /// no probe out, the next parked message goes as its probe (those
    /// `keep` says are gone are dropped, those expired go along). Domains
    /// with nothing parked and nothing out are forgotten. Returns the
    /// messages to plan now.
    pub fn tick(&mut self, now: u64, wait: u64, mut keep: impl FnMut(QueueId) -> Keep) -> Vec<QueueId> {
        let mut out = Vec::new();
        let mut dropped = 0;
        self.domains.retain(|_, d| {
            if d.until > now || d.probe.is_some_and(|(_, deadline)| deadline > now) {
                return true;
            }
            // The backoff is over: a sweep of the parked (once per backoff
            // period), then a probe.
            let before = d.parked.len();
            d.parked.retain(|&id| match keep(id) {
                Keep::Keep => true,
                Keep::Release => {
                    out.push(id);
                    false
                }
                Keep::Drop => false,
            });
            dropped += before - d.parked.len();
            match d.parked.pop_front() {
                Some(id) => {
                    dropped += 1;
                    d.probe = Some((id, now + wait.max(1)));
                    out.push(id);
                    true
                }
                None => {
                    d.probe = None;
                    false
                }
            }
        });
        self.parked -= dropped;
        out
    }

    /// Forgets every down domain (an administrator's flush). Returns the
    /// parked messages, to be planned now.
    pub fn clear(&mut self) -> Vec<QueueId> {
        self.parked = 0;
        self.domains.drain().flat_map(|(_, d)| d.parked).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u64) -> QueueId {
        QueueId(n)
    }

    #[test]
    fn a_domain_not_down_lets_everything_go() {
        let mut d = Down::default();
        assert_eq!(d.admit(q(1), "a.test", 100, 30), Admit::Go);
        assert!(d.is_empty());
        // A failure without a backoff (0s) marks nothing.
        d.failed("a.test", 100, 100);
        assert_eq!(d.admit(q(1), "a.test", 100, 30), Admit::Go);
    }

    #[test]
    fn down_parks_then_probes_once_per_backoff() {
        let mut d = Down::default();
        let all = |_| Keep::Keep;
        d.failed("a.test", 130, 100);
        // Due meanwhile: parked, in order; another domain goes.
        for n in 1..=5 {
            assert_eq!(d.admit(q(n), "a.test", 101, 30), Admit::Parked);
        }
        assert_eq!(d.admit(q(9), "b.test", 101, 30), Admit::Go);
        assert_eq!(d.parked(), 5);
        // Nothing before the backoff ends.
        assert!(d.tick(129, 30, all).is_empty());
        // Then one probe, the oldest.
        assert_eq!(d.tick(130, 30, all), vec![q(1)]);
        assert_eq!(d.parked(), 4);
        // The probe is planned: it goes; anything else due parks.
        assert_eq!(d.admit(q(1), "a.test", 130, 30), Admit::Go);
        assert_eq!(d.admit(q(6), "a.test", 130, 30), Admit::Parked);
        // No second probe while the first is out.
        assert!(d.tick(131, 30, all).is_empty());
        // It failed: down again, the rest stay.
        d.failed("a.test", 161, 131);
        assert!(d.tick(150, 30, all).is_empty());
        assert_eq!(d.admit(q(7), "a.test", 150, 30), Admit::Parked);
        assert_eq!(d.tick(161, 30, all), vec![q(2)]);
        // That probe got through: everything parked goes now.
        let mut released = d.reached("a.test");
        released.sort();
        assert_eq!(released, vec![q(3), q(4), q(5), q(6), q(7)]);
        assert_eq!(d.parked(), 0);
        assert!(d.is_empty());
        assert_eq!(d.admit(q(8), "a.test", 162, 30), Admit::Go);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        // The probe was deleted before it was planned, or its result was
        // lost: after `wait`, another goes.
        let mut d = Down::default();
        d.failed("a.test", 110, 100);
        d.admit(q(1), "a.test", 101, 30);
        d.admit(q(2), "a.test", 101, 30);
        assert_eq!(d.tick(110, 30, |_| Keep::Keep), vec![q(1)]);
        assert!(d.tick(139, 30, |_| Keep::Keep).is_empty());
        assert_eq!(d.tick(140, 30, |_| Keep::Keep), vec![q(2)]);
        // With nothing parked and the last probe's time up, the domain is
        // forgotten: the next message goes.
        assert!(d.tick(170, 30, |_| Keep::Keep).is_empty());
        assert!(d.is_empty());
        assert_eq!(d.admit(q(3), "a.test", 171, 30), Admit::Go);
    }

    #[test]
    fn a_backoff_over_with_nothing_parked_forgets_the_domain() {
        let mut d = Down::default();
        d.failed("a.test", 110, 100);
        assert!(d.tick(110, 30, |_| Keep::Keep).is_empty());
        assert!(d.is_empty());
        // A message due after the backoff, before any tick, goes as the probe.
        d.failed("a.test", 120, 110);
        assert_eq!(d.admit(q(1), "a.test", 120, 30), Admit::Go);
        assert_eq!(d.admit(q(2), "a.test", 120, 30), Admit::Parked);
    }

    #[test]
    fn the_sweep_releases_expired_and_drops_gone_messages() {
        let mut d = Down::default();
        d.failed("a.test", 110, 100);
        for n in 1..=6 {
            d.admit(q(n), "a.test", 101, 30);
        }
        // 1 and 2 were deleted, 4 expired.
        let keep = |id: QueueId| match id.0 {
            1 | 2 => Keep::Drop,
            4 => Keep::Release,
            _ => Keep::Keep,
        };
        let mut out = d.tick(110, 30, keep);
        out.sort();
        assert_eq!(out, vec![q(3), q(4)]); // 4 to expire, 3 as the probe
        assert_eq!(d.parked(), 2);
        let mut rest = d.reached("a.test");
        rest.sort();
        assert_eq!(rest, vec![q(5), q(6)]);
        assert_eq!(d.parked(), 0);
    }

    #[test]
    fn failures_keep_the_latest_backoff() {
        let mut d = Down::default();
        // Jobs in flight when the domain went down report one by one.
        d.failed("a.test", 130, 100);
        d.failed("a.test", 125, 101);
        assert_eq!(d.until("a.test"), Some(130));
        d.failed("a.test", 140, 110);
        assert_eq!(d.until("a.test"), Some(140));
    }

    #[test]
    fn a_flush_releases_everything() {
        let mut d = Down::default();
        d.failed("a.test", 130, 100);
        d.failed("b.test", 130, 100);
        d.admit(q(1), "a.test", 101, 30);
        d.admit(q(2), "b.test", 101, 30);
        let mut all = d.clear();
        all.sort();
        assert_eq!(all, vec![q(1), q(2)]);
        assert_eq!(d.parked(), 0);
        assert!(d.is_empty());
    }
}
