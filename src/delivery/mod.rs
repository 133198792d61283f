//! Outbound delivery.
//!
//! ```text
//!  owner worker (the one whose spool holds the message)        destination worker
//!  ┌───────────────────────────────────────────────┐           (hash of the next hop)
//!  │ new message / retry due (timer wheel)         │           ┌────────────────────────┐
//!  │   -> plan: remaining recipients by domain     │  Job      │ per destination:       │
//!  │      local domain -> Maildir                  │ ────────► │  ready queue,          │
//!  │      else next hop (route / MX / A), shared   │ (Inbox)   │  connection limit,     │
//!  │      DNS cache                                │           │  rate, backoff;        │
//!  │   <- JobResult per recipient                  │ ◄──────── │  SMTP client (sans-IO) │
//!  │ finalize: DSNs, then Progress or Done record  │           │  reads the record from │
//!  │ in the spool, retry into the wheel            │           │  the owner's segment   │
//!  └───────────────────────────────────────────────┘           └────────────────────────┘
//! ```
//!
//! Durability: a recipient is marked done (Progress or Done record) only after
//! its outcome is known and, for failures, after its DSN is durably queued.
//! A crash in between delivers again (or reports again): duplicates, never loss.

pub mod classify;
pub mod dane;
pub mod decide;
pub mod dest;
pub mod down;
pub mod dsn;
pub mod egress;
pub mod holds;
pub mod local;
pub mod mta_sts;
pub mod outbound;
pub mod owner;
pub mod route;
pub mod shaping;
pub mod sts_fetch;
pub mod tlsrpt;
pub mod wheel;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::QueueId;
use crate::spool::index::Location;
use route::{NextHop, Routes};

/// Runtime delivery settings (from `[delivery]`, `[relay]`, `[local]`).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub hostname: String,
    pub port: u16,
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    /// `delayed` DSNs after this long (zero: none).
    pub delay_warning: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub final_timeout: Duration,
    pub connections_per_destination: usize,
    pub messages_per_connection: usize,
    /// Messages per second per destination; 0 = unlimited.
    pub rate_per_destination: f64,
    /// How long a destination that could not be reached at all is left alone.
    pub destination_backoff: Duration,
    pub starttls: bool,
    /// Follow MTA-STS policies; the TLS client that verifies certificates
    /// (system roots plus `ca_file`) when they are followed.
    pub mta_sts: Option<Arc<rustls::ClientConfig>>,
    /// Check TLSA records of MX hosts whose names were validated (DANE).
    pub dane: bool,
    /// TLS reports (RFC 8460) every this long; zero: none.
    pub tls_report_interval: Duration,
    /// A TLS client that verifies certificates (system roots plus
    /// `ca_file`), for REQUIRETLS mail; None when no trust anchors load.
    pub verified_tls: Option<Arc<rustls::ClientConfig>>,
    pub routes: Routes,
    pub local_domains: HashSet<String>,
    pub mail_dir: PathBuf,
    /// `[local] user`: uid and gid owning the Maildirs.
    pub mail_owner: Option<(u32, u32)>,
    /// Queue everything, deliver nothing.
    pub hold: bool,
    /// Sources, pools, tenants.
    pub egress: Arc<egress::Egress>,
    /// `[[shaping]]` rules and the default limits.
    pub shaping: Arc<shaping::Shaping>,
    /// Bounce classification rules.
    pub classifier: Arc<classify::Classifier>,
    /// `[feedback]`: report addresses and the reference key.
    pub feedback: Option<Arc<crate::feedback::Feedback>>,
}

/// How one recipient's attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later.
    Temporary,
    /// Bounce.
    Permanent,
}

/// One recipient's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Index into the message's recipients.
    pub index: u32,
    pub outcome: Outcome,
    /// Enhanced status code (`2.0.0`, `4.4.1`, `5.1.1`).
    pub status: String,
    /// The remote reply (one line) or our own reason.
    pub text: String,
    /// The host that answered, if we reached one.
    pub remote: Option<String>,
    /// The remote advertised DSN (so it reports success itself).
    pub remote_dsn: bool,
    /// Not to be tried again before this Unix time (a suspended
    /// destination), whatever the retry schedule says.
    pub not_before: Option<u64>,
    /// The reply code, when a server answered.
    pub code: Option<u16>,
    /// How the attempt went out (for events).
    pub via: Option<Arc<Via>>,
    /// Why it ended this way, beyond the reply.
    pub cause: Cause,
    /// Bounce class of a failure (set by the owner before reporting).
    pub class: Option<classify::Class>,
}

