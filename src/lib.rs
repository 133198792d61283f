//! ringpost: a durable, thread-per-core mail transfer agent on io_uring.
//!
//! ```text
//!              SO_REUSEPORT: the kernel spreads connections over the workers
//!   client ──TCP──► worker (pinned thread, monoio on io_uring)
//!                     rt::conn   bytes in/out, timeouts, TLS (rustls)
//!                       │  ▲
//!                       ▼  │ replies
//!                     smtp::session   sans-IO: no sockets, no clock
//!                       │ Event::Store
//!                       ▼
//!                     spool   append to this worker's segment, group commit
//!                             (one write + one fdatasync per batch), then 250
//! ```
//!
//! The protocol core ([`smtp`]) does no I/O: it takes bytes and time and
//! returns replies and events. Only [`rt`] touches monoio and sockets.
//!
//! # Layout
//!
//! - [`smtp`]: command parser, addresses, parameters, DATA/BDAT receivers, the
//!   session state machine, replies.
//! - [`spool`]: record format, segment files, group-commit writer, recovery.
//! - [`rt`]: workers, listeners, connection driver, TLS transport, signals.
//! - [`admin`]: the HTTP admin API and Prometheus metrics.
//! - [`config`], [`policy`] (relay control), [`auth`] (password hashes),
//!   [`envelope`], [`metrics`].

pub mod admin;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod envelope;
pub mod metrics;
pub mod policy;
pub mod pop3;
pub mod rt;
pub mod smtp;
pub mod spool;
pub mod tune;
