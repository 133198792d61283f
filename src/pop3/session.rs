//! The POP3 protocol core (RFC 1939, CAPA from RFC 2449, STLS from RFC 2595,
//! AUTH PLAIN from RFC 5034, response codes from RFC 2449/3206), sans-IO:
//! bytes in, replies out, and events for what needs the file system or the
//! password hasher. The shell (`rt::pop3`) does those and answers.

use std::time::{Duration, Instant};

#[cfg(test)]
use super::wire_size;
use super::MessageInfo;

/// Longest command line we read (RFC 2449: 255 octets; SASL responses can be
/// longer, so a little room).
pub const MAX_LINE: usize = 1024;

/// The whole answer to a connection over the server's limits (RFC 3206).
pub const TOO_MANY_CONNECTIONS: &[u8] = b"-ERR [SYS/TEMP] too many connections, try again later\r\n";

/// RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
pub const IDLE: Duration = Duration::from_secs(600);

/// Failed logins before the connection is closed.
const MAX_AUTH_FAILURES: u32 = 3;

/// Bad commands before the connection is closed.
const MAX_ERRORS: u32 = 10;

/// What the shell must do before the session can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Check [`Session::credentials`]; if they are right, lock and load the
    /// maildrop, then call [`Session::handle_login`].
    Login,
    /// Write the pending output, then run the TLS handshake and call
    /// [`Session::handle_tls_established`] (or close on failure).
    StartTls,
    /// Read the message [`Session::fetch`] names; call [`Session::handle_content`].
    Fetch,
    /// QUIT in the transaction state: remove [`Session::deleted`], then call
    /// [`Session::handle_commit`].
    Commit,
    /// Write the pending output and close.
    Close,
}

/// Why a login did not open the maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password.
    Credentials,
    /// Another session holds the maildrop (RFC 2449 `[IN-USE]`).
    InUse,
    /// The maildrop could not be read (RFC 3206 `[SYS/TEMP]`).
    Unavailable,
    /// The client address failed to log in too often (`[AUTH]`).
    Throttled,
}

/// A message the shell should read: its index in the listing, and for TOP the
/// number of body lines wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub index: usize,
    pub top: Option<u64>,
}

#[derive(Debug)]
enum State {
    /// Before login; `user` from a USER command.
    Authorization {
        user: Option<String>,
    },
    /// `AUTH PLAIN` without an initial response: the next line is the response.
    SaslResponse,
    Transaction,
    /// Nothing more is read.
    Done,
}

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    hostname: String,
    /// STLS is available on this listener (TLS configured, not yet active).
    stls_offered: bool,
    tls: bool,
    loopback: bool,
    state: State,
    output: Vec<u8>,
    event: Option<Event>,
    credentials: Option<(String, String)>,
    messages: Vec<MessageInfo>,
    deleted: Vec<bool>,
    fetch: Option<Fetch>,
    auth_failures: u32,
    errors: u32,
    /// When the session is logged out for inactivity.
    deadline: Instant,
}

impl Session {
    /// A new session; the greeting is already in the output. `now` starts
    /// the inactivity timer ([`IDLE`]).
    pub fn new(hostname: &str, stls_offered: bool, tls: bool, loopback: bool, now: Instant) -> Session {
        let mut s = Session {
            hostname: hostname.to_owned(),
            stls_offered: stls_offered && !tls,
            tls,
            loopback,
            state: State::Authorization { user: None },
            output: Vec::with_capacity(256),
            event: None,
            credentials: None,
            messages: Vec::new(),
            deleted: Vec::new(),
            fetch: None,
            auth_failures: 0,
            errors: 0,
            deadline: now + IDLE,
        };
        s.ok(&format!("{} POP3 ready", s.hostname));
        s
    }

