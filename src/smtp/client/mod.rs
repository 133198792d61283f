//! The outbound SMTP client, sans I/O: the mirror of `smtp::session`.
//!
//! ```text
//!   server bytes ──► handle_input(bytes, now) ──► output(): commands to send
//!                                   │             poll_event(): Ready, StartTls,
//!                                   ▼             SendBody, MessageDone, Failed
//!      send_message / handle_body_sent / handle_tls_established / quit
//! ```
//!
//! One client is one connection, reused for many messages. It decides
//! everything about the protocol: EHLO with HELO fallback, opportunistic
//! STARTTLS (RFC 3207; anything the server sent before TLS is dropped),
//! PIPELINING when offered (RFC 2920), the MAIL and RCPT parameters (SIZE,
//! BODY, SMTPUTF8, RET, ENVID, NOTIFY, ORCPT) the server advertised, and it
//! refuses to send 8-bit content or UTF-8 addresses to a server that did not
//! advertise 8BITMIME or SMTPUTF8 (the message fails permanently for it).
//! Time comes in as a parameter.

pub mod body;
pub mod reply;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use reply::ReplyParser;
pub use reply::{ReplyError, ServerReply};

use crate::envelope::{BodyType, Notify, Ret};

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo: String,
    /// Try STARTTLS when the server offers it.
    pub starttls: bool,
    /// Greeting, EHLO, MAIL, RCPT (RFC 5321 §4.5.3.2: 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for 354 and sending content (RFC 5321: 2 and 3 minutes).
    pub data_timeout: Duration,
    /// The reply after the final dot (RFC 5321: 10 minutes).
    pub final_timeout: Duration,
    /// Speak LMTP (RFC 2033): LHLO, and after the content one reply per
    /// accepted recipient.
    pub lmtp: bool,
}

/// What the server's EHLO reply advertised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    /// SIZE limit; `Some(0)` means SIZE without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
    pub requiretls: bool,
}

impl Capabilities {
    fn parse(text: &str) -> Capabilities {
        let mut caps = Capabilities { esmtp: true, ..Default::default() };
        for line in text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => {}
            }
        }
        caps
    }
}

/// One recipient of an outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecipient {
    pub address: String,
    pub notify: Notify,
    pub orcpt: Option<String>,
}

/// The envelope of one outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Empty for the null reverse path.
    pub reverse_path: String,
    pub recipients: Vec<OutRecipient>,
    /// Content size in bytes (for SIZE=).
    pub size: u64,
    pub body_type: BodyType,
    /// The content has bytes above 127.
    pub eight_bit: bool,
    /// The envelope needs SMTPUTF8 (declared, or a non-ASCII address).
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// REQUIRETLS (RFC 8689): only to a server that advertises it (which
    /// it does over TLS only); the shell makes sure the TLS was verified.
    pub requiretls: bool,
}

/// The result for one recipient: the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Index into [`Outgoing::recipients`].
    pub index: usize,
    pub reply: ServerReply,
}

/// Why the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A reply that ends the conversation (greeting refused, 421, EHLO and HELO refused).
    Reply(ServerReply),
    /// The server's bytes were not SMTP.
    Protocol(ReplyError),
    Timeout(&'static str),
    /// The connection closed unexpectedly.
    Closed,
    Tls(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reply(r) => write!(f, "{}", r.one_line()),
            Failure::Protocol(e) => write!(f, "protocol error: {e}"),
            Failure::Timeout(during) => write!(f, "timeout waiting for {during}"),
            Failure::Closed => write!(f, "connection closed by the server"),
            Failure::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected and greeted (and TLS, if any): call [`Client::send_message`]
    /// (or [`Client::quit`]). Comes once per connection.
    Ready,
    /// Send the output (STARTTLS), drop unconsumed input, run the TLS client
    /// handshake, then call [`Client::handle_tls_established`].
    StartTls,
    /// 354 received: write [`body::encode`] of the content, then call
    /// [`Client::handle_body_sent`].
    SendBody,
    /// The message is finished; one result per recipient. The client takes
    /// the next [`Client::send_message`] (or [`Client::quit`]) right away.
    MessageDone(Vec<RcptResult>),
    /// The connection is unusable; finish after sending the output.
    Failed(Failure),
    /// QUIT answered; close.
    Closed,
}

/// A command whose reply is awaited, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    Final,
    /// LMTP: the reply after the content for recipient `i`.
    FinalFor(usize),
    Rset,
    Quit,
}

