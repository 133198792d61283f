//! What delivery decides, without I/O and without reading the clock (time
//! is a parameter): which recipients an attempt covers and where each group
//! goes, what a finished attempt means for each recipient (done, retried,
//! reported), when the next attempt is, and when a message has been queued
//! too long. The owner (`owner`) only carries these decisions out.
//!
//! ```text
//!   queued message ──plan()──► groups by domain: Local | Remote | Expired
//!   outcomes ──reports()──► DSN reports (failures; successes a next hop cannot report)
//!   outcomes + whether the DSN was stored ──settle()──► Finished | Retry { progress }
//! ```
//!
//! Shaping and reply-driven automation are decisions of the same kind and
//! belong beside these.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::dsn::{Action, Report};
use super::route::HopError;
use super::{Cause, Outcome, RcptOutcome};
use crate::envelope::Envelope;

/// Where one domain's recipients go in this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Way {
    /// Into the local Maildirs (`[relay] local_domains`).
    Local,
    /// To the next hop of the domain.
    Remote,
    /// Nowhere: the message is older than `max_age`; it bounces with this
    /// reason (status 4.4.7).
    Expired(String),
    /// A complaint report to one of `[feedback] addresses`: read, not delivered.
    Feedback,
}

/// Recipients of one domain, and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The domain, in lower case.
    pub domain: String,
    /// Recipient indexes into the envelope.
    pub rcpts: Vec<u32>,
    pub way: Way,
}

/// What the decisions need of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub max_age: Duration,
    /// Intervals between attempts; the last one repeats.
    pub retry: &'a [Duration],
    pub local_domains: &'a HashSet<String>,
    /// `[feedback] addresses` (lower case), if any.
    pub feedback: Option<&'a HashSet<String>>,
}

/// The enhanced status of an expired message's recipients.
pub const EXPIRED: &str = "4.4.7";

/// One attempt of a message: its remaining recipients, grouped by domain (in
/// domain order), each group with its way. `received_at` and `now` are Unix
/// seconds; `last_error` goes into an expired message's reason. With
/// `grace` (the message was held by a queue suspension until now) it is
/// tried once more even past `max_age`: time held does not age mail into
/// bounces.
pub fn plan(
    env: &Envelope,
    remaining: &[u32],
    received_at: u64,
    last_error: Option<&str>,
    now: u64,
    grace: bool,
    rules: Rules<'_>,
) -> Vec<Group> {
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut reports = Vec::new();
    for &i in remaining {
        if let Some(r) = env.recipients.get(i as usize) {
            if rules.feedback.is_some_and(|f| f.contains(&r.address.to_string().to_lowercase())) {
                reports.push(i);
            } else {
                groups.entry(r.address.domain().to_lowercase()).or_default().push(i);
            }
        }
    }
    let expired = !grace && now.saturating_sub(received_at) > rules.max_age.as_secs();
    let reports = (!reports.is_empty()).then(|| Group {
        domain: "feedback".into(),
        rcpts: reports,
        way: Way::Feedback,
    });
    // With [feedback], each copy sent carries a reference naming its
    // recipient only if the copy has one: tenant (bulk) mail goes one
    // recipient per transaction, so a complaint about any copy can be
    // tied to its recipient.
    let one_each = rules.feedback.is_some() && env.tenant.is_some();
    groups
        .into_iter()
        .flat_map(|(domain, rcpts)| {
            let way = if expired {
                Way::Expired(format!(
                    "message expired after {} days in the queue; last error: {}",
                    rules.max_age.as_secs() / 86_400,
                    last_error.filter(|e| !e.is_empty()).unwrap_or("none")
                ))
            } else if rules.local_domains.contains(&domain) {
                Way::Local
            } else {
                Way::Remote
            };
            if one_each && way == Way::Remote && rcpts.len() > 1 {
                let each =
                    rcpts.iter().map(|&r| Group { domain: domain.clone(), rcpts: vec![r], way: Way::Remote });
                return each.collect::<Vec<_>>();
            }
            vec![Group { domain, rcpts, way }]
        })
        .chain(reports)
        .collect()
}

