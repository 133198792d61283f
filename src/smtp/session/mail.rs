//! MAIL FROM and RCPT TO (RFC 5321 §4.1.1.2-3), with relay control.

use super::{Session, SuppressedRcpt, Transaction};
use crate::envelope::{BodyType, Recipient};
use crate::policy::RcptVerdict;
use crate::smtp::address::{parse_forward_path, parse_reverse_path, AddressError, ReversePath};
use crate::smtp::params::{MailParams, ParamError, RcptParams};
use crate::smtp::reply::{canned, EnhancedStatus, Reply};

fn param_reply(e: ParamError) -> Reply {
    match e {
        ParamError::Unsupported => Reply::new(555, EnhancedStatus(5, 5, 4), "Unsupported parameter"),
        ParamError::Syntax | ParamError::Duplicate => canned::SYNTAX_PARAMS,
    }
}

fn address_reply(e: AddressError, sender: bool) -> Reply {
    match (e, sender) {
        (AddressError::TooLong, _) => Reply::new(501, EnhancedStatus(5, 5, 4), "Address too long"),
        (_, true) => canned::BAD_SENDER,
        (_, false) => canned::BAD_RCPT,
    }
}

impl Session {
    pub(super) fn handle_mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            return self.error(&canned::NEED_HELO);
        }
        if self.tx.is_some() {
            return self.error(&canned::NESTED_MAIL);
        }
        if self.config.role == super::Role::Submission && self.auth_user.is_none() {
            return self.error(&canned::AUTH_REQUIRED);
        }
        let (reverse_path, params) = match parse_reverse_path(arg) {
            Ok(parsed) => parsed,
            Err(e) => return self.error(&address_reply(e, true)),
        };
        let params = match MailParams::parse(params) {
            Ok(p) => p,
            Err(e) => return self.error(&param_reply(e)),
        };
        if params.body == BodyType::BinaryMime {
            // Not advertised (we could not pass binary content on to a next
            // hop that lacks it), so not accepted (RFC 3030 §3).
            return self.error(&canned::NO_BINARYMIME);
        }
        if params.requiretls && self.conn.tls.is_none() {
            // Advertised on TLS sessions only (RFC 8689 §4.1).
            return self.error(&canned::REQUIRETLS_NEEDS_TLS);
        }
        if params.size.is_some_and(|s| s > self.config.max_message_size) {
            return self.error(&canned::TOO_BIG);
        }
        let ascii = reverse_path.mailbox().is_none_or(|m| m.is_ascii());
        if !ascii && !params.smtputf8 {
            return self.error(&canned::NEED_SMTPUTF8);
        }
        self.tx =
            Some(Transaction { reverse_path, params, recipients: Vec::new(), refused: 0, chunks: None });
        self.reply(&canned::SENDER_OK);
    }

    pub(super) fn handle_rcpt(&mut self, arg: &str) {
        let reply = self.check_rcpt(arg);
        let suppressed = match (&reply, self.tx.as_ref()) {
            (Ok(rcpt), Some(tx)) => self.suppression_of(rcpt, tx),
            _ => None,
        };
        if let Some(s) = suppressed {
            // Not a client error (it does not count toward `errors`): a
            // bulk sender's batch may name many suppressed addresses.
            if let Some(tx) = self.tx.as_mut() {
                tx.refused += 1;
            }
            self.refused_recipients += 1;
            self.suppressed.push(s);
            self.reply(&canned::SUPPRESSED);
            return;
        }
        match (reply, self.tx.as_mut()) {
            (Ok(rcpt), Some(tx)) => {
                if !tx.recipients.iter().any(|r| r.address == rcpt.address) {
                    tx.recipients.push(rcpt);
                }
                self.reply(&canned::RCPT_OK);
            }
            (Err(reply), tx) => {
                if let Some(tx) = tx {
                    tx.refused += 1;
                    self.refused_recipients += 1;
                }
                self.error(&reply);
            }
            (Ok(_), None) => self.error(&canned::NEED_MAIL),
        }
    }

    /// Whether `rcpt` is suppressed for this client: only clients that may
    /// relay (our senders) are held to the list, never strangers sending
    /// to our own domains.
    fn suppression_of(&self, rcpt: &Recipient, tx: &Transaction) -> Option<SuppressedRcpt> {
        let store = self.config.suppression.as_ref()?;
        if !(self.conn.trusted || self.auth_user.is_some()) {
            return None;
        }
        let tenant = self.auth_user.as_deref().and_then(|u| self.config.policy.user_tenant(u));
        let address = rcpt.address.to_string();
        let e = store.check(&address, tenant)?;
        Some(SuppressedRcpt {
            sender: tx.reverse_path.to_string(),
            recipient: address,
            tenant: e.tenant,
            reason: e.reason,
        })
    }

    fn check_rcpt(&self, arg: &str) -> Result<Recipient, Reply> {
        let tx = self.tx.as_ref().ok_or(canned::NEED_MAIL)?;
        let (address, params) =
            parse_forward_path(arg, &self.config.hostname).map_err(|e| address_reply(e, false))?;
        let params = RcptParams::parse(params).map_err(param_reply)?;
        if !address.is_ascii() && !tx.params.smtputf8 {
            return Err(canned::NEED_SMTPUTF8);
        }
        if tx.recipients.len() >= self.config.max_recipients {
            return Err(canned::TOO_MANY_RCPTS);
        }
        let relay_ok = self.conn.trusted || self.auth_user.is_some();
        // `<postmaster>` (no domain) is always accepted, RFC 5321 §4.5.1.
        let ours = address.is_postmaster() && *address.domain() == self.config.hostname;
        let verdict =
            if ours { RcptVerdict::Accept } else { self.config.policy.check_recipient(&address, relay_ok) };
        match verdict {
            RcptVerdict::Accept => Ok(Recipient { address, notify: params.notify, orcpt: params.orcpt }),
            RcptVerdict::UnknownUser => Err(canned::UNKNOWN_USER),
            RcptVerdict::RelayDenied => Err(canned::RELAY_DENIED),
        }
    }

    /// The reverse path of the open transaction (for tests and logs).
    pub fn reverse_path(&self) -> Option<&ReversePath> {
        self.tx.as_ref().map(|t| &t.reverse_path)
    }
}
