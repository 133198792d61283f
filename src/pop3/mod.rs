//! POP3 (RFC 1939) for local mailboxes: users read the Maildirs that local
//! delivery writes. [`session`] is the sans-IO protocol core; [`maildrop`]
//! is the Maildir side; `rt::pop3` drives them on a worker.

pub mod maildrop;
pub mod session;