/// The outcome of every recipient of a group that found no next hop.
pub fn no_hop(rcpts: &[u32], e: &HopError) -> Vec<RcptOutcome> {
    match e {
        HopError::Permanent(status, text) => RcptOutcome::all(rcpts, Outcome::Permanent, status, text),
        HopError::Temporary(text) => RcptOutcome::all(rcpts, Outcome::Temporary, "4.4.3", text),
    }
}

/// The outcome of a recipient dropped because it is suppressed: permanent,
/// reported by a `Suppressed` event rather than a DSN.
pub fn suppressed(index: u32, reason: &str) -> RcptOutcome {
    let mut o =
        RcptOutcome::all(&[index], Outcome::Permanent, "5.7.1", &format!("suppressed ({reason})")).remove(0);
    o.cause = Cause::Suppressed;
    o
}

/// The reason in the text of a [`suppressed`] outcome.
pub fn suppression_reason(text: &str) -> &str {
    text.strip_prefix("suppressed (").and_then(|r| r.strip_suffix(')')).unwrap_or(text)
}

/// The DSN reports an attempt's outcomes call for: failures, and successes
/// with NOTIFY=SUCCESS that no next hop will report (delivered here, or
/// relayed to a server without DSN).
pub fn reports(env: &Envelope, outcomes: &[RcptOutcome]) -> Vec<Report> {
    outcomes
        .iter()
        .filter_map(|o| {
            let recipient = env.recipients.get(o.index as usize)?.clone();
            let action = match o.outcome {
                // A suppressed recipient is reported by its event, not a DSN.
                Outcome::Permanent if o.cause == Cause::Suppressed => return None,
                Outcome::Permanent => Action::Failed,
                Outcome::Delivered if recipient.notify.success() && o.remote.is_none() => Action::Delivered,
                Outcome::Delivered if recipient.notify.success() && !o.remote_dsn => Action::Relayed,
                _ => return None,
            };
            Some(Report {
                recipient,
                action,
                status: o.status.clone(),
                diagnostic: o.text.clone(),
                remote_mta: o.remote.clone(),
                class: o.class,
            })
        })
        .collect()
}

/// The `delayed` reports due after an attempt (`[delivery] delay_warning`):
/// `None` while none is due (too young, off, or already sent), else one
/// per recipient that failed temporarily, with the time the message
/// expires. Once per message: the caller records that it was sent.
/// Whether a message must be tried even though its domain is down (see
/// `down`): it expired (the attempt bounces it), or its sender is due a
/// delay warning (`delay_warning`, once), which an attempt sends.
pub fn must_try(
    received_at: u64,
    now: u64,
    max_age: Duration,
    delay_warning: Duration,
    notified: bool,
) -> bool {
    let age = now.saturating_sub(received_at);
    age > max_age.as_secs() || (!notified && !delay_warning.is_zero() && age >= delay_warning.as_secs())
}

pub fn delay_reports(
    env: &Envelope,
    outcomes: &[RcptOutcome],
    now: u64,
    delay_warning: Duration,
    max_age: Duration,
    notified: bool,
) -> Option<Vec<Report>> {
    if notified || delay_warning.is_zero() || now.saturating_sub(env.received_at) < delay_warning.as_secs() {
        return None;
    }
    let until = env.received_at + max_age.as_secs();
    Some(
        outcomes
            .iter()
            .filter(|o| o.outcome == Outcome::Temporary)
            .filter_map(|o| {
                Some(Report {
                    recipient: env.recipients.get(o.index as usize)?.clone(),
                    action: super::dsn::Action::Delayed { until },
                    status: o.status.clone(),
                    diagnostic: o.text.clone(),
                    remote_mta: o.remote.clone(),
                    class: None,
                })
            })
            .collect(),
    )
}

/// Messages a worker plans per second after a restart, of those already due.
pub const RECOVERY_PER_SECOND: usize = 5_000;

/// When the `i`-th message already due at a restart (oldest first) is
/// planned: the first [`RECOVERY_PER_SECOND`] at once, then as many each
/// second after, so a restart with a large queue does not send every retry
/// in the same moment (shaping then paces each destination as usual).
pub fn recovery_slot(i: usize, now: u64) -> u64 {
    now + (i / RECOVERY_PER_SECOND) as u64
}

