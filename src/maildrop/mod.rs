//! `ringpost sendmail` and the maildrop it writes into: the command line
//! (Postfix's sendmail flags), the message read from stdin, the file a
//! submission becomes, and what the server makes of that file when it picks
//! it up. Pure: bytes and arguments in, bytes and decisions out; the CLI
//! (`sendmail` in main) writes the file, `rt::pickup` reads it.
//!
//! A drop file is one JSON line (the envelope) and then the message, line
//! ends already CRLF.

use serde::{Deserialize, Serialize};

use crate::smtp::address::{Mailbox, ReversePath};

/// sysexits.h codes `sendmail` exits with.
pub mod exit {
    /// Bad command line (an unknown flag, no recipients, a bad address).
    pub const USAGE: u8 = 64;
    /// Bad input (an address in a header `-t` cannot read, too big).
    pub const DATAERR: u8 = 65;
    /// The maildrop could not be written: try later.
    pub const TEMPFAIL: u8 = 75;
    /// The configuration could not be read.
    pub const CONFIG: u8 = 78;
}

/// Longest envelope line of a drop file.
pub const MAX_META: usize = 1 << 20;

/// What the command line asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `-C`: the config file.
    pub config: Option<String>,
    /// `-t`: recipients also from To, Cc and Bcc (Bcc is then removed).
    pub extract: bool,
    /// Without `-i`/`-oi`, a line of a single dot ends the message.
    pub dot_ends: bool,
    /// `-f` / `-r`: the envelope sender (`<>` for none).
    pub sender: Option<String>,
    /// `-F`: the full name for a `From:` we add.
    pub full_name: Option<String>,
    /// `-N`: DSN NOTIFY for every recipient.
    pub notify: Option<String>,
    /// `-R`: DSN RET (`full` or `hdrs`).
    pub ret: Option<String>,
    /// `-V`: DSN ENVID.
    pub envid: Option<String>,
    /// Recipients named on the command line (comma lists split).
    pub recipients: Vec<String>,
}

/// Parses sendmail's arguments (without the program name). Err is the
/// message for exit 64.
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    let mut inv = Invocation { dot_ends: true, ..Invocation::default() };
    let mut it = args.iter();
    let mut options = true;
    while let Some(arg) = it.next() {
        if !options || !arg.starts_with('-') || arg == "-" {
            inv.recipients.extend(arg.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned));
            continue;
        }
        if arg == "--" {
            options = false;
            continue;
        }
        // A flag with a value takes it attached (`-fme@x`) or as the next argument.
        let mut value = |flag: &str| -> Result<String, String> {
            match arg.strip_prefix(flag).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v.to_owned()),
                None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match arg.as_str() {
            "-t" => inv.extract = true,
            "-i" | "-oi" => inv.dot_ends = false,
            // Accepted and without effect here: delivery mode, error mode,
            // verbose, "me too", the default mode.
            "-bm" | "-odi" | "-odb" | "-odq" | "-oem" | "-oee" | "-oep" | "-oeq" | "-oew" | "-om" | "-v"
            | "-m" | "-U" | "-G" => {}
            a if a.starts_with("-f") => inv.sender = Some(value("-f")?),
            a if a.starts_with("-r") => inv.sender = Some(value("-r")?),
            a if a.starts_with("-F") => inv.full_name = Some(value("-F")?),
            a if a.starts_with("-C") => inv.config = Some(value("-C")?),
            a if a.starts_with("-N") => inv.notify = Some(value("-N")?),
            a if a.starts_with("-R") => inv.ret = Some(value("-R")?),
            a if a.starts_with("-V") => inv.envid = Some(value("-V")?),
            a if a.starts_with("-B") => {
                value("-B")?;
            }
            a if a.starts_with("-L") || a.starts_with("-X") || a.starts_with("-O") => {
                let flag = &a[..2];
                value(flag)?;
            }
            "-bs" => return Err("-bs is not supported: speak SMTP to a listener instead".into()),
            a if a.starts_with("-b") => return Err(format!("{a}: only -bm (send a message) is supported")),
            a => return Err(format!("unknown option {a}")),
        }
    }
    Ok(inv)
}