    /// Bytes to send.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Swaps the pending output with `buf` (which must be empty).
    pub fn swap_output(&mut self, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.output, buf);
    }

    /// The next thing the shell must do, if any. Input is not read meanwhile.
    pub fn poll_event(&self) -> Option<Event> {
        self.event
    }

    /// User and password to check for [`Event::Login`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The message to read for [`Event::Fetch`], and its listing entry.
    pub fn fetch(&self) -> Option<(Fetch, &MessageInfo)> {
        let f = self.fetch?;
        Some((f, self.messages.get(f.index)?))
    }

    /// The messages marked deleted, for [`Event::Commit`].
    pub fn deleted(&self) -> impl Iterator<Item = &MessageInfo> {
        self.messages.iter().zip(&self.deleted).filter(|(_, d)| **d).map(|(m, _)| m)
    }

    /// True once the session needs no more input.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// When the inactivity timer runs out: call [`Session::handle_timeout`]
    /// then.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Consumes complete command lines from `input`; returns how many bytes
    /// were used. Stops at an event. Input restarts the inactivity timer.
    pub fn handle_input(&mut self, input: &[u8], now: Instant) -> usize {
        if !input.is_empty() {
            self.deadline = now + IDLE;
        }
        let mut used = 0;
        while self.event.is_none() && !self.is_done() {
            let rest = &input[used..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    self.err("line too long");
                    self.close();
                    return input.len();
                }
                break;
            };
            used += nl + 1;
            if nl + 1 > MAX_LINE {
                self.err("line too long");
                self.count_error();
                continue;
            }
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match std::str::from_utf8(line) {
                Ok(line) => {
                    let line = line.to_owned();
                    self.command(&line);
                }
                Err(_) => {
                    self.err("commands are text");
                    self.count_error();
                }
            }
        }
        used
    }

    /// The peer closed its side: end without entering UPDATE (RFC 1939 §6:
    /// deletions happen only on QUIT).
    pub fn handle_eof(&mut self) {
        self.state = State::Done;
        self.event = None;
    }

    /// The wait for input ended at `now`: if the inactivity timer ran out,
    /// the session ends (RFC 1939 §3: no UPDATE either); earlier, nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline || self.is_done() || self.event.is_some() {
            return;
        }
        self.err("[SYS/TEMP] idle for too long");
        self.close();
    }

    /// The server is shutting down: close without UPDATE.
    pub fn handle_shutdown(&mut self) {
        self.err("[SYS/TEMP] server shutting down");
        self.close();
    }

    /// The shell's answer to [`Event::Login`].
    pub fn handle_login(&mut self, result: Result<Vec<MessageInfo>, LoginError>) {
        self.event = None;
        let user = self.credentials.take().map(|c| c.0).unwrap_or_default();
        match result {
            Ok(messages) => {
                let size: u64 = messages.iter().map(|m| m.size).sum();
                self.deleted = vec![false; messages.len()];
                self.ok(&format!("{user} has {} messages ({size} octets)", messages.len()));
                self.messages = messages;
                self.state = State::Transaction;
            }
            Err(LoginError::Credentials) => {
                self.auth_failures += 1;
                self.err("[AUTH] invalid user name or password");
                self.state = State::Authorization { user: None };
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.close();
                }
            }
            Err(LoginError::Throttled) => {
                self.err("[AUTH] too many failed logins from your address; try again later");
                self.state = State::Authorization { user: None };
            }
            Err(LoginError::InUse) => {
                self.err("[IN-USE] maildrop is locked by another session");
                self.state = State::Authorization { user: None };
            }
            Err(LoginError::Unavailable) => {
                self.err("[SYS/TEMP] maildrop is unavailable, try again later");
                self.state = State::Authorization { user: None };
            }
        }
    }

    /// The shell's answer to [`Event::StartTls`]: TLS is up; forget
    /// everything said before (RFC 2595 §4).
    pub fn handle_tls_established(&mut self) {
        self.event = None;
        self.tls = true;
        self.stls_offered = false;
        self.state = State::Authorization { user: None };
    }

    /// The shell's answer to [`Event::Fetch`]: the message file, as stored
    /// (LF or CRLF line ends), or an error reading it.
    pub fn handle_content(&mut self, content: std::io::Result<Vec<u8>>) {
        self.event = None;
        let Some(f) = self.fetch.take() else { return };
        match content {
            Ok(content) => {
                let size = self.messages.get(f.index).map_or(0, |m| m.size);
                self.ok(&format!("{size} octets"));
                encode_content(&mut self.output, &content, f.top);
            }
            Err(_) => self.err("[SYS/TEMP] cannot read that message now"),
        }
    }

    /// The shell's answer to [`Event::Commit`]: how many deletions failed.
    pub fn handle_commit(&mut self, failed: usize) {
        self.event = None;
        if failed == 0 {
            self.ok(&format!("{} POP3 server signing off", self.hostname));
        } else {
            self.err(&format!("[SYS/TEMP] {failed} messages could not be removed"));
        }
        self.close();
    }

    fn command(&mut self, line: &str) {
        if matches!(self.state, State::SaslResponse) {
            self.state = State::Authorization { user: None };
            return self.sasl_response(line);
        }
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match (&self.state, verb.as_str()) {
            (_, "QUIT") => self.quit(),
            (_, "CAPA") => self.capa(),
            (State::Authorization { .. }, "USER") => self.user(args),
            (State::Authorization { .. }, "PASS") => self.pass(args),
            (State::Authorization { .. }, "AUTH") => self.auth(args),
            (State::Authorization { .. }, "STLS") => self.stls(),
            (State::Authorization { .. }, "APOP") => self.err("APOP is not supported"),
            (State::Transaction, "STAT") => self.stat(),
            (State::Transaction, "LIST") => self.list(args, false),
            (State::Transaction, "UIDL") => self.list(args, true),
            (State::Transaction, "RETR") => self.retr(args),
            (State::Transaction, "TOP") => self.top(args),
            (State::Transaction, "DELE") => self.dele(args),
            (State::Transaction, "NOOP") => self.ok(""),
            (State::Transaction, "RSET") => self.rset(),
            _ => {
                self.err("unknown command, or not in this state");
                self.count_error();
            }
        }
    }

    fn quit(&mut self) {
        if matches!(self.state, State::Transaction) && self.deleted.iter().any(|d| *d) {
            // RFC 1939 §6: the UPDATE state.
            self.event = Some(Event::Commit);
            self.state = State::Done;
        } else {
            self.ok(&format!("{} POP3 server signing off", self.hostname));
            self.close();
        }
    }

    /// Logins are allowed on TLS or on loopback only (no passwords in clear
    /// text over a network).
    fn login_allowed(&self) -> bool {
        self.tls || self.loopback
    }

    fn capa(&mut self) {
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if matches!(self.state, State::Authorization { .. }) {
            if self.stls_offered {
                caps.push("STLS");
            }
            if self.login_allowed() {
                caps.push("USER");
                caps.push("SASL PLAIN");
            }
        }
        caps.push("IMPLEMENTATION ringpost");
        self.ok("capability list follows");
        for c in caps {
            self.output.extend_from_slice(c.as_bytes());
            self.output.extend_from_slice(b"\r\n");
        }
        self.output.extend_from_slice(b".\r\n");
    }

    fn user(&mut self, args: &str) {
        if !self.login_allowed() {
            return self.err("[AUTH] log in over TLS (STLS) only");
        }
        let name = args.trim();
        if name.is_empty() {
            return self.err("USER needs a name");
        }
        self.state = State::Authorization { user: Some(name.to_owned()) };
        self.ok("send PASS");
    }

    fn pass(&mut self, args: &str) {
        let State::Authorization { user } = &mut self.state else { return };
        let Some(user) = user.take() else {
            return self.err("USER first");
        };
        // The password is the rest of the line, spaces included (RFC 1939 §7).
        self.request_login(user, args.to_owned());
    }

    fn auth(&mut self, args: &str) {
        let mut parts = args.split_whitespace();
        let mechanism = parts.next().unwrap_or("");
        if mechanism.is_empty() {
            // Mechanisms are listed by CAPA (RFC 5034 §3).
            return self.err("AUTH needs a mechanism; see CAPA");
        }
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return self.err("unsupported SASL mechanism");
        }
        if !self.login_allowed() {
            return self.err("[AUTH] log in over TLS (STLS) only");
        }
        match parts.next() {
            // "=" is an empty initial response (RFC 5034 §4).
            Some("=") => self.sasl_response(""),
            Some(initial) => self.sasl_response(initial),
            None => {
                self.output.extend_from_slice(b"+ \r\n");
                self.state = State::SaslResponse;
            }
        }
    }

    fn sasl_response(&mut self, line: &str) {
        if line == "*" {
            return self.err("authentication cancelled");
        }
        match crate::auth::parse_plain(line) {
            Ok((user, pass)) => self.request_login(user, pass),
            Err(_) => {
                self.auth_failures += 1;
                self.err("[AUTH] malformed PLAIN response");
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.close();
                }
            }
        }
    }

    fn request_login(&mut self, user: String, pass: String) {
        self.credentials = Some((user, pass));
        self.event = Some(Event::Login);
    }

    fn stls(&mut self) {
        if !self.stls_offered {
            return self.err("STLS is not available");
        }
        self.ok("begin TLS negotiation");
        self.event = Some(Event::StartTls);
    }

    fn live(&self, index: usize) -> bool {
        self.deleted.get(index).is_some_and(|d| !d)
    }

    /// Parses a message number (1-based) of a message that is not deleted.
    fn message_arg(&mut self, arg: &str) -> Option<usize> {
        match arg.trim().parse::<usize>() {
            Ok(n) if n >= 1 && self.live(n - 1) => Some(n - 1),
            Ok(n) if n >= 1 && n <= self.messages.len() => {
                self.err(&format!("message {n} is deleted"));
                None
            }
            _ => {
                self.err("no such message");
                None
            }
        }
    }

    fn stat(&mut self) {
        let (count, size) = self
            .messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| !**d)
            .fold((0, 0u64), |(c, s), (m, _)| (c + 1, s + m.size));
        self.ok(&format!("{count} {size}"));
    }

    fn list(&mut self, args: &str, uidl: bool) {
        let entry = |m: &MessageInfo| if uidl { m.uid.clone() } else { m.size.to_string() };
        if !args.trim().is_empty() {
            if let Some(i) = self.message_arg(args) {
                let e = entry(&self.messages[i]);
                self.ok(&format!("{} {e}", i + 1));
            }
            return;
        }
        self.ok("listing follows");
        for (i, m) in self.messages.iter().enumerate() {
            if self.deleted[i] {
                continue;
            }
            let e = entry(m);
            self.output.extend_from_slice(format!("{} {e}\r\n", i + 1).as_bytes());
        }
        self.output.extend_from_slice(b".\r\n");
    }

    fn retr(&mut self, args: &str) {
        if let Some(index) = self.message_arg(args) {
            self.fetch = Some(Fetch { index, top: None });
            self.event = Some(Event::Fetch);
        }
    }

    fn top(&mut self, args: &str) {
        let mut parts = args.split_whitespace();
        let (Some(n), Some(lines), None) = (parts.next(), parts.next(), parts.next()) else {
            return self.err("usage: TOP msg n");
        };
        let Ok(lines) = lines.parse::<u64>() else {
            return self.err("usage: TOP msg n");
        };
        if let Some(index) = self.message_arg(n) {
            self.fetch = Some(Fetch { index, top: Some(lines) });
            self.event = Some(Event::Fetch);
        }
    }

    fn dele(&mut self, args: &str) {
        if let Some(i) = self.message_arg(args) {
            self.deleted[i] = true;
            self.ok(&format!("message {} deleted", i + 1));
        }
    }

    fn rset(&mut self) {
        self.deleted.iter_mut().for_each(|d| *d = false);
        self.stat_reply("maildrop has");
    }

    fn stat_reply(&mut self, prefix: &str) {
        let size: u64 = self.messages.iter().map(|m| m.size).sum();
        self.ok(&format!("{prefix} {} messages ({size} octets)", self.messages.len()));
    }

    fn ok(&mut self, text: &str) {
        self.output.extend_from_slice(b"+OK");
        if !text.is_empty() {
            self.output.push(b' ');
            self.output.extend_from_slice(text.as_bytes());
        }
        self.output.extend_from_slice(b"\r\n");
    }

    fn err(&mut self, text: &str) {
        self.output.extend_from_slice(b"-ERR ");
        self.output.extend_from_slice(text.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    fn count_error(&mut self) {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.err("too many errors");
            self.close();
        }
    }

    fn close(&mut self) {
        self.state = State::Done;
        self.event = Some(Event::Close);
    }
}

