//! Sending TLS reports (RFC 8460), and keeping MTA-STS policies across
//! restarts (RFC 8461 §5.1: a restart must not forget an enforced policy),
//! on worker 0's owner.
//!
//! MTA-STS: the policy cache (`Metrics::mta_sts`, shared by the workers)
//! is saved in `<spool>/mta-sts.json` within seconds of a change and read
//! back before delivery starts.
//!
//! TLS reports: the sessions the
//! workers count (`Metrics::tls_report`, pure `delivery::tlsrpt`) are saved
//! in `<spool>/tls-report.json` every few seconds when they changed (read
//! back and merged at start, so a restart loses at most that much), and at
//! the end of each `[delivery] tls_report_interval` taken: each domain
//! whose `_smtp._tls` TXT record asks for reports gets one, as mail through
//! our own queue (null sender, like a DSN) and/or an https POST.

use std::path::{Path, PathBuf};

use super::*;
use crate::delivery::tlsrpt::{self, Aggregate, Rua, Submitter};

/// How often the counts are saved (when they changed) and the period checked.
const TICK: Duration = Duration::from_secs(5);
const FILE: &str = "tls-report.json";
const STS_FILE: &str = "mta-sts.json";

impl Owner {
    pub(super) async fn tls_reporter(self: Rc<Self>) {
        let path = self.spool_root().join(FILE);
        let load = path.clone();
        match monoio::spawn_blocking(move || read(&load)).await {
            Ok(Ok(Some(saved))) => self.lock_report().merge(saved),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "TLS report counts not read; starting afresh")
            }
            Err(_) => {}
        }
        {
            let mut agg = self.lock_report();
            if agg.start == 0 {
                agg.start = unix_secs();
            }
        }
        let mut saved = u64::MAX;
        let mut sts_saved = self.metrics.mta_sts_changes.load(Ordering::Relaxed);
        loop {
            let sts_changes = self.metrics.mta_sts_changes.load(Ordering::Relaxed);
            if sts_changes != sts_saved {
                let policies = self.metrics.mta_sts.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let to = self.spool_root().join(STS_FILE);
                match monoio::spawn_blocking(move || write_json(&to, &policies)).await {
                    Ok(Ok(())) => sts_saved = sts_changes,
                    Ok(Err(e)) => tracing::warn!(error = %e, "MTA-STS policies not saved"),
                    Err(_) => {}
                }
            }
            let stop = self.draining.get();
            let cfg = self.cfg();
            let reporting = (cfg.mta_sts.is_some() || cfg.dane) && !cfg.tls_report_interval.is_zero();
            let now = unix_secs();
            let due = {
                let mut agg = self.lock_report();
                let due =
                    reporting && !stop && now >= agg.start.saturating_add(cfg.tls_report_interval.as_secs());
                due.then(|| agg.take(now))
            };
            let changes = self.lock_report().changes;
            if changes != saved {
                let snapshot = self.lock_report().clone();
                let to = path.clone();
                match monoio::spawn_blocking(move || write_json(&to, &snapshot)).await {
                    Ok(Ok(())) => saved = changes,
                    Ok(Err(e)) => {
                        tracing::warn!(file = %path.display(), error = %e, "TLS report counts not saved")
                    }
                    Err(_) => {}
                }
            }
            if let Some(taken) = due {
                self.send_tls_reports(taken, now).await;
            }
            if stop {
                return;
            }
            monoio::time::sleep(TICK).await;
        }
    }

    fn lock_report(&self) -> std::sync::MutexGuard<'_, Aggregate> {
        self.metrics.tls_report.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spool_root(&self) -> PathBuf {
        self.spool.family().0
    }

    /// One report per domain that asks for them, to each of its `rua`s.
    async fn send_tls_reports(self: &Rc<Self>, taken: Aggregate, end: u64) {
        let cfg = self.cfg();
        let who = Submitter {
            hostname: cfg.hostname.clone(),
            contact: format!("mailto:postmaster@{}", cfg.hostname),
        };
        let (start, mut sent, mut asked) = (taken.start, 0, 0);
        for (domain, policies) in taken.domains {
            let txt =
                self.resolver.query(&format!("_smtp._tls.{domain}"), crate::dns::wire::Rtype::Txt).await;
            let ruas = match &*txt {
                Ok(r) => match &r.answer {
                    crate::dns::wire::Answer::Txt(records) => tlsrpt::parse_record(records),
                    _ => continue,
                },
                Err(_) => continue,
            };
            let ruas = match ruas {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(target: "delivery", %domain, reason = %e, "no TLS report sent");
                    continue;
                }
            };
            asked += 1;
            let id = self.ids.borrow_mut().next(end);
            let report_id = format!("{start}.{id}");
            let json = tlsrpt::report_json(&who, &report_id, start, end, &domain, &policies);
            let gz = match gzip(json.to_string().as_bytes()) {
                Ok(gz) => gz,
                Err(e) => {
                    tracing::error!(%domain, error = %e, "TLS report not compressed");
                    continue;
                }
            };
            for rua in ruas {
                let ok = match &rua {
                    Rua::Mailto(to) => {
                        self.queue_tls_report(&who, to, &domain, &report_id, (start, end), &gz).await
                    }
                    Rua::Https(url) => post_tls_report(url, cfg.verified_tls.clone(), gz.clone()).await,
                };
                let counter =
                    if ok { &self.metrics.tls_reports_sent } else { &self.metrics.tls_reports_failed };
                counter.fetch_add(1, Ordering::Relaxed);
                sent += usize::from(ok);
            }
        }
        tracing::info!(target: "delivery", domains = asked, sent, dropped = taken.dropped, "TLS reports");
    }

    /// Queues a report as mail (null sender: a report about a report's
    /// failure would go nowhere useful).
    async fn queue_tls_report(
        self: &Rc<Self>,
        who: &Submitter,
        to: &crate::smtp::address::Mailbox,
        domain: &str,
        report_id: &str,
        period: (u64, u64),
        gz: &[u8],
    ) -> bool {
        let now = unix_secs();
        let body = tlsrpt::report_mail(who, to, domain, report_id, period, gz, now);
        let id = self.ids.borrow_mut().next(now);
        let env = Envelope {
            id,
            received_at: now,
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient {
                address: to.clone(),
                notify: crate::envelope::Notify::default(),
                orcpt: None,
            }],
            body_type: BodyType::SevenBit,
            smtputf8: !to.is_ascii(),
            ret: None,
            envid: None,
            client_ip: None,
            helo: who.hostname.clone(),
            auth_user: None,
            tenant: None,
            campaign: None,
            requiretls: false,
            tls_not_required: false,
        };
        match self.spool.append_message(&env, b"", &body).await {
            Ok(Ok(_)) => {
                tracing::info!(target: "delivery", %id, %domain, to = %to, "TLS report queued");
                self.enqueue_new(&env);
                true
            }
            other => {
                tracing::error!(%domain, to = %to, result = ?other.map(|r| r.map(|_| ())), "TLS report not queued");
                false
            }
        }
    }
}