/// The retry interval after `attempts` attempts (the last one repeats).
pub fn retry_after(retry: &[Duration], attempts: u32) -> Duration {
    let i = (attempts.max(1) as usize - 1).min(retry.len().saturating_sub(1));
    retry.get(i).copied().unwrap_or(Duration::from_secs(300))
}

/// What an attempt leaves to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// No recipient is left: the message is done.
    Finished,
    /// Some are left: record this progress and try again at `next_attempt`.
    Retry {
        /// Recipients finished by this attempt.
        done: Vec<u32>,
        /// Attempts so far, this one included.
        attempts: u32,
        /// Unix seconds.
        next_attempt: u64,
        /// The first temporary failure (`status text`), empty if none.
        last_error: String,
    },
}

/// What an attempt's outcomes mean. A recipient is done when delivered, or
/// when it failed for good and its DSN was stored (`dsn_stored`; with no
/// report due, pass true); otherwise it stays, to fail (and be reported)
/// again at the next attempt. The next attempt follows the retry schedule,
/// but never after the message expires (and never sooner than a second),
/// and not before a temporary failure's `not_before`.
pub fn settle(
    outcomes: &[RcptOutcome],
    dsn_stored: bool,
    remaining: &[u32],
    attempts_before: u32,
    received_at: u64,
    now: u64,
    rules: Rules<'_>,
) -> Settled {
    let done: Vec<u32> = outcomes
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Delivered => true,
            Outcome::Permanent => dsn_stored,
            Outcome::Temporary => false,
        })
        .map(|o| o.index)
        .collect();
    if remaining.iter().all(|i| done.contains(i)) {
        return Settled::Finished;
    }
    let attempts = attempts_before + 1;
    let expiry = received_at + rules.max_age.as_secs();
    // A destination that asked us to wait (a suspension) holds its mail
    // back until then; the message still expires on time, not sooner.
    let scheduled = now + retry_after(rules.retry, attempts).as_secs();
    let held = outcomes.iter().filter(|o| o.outcome == Outcome::Temporary).filter_map(|o| o.not_before).max();
    let next_attempt = scheduled.max(held.unwrap_or(0)).min(expiry.max(now + 1));
    let last_error = outcomes
        .iter()
        .find(|o| o.outcome == Outcome::Temporary)
        .map(|o| format!("{} {}", o.status, o.text))
        .unwrap_or_default();
    Settled::Retry { done, attempts, next_attempt, last_error }
}

/// The error a domain's status shows after a group's outcomes: the first
/// that was not a delivery.
pub fn group_error(outcomes: &[RcptOutcome]) -> Option<String> {
    outcomes.iter().find(|o| o.outcome != Outcome::Delivered).map(|o| format!("{} {}", o.status, o.text))
}

#[cfg(test)]
mod must_try_tests {
    use super::*;

