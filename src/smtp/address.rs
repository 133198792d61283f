//! Envelope addresses (RFC 5321 §4.1.2, RFC 6531 for UTF-8). The types here can
//! only be built by the parsers, so holding one means it is well formed.

use std::fmt;
use std::net::IpAddr;

/// RFC 5321 §4.5.3.1 limits.
pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_DOMAIN: usize = 255;
pub const MAX_PATH: usize = 256;

/// Why an address did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("missing '@'")]
    NoAt,
    #[error("bad local part")]
    LocalPart,
    #[error("bad domain")]
    Domain,
    #[error("address too long")]
    TooLong,
    #[error("unbalanced angle brackets or quotes")]
    Brackets,
}

/// A domain: either a DNS name (stored as written; compare with
/// [`Domain::eq_ignore_case`]) or an address literal such as `[192.0.2.1]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain(String);

impl Domain {
    /// Parses a domain or address literal. UTF-8 labels (U-labels) are accepted;
    /// the session decides whether SMTPUTF8 was declared.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        if s.is_empty() || s.len() > MAX_DOMAIN {
            return Err(AddressError::Domain);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(AddressError::Domain)?;
            return parse_address_literal(inner).map(|_| Domain(s.to_owned()));
        }
        for label in s.split('.') {
            if !valid_label(label) {
                return Err(AddressError::Domain);
            }
        }
        Ok(Domain(s.to_owned()))
    }

    /// Parses a host name for our own use (greeting, EHLO, Received,
    /// `<postmaster>`): an ASCII DNS name of letter, digit and hyphen labels,
    /// no address literal, no trailing dot.
    pub fn parse_host_name(s: &str) -> Result<Domain, AddressError> {
        if !s.is_ascii() || s.starts_with('[') || s.len() > 253 {
            return Err(AddressError::Domain);
        }
        Domain::parse(s)
    }

    /// `localhost`, a valid host name.
    pub fn localhost() -> Domain {
        Domain("localhost".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain in lower case, the form used for policy lookups.
    pub fn to_lowercase(&self) -> String {
        self.0.to_lowercase()
    }

    /// The IP address of an address literal, if this is one.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        let inner = self.0.strip_prefix('[')?.strip_suffix(']')?;
        parse_address_literal(inner).ok()
    }

    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return false;
    }
    let edge_ok = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80;
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return false;
    }
    label.chars().all(|c| c.is_alphanumeric() || c == '-')
}

fn parse_address_literal(inner: &str) -> Result<IpAddr, AddressError> {
    if let Some(v6) = inner.strip_prefix("IPv6:").or_else(|| inner.strip_prefix("ipv6:")) {
        return v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).map_err(|_| AddressError::Domain);
    }
    inner.parse::<std::net::Ipv4Addr>().map(IpAddr::V4).map_err(|_| AddressError::Domain)
}

/// `local-part@domain`. The local part is kept exactly as sent (it is case
/// sensitive and may be a quoted string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        if s.len() > MAX_PATH {
            return Err(AddressError::TooLong);
        }
        let at = local_part_end(s)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
        Ok(Mailbox { local: local.to_owned(), domain: Domain::parse(domain)? })
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// `postmaster` in any case, as RFC 5321 §4.5.1 requires us to accept.
    pub fn is_postmaster(&self) -> bool {
        self.local.eq_ignore_ascii_case("postmaster")
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Finds the `@` that ends the local part, checking the local part's syntax:
/// a dot-string of atext, or a quoted string.
fn local_part_end(s: &str) -> Result<usize, AddressError> {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'"') {
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if i + 1 < bytes.len() && is_quoted_pair_char(bytes[i + 1]) => i += 2,
                b'"' => {
                    return match bytes.get(i + 1) {
                        Some(b'@') => Ok(i + 1),
                        _ => Err(AddressError::LocalPart),
                    };
                }
                b if is_qtext(b) => i += 1,
                _ => return Err(AddressError::LocalPart),
            }
        }
        return Err(AddressError::Brackets);
    }
    let at = s.rfind('@').ok_or(AddressError::NoAt)?;
    let local = &s[..at];
    if local.is_empty() || local.split('.').any(|atom| atom.is_empty() || !atom.bytes().all(is_atext)) {
        return Err(AddressError::LocalPart);
    }
    Ok(at)
}

/// RFC 5322 atext, plus any UTF-8 byte (RFC 6531 `UTF8-non-ascii`).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

fn is_qtext(b: u8) -> bool {
    matches!(b, 32..=33 | 35..=91 | 93..=126) || b >= 0x80
}

fn is_quoted_pair_char(b: u8) -> bool {
    (32..=126).contains(&b)
}

/// The MAIL FROM path: `<>` (null, for bounces) or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Splits `<path> params` (the text after `FROM:` or `TO:`) into the path's inner
/// text and the parameter text. Accepts a missing bracket pair (as Postfix does)
/// and strips an RFC 5321 §4.1.2 source route (`<@a,@b:user@c>`).
pub fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start_matches(' ');
    let (inner, rest) = if let Some(after) = arg.strip_prefix('<') {
        let close = closing_bracket(after).ok_or(AddressError::Brackets)?;
        (&after[..close], &after[close + 1..])
    } else {
        let end = arg.find(' ').unwrap_or(arg.len());
        (&arg[..end], &arg[end..])
    };
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(AddressError::Brackets);
    }
    if inner.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    Ok((strip_source_route(inner)?, rest.trim_start_matches(' ')))
}

