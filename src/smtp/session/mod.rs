//! The inbound SMTP session, sans I/O.
//!
//! ```text
//!   bytes from the peer ──► handle_input(bytes, now) ──► output(): replies to send
//!                                   │                     poll_event(): what the shell
//!                                   ▼                         must do before more input
//!                           handle_stored / handle_tls_established / handle_auth_result
//! ```
//!
//! Call order for the shell: feed input with [`Session::handle_input`] (it returns
//! how much it consumed; unconsumed bytes must be offered again, after more have
//! arrived); then act on [`Session::poll_event`]; write [`Session::output`] and
//! [`Session::clear_output`]; wait for input no later than
//! [`Session::poll_timeout`] and call [`Session::handle_timeout`] when it passes.
//! While an event is pending, `handle_input` consumes nothing.
//!
//! The session never reads the clock and never touches a socket: time comes in
//! as [`Now`], bytes as slices.

mod auth;
mod data;
mod ehlo;
mod mail;
pub(crate) mod received;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memchr;

use super::command::{self, Command, CommandError};
use super::data::{ChunkReceiver, DotReceiver};
use super::params::MailParams;
use super::reply::{canned, EnhancedStatus, Reply};
use crate::envelope::{Envelope, QueueIdGen, Recipient};
use crate::policy::Policy;
use crate::smtp::address::{Domain, ReversePath};

pub use received::format_rfc5322_date;

/// The two clocks the session needs: monotonic for deadlines, wall for headers.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

/// What the listener that accepted the connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 25: anyone may send to our domains; relaying needs a trusted network or AUTH.
    Mx,
    /// Port 587: every transaction needs AUTH.
    Submission,
}

/// Per-listener settings. Shared by all sessions of a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: Domain,
    pub role: Role,
    /// Whether STARTTLS may be offered (a certificate is loaded and the listener wants it).
    pub starttls: bool,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Longest command line, CRLF included.
    pub max_line: usize,
    /// A complete command must arrive within this after the previous reply.
    pub command_timeout: Duration,
    /// Longest wait for the next bytes of message content.
    pub data_timeout: Duration,
    /// Error replies tolerated before the session is closed with `421`.
    pub max_errors: u32,
    pub policy: Arc<Policy>,
    /// Suppressed recipients are refused (`550 5.7.1`) for clients that
    /// may relay (relay networks, AUTH).
    pub suppression: Option<Arc<dyn crate::suppress::Store>>,
}

/// A recipient refused at RCPT because it is suppressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressedRcpt {
    pub sender: String,
    pub recipient: String,
    pub tenant: Option<String>,
    pub reason: String,
}

/// Facts about the connection, fixed when it is accepted.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: IpAddr,
    /// The peer may relay to any domain (it is in `relay_networks`).
    pub trusted: bool,
    /// TLS is already active (implicit TLS listener).
    pub tls: Option<TlsInfo>,
}

/// The negotiated TLS parameters, for the Received header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

/// An accepted message waiting to be made durable.
#[derive(Debug)]
pub struct Message {
    pub envelope: Envelope,
    /// The content as it will be delivered: our Received header, then what the
    /// client sent (unstuffed), ending in CRLF.
    pub body: Vec<u8>,
    /// From one of our clients (a relay network or an authenticated user):
    /// mail we may DKIM-sign. Never so for a stranger's mail to us.
    pub ours: bool,
}

/// What the shell must do before the session can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Make [`Session::message`] durable, then call [`Session::handle_stored`].
    Store,
    /// Send the output (it ends with `220`), drop every unconsumed input byte,
    /// run the TLS handshake, then call [`Session::handle_tls_established`].
    StartTls,
    /// Check [`Session::credentials`], then call [`Session::handle_auth_result`].
    Authenticate,
    /// Send the output, then close the connection.
    Close,
}

/// Why storing failed, as far as the client's reply is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Temporary: disk full or failing (`452 4.3.1`).
    Temporary,
    /// This message cannot be stored as it is (`451 4.3.0`).
    Local,
    /// Larger than the spool can store (`552 5.3.4`).
    TooBig,
}

/// The open mail transaction (between MAIL and the end of data).
#[derive(Debug)]
struct Transaction {
    reverse_path: ReversePath,
    params: MailParams,
    recipients: Vec<Recipient>,
    /// RCPT commands refused in this transaction (for the DATA reply).
    refused: u32,
    /// The BDAT receiver, once the first BDAT arrived.
    chunks: Option<ChunkReceiver>,
}

/// What the input is being read as.
#[derive(Debug)]
enum Phase {
    Command,
    /// Over-long command line: drop bytes until LF, then reply `500`.
    DiscardLine,
    Data(DotReceiver),
    /// Reading the bytes of a BDAT chunk; `last` marks BDAT LAST.
    Chunk {
        last: bool,
    },
    /// Reading and dropping a BDAT chunk that is refused, then sending `reply`.
    DiscardChunk {
        remaining: u64,
        reply: Reply,
    },
    /// Waiting for the client's next SASL line.
    Auth(auth::AuthStep),
    /// Waiting for the shell (see [`Event`]).
    Blocked(Event),
    Closed,
}

