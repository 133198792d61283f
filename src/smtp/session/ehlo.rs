//! EHLO, HELO and STARTTLS (RFC 5321 §4.1.1.1, RFC 3207).

use super::{Event, Now, Phase, Session, TlsInfo};
use crate::smtp::reply::{canned, write_multiline, EnhancedStatus, Reply};

/// The longest EHLO/HELO argument we keep (a domain is at most 255 octets).
const MAX_HELO: usize = 255;

impl Session {
    pub(super) fn handle_ehlo(&mut self, name: &str, esmtp: bool) {
        if name.len() > MAX_HELO || !name.chars().all(|c| c.is_alphanumeric() || "-.:[]_".contains(c)) {
            self.error(&canned::BAD_HELO);
            return;
        }
        // EHLO/HELO also resets any transaction (RFC 5321 §4.1.4).
        self.end_transaction();
        self.helo = Some((name.to_owned(), esmtp));
        if !esmtp {
            let text = format!("{} Hello {}", self.config.hostname, name);
            self.reply(&Reply::owned(250, EnhancedStatus(2, 0, 0), text));
            return;
        }
        let size = format!("SIZE {}", self.config.max_message_size);
        let mut lines: Vec<&str> = vec![
            self.config.hostname.as_str(),
            "PIPELINING",
            size.as_str(),
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS");
        }
        if self.conn.tls.is_some() {
            lines.push("REQUIRETLS");
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN");
        }
        write_multiline(&mut self.output, 250, lines);
    }

    fn starttls_offered(&self) -> bool {
        self.config.starttls && self.conn.tls.is_none()
    }

    pub(super) fn handle_starttls(&mut self) {
        if self.conn.tls.is_some() {
            self.error(&canned::TLS_ACTIVE);
        } else if !self.config.starttls {
            self.error(&canned::TLS_UNAVAILABLE);
        } else if self.tx.is_some() {
            self.error(&canned::NESTED_MAIL);
        } else {
            self.reply(&canned::TLS_GO);
            self.phase = Phase::Blocked(Event::StartTls);
        }
    }

    /// The TLS handshake after STARTTLS succeeded. The session starts over: the
    /// client must send EHLO again, and nothing it said before counts (RFC 3207 §4.2).
    pub fn handle_tls_established(&mut self, info: TlsInfo, now: Now) {
        self.conn.tls = Some(info);
        self.helo = None;
        self.end_transaction();
        self.auth_user = None;
        self.await_command(now);
    }
}
