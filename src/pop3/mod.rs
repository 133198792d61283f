//! POP3 (RFC 1939) for local mailboxes: users read the Maildirs that local
//! delivery writes. [`session`] is the sans-IO protocol core; [`maildrop`]
//! is the Maildir side; `rt::pop3` drives them on a worker.

pub mod maildrop;
pub mod session;

use std::path::PathBuf;

/// One message of a maildrop, as listed at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Unique id (UIDL): the Maildir base name, which never changes.
    pub uid: String,
    /// Size as sent (CRLF line ends).
    pub size: u64,
    pub path: PathBuf,
}

/// The size of a stored message as POP3 sends it (CRLF line ends, before
/// dot-stuffing; RFC 1939 §5 LIST).
pub fn wire_size(content: &[u8]) -> u64 {
    let mut size = 0u64;
    let mut rest = content;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        size += line.len() as u64 + 2;
        rest = next;
    }
    size
}