/// The connection an attempt used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The egress source's name.
    pub source: Option<String>,
    /// `name[ip]:port`, or `local`.
    pub next_hop: String,
    /// TLS version and cipher, if any.
    pub tls: Option<String>,
}

/// What decided an outcome, where it is not (only) the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cause {
    /// The reply (or our own failure to reach anyone).
    #[default]
    Reply,
    /// The message outlived `max_age`.
    Expired,
    /// The recipient is on the suppression list: no attempt, no DSN.
    Suppressed,
    /// The administrator bounced it.
    Admin,
}

impl RcptOutcome {
    /// The same outcome for every recipient in `rcpts`, without a remote.
    pub fn all(rcpts: &[u32], outcome: Outcome, status: &str, text: &str) -> Vec<RcptOutcome> {
        rcpts
            .iter()
            .map(|&index| RcptOutcome {
                index,
                outcome,
                status: status.to_owned(),
                text: text.to_owned(),
                remote: None,
                remote_dsn: false,
                not_before: None,
                code: None,
                via: None,
                cause: Cause::Reply,
                class: None,
            })
            .collect()
    }
}

/// Some recipients of one message, all for one next hop: sent from the
/// owner worker to the destination worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// The worker that owns the message (results go back there).
    pub owner: usize,
    pub family: u32,
    pub id: QueueId,
    pub loc: Location,
    pub rcpts: Vec<u32>,
    /// The recipient domain (for logs and `/queue`).
    pub domain: String,
    pub hop: Arc<NextHop>,
    /// The local address to send from (None: the host's default).
    pub source: Option<Arc<egress::Source>>,
    /// Its shaping: budget key, limits, automation.
    pub shape: Arc<shaping::Shape>,
    /// The message's tenant, for tenant-scoped automation (None for a
    /// DSN: a hold on its tenant does not stop it).
    pub tenant: Option<String>,
}

impl Job {
    /// The destination this job joins: its next hop, from its source,
    /// under its budget. Connections, their limits and reuse are per
    /// destination; a reload that moves a next hop under another budget
    /// (a new `[[shaping]]` rule) makes a new destination, so connections
    /// opened under the old budget do not carry mail paced by the new one.
    pub fn destination(&self) -> String {
        let hop = match &self.source {
            Some(s) => format!("{}@{}", s.name, self.hop.key),
            None => self.hop.key.clone(),
        };
        if self.shape.key == self.hop.key {
            hop
        } else {
            format!("{hop}~{}", self.shape.key)
        }
    }

    /// The budget this job's destination shares (per source and shaping
    /// key): jobs go to the worker that owns it.
    pub fn budget(&self) -> String {
        format!("{}@{}", self.source.as_ref().map_or("", |s| s.name.as_str()), self.shape.key)
    }
}

/// The outcome of a [`Job`], sent back to its owner.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub id: QueueId,
    pub domain: String,
    pub outcomes: Vec<RcptOutcome>,
    /// What the job learned about its destination.
    pub reach: Reach,
}

impl JobResult {
    /// A result that says nothing about the destination.
    pub fn new(id: QueueId, domain: String, outcomes: Vec<RcptOutcome>) -> JobResult {
        JobResult { id, domain, outcomes, reach: Reach::Unknown }
    }
}

/// What a job learned about its destination (see [`down`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reach {
    /// Nothing: it was not tried (shutting down, suspended, local...).
    #[default]
    Unknown,
    /// A connection was made (whatever the replies were).
    Reached,
    /// It could not be reached; not to be tried before `until` (Unix seconds).
    Down { until: u64 },
}

/// The enhanced status of a reply: its own, or one derived from the code.
pub fn status_of(code: u16, enhanced: Option<&str>) -> String {
    match enhanced {
        Some(s) => s.to_owned(),
        None => format!("{}.0.0", code / 100),
    }
}

/// Classifies a reply code.
pub fn outcome_of(code: u16) -> Outcome {
    match code {
        200..=399 => Outcome::Delivered,
        400..=499 => Outcome::Temporary,
        _ => Outcome::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes() {
        assert_eq!(outcome_of(250), Outcome::Delivered);
        assert_eq!(outcome_of(451), Outcome::Temporary);
        assert_eq!(outcome_of(554), Outcome::Permanent);
        assert_eq!(status_of(550, None), "5.0.0");
        assert_eq!(status_of(550, Some("5.1.1")), "5.1.1");
    }
}