    #[test]
    fn expired_or_due_a_delay_warning() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        // (age in hours, max_age, delay_warning, notified, must try)
        let cases = [
            (1, h(120), Duration::ZERO, false, false),
            (121, h(120), Duration::ZERO, false, true),
            (3, h(120), h(4), false, false),
            (4, h(120), h(4), false, true),
            (5, h(120), h(4), true, false),
            (121, h(120), h(4), true, true),
        ];
        for (age, max_age, warn, notified, want) in cases {
            let now = 1_000_000;
            assert_eq!(must_try(now - age * 3600, now, max_age, warn, notified), want, "{age}h {notified}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly

    use super::*;
    use crate::envelope::{Notify, Recipient};
    use crate::smtp::address::Mailbox;
    use crate::spool::record::tests::sample_envelope;

    const M: u64 = 60;
    const DAY: u64 = 86_400;

    fn env(rcpts: &[(&str, &str)]) -> Envelope {
        let mut e = sample_envelope(1);
        e.recipients = rcpts
            .iter()
            .map(|(a, notify)| Recipient {
                address: Mailbox::parse(a).unwrap(),
                notify: Notify::parse(notify).unwrap_or_default(),
                orcpt: None,
            })
            .collect();
        e
    }

    fn rules<'a>(retry: &'a [Duration], local: &'a HashSet<String>) -> Rules<'a> {
        Rules { max_age: Duration::from_secs(5 * DAY), retry, local_domains: local, feedback: None }
    }

    fn outcome(
        index: u32,
        outcome: Outcome,
        status: &str,
        remote: Option<&str>,
        remote_dsn: bool,
    ) -> RcptOutcome {
        RcptOutcome {
            index,
            outcome,
            status: status.into(),
            text: format!("reply for {index}"),
            remote: remote.map(str::to_owned),
            remote_dsn,
            not_before: None,
            code: None,
            via: None,
            cause: Cause::Reply,
            class: None,
        }
    }

    #[test]
    fn plan_groups_by_domain_and_picks_the_way() {
        let e =
            env(&[("a@Local.test", ""), ("b@remote.test", ""), ("c@LOCAL.test", ""), ("d@other.test", "")]);
        let local: HashSet<String> = ["local.test".to_owned()].into();
        let retry = [Duration::from_secs(M)];
        let r = rules(&retry, &local);
        let t0 = 1_800_000_000;
        let groups = plan(&e, &[0, 1, 2, 3, 9], t0, None, t0 + 10, false, r);
        assert_eq!(
            groups,
            vec![
                Group { domain: "local.test".into(), rcpts: vec![0, 2], way: Way::Local },
                Group { domain: "other.test".into(), rcpts: vec![3], way: Way::Remote },
                Group { domain: "remote.test".into(), rcpts: vec![1], way: Way::Remote },
            ],
            "domains in lower case and in order; an index past the envelope is ignored"
        );
        assert_eq!(plan(&e, &[1], t0, None, t0, false, r)[0].rcpts, vec![1], "only the remaining ones");
        assert!(plan(&e, &[], t0, None, t0, false, r).is_empty());
        // Reports to a feedback address are read, whatever their domain, and never expire.
        let fbl: HashSet<String> = ["b@remote.test".to_owned()].into();
        let r = Rules { feedback: Some(&fbl), ..r };
        let groups = plan(&e, &[1, 3], t0, None, t0 + 10 * DAY, false, r);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1], Group { domain: "feedback".into(), rcpts: vec![1], way: Way::Feedback });
        assert!(matches!(groups[0].way, Way::Expired(_)));
    }