/// One inbound SMTP session. See the module doc for the call order.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    conn: ConnInfo,
    ids: IdSource,
    phase: Phase,
    /// EHLO/HELO argument once greeted, and whether it was EHLO.
    helo: Option<(String, bool)>,
    tx: Option<Transaction>,
    auth_user: Option<String>,
    credentials: Option<(String, String)>,
    message: Option<Message>,
    /// The id given to the message whose content is being received.
    message_id: Option<crate::envelope::QueueId>,
    /// Reused content buffer.
    body: Vec<u8>,
    output: Vec<u8>,
    errors: u32,
    /// Refusals since the shell last asked (see [`Session::take_refusals`]).
    refused_messages: u32,
    refused_recipients: u32,
    /// Recipients refused because they are suppressed, since the shell
    /// last asked (see [`Session::take_suppressed`]).
    suppressed: Vec<SuppressedRcpt>,
    deadline: Instant,
    draining: bool,
}

impl Session {
    /// A new session; the greeting is already in the output.
    pub fn new(config: Arc<SessionConfig>, conn: ConnInfo, ids: IdSource, now: Now) -> Session {
        let mut s = Session {
            deadline: now.instant + config.command_timeout,
            config,
            conn,
            ids,
            phase: Phase::Command,
            helo: None,
            tx: None,
            auth_user: None,
            credentials: None,
            message: None,
            message_id: None,
            body: Vec::new(),
            output: Vec::with_capacity(512),
            errors: 0,
            refused_messages: 0,
            refused_recipients: 0,
            suppressed: Vec::new(),
            draining: false,
        };
        let greeting = format!("220 {} ESMTP\r\n", s.config.hostname);
        s.output.extend_from_slice(greeting.as_bytes());
        s
    }