/// The message from stdin: line ends made CRLF; without `-i`, a line of a
/// single dot ends it (and is not part of it).
pub fn read_message(input: &[u8], dot_ends: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32 + 2);
    for line in input.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if dot_ends && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The envelope of a drop file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Format version.
    pub v: u32,
    /// The envelope sender; empty for `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub notify: Option<String>,
    #[serde(default)]
    pub ret: Option<String>,
    #[serde(default)]
    pub envid: Option<String>,
}

/// An address from the command line or a header: `<...>` stripped, and an
/// unqualified one (`root`) made `root@hostname`, as Postfix's
/// `myorigin` does.
pub fn qualify(address: &str, hostname: &str) -> Result<Mailbox, String> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    let full = if a.contains('@') { a.to_owned() } else { format!("{a}@{hostname}") };
    Mailbox::parse(&full).map_err(|e| format!("{address:?} is not an address: {e}"))
}

/// Builds the drop file of a submission: checks the addresses, takes the
/// recipients from the headers with `-t` (and removes Bcc). `login` is the
/// sender when `-f` is not given (`login@hostname`). Err: (exit code,
/// message).
pub fn submission(
    inv: &Invocation,
    message: Vec<u8>,
    login: &str,
    hostname: &str,
) -> Result<Vec<u8>, (u8, String)> {
    let usage = |e: String| (exit::USAGE, e);
    let sender = match inv.sender.as_deref().map(str::trim) {
        Some("" | "<>") => String::new(),
        Some(s) => qualify(s, hostname).map_err(usage)?.to_string(),
        None => qualify(login, hostname).map_err(usage)?.to_string(),
    };
    let mut recipients = Vec::new();
    for r in &inv.recipients {
        recipients.push(qualify(r, hostname).map_err(usage)?.to_string());
    }
    let mut message = message;
    if inv.extract {
        let (found, without_bcc) = header_recipients(&message, hostname).map_err(|e| (exit::DATAERR, e))?;
        recipients.extend(found);
        message = without_bcc;
    }
    if recipients.is_empty() {
        return Err((exit::USAGE, "no recipients (name them, or use -t with To/Cc/Bcc fields)".into()));
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_lowercase()));
    if let Some(n) = &inv.notify {
        if crate::envelope::Notify::parse(n).is_none() {
            return Err(usage(format!("-N {n}: must be never, or a list of success, failure, delay")));
        }
    }
    if let Some(r) = &inv.ret {
        if !matches!(r.to_ascii_lowercase().as_str(), "full" | "hdrs") {
            return Err(usage(format!("-R {r}: must be full or hdrs")));
        }
    }
    if let Some(name) = &inv.full_name {
        if name.chars().any(char::is_control) {
            return Err(usage("-F: the name has a control character".into()));
        }
    }
    let meta = Meta {
        v: 1,
        sender,
        recipients,
        full_name: inv.full_name.clone(),
        notify: inv.notify.clone(),
        ret: inv.ret.clone(),
        envid: inv.envid.clone(),
    };
    let mut out = serde_json::to_vec(&meta).map_err(|e| (exit::USAGE, e.to_string()))?;
    out.push(b'\n');
    out.extend_from_slice(&message);
    Ok(out)
}

/// The To, Cc and Bcc addresses of `message`'s header section, and the
/// message without its Bcc fields.
fn header_recipients(message: &[u8], hostname: &str) -> Result<(Vec<String>, Vec<u8>), String> {
    let (fields, _) = crate::mail::fields(message);
    let mut out = Vec::new();
    for f in &fields {
        if !(f.is(message, "to") || f.is(message, "cc") || f.is(message, "bcc")) {
            continue;
        }
        let raw = &message[f.raw.clone()];
        let parsed = mail_parser::MessageParser::default().parse_headers(raw);
        let addresses = parsed.as_ref().and_then(|m| m.to().or_else(|| m.cc()).or_else(|| m.bcc()));
        let Some(addresses) = addresses else {
            let name = String::from_utf8_lossy(f.name(message)).into_owned();
            return Err(format!("-t: the {name} field has no address that can be read"));
        };
        for a in addresses.iter() {
            let Some(addr) = a.address() else { continue };
            out.push(qualify(addr, hostname).map_err(|e| format!("-t: {e}"))?.to_string());
        }
    }
    let without = crate::mail::without(message, &fields, |f| f.is(message, "bcc"));
    Ok((out, without))
}