/// The state of the message being sent.
#[derive(Debug)]
struct Transaction {
    mail: Option<ServerReply>,
    rcpts: Vec<Option<ServerReply>>,
    /// LMTP: each accepted recipient's reply after the content.
    finals: Vec<Option<ServerReply>>,
    /// Commands not yet sent (without PIPELINING, one at a time).
    unsent: VecDeque<(Pending, String)>,
}

/// One outbound SMTP connection.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    caps: Capabilities,
    tls: bool,
    parser: ReplyParser,
    awaiting: VecDeque<Pending>,
    tx: Option<Transaction>,
    event: Option<Event>,
    output: Vec<u8>,
    deadline: Instant,
}

impl Client {
    /// A client for a freshly opened connection; it waits for the greeting.
    pub fn new(config: ClientConfig, now: Instant) -> Client {
        let deadline = now + config.command_timeout;
        Client {
            config,
            caps: Capabilities::default(),
            tls: false,
            parser: ReplyParser::default(),
            awaiting: VecDeque::from([Pending::Greeting]),
            tx: None,
            event: None,
            output: Vec::new(),
            deadline,
        }
    }

    pub fn output(&self) -> &[u8] {
        &self.output
    }

    pub fn swap_output(&mut self, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.output, buf);
    }

    /// What the shell must do now, if anything. Taking an event clears it.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Feeds server bytes; returns how many were consumed. Stops at an event.
    pub fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        let mut used = 0;
        while self.event.is_none() && used < input.len() {
            match self.parser.feed(&input[used..]) {
                Ok((n, reply)) => {
                    used += n;
                    match reply {
                        Some(r) => self.handle_reply(r, now),
                        None => break,
                    }
                }
                Err(e) => {
                    self.fail(Failure::Protocol(e));
                    return input.len();
                }
            }
        }
        used
    }

    /// The deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.deadline && self.event.is_none() {
            let during = match self.awaiting.front() {
                Some(Pending::Greeting) => "the greeting",
                Some(Pending::Data) => "the reply to DATA",
                Some(Pending::Final | Pending::FinalFor(_)) => "the reply after the message",
                Some(_) => "a reply",
                None => "the next message",
            };
            self.fail(Failure::Timeout(during));
        }
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self) {
        if self.event.is_none() {
            if self.awaiting.front() == Some(&Pending::Quit) {
                self.event = Some(Event::Closed);
            } else {
                self.fail(Failure::Closed);
            }
        }
    }

    /// TLS is up: say EHLO again and forget the old capabilities.
    pub fn handle_tls_established(&mut self, now: Instant) {
        self.tls = true;
        self.caps = Capabilities::default();
        self.parser = ReplyParser::default();
        self.send_ehlo(now);
    }

    /// Starts a message. Only valid after [`Event::Ready`].
    pub fn send_message(&mut self, msg: Outgoing, now: Instant) {
        if let Some(reason) = self.refusal(&msg) {
            let results =
                (0..msg.recipients.len()).map(|index| RcptResult { index, reply: reason.clone() }).collect();
            self.event = Some(Event::MessageDone(results));
            return;
        }
        let mut unsent = VecDeque::new();
        unsent.push_back((Pending::Mail, self.mail_command(&msg)));
        for (i, r) in msg.recipients.iter().enumerate() {
            unsent.push_back((Pending::Rcpt(i), self.rcpt_command(r)));
        }
        unsent.push_back((Pending::Data, "DATA\r\n".to_owned()));
        let rcpts = vec![None; msg.recipients.len()];
        let finals = vec![None; msg.recipients.len()];
        self.tx = Some(Transaction { mail: None, rcpts, finals, unsent });
        self.send_next(now);
    }

    /// The content (and its final dot) has been written.
    pub fn handle_body_sent(&mut self, now: Instant) {
        let accepted: Vec<usize> = match (&self.tx, self.config.lmtp) {
            (Some(tx), true) => (0..tx.rcpts.len())
                .filter(|&i| tx.rcpts[i].as_ref().is_some_and(|r| r.code / 100 == 2))
                .collect(),
            _ => Vec::new(),
        };
        if accepted.is_empty() {
            self.awaiting.push_back(Pending::Final);
        } else {
            self.awaiting.extend(accepted.into_iter().map(Pending::FinalFor));
        }
        self.deadline = now + self.config.final_timeout;
    }

    /// Ends the connection politely.
    pub fn quit(&mut self, now: Instant) {
        self.output.extend_from_slice(b"QUIT\r\n");
        self.awaiting.push_back(Pending::Quit);
        self.deadline = now + self.config.command_timeout;
    }

    // ---- internals ----

    /// A message this server cannot take, as a synthetic permanent reply.
    fn refusal(&self, m: &Outgoing) -> Option<ServerReply> {
        let text = if m.requiretls && !self.caps.requiretls {
            "5.7.10 REQUIRETLS: the receiving server does not support REQUIRETLS"
        } else if m.smtputf8 && !self.caps.smtputf8 {
            "5.6.7 the message needs SMTPUTF8, which the receiving server does not support"
        } else if m.body_type == BodyType::BinaryMime {
            "5.6.3 binary content cannot be sent to this server"
        } else if m.eight_bit && !self.caps.eight_bit_mime {
            "5.6.3 8-bit content cannot be sent to a server without 8BITMIME"
        } else if self.caps.size.is_some_and(|max| max > 0 && m.size > max) {
            "5.3.4 message is larger than the receiving server's SIZE limit"
        } else {
            return None;
        };
        Some(ServerReply { code: 554, text: text.to_owned() })
    }

    fn mail_command(&self, m: &Outgoing) -> String {
        let mut cmd = format!("MAIL FROM:<{}>", m.reverse_path);
        if !self.caps.esmtp {
            return cmd + "\r\n";
        }
        if self.caps.size.is_some() {
            cmd += &format!(" SIZE={}", m.size);
        }
        if m.eight_bit && self.caps.eight_bit_mime {
            cmd += " BODY=8BITMIME";
        }
        if m.smtputf8 {
            cmd += " SMTPUTF8";
        }
        if m.requiretls {
            cmd += " REQUIRETLS";
        }
        if self.caps.dsn {
            match m.ret {
                Some(Ret::Full) => cmd += " RET=FULL",
                Some(Ret::Headers) => cmd += " RET=HDRS",
                None => {}
            }
            if let Some(envid) = &m.envid {
                cmd += &format!(" ENVID={envid}");
            }
        }
        cmd + "\r\n"
    }

    fn rcpt_command(&self, r: &OutRecipient) -> String {
        let mut cmd = format!("RCPT TO:<{}>", r.address);
        if self.caps.dsn {
            if r.notify.given() {
                cmd += &format!(" NOTIFY={}", notify_text(r.notify));
            }
            if let Some(orcpt) = &r.orcpt {
                cmd += &format!(" ORCPT={orcpt}");
            }
        }
        cmd + "\r\n"
    }

    /// Sends what may be sent now: everything with PIPELINING, else one
    /// command once every earlier reply has arrived.
    fn send_next(&mut self, now: Instant) {
        if !self.caps.pipelining && !self.awaiting.is_empty() {
            return; // sent when the awaited reply (e.g. RSET's) arrives
        }
        let Some(tx) = self.tx.as_mut() else { return };
        while let Some((pending, cmd)) = tx.unsent.pop_front() {
            self.output.extend_from_slice(cmd.as_bytes());
            self.awaiting.push_back(pending);
            if !self.caps.pipelining {
                break;
            }
        }
        let data_next = self.awaiting.back() == Some(&Pending::Data);
        self.deadline = now + if data_next { self.config.data_timeout } else { self.config.command_timeout };
    }

    fn send_ehlo(&mut self, now: Instant) {
        let verb = if self.config.lmtp { "LHLO" } else { "EHLO" };
        self.output.extend_from_slice(format!("{verb} {}\r\n", self.config.helo).as_bytes());
        self.awaiting.push_back(Pending::Ehlo);
        self.deadline = now + self.config.command_timeout;
    }

    fn fail(&mut self, f: Failure) {
        self.event = Some(Event::Failed(f));
    }

    fn ready(&mut self, now: Instant) {
        self.event = Some(Event::Ready);
        self.deadline = now + self.config.command_timeout;
    }

    fn handle_reply(&mut self, r: ServerReply, now: Instant) {
        let Some(pending) = self.awaiting.pop_front() else {
            return self.fail(Failure::Protocol(ReplyError::Malformed));
        };
        if r.code == 421 && pending != Pending::Quit {
            return self.fail(Failure::Reply(r));
        }
        match pending {
            Pending::Greeting if r.code == 220 => self.send_ehlo(now),
            Pending::Greeting => self.fail(Failure::Reply(r)),
            Pending::Ehlo if r.code == 250 => {
                self.caps = Capabilities::parse(&r.text);
                if self.config.starttls && self.caps.starttls && !self.tls {
                    self.output.extend_from_slice(b"STARTTLS\r\n");
                    self.awaiting.push_back(Pending::StartTls);
                    self.deadline = now + self.config.command_timeout;
                } else {
                    self.ready(now);
                }
            }
            // LMTP has no HELO to fall back to.
            Pending::Ehlo if self.config.lmtp => self.fail(Failure::Reply(r)),
            Pending::Ehlo => {
                self.output.extend_from_slice(format!("HELO {}\r\n", self.config.helo).as_bytes());
                self.awaiting.push_back(Pending::Helo);
            }
            Pending::Helo if r.code == 250 => {
                self.caps = Capabilities::default();
                self.ready(now);
            }
            Pending::Helo => self.fail(Failure::Reply(r)),
            Pending::StartTls if r.code == 220 => self.event = Some(Event::StartTls),
            // STARTTLS refused: go on in plain text (opportunistic, RFC 7435).
            Pending::StartTls => self.ready(now),
            Pending::Mail | Pending::Rcpt(_) | Pending::Data | Pending::Final => {
                self.transaction_reply(pending, r, now)
            }
            Pending::FinalFor(i) => {
                if let Some(slot) = self.tx.as_mut().and_then(|tx| tx.finals.get_mut(i)) {
                    *slot = Some(r);
                }
                if !matches!(self.awaiting.front(), Some(Pending::FinalFor(_))) {
                    self.finish_lmtp(now);
                }
            }
            // The next message may have waited for this reply.
            Pending::Rset => self.send_next(now),
            Pending::Quit => self.event = Some(Event::Closed),
        }
    }

    fn transaction_reply(&mut self, pending: Pending, r: ServerReply, now: Instant) {
        let Some(tx) = self.tx.as_mut() else {
            return self.fail(Failure::Protocol(ReplyError::Malformed));
        };
        match pending {
            Pending::Mail => {
                let ok = r.code == 250;
                tx.mail = Some(r);
                if !ok && !self.caps.pipelining {
                    return self.abort_transaction(now);
                }
            }
            Pending::Rcpt(i) => {
                if let Some(slot) = tx.rcpts.get_mut(i) {
                    *slot = Some(r);
                }
            }
            Pending::Data => {
                let accepted = tx.rcpts.iter().any(|r| r.as_ref().is_some_and(|r| r.code / 100 == 2));
                let mail_ok = tx.mail.as_ref().is_some_and(|m| m.code == 250);
                if r.code == 354 && accepted && mail_ok {
                    self.event = Some(Event::SendBody);
                    self.deadline = now + self.config.data_timeout;
                } else if r.code == 354 && self.config.lmtp {
                    // LMTP answers an empty message once per accepted
                    // recipient: none here, so no reply is awaited.
                    self.output.extend_from_slice(b".\r\n");
                    return self.finish_with(None, now);
                } else if r.code == 354 {
                    // Nobody to deliver to, but the server wants content: end it empty.
                    self.output.extend_from_slice(b".\r\n");
                    self.awaiting.push_back(Pending::Final);
                } else {
                    tx.mail.get_or_insert(r.clone());
                    return self.finish_with(Some(r), now);
                }
                return;
            }
            Pending::Final => return self.finish_with(Some(r), now),
            _ => {}
        }
        // Without PIPELINING: send the next command, or stop if no RCPT was
        // accepted before DATA.
        if !self.caps.pipelining {
            let next_is_data = tx.unsent.front().is_some_and(|(p, _)| *p == Pending::Data);
            let accepted = tx.rcpts.iter().any(|r| r.as_ref().is_some_and(|r| r.code / 100 == 2));
            if next_is_data && !accepted {
                return self.abort_transaction(now);
            }
            self.send_next(now);
        }
    }

    /// LMTP: every recipient's result, its own reply after the content if
    /// its RCPT was accepted. The transaction is over either way.
    fn finish_lmtp(&mut self, now: Instant) {
        let Some(tx) = self.tx.take() else { return };
        let lost = ServerReply { code: 451, text: "4.4.0 no reply for this recipient".into() };
        let results = tx
            .rcpts
            .into_iter()
            .zip(tx.finals)
            .enumerate()
            .map(|(index, (rcpt, fin))| {
                let reply = match (rcpt, fin) {
                    (Some(r), _) if r.code / 100 != 2 => r,
                    (_, Some(f)) => f,
                    _ => lost.clone(),
                };
                RcptResult { index, reply }
            })
            .collect();
        self.event = Some(Event::MessageDone(results));
        self.deadline = now + self.config.command_timeout;
    }

    /// No message will be sent: results from what we have, then RSET.
    fn abort_transaction(&mut self, now: Instant) {
        self.finish_with(None, now);
    }

    /// Every recipient's result: the final reply for accepted recipients,
    /// else its own RCPT reply (or MAIL's, if MAIL failed).
    fn finish_with(&mut self, last: Option<ServerReply>, now: Instant) {
        let Some(tx) = self.tx.take() else { return };
        let mail_failed = tx.mail.as_ref().filter(|m| m.code != 250).cloned();
        let fallback =
            last.clone().unwrap_or(ServerReply { code: 451, text: "4.4.0 transaction aborted".into() });
        let results = tx
            .rcpts
            .into_iter()
            .enumerate()
            .map(|(index, rcpt)| {
                let reply = match (&mail_failed, rcpt) {
                    (Some(m), _) => m.clone(),
                    (None, Some(r)) if r.code / 100 != 2 => r,
                    (None, _) => fallback.clone(),
                };
                RcptResult { index, reply }
            })
            .collect();
        self.event = Some(Event::MessageDone(results));
        let clean = last.as_ref().is_some_and(|r| r.code == 250) && mail_failed.is_none();
        if !clean {
            // Drop whatever is left of the transaction before the next message.
            self.output.extend_from_slice(b"RSET\r\n");
            self.awaiting.push_back(Pending::Rset);
        }
        self.deadline = now + self.config.command_timeout;
    }
}

fn notify_text(n: Notify) -> String {
    if n.never() {
        return "NEVER".into();
    }
    let mut parts = Vec::new();
    if n.success() {
        parts.push("SUCCESS");
    }
    if n.bits() & 0x08 != 0 {
        parts.push("FAILURE");
    }
    if n.bits() & 0x10 != 0 {
        parts.push("DELAY");
    }
    parts.join(",")
}