    /// Replies to send, in order.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Call after the output was written.
    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    /// Swaps the output buffer with `buf` (which should be empty), so the shell
    /// can hand an owned buffer to the kernel without copying.
    pub fn swap_output(&mut self, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.output, buf);
    }

    /// The action the shell must take now, if any.
    pub fn poll_event(&self) -> Option<Event> {
        match self.phase {
            Phase::Blocked(e) => Some(e),
            Phase::Closed => Some(Event::Close),
            _ => None,
        }
    }

    /// When the current wait times out.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// The message to store (after [`Event::Store`]).
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// Username and password to check (after [`Event::Authenticate`]).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Messages refused at the end of data and RCPTs refused since the last
    /// call, for the shell's metrics.
    pub fn take_refusals(&mut self) -> (u32, u32) {
        let counts = (self.refused_messages, self.refused_recipients);
        self.refused_messages = 0;
        self.refused_recipients = 0;
        counts
    }

    /// Recipients refused at RCPT because they are suppressed, since the
    /// last call (the shell turns them into `Suppressed` events).
    pub fn take_suppressed(&mut self) -> Vec<SuppressedRcpt> {
        std::mem::take(&mut self.suppressed)
    }

    /// Whether a mail transaction or a pending action is in progress (shutdown
    /// waits for these).
    pub fn is_busy(&self) -> bool {
        self.tx.is_some() || matches!(self.phase, Phase::Blocked(_))
    }

    /// Feeds bytes from the peer. Returns how many were consumed; the rest must
    /// be offered again with more data appended.
    pub fn handle_input(&mut self, input: &[u8], now: Now) -> usize {
        let mut used = 0;
        while used < input.len() {
            let before = std::mem::discriminant(&self.phase);
            let n = match &mut self.phase {
                Phase::Command => self.read_command(&input[used..], now),
                Phase::DiscardLine => self.discard_line(&input[used..]),
                Phase::Data(_) => self.read_data(&input[used..], now),
                Phase::Chunk { .. } => self.read_chunk(&input[used..], now),
                Phase::DiscardChunk { .. } => self.discard_chunk(&input[used..], now),
                Phase::Auth(_) => self.read_auth_line(&input[used..], now),
                Phase::Blocked(_) | Phase::Closed => 0,
            };
            // Stop only when the phase needs more input (or the shell):
            // a phase change without input must be given the rest at once.
            if n == 0 && std::mem::discriminant(&self.phase) == before {
                break;
            }
            used += n;
        }
        used
    }

    /// The deadline passed without the input it waited for.
    pub fn handle_timeout(&mut self, now: Now) {
        if now.instant < self.deadline || matches!(self.phase, Phase::Blocked(_) | Phase::Closed) {
            return;
        }
        self.reply(&canned::TIMEOUT);
        self.phase = Phase::Closed;
    }

    /// The server is shutting down: close now if idle, else after the current
    /// transaction.
    pub fn handle_shutdown(&mut self) {
        self.draining = true;
        if matches!(self.phase, Phase::Command | Phase::DiscardLine | Phase::Auth(_)) && self.tx.is_none() {
            self.reply(&canned::SHUTDOWN);
            self.phase = Phase::Closed;
        }
    }

    /// The shutdown grace period is over: close even mid-transaction. Has no
    /// effect while an event is pending (the shell must finish it first).
    pub fn handle_shutdown_deadline(&mut self) {
        if !matches!(self.phase, Phase::Blocked(_) | Phase::Closed) {
            self.end_transaction();
            self.reply(&canned::SHUTDOWN);
            self.phase = Phase::Closed;
        }
    }

    /// The peer closed its side. Nothing more will be read.
    pub fn handle_eof(&mut self) {
        if !matches!(self.phase, Phase::Blocked(_)) {
            self.phase = Phase::Closed;
        }
    }

    // ---- internals shared by the verb modules ----

    fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.output);
        if r.is_error() {
            self.errors += 1;
        }
    }

    /// Sends an error reply; closes the session once the error limit is reached.
    fn error(&mut self, r: &Reply) {
        self.reply(r);
        if self.errors >= self.config.max_errors {
            self.reply(&canned::TOO_MANY_ERRORS);
            self.phase = Phase::Closed;
        }
    }

    /// Back to reading commands, with a fresh command deadline.
    fn await_command(&mut self, now: Now) {
        self.deadline = now.instant + self.config.command_timeout;
        self.phase = Phase::Command;
        if self.draining && self.tx.is_none() {
            self.reply(&canned::SHUTDOWN);
            self.phase = Phase::Closed;
        }
    }

    /// Splits one CRLF-terminated line off `input`. Returns the line (without
    /// CRLF) and the bytes consumed, `Ok(None)` if more input is needed.
    fn take_line<'a>(&mut self, input: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, usize> {
        match memchr(b'\n', input) {
            Some(lf) if lf + 1 > self.config.max_line => {
                self.error(&canned::LINE_TOO_LONG);
                Err(lf + 1)
            }
            Some(lf) => {
                let line = &input[..lf];
                match line.split_last() {
                    Some((b'\r', line)) if memchr(b'\r', line).is_none() => Ok(Some((line, lf + 1))),
                    _ => {
                        self.error(&canned::BAD_LINE_ENDING);
                        Err(lf + 1)
                    }
                }
            }
            None if input.len() >= self.config.max_line => {
                self.phase = Phase::DiscardLine;
                Err(input.len())
            }
            None => Ok(None),
        }
    }

    fn discard_line(&mut self, input: &[u8]) -> usize {
        match memchr(b'\n', input) {
            Some(lf) => {
                self.phase = Phase::Command;
                self.error(&canned::LINE_TOO_LONG);
                lf + 1
            }
            None => input.len(),
        }
    }

    fn read_command(&mut self, input: &[u8], now: Now) -> usize {
        let (line, used) = match self.take_line(input) {
            Ok(Some(found)) => found,
            Ok(None) => return 0,
            Err(used) => return used,
        };
        match command::parse(line) {
            Ok(cmd) => self.dispatch(cmd, now),
            Err(e) => self.command_error(e),
        }
        if matches!(self.phase, Phase::Command) {
            self.deadline = now.instant + self.config.command_timeout;
        }
        used
    }

    fn command_error(&mut self, e: CommandError) {
        match e {
            CommandError::Unrecognized => self.error(&canned::UNRECOGNIZED),
            CommandError::NotUtf8 => self.error(&canned::NOT_UTF8),
            CommandError::NoParamsAllowed => self.error(&canned::NO_PARAMS_ALLOWED),
            CommandError::Syntax(syntax) => {
                self.error(&Reply::owned(501, EnhancedStatus(5, 5, 4), format!("Syntax: {syntax}")))
            }
        }
    }

    fn dispatch(&mut self, cmd: Command<'_>, now: Now) {
        match cmd {
            Command::Ehlo(name) => self.handle_ehlo(name, true),
            Command::Helo(name) => self.handle_ehlo(name, false),
            Command::Mail(arg) => self.handle_mail(arg),
            Command::Rcpt(arg) => self.handle_rcpt(arg),
            Command::Data => self.handle_data(now),
            Command::Bdat { size, last } => self.handle_bdat(size, last, now),
            Command::Rset => {
                self.end_transaction();
                self.reply(&canned::OK);
            }
            Command::Noop => self.reply(&canned::OK),
            Command::Quit => {
                self.reply(&canned::BYE);
                self.phase = Phase::Closed;
            }
            Command::Vrfy => self.reply(&canned::VRFY),
            Command::Expn => self.error(&canned::NOT_IMPLEMENTED),
            Command::Help => self.reply(&canned::HELP),
            Command::StartTls => self.handle_starttls(),
            Command::Auth { mechanism, initial } => self.handle_auth(mechanism, initial),
            Command::Http => {
                self.reply(&canned::HTTP_REFUSED);
                self.phase = Phase::Closed;
            }
        }
    }
}

/// The per-worker queue id source, shared by all sessions on a worker.
pub type IdSource = std::rc::Rc<std::cell::RefCell<QueueIdGen>>;
