//! AUTH PLAIN and AUTH LOGIN (RFC 4954, RFC 4616). Checking the password is the
//! shell's job (it is slow on purpose), so the session only collects credentials.

use super::{Event, Now, Phase, Session};
use crate::auth::decode_b64 as decode;
use crate::smtp::reply::canned;

/// Where a multi-step SASL exchange stands.
#[derive(Debug)]
pub(super) enum AuthStep {
    /// `AUTH PLAIN` sent without an initial response.
    Plain,
    LoginUser,
    LoginPassword {
        user: String,
    },
}

impl Session {
    /// AUTH is offered only where the password cannot be sniffed: on TLS, or on
    /// loopback. And only when there are users to log in as.
    pub(super) fn auth_offered(&self) -> bool {
        self.config.policy.has_users() && (self.conn.tls.is_some() || self.conn.peer.is_loopback())
    }

    pub(super) fn handle_auth(&mut self, mechanism: &str, initial: Option<&str>) {
        if self.helo.as_ref().is_none_or(|h| !h.1) {
            return self.error(&canned::NEED_HELO);
        }
        if self.auth_user.is_some() {
            return self.error(&canned::AUTH_DONE);
        }
        if self.tx.is_some() {
            return self.error(&canned::AUTH_IN_TRANSACTION);
        }
        if !self.config.policy.has_users() {
            return self.error(&canned::AUTH_NOT_OFFERED);
        }
        if !self.auth_offered() {
            return self.error(&canned::ENCRYPTION_REQUIRED);
        }
        match (mechanism.to_ascii_uppercase().as_str(), initial) {
            ("PLAIN", None) => self.challenge(AuthStep::Plain, ""),
            ("PLAIN", Some(resp)) => self.auth_plain(resp),
            ("LOGIN", None) => self.challenge(AuthStep::LoginUser, "VXNlcm5hbWU6"),
            ("LOGIN", Some(resp)) => self.auth_login_user(resp),
            _ => self.error(&canned::AUTH_MECH),
        }
    }

    fn challenge(&mut self, step: AuthStep, text: &'static str) {
        self.output.extend_from_slice(b"334 ");
        self.output.extend_from_slice(text.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        self.phase = Phase::Auth(step);
    }

    pub(super) fn read_auth_line(&mut self, input: &[u8], now: Now) -> usize {
        let (line, used) = match self.take_line(input) {
            Ok(Some(found)) => found,
            Ok(None) => return 0,
            Err(used) => {
                // The exchange is over. An over-long line is still being
                // discarded (to its end, then `500`): never read its tail
                // as a command.
                if matches!(self.phase, Phase::Auth(_)) {
                    self.phase = Phase::Command;
                }
                return used;
            }
        };
        let Phase::Auth(step) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return used;
        };
        self.deadline = now.instant + self.config.command_timeout;
        let Ok(line) = std::str::from_utf8(line) else {
            self.error(&canned::AUTH_BAD_B64);
            return used;
        };
        if line == "*" {
            self.error(&canned::AUTH_CANCELLED);
            return used;
        }
        match step {
            AuthStep::Plain => self.auth_plain(line),
            AuthStep::LoginUser => self.auth_login_user(line),
            AuthStep::LoginPassword { user } => match decode(line) {
                Some(pass) => self.request_check(user, pass),
                None => self.error(&canned::AUTH_BAD_B64),
            },
        }
        used
    }

    /// `authzid NUL authcid NUL passwd`; authzid must be empty or the same user.
    fn auth_plain(&mut self, resp: &str) {
        match crate::auth::parse_plain(resp) {
            Ok((user, pass)) => self.request_check(user, pass),
            Err(crate::auth::PlainError::Base64) => self.error(&canned::AUTH_BAD_B64),
            Err(crate::auth::PlainError::Malformed) => self.error(&canned::AUTH_FAILED),
        }
    }

    fn auth_login_user(&mut self, resp: &str) {
        match decode(resp) {
            Some(user) => self.challenge(AuthStep::LoginPassword { user }, "UGFzc3dvcmQ6"),
            None => self.error(&canned::AUTH_BAD_B64),
        }
    }

    fn request_check(&mut self, user: String, pass: String) {
        self.credentials = Some((user, pass));
        self.phase = Phase::Blocked(Event::Authenticate);
    }

    /// The shell's answer to [`Event::Authenticate`].
    pub fn handle_auth_result(&mut self, ok: bool, now: Now) {
        let Some((user, _)) = self.credentials.take() else {
            return;
        };
        if ok {
            self.auth_user = Some(user);
            self.reply(&canned::AUTH_OK);
        } else {
            self.error(&canned::AUTH_FAILED);
        }
        if matches!(self.phase, Phase::Blocked(_)) {
            self.await_command(now);
        }
    }

    /// The shell's answer to [`Event::Authenticate`] when the client
    /// address failed too often: `454 4.7.0`, whatever the credentials.
    pub fn handle_auth_throttled(&mut self, now: Now) {
        self.credentials = None;
        self.error(&canned::AUTH_THROTTLED);
        if matches!(self.phase, Phase::Blocked(_)) {
            self.await_command(now);
        }
    }

    /// The authenticated user, if any.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }
}