/// Appends a stored message as a multi-line response: CRLF line ends,
/// dot-stuffed, ended by `.`. With `top`, the header, the blank line and at
/// most that many body lines.
pub fn encode_content(out: &mut Vec<u8>, content: &[u8], top: Option<u64>) {
    let mut in_body = false;
    let mut body_lines = 0u64;
    let mut rest = content;
    while !rest.is_empty() {
        if in_body && top.is_some_and(|t| body_lines >= t) {
            break;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        if in_body {
            body_lines += 1;
        } else if line.is_empty() {
            in_body = true;
        }
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests
    use super::*;
    use std::path::PathBuf;

    /// The tests' clock: a fixed instant (timers are checked with offsets).
    #[allow(clippy::disallowed_methods)] // reason: a real Instant as the simulated clock's origin
    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn msg(uid: &str, size: u64) -> MessageInfo {
        MessageInfo { uid: uid.into(), size, path: PathBuf::from(format!("/m/{uid}")) }
    }

    /// Feeds `input`, returns the output since the last call.
    fn send(s: &mut Session, input: &str) -> String {
        let used = s.handle_input(input.as_bytes(), t0());
        assert!(used <= input.len());
        let out = String::from_utf8(s.output().to_vec()).unwrap();
        let mut empty = Vec::new();
        s.swap_output(&mut empty);
        out
    }

    fn logged_in() -> Session {
        let mut s = Session::new("pop.test", false, false, true, t0());
        send(&mut s, "");
        send(&mut s, "USER alice@example.test\r\nPASS secret word\r\n");
        assert_eq!(s.poll_event(), Some(Event::Login));
        assert_eq!(s.credentials(), Some(("alice@example.test", "secret word")));
        s.handle_login(Ok(vec![msg("u1", 100), msg("u2", 50)]));
        s
    }

    #[test]
    fn greeting_login_and_listing() {
        let mut s = Session::new("pop.test", false, false, true, t0());
        assert_eq!(send(&mut s, ""), "+OK pop.test POP3 ready\r\n");
        let mut s = logged_in();
        assert_eq!(send(&mut s, ""), "+OK alice@example.test has 2 messages (150 octets)\r\n");
        assert_eq!(send(&mut s, "STAT\r\n"), "+OK 2 150\r\n");
        assert_eq!(send(&mut s, "LIST\r\n"), "+OK listing follows\r\n1 100\r\n2 50\r\n.\r\n");
        assert_eq!(send(&mut s, "LIST 2\r\n"), "+OK 2 50\r\n");
        assert_eq!(send(&mut s, "LIST 3\r\n"), "-ERR no such message\r\n");
        assert_eq!(send(&mut s, "UIDL\r\n"), "+OK listing follows\r\n1 u1\r\n2 u2\r\n.\r\n");
        assert_eq!(send(&mut s, "uidl 1\r\n"), "+OK 1 u1\r\n");
        assert_eq!(send(&mut s, "NOOP\r\n"), "+OK\r\n");
    }

    #[test]
    fn dele_rset_and_quit_commit_only_deleted() {
        let mut s = logged_in();
        send(&mut s, "");
        assert_eq!(send(&mut s, "DELE 1\r\n"), "+OK message 1 deleted\r\n");
        assert_eq!(send(&mut s, "DELE 1\r\n"), "-ERR message 1 is deleted\r\n");
        assert_eq!(send(&mut s, "STAT\r\n"), "+OK 1 50\r\n");
        assert_eq!(send(&mut s, "LIST\r\n"), "+OK listing follows\r\n2 50\r\n.\r\n");
        assert!(send(&mut s, "RSET\r\n").starts_with("+OK maildrop has 2 messages"));
        assert_eq!(send(&mut s, "STAT\r\n"), "+OK 2 150\r\n");
        send(&mut s, "DELE 2\r\n");
        send(&mut s, "QUIT\r\nSTAT\r\n");
        assert_eq!(s.poll_event(), Some(Event::Commit));
        assert_eq!(s.deleted().map(|m| m.uid.as_str()).collect::<Vec<_>>(), ["u2"]);
        s.handle_commit(0);
        assert_eq!(send(&mut s, ""), "+OK pop.test POP3 server signing off\r\n");
        assert_eq!(s.poll_event(), Some(Event::Close));
    }

    #[test]
    fn quit_without_deletions_and_eof_never_commit() {
        let mut s = logged_in();
        send(&mut s, "");
        send(&mut s, "QUIT\r\n");
        assert_eq!(s.poll_event(), Some(Event::Close));
        let mut s = logged_in();
        send(&mut s, "DELE 1\r\n");
        s.handle_eof();
        assert_eq!(s.poll_event(), None);
        assert!(s.is_done());
    }

    #[test]
    fn retr_and_top_stuff_dots_and_end_lines_with_crlf() {
        let mut s = logged_in();
        send(&mut s, "");
        send(&mut s, "RETR 1\r\n");
        assert_eq!(s.poll_event(), Some(Event::Fetch));
        assert_eq!(s.fetch().unwrap().1.uid, "u1");
        s.handle_content(Ok(b"Subject: x\n\n.hidden\nline 2\nline 3\n".to_vec()));
        assert_eq!(
            send(&mut s, ""),
            "+OK 100 octets\r\nSubject: x\r\n\r\n..hidden\r\nline 2\r\nline 3\r\n.\r\n"
        );
        send(&mut s, "TOP 1 1\r\n");
        assert_eq!(s.fetch().unwrap().0.top, Some(1));
        s.handle_content(Ok(b"Subject: x\r\n\r\nfirst\r\nsecond\r\n".to_vec()));
        assert_eq!(send(&mut s, ""), "+OK 100 octets\r\nSubject: x\r\n\r\nfirst\r\n.\r\n");
        send(&mut s, "TOP 2 0\r\n");
        s.handle_content(Ok(b"A: b\n\nbody\n".to_vec()));
        assert_eq!(send(&mut s, ""), "+OK 50 octets\r\nA: b\r\n\r\n.\r\n");
        send(&mut s, "RETR 2\r\n");
        s.handle_content(Err(std::io::Error::other("gone")));
        assert!(send(&mut s, "").starts_with("-ERR [SYS/TEMP]"));
        assert_eq!(send(&mut s, "TOP 1\r\n"), "-ERR usage: TOP msg n\r\n");
    }

    #[test]
    fn wire_size_counts_crlf_line_ends() {
        assert_eq!(wire_size(b"a\nbc\n"), 7);
        assert_eq!(wire_size(b"a\r\nbc\r\n"), 7);
        assert_eq!(wire_size(b"a\nbc"), 7);
        assert_eq!(wire_size(b""), 0);
    }

    #[test]
    fn no_clear_text_logins_off_loopback_and_stls_resets_the_state() {
        let mut s = Session::new("pop.test", true, false, false, t0());
        send(&mut s, "");
        let capa = send(&mut s, "CAPA\r\n");
        assert!(capa.contains("STLS\r\n") && !capa.contains("USER") && !capa.contains("SASL"), "{capa}");
        assert!(send(&mut s, "USER a@b.test\r\n").starts_with("-ERR [AUTH]"));
        assert!(send(&mut s, "AUTH PLAIN AGFAYg==\r\n").starts_with("-ERR [AUTH]"));
        assert_eq!(send(&mut s, "STLS\r\nUSER injected\r\n"), "+OK begin TLS negotiation\r\n");
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        s.handle_tls_established();
        let capa = send(&mut s, "CAPA\r\n");
        assert!(!capa.contains("STLS") && capa.contains("USER\r\n") && capa.contains("SASL PLAIN"), "{capa}");
        assert_eq!(send(&mut s, "STLS\r\n"), "-ERR STLS is not available\r\n");
    }

    #[test]
    fn auth_plain_with_and_without_initial_response() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode("\0alice@example.test\0pw");
        let mut s = Session::new("pop.test", false, true, false, t0());
        send(&mut s, "");
        send(&mut s, &format!("AUTH PLAIN {b64}\r\n"));
        assert_eq!(s.credentials(), Some(("alice@example.test", "pw")));
        s.handle_login(Err(LoginError::Credentials));
        assert_eq!(send(&mut s, ""), "-ERR [AUTH] invalid user name or password\r\n");
        assert_eq!(send(&mut s, "AUTH PLAIN\r\n"), "+ \r\n");
        assert_eq!(send(&mut s, "*\r\n"), "-ERR authentication cancelled\r\n");
        send(&mut s, "AUTH PLAIN\r\n");
        send(&mut s, &format!("{b64}\r\n"));
        assert_eq!(s.poll_event(), Some(Event::Login));
        s.handle_login(Err(LoginError::InUse));
        assert!(send(&mut s, "").starts_with("-ERR [IN-USE]"));
        assert_eq!(send(&mut s, "AUTH CRAM-MD5\r\n"), "-ERR unsupported SASL mechanism\r\n");
    }

    #[test]
    fn repeated_login_failures_and_garbage_close_the_session() {
        let mut s = Session::new("pop.test", false, false, true, t0());
        send(&mut s, "");
        for _ in 0..3 {
            send(&mut s, "USER a@b.test\r\nPASS x\r\n");
            s.handle_login(Err(LoginError::Credentials));
        }
        assert_eq!(s.poll_event(), Some(Event::Close));
        let mut s = Session::new("pop.test", false, false, true, t0());
        send(&mut s, "");
        assert_eq!(send(&mut s, "STAT\r\n"), "-ERR unknown command, or not in this state\r\n");
        assert_eq!(send(&mut s, "PASS x\r\n"), "-ERR USER first\r\n");
        let long = format!("{}\r\n", "A".repeat(MAX_LINE + 10));
        assert_eq!(send(&mut s, &long), "-ERR line too long\r\n");
        let out = send(&mut s, &"BOGUS\r\n".repeat(20));
        assert!(out.ends_with("-ERR too many errors\r\n"), "{out}");
        assert_eq!(s.poll_event(), Some(Event::Close));
        let mut s = Session::new("pop.test", false, false, true, t0());
        send(&mut s, "");
        let used = s.handle_input(&vec![b'x'; MAX_LINE + 1], t0());
        assert_eq!(used, MAX_LINE + 1);
        assert_eq!(s.poll_event(), Some(Event::Close));
    }

    #[test]
    fn inactivity_logs_out_without_update() {
        let mut s = logged_in();
        send(&mut s, "DELE 1\r\n");
        assert_eq!(s.poll_timeout(), t0() + IDLE);
        s.handle_timeout(t0() + IDLE - Duration::from_secs(1));
        assert_eq!(s.poll_event(), None, "not yet");
        // Input restarts the timer.
        s.handle_input(b"NOOP\r\n", t0() + Duration::from_secs(60));
        assert_eq!(s.poll_timeout(), t0() + Duration::from_secs(60) + IDLE);
        s.handle_timeout(t0() + Duration::from_secs(60) + IDLE);
        let mut out = Vec::new();
        s.swap_output(&mut out);
        assert!(String::from_utf8(out).unwrap().ends_with("-ERR [SYS/TEMP] idle for too long\r\n"));
        assert_eq!(s.poll_event(), Some(Event::Close));
        assert_eq!(s.deleted().count(), 1, "marked, but no UPDATE: the shell removes nothing on Close");
    }
}