/// POSTs a report (`application/tlsrpt+gzip`) on the blocking pool.
async fn post_tls_report(url: &str, tls: Option<Arc<rustls::ClientConfig>>, gz: Vec<u8>) -> bool {
    let settings = match crate::events::webhook::HttpUrl::parse(url) {
        Ok(url) => crate::events::webhook::WebhookSettings {
            url,
            batch_size: 1,
            batch_wait: Duration::ZERO,
            timeout: Duration::from_secs(30),
            headers: Vec::new(),
            ca_file: None,
        },
        Err(e) => {
            tracing::info!(target: "delivery", %url, error = %e, "TLS report URL not usable");
            return false;
        }
    };
    let url = url.to_string();
    let posted = monoio::spawn_blocking(move || {
        crate::events::webhook::post(&settings, tls.as_ref(), "application/tlsrpt+gzip", &gz)
    })
    .await;
    match posted {
        Ok(Ok(())) => {
            tracing::info!(target: "delivery", %url, "TLS report posted");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "delivery", %url, error = %e, "TLS report not posted");
            false
        }
        Err(_) => false,
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    e.finish()
}

/// The saved counts; None when there is no file.
fn read(path: &Path) -> Result<Option<Aggregate>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The MTA-STS policies saved in the spool that have not expired (read at
/// start, before any worker delivers; a file that does not parse is set
/// aside).
pub fn load_sts_policies(spool: &Path, now: u64) -> HashMap<String, mta_sts::Cached> {
    let path = spool.join(STS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "MTA-STS policies not read");
            return HashMap::new();
        }
    };
    match serde_json::from_slice::<HashMap<String, mta_sts::Cached>>(&bytes) {
        Ok(mut policies) => {
            policies.retain(|_, c| c.expires > now && c.policy.max_age <= mta_sts::MAX_AGE);
            let excess = policies.len().saturating_sub(mta_sts::MAX_CACHED);
            if excess > 0 {
                let drop: Vec<String> = policies.keys().take(excess).cloned().collect();
                for d in drop {
                    policies.remove(&d);
                }
            }
            policies
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "MTA-STS policies file unreadable; set aside");
            let _ = std::fs::rename(&path, path.with_extension("json.bad"));
            HashMap::new()
        }
    }
}

/// Saves `value` as JSON: tmp, fsync, rename, the directory fsynced.
fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    crate::spool::recover::replace_file_durable(path, &bytes)
}