    #[test]
    fn plan_sends_tenant_mail_one_recipient_each_when_copies_carry_references() {
        let mut e =
            env(&[("a@remote.test", ""), ("b@remote.test", ""), ("c@local.test", ""), ("d@local.test", "")]);
        let local: HashSet<String> = ["local.test".to_owned()].into();
        let retry = [Duration::from_secs(M)];
        let fbl: HashSet<String> = ["fbl@local.test".to_owned()].into();
        let t0 = 1_800_000_000;
        let shapes = |e: &Envelope, feedback| {
            let r = Rules { feedback, ..rules(&retry, &local) };
            plan(e, &[0, 1, 2, 3], t0, None, t0, false, r).into_iter().map(|g| g.rcpts).collect::<Vec<_>>()
        };
        // (tenant, [feedback]) -> recipients of each group
        type Case<'a> = (Option<&'a str>, bool, Vec<Vec<u32>>);
        let cases: [Case; 4] = [
            (None, false, vec![vec![2, 3], vec![0, 1]]),
            (None, true, vec![vec![2, 3], vec![0, 1]]),
            (Some("acme"), false, vec![vec![2, 3], vec![0, 1]]),
            // Remote copies one by one; local delivery carries no reference.
            (Some("acme"), true, vec![vec![2, 3], vec![0], vec![1]]),
        ];
        for (tenant, feedback, want) in cases {
            e.tenant = tenant.map(str::to_owned);
            assert_eq!(shapes(&e, feedback.then_some(&fbl)), want, "tenant {tenant:?}, feedback {feedback}");
        }
    }

    #[test]
    fn plan_expires_past_max_age_only() {
        let e = env(&[("a@local.test", ""), ("b@remote.test", "")]);
        let local: HashSet<String> = ["local.test".to_owned()].into();
        let retry = [Duration::from_secs(M)];
        let r = rules(&retry, &local);
        let t0 = 1_800_000_000;
        let cases: [(u64, Option<&str>, Option<&str>); 4] = [
            (5 * DAY, None, None),
            (5 * DAY + 1, Some("451 4.7.1 greylisted"), Some("last error: 451 4.7.1 greylisted")),
            (9 * DAY, None, Some("last error: none")),
            (9 * DAY, Some(""), Some("last error: none")),
        ];
        for (age, last, want) in cases {
            let groups = plan(&e, &[0, 1], t0, last, t0 + age, false, r);
            for g in &groups {
                match (&g.way, want) {
                    (Way::Expired(text), Some(w)) => {
                        assert!(
                            text.starts_with("message expired after 5 days") && text.ends_with(w),
                            "{text}"
                        )
                    }
                    (Way::Local | Way::Remote, None) => {}
                    (way, want) => panic!("age {age}: {way:?}, wanted {want:?}"),
                }
            }
            // Held by a queue suspension until now: tried once more.
            let held = plan(&e, &[0, 1], t0, last, t0 + age, true, r);
            assert!(held.iter().all(|g| matches!(g.way, Way::Local | Way::Remote)), "{held:?}");
        }
    }

    #[test]
    fn reports_for_failures_and_unreported_successes() {
        let e = env(&[
            ("a@x.test", ""),
            ("b@x.test", "SUCCESS"),
            ("c@x.test", "SUCCESS"),
            ("d@x.test", "SUCCESS"),
        ]);
        let outcomes = [
            outcome(0, Outcome::Permanent, "5.1.1", Some("mx"), true),
            outcome(1, Outcome::Delivered, "2.0.0", None, false), // local
            outcome(2, Outcome::Delivered, "2.0.0", Some("mx"), false), // next hop without DSN
            outcome(3, Outcome::Delivered, "2.0.0", Some("mx"), true), // it reports itself
        ];
        let got: Vec<(u32, Action)> = reports(&e, &outcomes)
            .iter()
            .map(|r| {
                (e.recipients.iter().position(|x| x.address == r.recipient.address).unwrap() as u32, r.action)
            })
            .collect();
        assert_eq!(got, vec![(0, Action::Failed), (1, Action::Delivered), (2, Action::Relayed)]);
        let temp = [outcome(0, Outcome::Temporary, "4.2.0", None, false)];
        assert!(reports(&e, &temp).is_empty(), "no report for a temporary failure");
        let plain = [outcome(0, Outcome::Delivered, "2.0.0", None, false)];
        assert!(reports(&e, &plain).is_empty(), "no success report unless asked for");
        let dropped = [suppressed(0, "bounce:InvalidRecipient")];
        assert_eq!(dropped[0].outcome, Outcome::Permanent);
        assert_eq!(suppression_reason(&dropped[0].text), "bounce:InvalidRecipient");
        assert!(reports(&e, &dropped).is_empty(), "a suppressed recipient gets an event, not a DSN");
    }

    #[test]
    fn retry_schedule_repeats_the_last_interval() {
        let retry = [Duration::from_secs(M), Duration::from_secs(5 * M)];
        let after: Vec<u64> = (0..5).map(|n| retry_after(&retry, n).as_secs()).collect();
        assert_eq!(after, vec![M, M, 5 * M, 5 * M, 5 * M]);
    }

    #[test]
    fn settle_table() {
        let local = HashSet::new();
        let retry = [Duration::from_secs(M), Duration::from_secs(10 * M)];
        let r = rules(&retry, &local);
        let t0 = 1_800_000_000;
        let d = |i| outcome(i, Outcome::Delivered, "2.0.0", Some("mx"), true);
        let p = |i| outcome(i, Outcome::Permanent, "5.1.1", Some("mx"), true);
        let t = |i| outcome(i, Outcome::Temporary, "4.2.0", Some("mx"), true);
        let held = |i, until| RcptOutcome {
            not_before: Some(until),
            ..outcome(i, Outcome::Temporary, "4.7.0", None, false)
        };
        let retry_at = |done: Vec<u32>, attempts, next, last: &str| Settled::Retry {
            done,
            attempts,
            next_attempt: next,
            last_error: last.into(),
        };
        // (outcomes, dsn stored, remaining before, attempts before, now, want)
        type Case = (Vec<RcptOutcome>, bool, Vec<u32>, u32, u64, Settled);
        let cases: Vec<Case> = vec![
            (vec![d(0), d(1)], true, vec![0, 1], 0, t0, Settled::Finished),
            (vec![d(0), p(1)], true, vec![0, 1], 0, t0, Settled::Finished),
            // The DSN could not be stored: the failed one stays, to fail again.
            (vec![d(0), p(1)], false, vec![0, 1], 0, t0, retry_at(vec![0], 1, t0 + M, "")),
            (vec![t(0), d(1)], true, vec![0, 1], 0, t0, retry_at(vec![1], 1, t0 + M, "4.2.0 reply for 0")),
            // The second retry interval, then it repeats.
            (vec![t(0)], true, vec![0], 1, t0 + M, retry_at(vec![], 2, t0 + M + 10 * M, "4.2.0 reply for 0")),
            (
                vec![t(0)],
                true,
                vec![0],
                7,
                t0 + DAY,
                retry_at(vec![], 8, t0 + DAY + 10 * M, "4.2.0 reply for 0"),
            ),
            // Never after the message expires; never sooner than a second.
            (
                vec![t(0)],
                true,
                vec![0],
                3,
                t0 + 5 * DAY - 30,
                retry_at(vec![], 4, t0 + 5 * DAY, "4.2.0 reply for 0"),
            ),
            (
                vec![t(0)],
                true,
                vec![0],
                3,
                t0 + 6 * DAY,
                retry_at(vec![], 4, t0 + 6 * DAY + 1, "4.2.0 reply for 0"),
            ),
            // Recipients done by earlier attempts are not in `remaining`.
            (vec![d(2)], true, vec![2], 4, t0, Settled::Finished),
            // A suspended destination: not before its end, which may be
            // later than the schedule, but never past the expiry.
            (
                vec![held(0, t0 + 30 * M)],
                true,
                vec![0],
                0,
                t0,
                retry_at(vec![], 1, t0 + 30 * M, "4.7.0 reply for 0"),
            ),
            (vec![held(0, t0 + 30)], true, vec![0], 0, t0, retry_at(vec![], 1, t0 + M, "4.7.0 reply for 0")),
            (
                vec![held(0, t0 + 9 * DAY)],
                true,
                vec![0],
                0,
                t0,
                retry_at(vec![], 1, t0 + 5 * DAY, "4.7.0 reply for 0"),
            ),
        ];
        for (i, (outcomes, dsn_stored, remaining, attempts, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(settle(&outcomes, dsn_stored, &remaining, attempts, t0, now, r), want, "case {i}");
        }
    }

    #[test]
    fn groups_without_a_next_hop() {
        let o = no_hop(&[1, 2], &HopError::Permanent("5.1.10", "null MX".into()));
        assert!(o.iter().all(|o| o.outcome == Outcome::Permanent && o.status == "5.1.10"));
        let o = no_hop(&[1], &HopError::Temporary("DNS timed out".into()));
        assert_eq!((o[0].outcome, o[0].status.as_str(), o[0].index), (Outcome::Temporary, "4.4.3", 1));
        assert_eq!(group_error(&o), Some("4.4.3 DNS timed out".into()));
        assert_eq!(group_error(&[outcome(0, Outcome::Delivered, "2.0.0", None, false)]), None);
    }

    #[test]
    fn a_restart_spreads_what_is_due() {
        let now = 1_800_000_000;
        let table = [
            (0, now),
            (RECOVERY_PER_SECOND - 1, now),
            (RECOVERY_PER_SECOND, now + 1),
            (1_000_000, now + 200),
        ];
        for (i, want) in table {
            assert_eq!(recovery_slot(i, now), want, "{i}");
        }
    }
}