/// A drop file read back: its envelope and message. Err says why the file
/// cannot be used (it is set aside).
pub fn decode(file: &[u8]) -> Result<(Meta, &[u8]), String> {
    let nl = memchr::memchr(b'\n', &file[..file.len().min(MAX_META)]).ok_or("no envelope line")?;
    let meta: Meta = serde_json::from_slice(&file[..nl]).map_err(|e| format!("bad envelope line: {e}"))?;
    if meta.v != 1 {
        return Err(format!("unknown drop file version {}", meta.v));
    }
    if meta.recipients.is_empty() {
        return Err("no recipients".into());
    }
    Ok((meta, &file[nl + 1..]))
}

/// What the server stores for a drop file: the envelope parts and the
/// message as delivered.
#[derive(Debug)]
pub struct Pickup {
    pub sender: ReversePath,
    pub recipients: Vec<crate::envelope::Recipient>,
    pub ret: Option<crate::envelope::Ret>,
    pub envid: Option<String>,
    pub message: Vec<u8>,
}

/// The message a drop file becomes: our Received field (naming the user
/// id that wrote the file, as Postfix's pickup does), then `From:`,
/// `Date:` and `Message-ID:` added when missing.
pub fn pickup(
    meta: &Meta,
    message: &[u8],
    uid: u32,
    id: crate::envelope::QueueId,
    unix: u64,
    hostname: &str,
) -> Result<Pickup, String> {
    let sender = if meta.sender.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(Mailbox::parse(&meta.sender).map_err(|e| format!("sender: {e}"))?)
    };
    let notify = match &meta.notify {
        Some(n) => crate::envelope::Notify::parse(n).ok_or("bad notify")?,
        None => crate::envelope::Notify::default(),
    };
    let mut recipients = Vec::with_capacity(meta.recipients.len());
    for r in &meta.recipients {
        let address = Mailbox::parse(r).map_err(|e| format!("recipient {r:?}: {e}"))?;
        recipients.push(crate::envelope::Recipient { address, notify, orcpt: None });
    }
    let ret = match meta.ret.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("full") => Some(crate::envelope::Ret::Full),
        Some("hdrs") => Some(crate::envelope::Ret::Headers),
        _ => None,
    };
    let date = crate::smtp::session::format_rfc5322_date(unix);
    let mut out = Vec::with_capacity(message.len() + 512);
    out.extend_from_slice(
        format!("Received: by {hostname} (ringpost, from userid {uid})\r\n\tid {id}").as_bytes(),
    );
    if let [only] = recipients.as_slice() {
        out.extend_from_slice(format!("\r\n\tfor <{}>", only.address).as_bytes());
    }
    out.extend_from_slice(format!(";\r\n\t{date}\r\n").as_bytes());
    let (fields, _) = crate::mail::fields(message);
    let has = |name: &str| fields.iter().any(|f| f.is(message, name));
    if !has("from") {
        let who = match &sender {
            ReversePath::Mailbox(m) => m.to_string(),
            ReversePath::Null => format!("MAILER-DAEMON@{hostname}"),
        };
        match meta.full_name.as_deref().filter(|n| !n.trim().is_empty()) {
            Some(name) => {
                let mut b = Vec::new();
                let address = mail_builder::headers::address::Address::new_address(Some(name), who.as_str());
                mail_builder::headers::Header::write_header(&address, &mut b, 6);
                out.extend_from_slice(b"From: ");
                out.extend_from_slice(&b);
            }
            None => out.extend_from_slice(format!("From: {who}\r\n").as_bytes()),
        }
    }
    if !has("date") {
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if !has("message-id") {
        out.extend_from_slice(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes());
    }
    out.extend_from_slice(message);
    Ok(Pickup { sender, recipients, ret, envid: meta.envid.clone(), message: out })
}

#[cfg(test)]
mod tests;
