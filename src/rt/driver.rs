//! The one connection driver: moves bytes between a [`Transport`] and any
//! sans-IO protocol core, for the SMTP server (`conn`), POP3 (`pop3`) and
//! the outbound SMTP client (`delivery::outbound`).
//!
//! ```text
//!   transport ──fill()──► input buffer ──feed()──► core.handle_input(bytes, now)
//!   transport ◄─flush()── core's output (swapped out, written, handed back)
//! ```
//!
//! Reads are raced against the core's own deadline ([`Protocol::poll_timeout`])
//! and a stop signal (the shutdown stage); a read that loses keeps whatever
//! bytes arrived. The core's events (store a message, check a password,
//! start TLS, ...) are the caller's: it acts on them between calls here.

use std::future::Future;
use std::time::{Duration, Instant};

use super::clock::now;
use super::transport::{ReadOutcome, Transport, READ_MIN};
use crate::smtp::session::Now;

/// The byte side of a sans-IO protocol core. Time comes in as a parameter.
pub trait Protocol {
    /// Consumes what it can of `input`; returns how many bytes it used. The
    /// rest is offered again, with more appended, on the next call.
    fn handle_input(&mut self, input: &[u8], now: Now) -> usize;
    /// Bytes to send.
    fn output(&self) -> &[u8];
    /// Trades the pending output for `buf` (empty), without copying.
    fn swap_output(&mut self, buf: &mut Vec<u8>);
    /// When the current wait for input times out.
    fn poll_timeout(&self) -> Instant;
    /// The wait timed out (or was cut short: the core checks `now`).
    fn handle_timeout(&mut self, now: Now);
    /// The peer closed its side.
    fn handle_eof(&mut self);
}

/// How a [`Conn::fill`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// New input is buffered.
    Data,
    /// The peer closed its side (the core was told).
    Eof,
    /// The deadline passed or the stop signal came first (the core was told
    /// of the time; the caller checks its stop signal).
    Cancelled,
    /// The connection failed.
    Gone,
}

/// One connection: its transport and its buffers.
#[derive(Debug)]
pub struct Conn {
    pub transport: Transport,
    /// Input; bytes before `start` have been consumed by the core.
    rbuf: Vec<u8>,
    start: usize,
    /// The last written output buffer, kept for the next swap.
    wbuf: Vec<u8>,
    /// Longest time a write of the core's output may take.
    write_timeout: Duration,
}

impl Conn {
    pub fn new(transport: Transport, write_timeout: Duration) -> Conn {
        Conn { transport, rbuf: Vec::with_capacity(READ_MIN), start: 0, wbuf: Vec::new(), write_timeout }
    }

    /// Offers the unconsumed input to `core`.
    pub fn feed(&mut self, core: &mut impl Protocol) {
        if self.start < self.rbuf.len() {
            self.start += core.handle_input(&self.rbuf[self.start..], now());
            if self.start == self.rbuf.len() {
                self.rbuf.clear();
                self.start = 0;
            }
        }
    }

    /// Writes the core's pending output. False if the peer is gone or too
    /// slow to take it.
    pub async fn flush(&mut self, core: &mut impl Protocol) -> bool {
        if core.output().is_empty() {
            return true;
        }
        self.transport.send_swapped(&mut self.wbuf, self.write_timeout, |b| core.swap_output(b)).await
    }

    /// Reads more input, until the core's deadline or `stop`.
    pub async fn fill(&mut self, core: &mut impl Protocol, stop: impl Future) -> Filled {
        if self.start > 0 {
            self.rbuf.drain(..self.start);
            self.start = 0;
        }
        let deadline = core.poll_timeout();
        let buf = std::mem::take(&mut self.rbuf);
        let (res, buf) = self.transport.read_until(buf, deadline, stop).await;
        self.rbuf = buf;
        match res {
            Ok(ReadOutcome::Data(_)) => Filled::Data,
            Ok(ReadOutcome::Eof) => {
                core.handle_eof();
                Filled::Eof
            }
            Ok(ReadOutcome::Cancelled) => {
                core.handle_timeout(now());
                Filled::Cancelled
            }
            Err(_) => Filled::Gone,
        }
    }

    /// Forgets buffered input: after a `220`/`+OK` to STARTTLS/STLS, plain
    /// text the client pipelined must not count (RFC 3207, RFC 2595).
    pub fn discard_input(&mut self) {
        self.rbuf.clear();
        self.start = 0;
    }

    /// Ends the connection. If we ended the session (`ours`), our last reply
    /// must reach the peer: close with a linger (see
    /// [`Transport::lingering_close`]); otherwise just close.
    pub async fn close(&mut self, ours: bool) {
        if ours {
            self.transport.lingering_close(Duration::from_secs(2)).await;
        } else {
            self.transport.close().await;
        }
    }
}

impl Protocol for crate::smtp::session::Session {
    fn handle_input(&mut self, input: &[u8], now: Now) -> usize {
        crate::smtp::session::Session::handle_input(self, input, now)
    }
    fn output(&self) -> &[u8] {
        crate::smtp::session::Session::output(self)
    }
    fn swap_output(&mut self, buf: &mut Vec<u8>) {
        crate::smtp::session::Session::swap_output(self, buf)
    }
    fn poll_timeout(&self) -> Instant {
        crate::smtp::session::Session::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Now) {
        crate::smtp::session::Session::handle_timeout(self, now)
    }
    fn handle_eof(&mut self) {
        crate::smtp::session::Session::handle_eof(self)
    }
}

impl Protocol for crate::pop3::session::Session {
    fn handle_input(&mut self, input: &[u8], now: Now) -> usize {
        crate::pop3::session::Session::handle_input(self, input, now.instant)
    }
    fn output(&self) -> &[u8] {
        crate::pop3::session::Session::output(self)
    }
    fn swap_output(&mut self, buf: &mut Vec<u8>) {
        crate::pop3::session::Session::swap_output(self, buf)
    }
    fn poll_timeout(&self) -> Instant {
        crate::pop3::session::Session::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Now) {
        crate::pop3::session::Session::handle_timeout(self, now.instant)
    }
    fn handle_eof(&mut self) {
        crate::pop3::session::Session::handle_eof(self)
    }
}

impl Protocol for crate::smtp::client::Client {
    fn handle_input(&mut self, input: &[u8], now: Now) -> usize {
        crate::smtp::client::Client::handle_input(self, input, now.instant)
    }
    fn output(&self) -> &[u8] {
        crate::smtp::client::Client::output(self)
    }
    fn swap_output(&mut self, buf: &mut Vec<u8>) {
        crate::smtp::client::Client::swap_output(self, buf)
    }
    fn poll_timeout(&self) -> Instant {
        crate::smtp::client::Client::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Now) {
        crate::smtp::client::Client::handle_timeout(self, now.instant)
    }
    fn handle_eof(&mut self) {
        crate::smtp::client::Client::handle_eof(self)
    }
}
