//! Process-wide counters, read by the admin thread for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the workers. Relaxed atomics: exact totals, no ordering.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub bytes_accepted: AtomicU64,
    /// Messages refused at end of data (size, bare newlines) or by a spool failure.
    pub messages_rejected: AtomicU64,
    pub recipients_rejected: AtomicU64,
    pub spool_failures: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    pub auth_successes: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Logins refused because the client address failed too often.
    pub auth_throttled: AtomicU64,
    /// Recipients delivered (remote 2xx or into a local mailbox).
    pub delivered: AtomicU64,
    /// Of `delivered`: local deliveries whose copy was already in the
    /// Maildir (written before a crash the spool did not record), so not
    /// written again.
    pub local_found: AtomicU64,
    /// Recipient attempts that failed temporarily.
    pub deferred: AtomicU64,
    /// Recipients that failed permanently.
    pub bounced: AtomicU64,
    /// Of `bounced`: recipients given up on because the message outlived `max_age`.
    pub expired: AtomicU64,
    /// Messages handed to each egress source today (warm-up caps).
    pub egress_daily: std::sync::Mutex<crate::delivery::egress::DailyCounts>,
    /// Recipient outcomes per (source, shaping budget).
    pub egress: std::sync::Mutex<std::collections::BTreeMap<(String, String), EgressCounts>>,
    /// Suspensions by shaping automation, per (source, budget): until (Unix
    /// seconds) and why. Readers skip those that have ended.
    pub suspensions: std::sync::Mutex<std::collections::BTreeMap<(String, String), (u64, String)>>,
    /// DSNs queued.
    pub dsns: AtomicU64,
    /// SIGHUP reloads that put a new configuration in force.
    pub config_reloads: AtomicU64,
    /// SIGHUP reloads refused (the running configuration stayed).
    pub config_reload_failures: AtomicU64,
    /// From the end of data to the spool's answer (the group commit wait).
    pub store_latency: Histogram,
    /// Events emitted, by type (`events::EventType::index`).
    pub events: [AtomicU64; 8],
    /// Writes of the events file or journal that failed.
    pub events_write_failures: AtomicU64,
    /// Journal bytes dropped unsent past `[events] max_backlog`.
    pub events_dropped_bytes: AtomicU64,
    /// Per webhook URL.
    pub webhooks: std::sync::Mutex<std::collections::BTreeMap<String, WebhookCounts>>,
    /// Permanent failures by bounce class (`classify::Class::index`).
    pub bounces_by_class: [AtomicU64; 12],
    /// Temporary failures by bounce class.
    pub deferrals_by_class: [AtomicU64; 12],
    /// Complaint reports tied back to a message we sent.
    pub feedback_accepted: AtomicU64,
    /// Reports that could not be used (kept aside).
    pub feedback_rejected: AtomicU64,
    /// One-click unsubscribes carried out.
    pub unsubscribes: AtomicU64,
    /// Queue suspensions the administrator made (`queue suspend`); the
    /// admin thread changes them, the delivery owners read them.
    pub queue_holds: std::sync::Mutex<crate::delivery::holds::Holds>,
    /// Messages parked by a queue suspension (not tried until it ends).
    pub held_messages: AtomicU64,
    /// Messages waiting without an attempt for a domain whose destination
    /// is down (`delivery::down`).
    pub parked_messages: AtomicU64,
    /// MTA-STS policies by recipient domain (bounded).
    pub mta_sts: std::sync::Mutex<std::collections::HashMap<String, crate::delivery::mta_sts::Cached>>,
    /// Policies fetched or dropped: the saved copy is behind until this
    /// number is saved.
    pub mta_sts_changes: AtomicU64,
    /// MTA-STS policy fetches, and those that failed.
    pub mta_sts_fetches: AtomicU64,
    pub mta_sts_fetch_failures: AtomicU64,
    /// Deliveries handed over under an enforced policy, and groups deferred
    /// because no MX host matched it.
    pub mta_sts_enforced: AtomicU64,
    pub mta_sts_refused: AtomicU64,
    /// Recipient groups sent to a next hop with validated TLSA records, and
    /// MX hosts set aside because their TLSA lookup failed.
    pub dane_groups: AtomicU64,
    pub dane_refused_hosts: AtomicU64,
    /// TLS report sessions counted since the last report (RFC 8460).
    pub tls_report: std::sync::Mutex<crate::delivery::tlsrpt::Aggregate>,
    /// TLS reports sent (queued as mail, or posted) and those that failed.
    pub tls_reports_sent: AtomicU64,
    pub tls_reports_failed: AtomicU64,
    /// Injection API requests answered 200.
    pub inject_requests: AtomicU64,
    /// Injection API requests refused (400, 401, 413, 503).
    pub inject_refused: AtomicU64,
    /// Messages queued through the injection API.
    pub injected: AtomicU64,
    /// Injection API recipients that got no message.
    pub inject_failed_recipients: AtomicU64,
    /// Tenants held by `scope = "tenant"` shaping automation.
    pub tenant_holds: crate::delivery::shaping::TenantHolds,
    /// Automation state saved across restarts (`<spool>/automation.json`).
    pub automation: crate::delivery::shaping::SavedAutomation,
}

/// One webhook's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct WebhookCounts {
    /// Batches the endpoint accepted.
    pub posts: u64,
    /// Events in them.
    pub events: u64,
    /// POSTs that failed (refused, timed out, not 2xx).
    pub failures: u64,
    /// Journal bytes not yet accepted.
    pub backlog_bytes: u64,
}

/// Bucket bounds (microseconds) of the store latency histogram.
/// Fine between 1 and 5 ms, where group-commit latency lives.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    100, 250, 500, 750, 1_000, 1_500, 2_000, 2_500, 3_000, 4_000, 5_000, 7_500, 10_000, 25_000, 50_000,
    100_000, 250_000, 1_000_000,
];

/// A fixed-bucket latency histogram (Prometheus style), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends the histogram in Prometheus text format, in seconds.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *b as f64 / 1e6);
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Outcomes of one (source, budget).
#[derive(Debug, Default, Clone, Copy)]
pub struct EgressCounts {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe_us(50);
        h.observe_us(300);
        h.observe_us(5_000_000);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.0005\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
    }
}
