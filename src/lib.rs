//! ringpost: a durable, thread-per-core mail transfer agent on io_uring.
//!
//! ```text
//!              SO_REUSEPORT: the kernel spreads connections over the workers
//!   client ──TCP──► worker (pinned thread, monoio on io_uring)
//!                     rt::driver, rt::conn   bytes in/out, timeouts, TLS
//!                       │  ▲
//!                       ▼  │ replies
//!                     smtp::session   sans-IO: no sockets, no clock
//!                       │ Event::Store
//!                       ▼
//!                     spool   append to this worker's segment, group commit
//!                             (one write + one fdatasync per batch), then 250
//! ```
//!
//! The protocol cores ([`smtp`], [`pop3::session`], [`dns::wire`]) and the
//! decisions ([`delivery::decide`], [`policy`], the spool's record format and
//! index) do no I/O and read no clock: they take bytes and time and return
//! replies, events and decisions (`tests/purity.rs` checks it). The I/O is in
//! [`rt`] (workers, connection driver, TLS, signals), the spool's writer,
//! reader and recovery, the DNS resolver, delivery's owner, destinations and
//! outbound connections, and [`admin`].
//!
//! # Layout
//!
//! - [`admin`]: the admin HTTP API and Prometheus metrics, on its own thread.
//! - [`auth`]: argon2 password hashes and SASL PLAIN parsing.
//! - [`config`]: the TOML file as plain data, checked, with file/line/key errors.
//! - [`delivery`]: outbound: the decisions ([`delivery::decide`]), the owner of
//!   queued messages, destinations and their connections, next hops, DSNs,
//!   Maildir delivery, the retry wheel.
//! - [`dns`]: the resolver (UDP, TCP on truncation), the wire format, the
//!   shared TTL cache.
//! - [`envelope`]: `Envelope`, `Recipient`, `QueueId` and its generator.
//! - [`metrics`]: counters and latency histograms.
//! - [`policy`]: relay control and local users.
//! - [`pop3`]: the POP3 session core and the Maildir as a maildrop.
//! - [`rt`]: the shell: serve, workers, the connection driver, SMTP and POP3
//!   connections, TLS transport, limits, live configuration, stages, clock.
//! - [`smtp`]: command parser, addresses, parameters, DATA/BDAT receivers, the
//!   server session and the client core, replies.
//! - [`spool`]: record format, segment files, the writer (committer, janitor,
//!   compaction), recovery, the index, reads.
//! - [`tune`]: `ringpost tune check/show`.

pub mod admin;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod envelope;
pub mod events;
pub mod feedback;
pub mod httpreq;
pub mod inject;
pub mod mail;
pub mod maildrop;
pub mod metrics;
pub mod policy;
pub mod pop3;
pub mod redis;
pub mod rt;
pub mod smtp;
pub mod spool;
pub mod suppress;
pub mod tune;