/// Index of the `>` closing a path, skipping quoted strings.
fn closing_bracket(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn strip_source_route(inner: &str) -> Result<&str, AddressError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let colon = inner.find(':').ok_or(AddressError::Brackets)?;
    for hop in inner[..colon].split(',') {
        let hop = hop.strip_prefix('@').ok_or(AddressError::Domain)?;
        Domain::parse(hop)?;
    }
    Ok(&inner[colon + 1..])
}

/// Parses the text after `MAIL FROM:` into the reverse path and its parameters.
pub fn parse_reverse_path(arg: &str) -> Result<(ReversePath, &str), AddressError> {
    let (inner, params) = split_path(arg)?;
    if inner.is_empty() {
        return Ok((ReversePath::Null, params));
    }
    Ok((ReversePath::Mailbox(Mailbox::parse(inner)?), params))
}

/// Parses the text after `RCPT TO:` into the forward path and its parameters.
/// A bare `<postmaster>` is returned with `domain` as its domain (RFC 5321 §4.1.1.3).
pub fn parse_forward_path<'a>(arg: &'a str, domain: &Domain) -> Result<(Mailbox, &'a str), AddressError> {
    let (inner, params) = split_path(arg)?;
    if inner.eq_ignore_ascii_case("postmaster") {
        let mailbox = Mailbox { local: inner.to_owned(), domain: domain.clone() };
        return Ok((mailbox, params));
    }
    Ok((Mailbox::parse(inner)?, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        let ok = [
            "a@b.c",
            "first.last@example.test",
            "x+tag@sub.example.test",
            "\"quoted local\"@example.test",
            "\"a\\\"b\"@example.test",
            "user@[192.0.2.1]",
            "user@[IPv6:2001:db8::1]",
            "пользователь@пример.испытание",
            "o'brien@example.test",
        ];
        for s in ok {
            assert!(Mailbox::parse(s).is_ok(), "{s} should parse");
        }
        let bad = [
            "",
            "noat",
            "@example.test",
            "a@",
            "a..b@example.test",
            ".a@example.test",
            "a.@example.test",
            "a b@example.test",
            "a@-bad.test",
            "a@bad-.test",
            "a@exa mple.test",
            "a@[300.1.1.1]",
            "a@[IPv6:zz]",
            "a@b..c",
            "\"unterminated@example.test",
            "\"q\"x@example.test",
        ];
        for s in bad {
            assert!(Mailbox::parse(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn length_limits() {
        let long_local = format!("{}@example.test", "a".repeat(65));
        assert_eq!(Mailbox::parse(&long_local), Err(AddressError::TooLong));
        let long_label = format!("a@{}.test", "b".repeat(64));
        assert_eq!(Mailbox::parse(&long_label), Err(AddressError::Domain));
    }

    #[test]
    fn paths() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("<a@b.c>", Some(("a@b.c", ""))),
            ("<a@b.c> SIZE=10", Some(("a@b.c", "SIZE=10"))),
            (" <a@b.c>", Some(("a@b.c", ""))),
            ("a@b.c SIZE=10", Some(("a@b.c", "SIZE=10"))),
            ("<>", Some(("", ""))),
            ("<@r1.test,@r2.test:a@b.c>", Some(("a@b.c", ""))),
            ("<\"a>b\"@c.d>", Some(("\"a>b\"@c.d", ""))),
            ("<a@b.c", None),
            ("<a@b.c>x", None),
        ];
        for (input, want) in cases {
            assert_eq!(split_path(input).ok(), *want, "{input}");
        }
    }

    #[test]
    fn reverse_and_forward() {
        assert_eq!(parse_reverse_path("<>").unwrap().0, ReversePath::Null);
        let host = Domain::parse_host_name("mx.test").unwrap();
        let (m, p) = parse_forward_path("<Postmaster> NOTIFY=NEVER", &host).unwrap();
        assert!(m.is_postmaster());
        assert_eq!(m.domain().as_str(), "mx.test");
        assert_eq!(p, "NOTIFY=NEVER");
        // What goes to the spool as text comes back as the same mailbox.
        assert_eq!(Mailbox::parse(&m.to_string()), Ok(m));
        assert!(parse_forward_path("<>", &host).is_err());
    }

    #[test]
    fn host_names() {
        for ok in ["mx.test", "localhost", "mx-1.example.com", "a.b.c.d.e"] {
            assert!(Domain::parse_host_name(ok).is_ok(), "{ok}");
        }
        let long = format!("{}.test", "a.".repeat(130));
        for bad in [
            "",
            "mx.test.",
            "mx_test",
            ".mx",
            "mx..test",
            "mx.test\r\n250 x",
            "a b",
            "[127.0.0.1]",
            "mx.тест",
            &long,
        ] {
            assert!(Domain::parse_host_name(bad).is_err(), "{bad:?}");
        }
    }
}
