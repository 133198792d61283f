//! Parses one SMTP command line in place. The line is borrowed from the read
//! buffer (CRLF already removed); nothing is allocated.

/// A parsed command. Arguments borrow from the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    /// Text after `MAIL FROM:` (path and parameters).
    Mail(&'a str),
    /// Text after `RCPT TO:` (path and parameters).
    Rcpt(&'a str),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
    /// An HTTP request line (`GET / HTTP/1.1`): someone pointed a browser or proxy here.
    Http,
}

/// Why a line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb.
    Unrecognized,
    /// Known verb, malformed arguments; the payload names the verb's syntax.
    Syntax(&'static str),
    /// A verb that takes no arguments got some.
    NoParamsAllowed,
    /// Not UTF-8.
    NotUtf8,
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    if verb.len() > 8 {
        return Err(CommandError::Unrecognized);
    }
    let mut upper = [0u8; 8];
    for (dst, src) in upper.iter_mut().zip(verb.bytes()) {
        *dst = src.to_ascii_uppercase();
    }
    let no_args = |cmd: Command<'static>| {
        if rest.trim_matches(' ').is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::NoParamsAllowed)
        }
    };
    match &upper[..verb.len()] {
        b"EHLO" => domain_arg(rest, "EHLO hostname").map(Command::Ehlo),
        b"HELO" => domain_arg(rest, "HELO hostname").map(Command::Helo),
        b"MAIL" => prefixed(rest, "FROM:", "MAIL FROM:<address>").map(Command::Mail),
        b"RCPT" => prefixed(rest, "TO:", "RCPT TO:<address>").map(Command::Rcpt),
        b"DATA" => no_args(Command::Data),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(Command::Rset),
        // NOOP may carry a string that is ignored (RFC 5321 §4.1.1.9).
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(Command::Quit),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_args(Command::StartTls),
        b"AUTH" => parse_auth(rest),
        b"GET" | b"POST" | b"HEAD" | b"PUT" | b"CONNECT" | b"OPTIONS" | b"DELETE" => {
            if rest.contains(" HTTP/") {
                Ok(Command::Http)
            } else {
                Err(CommandError::Unrecognized)
            }
        }
        _ => Err(CommandError::Unrecognized),
    }
}

fn domain_arg<'a>(rest: &'a str, syntax: &'static str) -> Result<&'a str, CommandError> {
    let arg = rest.trim_matches(' ');
    if arg.is_empty() || arg.contains(' ') {
        return Err(CommandError::Syntax(syntax));
    }
    Ok(arg)
}

fn prefixed<'a>(rest: &'a str, prefix: &str, syntax: &'static str) -> Result<&'a str, CommandError> {
    let head = rest.get(..prefix.len()).ok_or(CommandError::Syntax(syntax))?;
    if !head.eq_ignore_ascii_case(prefix) {
        return Err(CommandError::Syntax(syntax));
    }
    Ok(&rest[prefix.len()..])
}

fn parse_bdat(rest: &str) -> Result<Command<'_>, CommandError> {
    const SYNTAX: &str = "BDAT size [LAST]";
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size_text = words.next().ok_or(CommandError::Syntax(SYNTAX))?;
    if !size_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax(SYNTAX));
    }
    let size = size_text.parse().map_err(|_| CommandError::Syntax(SYNTAX))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax(SYNTAX)),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax(SYNTAX));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &str) -> Result<Command<'_>, CommandError> {
    const SYNTAX: &str = "AUTH mechanism [initial-response]";
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(CommandError::Syntax(SYNTAX))?;
    let initial = words.next();
    if words.next().is_some() {
        return Err(CommandError::Syntax(SYNTAX));
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Command as C;
        use CommandError as E;
        let cases: &[(&[u8], Result<Command<'_>, CommandError>)] = &[
            (b"EHLO client.test", Ok(C::Ehlo("client.test"))),
            (b"ehlo  client.test ", Ok(C::Ehlo("client.test"))),
            (b"HELO [127.0.0.1]", Ok(C::Helo("[127.0.0.1]"))),
            (b"EHLO", Err(E::Syntax("EHLO hostname"))),
            (b"EHLO a b", Err(E::Syntax("EHLO hostname"))),
            (b"MAIL FROM:<a@b.c>", Ok(C::Mail("<a@b.c>"))),
            (b"mail from:<a@b.c> SIZE=1", Ok(C::Mail("<a@b.c> SIZE=1"))),
            (b"MAIL FROM: <a@b.c>", Ok(C::Mail(" <a@b.c>"))),
            (b"MAIL TO:<a@b.c>", Err(E::Syntax("MAIL FROM:<address>"))),
            (b"MAIL", Err(E::Syntax("MAIL FROM:<address>"))),
            (b"RCPT TO:<a@b.c>", Ok(C::Rcpt("<a@b.c>"))),
            (b"RCPT FROM:<a@b.c>", Err(E::Syntax("RCPT TO:<address>"))),
            (b"DATA", Ok(C::Data)),
            (b"DATA x", Err(E::NoParamsAllowed)),
            (b"BDAT 100", Ok(C::Bdat { size: 100, last: false })),
            (b"BDAT 0 LAST", Ok(C::Bdat { size: 0, last: true })),
            (b"bdat 7 last", Ok(C::Bdat { size: 7, last: true })),
            (b"BDAT -1", Err(E::Syntax("BDAT size [LAST]"))),
            (b"BDAT +1", Err(E::Syntax("BDAT size [LAST]"))),
            (b"BDAT 99999999999999999999999", Err(E::Syntax("BDAT size [LAST]"))),
            (b"BDAT 1 FIRST", Err(E::Syntax("BDAT size [LAST]"))),
            (b"BDAT", Err(E::Syntax("BDAT size [LAST]"))),
            (b"RSET", Ok(C::Rset)),
            (b"NOOP anything", Ok(C::Noop)),
            (b"QUIT", Ok(C::Quit)),
            (b"VRFY postmaster", Ok(C::Vrfy)),
            (b"HELP", Ok(C::Help)),
            (b"STARTTLS", Ok(C::StartTls)),
            (b"STARTTLS now", Err(E::NoParamsAllowed)),
            (b"AUTH PLAIN", Ok(C::Auth { mechanism: "PLAIN", initial: None })),
            (b"AUTH PLAIN AGFsaWNlAHB3", Ok(C::Auth { mechanism: "PLAIN", initial: Some("AGFsaWNlAHB3") })),
            (b"AUTH", Err(E::Syntax("AUTH mechanism [initial-response]"))),
            (b"GET / HTTP/1.1", Ok(C::Http)),
            (b"POST /x HTTP/1.0", Ok(C::Http)),
            (b"GET", Err(E::Unrecognized)),
            (b"XYZZY", Err(E::Unrecognized)),
            (b"", Err(E::Unrecognized)),
            (b"VERYLONGVERB", Err(E::Unrecognized)),
            (b"\xff\xfe", Err(E::NotUtf8)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }
}
