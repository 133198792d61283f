//! SMTP replies: a basic code (RFC 5321 §4.2) plus an enhanced status code (RFC 3463).

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus(pub u8, pub u16, pub u16);

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply. The text must not contain CR or LF; multi-line replies are
/// built by [`write_multiline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: EnhancedStatus,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: EnhancedStatus, text: &'static str) -> Self {
        Reply { code, status, text: Cow::Borrowed(text) }
    }

    pub fn owned(code: u16, status: EnhancedStatus, text: String) -> Self {
        Reply { code, status, text: Cow::Owned(text) }
    }

    /// True for 4xx and 5xx.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form (`CODE X.Y.Z text\r\n`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{} {} {}\r\n", self.code, self.status, self.text);
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// Appends a multi-line reply (`250-a`, `250-b`, `250 c`) to `out`. Lines carry no
/// enhanced status code, as for EHLO (RFC 2034 §3 exempts it).
pub fn write_multiline<'a>(out: &mut Vec<u8>, code: u16, lines: impl IntoIterator<Item = &'a str>) {
    let mut lines = lines.into_iter().peekable();
    while let Some(line) = lines.next() {
        let sep = if lines.peek().is_some() { b'-' } else { b' ' };
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(sep);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `354`: 3xx replies carry no enhanced status code (RFC 2034 §4).
pub const DATA_GO: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";

/// The replies the server sends, named by meaning. Text follows Postfix where an
/// operator would recognise it.
pub mod canned {
    use super::{EnhancedStatus as S, Reply};

    pub const OK: Reply = Reply::new(250, S(2, 0, 0), "Ok");
    pub const SENDER_OK: Reply = Reply::new(250, S(2, 1, 0), "Sender ok");
    pub const RCPT_OK: Reply = Reply::new(250, S(2, 1, 5), "Recipient ok");
    pub const BYE: Reply = Reply::new(221, S(2, 0, 0), "Bye");
    pub const VRFY: Reply = Reply::new(252, S(2, 5, 2), "Cannot VRFY user, but will accept message");
    pub const HELP: Reply = Reply::new(
        214,
        S(2, 0, 0),
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
    );
    pub const TLS_GO: Reply = Reply::new(220, S(2, 0, 0), "Ready to start TLS");
    pub const AUTH_OK: Reply = Reply::new(235, S(2, 7, 0), "Authentication successful");

    pub const SHUTDOWN: Reply = Reply::new(421, S(4, 3, 2), "Service shutting down, closing connection");
    pub const TIMEOUT: Reply = Reply::new(421, S(4, 4, 2), "Timeout exceeded, closing connection");
    pub const TOO_MANY_CONNECTIONS: Reply =
        Reply::new(421, S(4, 7, 0), "Too many connections, try again later");
    pub const TOO_MANY_ERRORS: Reply = Reply::new(421, S(4, 7, 0), "Too many errors, closing connection");
    pub const TOO_MANY_RCPTS: Reply = Reply::new(452, S(4, 5, 3), "Too many recipients");
    pub const SPOOL_FAILED: Reply =
        Reply::new(452, S(4, 3, 1), "Insufficient system storage, try again later");
    pub const LOCAL_ERROR: Reply = Reply::new(451, S(4, 3, 0), "Local error: this message cannot be stored");
    pub const TLS_UNAVAILABLE: Reply = Reply::new(454, S(4, 7, 0), "TLS not available");

    pub const UNRECOGNIZED: Reply = Reply::new(500, S(5, 5, 2), "Command not recognized");
    pub const LINE_TOO_LONG: Reply = Reply::new(500, S(5, 5, 2), "Line too long");
    pub const BAD_LINE_ENDING: Reply =
        Reply::new(500, S(5, 5, 2), "Command line must end with <CR><LF> only");
    pub const NOT_UTF8: Reply = Reply::new(500, S(5, 5, 2), "Command is not valid UTF-8");
    pub const HTTP_REFUSED: Reply = Reply::new(554, S(5, 7, 0), "This is an SMTP server, not an HTTP server");
    pub const NO_BINARYMIME: Reply = Reply::new(555, S(5, 5, 4), "BODY=BINARYMIME is not supported");
    pub const SYNTAX_PARAMS: Reply = Reply::new(501, S(5, 5, 4), "Syntax error in parameters");
    pub const NO_PARAMS_ALLOWED: Reply = Reply::new(501, S(5, 5, 4), "Command takes no parameters");
    pub const BAD_SENDER: Reply = Reply::new(501, S(5, 1, 7), "Bad sender address syntax");
    pub const BAD_RCPT: Reply = Reply::new(501, S(5, 1, 3), "Bad recipient address syntax");
    pub const BAD_HELO: Reply = Reply::new(501, S(5, 5, 4), "Syntax: EHLO hostname");
    pub const NEED_HELO: Reply = Reply::new(503, S(5, 5, 1), "Send EHLO or HELO first");
    pub const NESTED_MAIL: Reply = Reply::new(503, S(5, 5, 1), "Nested MAIL command");
    pub const NEED_MAIL: Reply = Reply::new(503, S(5, 5, 1), "Need MAIL command");
    pub const NEED_RCPT: Reply = Reply::new(503, S(5, 5, 1), "Need RCPT command");
    pub const NO_VALID_RCPTS: Reply = Reply::new(554, S(5, 5, 1), "No valid recipients");
    pub const DATA_AFTER_BDAT: Reply =
        Reply::new(503, S(5, 5, 1), "DATA is not allowed after BDAT in one transaction");
    pub const TLS_ACTIVE: Reply = Reply::new(503, S(5, 5, 1), "TLS already active");
    pub const AUTH_DONE: Reply = Reply::new(503, S(5, 5, 1), "Already authenticated");
    pub const AUTH_IN_TRANSACTION: Reply =
        Reply::new(503, S(5, 5, 1), "AUTH is not allowed during a mail transaction");
    pub const AUTH_NOT_OFFERED: Reply = Reply::new(503, S(5, 5, 1), "AUTH not available");
    pub const AUTH_MECH: Reply = Reply::new(504, S(5, 5, 4), "Unrecognized authentication type");
    pub const AUTH_CANCELLED: Reply = Reply::new(501, S(5, 0, 0), "Authentication cancelled");
    pub const AUTH_BAD_B64: Reply = Reply::new(501, S(5, 5, 2), "Cannot decode response");
    pub const AUTH_REQUIRED: Reply = Reply::new(530, S(5, 7, 0), "Authentication required");
    pub const AUTH_FAILED: Reply = Reply::new(535, S(5, 7, 8), "Authentication credentials invalid");
    pub const ENCRYPTION_REQUIRED: Reply =
        Reply::new(538, S(5, 7, 11), "Encryption required for requested authentication mechanism");
    pub const BARE_NEWLINE: Reply =
        Reply::new(550, S(5, 5, 2), "Message contains bare CR or LF; lines must end with <CR><LF>");
    pub const TOO_MANY_HOPS: Reply = Reply::new(554, S(5, 4, 6), "Too many hops (mail loop?)");
    pub const RELAY_DENIED: Reply = Reply::new(554, S(5, 7, 1), "Relay access denied");
    pub const AUTH_THROTTLED: Reply =
        Reply::new(454, S(4, 7, 0), "Too many failed logins from your address; try again later");
    pub const SUPPRESSED: Reply =
        Reply::new(550, S(5, 7, 1), "Recipient address rejected: on the suppression list");
    pub const UNKNOWN_USER: Reply = Reply::new(550, S(5, 1, 1), "Recipient address rejected: user unknown");
    pub const TOO_BIG: Reply = Reply::new(552, S(5, 3, 4), "Message size exceeds fixed limit");
    pub const NEED_SMTPUTF8: Reply =
        Reply::new(553, S(5, 6, 7), "Non-ASCII address requires the SMTPUTF8 parameter");
    pub const REQUIRETLS_NEEDS_TLS: Reply =
        Reply::new(530, S(5, 7, 10), "REQUIRETLS needs a TLS session (RFC 8689)");
    pub const NOT_IMPLEMENTED: Reply = Reply::new(502, S(5, 5, 1), "Command not implemented");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_wire_form() {
        let mut out = Vec::new();
        canned::TOO_BIG.write_to(&mut out);
        assert_eq!(out, b"552 5.3.4 Message size exceeds fixed limit\r\n");
    }

    #[test]
    fn multiline_marks_all_but_last() {
        let mut out = Vec::new();
        write_multiline(&mut out, 250, ["a", "b", "c"]);
        assert_eq!(out, b"250-a\r\n250-b\r\n250 c\r\n");
    }
}
