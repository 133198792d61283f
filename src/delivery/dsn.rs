//! Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report),
//! built from the original envelope, the per-recipient outcomes and the
//! original message. Pure.
//!
//! Rules: never a DSN for a message whose sender was null (`<>`); a recipient
//! is reported only if its NOTIFY asks for that kind of report (failure
//! reports by default, success reports only on NOTIFY=SUCCESS); RET=HDRS
//! returns the headers, RET=FULL (or no RET, for messages up to
//! [`FULL_RETURN_LIMIT`]) the whole message. The DSN itself goes out with a
//! null reverse path, so it can never cause another DSN.

use std::fmt::Write;

use crate::envelope::{BodyType, Envelope, QueueId, Recipient, Ret};
use crate::smtp::address::ReversePath;
use crate::smtp::params::decode_xtext;
use crate::smtp::session::format_rfc5322_date;

/// Without RET, messages up to this size are returned whole, larger ones as headers.
pub const FULL_RETURN_LIMIT: usize = 1 << 20;

/// What happened to one recipient (RFC 3464 §2.3.3 actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delivered,
    /// Handed to a server that does not offer DSN.
    Relayed,
    /// Not delivered yet, still being retried (`[delivery] delay_warning`).
    Delayed {
        /// Unix seconds: when the message expires (`Will-Retry-Until`).
        until: u64,
    },
}

/// One recipient to report.
#[derive(Debug, Clone)]
pub struct Report {
    pub recipient: Recipient,
    pub action: Action,
    /// Enhanced status, e.g. `5.1.1`.
    pub status: String,
    /// The remote server's reply, or our own reason.
    pub diagnostic: String,
    /// The host we talked to, if any.
    pub remote_mta: Option<String>,
    /// The failure's bounce class (an extension field in the report).
    pub class: Option<crate::delivery::classify::Class>,
}

/// A DSN ready to be queued: its envelope sender is null.
#[derive(Debug, Clone)]
pub struct Dsn {
    /// The original sender.
    pub to: crate::smtp::address::Mailbox,
    pub body: Vec<u8>,
    pub eight_bit: bool,
}

/// Builds the DSN for `reports` on the message `original` (envelope and
/// content), or `None` when no DSN is due.
pub fn build(
    hostname: &str,
    env: &Envelope,
    original: &[u8],
    reports: &[Report],
    dsn_id: QueueId,
    now: u64,
) -> Option<Dsn> {
    let ReversePath::Mailbox(sender) = &env.reverse_path else { return None };
    let wanted: Vec<&Report> = reports
        .iter()
        .filter(|r| match r.action {
            Action::Failed => r.recipient.notify.failure() && !r.recipient.notify.never(),
            Action::Delivered | Action::Relayed => r.recipient.notify.success(),
            Action::Delayed { .. } => r.recipient.notify.delay() && !r.recipient.notify.never(),
        })
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let failed = wanted.iter().any(|r| r.action == Action::Failed);
    let delayed = !failed && wanted.iter().any(|r| matches!(r.action, Action::Delayed { .. }));
    let boundary = format!("{dsn_id}/{hostname}");
    let mut b = String::new();
    let _ = write!(
        b,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\nTo: <{sender}>\r\nSubject: {}\r\n\
Date: {}\r\nMessage-ID: <{dsn_id}@{hostname}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n\
This is a MIME-encapsulated message.\r\n\r\n",
        if failed {
            "Undelivered Mail Returned to Sender"
        } else if delayed {
            "Delayed Mail (still being retried)"
        } else {
            "Successful Mail Delivery Report"
        },
        format_rfc5322_date(now),
    );
    human_part(&mut b, hostname, &boundary, &wanted, failed, delayed, env.requiretls);
    status_part(&mut b, hostname, &boundary, env, &wanted, now);
    let mut body = b.into_bytes();
    let mut eight_bit = false;
    // REQUIRETLS mail (RFC 8689 §5): nothing of it is returned, so the
    // report can go back without the requirement (its third part is
    // optional, RFC 6522).
    if !env.requiretls {
        // A delay notice returns the headers only: the message is still on its way.
        let (returned, returned_8bit) = returned_part(env, original, delayed);
        eight_bit = returned_8bit;
        let kind = if returned.len() < original.len() { "text/rfc822-headers" } else { "message/rfc822" };
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {kind}\r\n\r\n").as_bytes());
        body.extend_from_slice(returned);
        if !returned.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Some(Dsn { to: sender.clone(), body, eight_bit: eight_bit || !body_is_ascii(&wanted) })
}

fn body_is_ascii(reports: &[&Report]) -> bool {
    reports.iter().all(|r| r.diagnostic.is_ascii() && r.recipient.address.is_ascii())
}

fn human_part(
    b: &mut String,
    hostname: &str,
    boundary: &str,
    reports: &[&Report],
    failed: bool,
    delayed: bool,
    requiretls: bool,
) {
    let _ = write!(
        b,
        "--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
This is the mail system at host {hostname}.\r\n\r\n"
    );
    if failed && requiretls {
        b.push_str(
            "Your message could not be delivered to one or more recipients.\r\nIt was sent with \
             REQUIRETLS, so it is not attached.\r\n\r\n",
        );
    } else if failed {
        b.push_str(
            "Your message could not be delivered to one or more recipients.\r\nIt is attached below.\r\n\r\n",
        );
    } else if delayed {
        b.push_str(
            "Your message could not be delivered yet to the following recipients.\r\nThe mail system \
             keeps trying; you do not need to send it again.\r\n\r\n",
        );
    } else {
        b.push_str("Your message was delivered to the following recipients.\r\n\r\n");
    }
    for r in reports {
        let _ = write!(b, "<{}>: {}\r\n", r.recipient.address, one_line(&r.diagnostic));
    }
    b.push_str("\r\n");
}

fn status_part(
    b: &mut String,
    hostname: &str,
    boundary: &str,
    env: &Envelope,
    reports: &[&Report],
    now: u64,
) {
    let _ = write!(
        b,
        "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; {hostname}\r\n"
    );
    if let Some(envid) = &env.envid {
        let _ = write!(b, "Original-Envelope-Id: {}\r\n", one_line(&decode_xtext(envid)));
    }
    let _ = write!(b, "Arrival-Date: {}\r\n\r\n", format_rfc5322_date(env.received_at));
    for r in reports {
        let _ = write!(b, "Final-Recipient: rfc822; {}\r\n", r.recipient.address);
        if let Some((kind, addr)) = r.recipient.orcpt.as_deref().and_then(|o| o.split_once(';')) {
            let _ = write!(b, "Original-Recipient: {kind}; {}\r\n", one_line(&decode_xtext(addr)));
        }
        let action = match r.action {
            Action::Failed => "failed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Delayed { .. } => "delayed",
        };
        let _ = write!(b, "Action: {action}\r\nStatus: {}\r\n", r.status);
        if let Action::Delayed { until } = r.action {
            let _ = write!(b, "Will-Retry-Until: {}\r\n", format_rfc5322_date(until));
        }
        if let Some(mta) = &r.remote_mta {
            let _ = write!(b, "Remote-MTA: dns; {mta}\r\n");
        }
        let kind = if r.remote_mta.is_some() { "smtp" } else { "X-ringpost" };
        let _ = write!(
            b,
            "Diagnostic-Code: {kind}; {}\r\nLast-Attempt-Date: {}\r\n",
            one_line(&r.diagnostic),
            format_rfc5322_date(now)
        );
        // RFC 3464 §3.3: extension fields start with X-.
        if let Some(class) = r.class.filter(|_| r.action == Action::Failed) {
            let _ = write!(b, "X-Ringpost-Bounce-Class: {class}\r\n");
        }
        b.push_str("\r\n");
    }
}

/// The part of the original to return, and whether it has 8-bit bytes.
fn returned_part<'a>(env: &Envelope, original: &'a [u8], delayed: bool) -> (&'a [u8], bool) {
    let headers_only = delayed
        || match env.ret {
            Some(Ret::Headers) => true,
            Some(Ret::Full) => false,
            None => original.len() > FULL_RETURN_LIMIT,
        };
    let part = if headers_only {
        let end = memchr::memmem::find(original, b"\r\n\r\n").map_or(original.len(), |i| i + 2);
        &original[..end]
    } else {
        original
    };
    (part, env.body_type != BodyType::SevenBit || !part.is_ascii())
}

/// Text safe for one header line: no CR or LF, bounded length.
fn one_line(s: &str) -> String {
    let flat: String = s.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
    flat.chars().take(900).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Notify;

    fn env(ret: Option<Ret>, notify: &str) -> Envelope {
        let mut e = crate::spool::record::tests::sample_envelope(1);
        e.ret = ret;
        e.recipients[0].notify = Notify::parse(notify).unwrap();
        e
    }

    fn report(e: &Envelope, action: Action) -> Report {
        Report {
            recipient: e.recipients[0].clone(),
            action,
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 <a@example.test>: user unknown".into(),
            remote_mta: Some("mx1.example.test".into()),
            class: Some(crate::delivery::classify::Class::InvalidRecipient),
        }
    }

    const ORIGINAL: &[u8] = b"Received: x\r\nSubject: hello\r\n\r\nthe body\r\n";

    /// REQUIRETLS mail: the report quotes nothing of it (RFC 8689 §5).
    #[test]
    fn requiretls_reports_return_no_content() {
        let mut e = env(Some(Ret::Full), "FAILURE");
        e.requiretls = true;
        let dsn =
            build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 1_800_000_000).unwrap();
        let text = String::from_utf8(dsn.body).unwrap();
        assert!(text.contains("Status: 5.1.1") && text.contains("Content-Type: message/delivery-status"));
        assert!(text.contains("not attached") && !text.contains("attached below"), "{text}");
        assert!(
            !text.contains("hello") && !text.contains("the body") && !text.contains("rfc822-headers"),
            "{text}"
        );
        assert!(!text.contains("message/rfc822"), "{text}");
        let parsed = mail_parser::MessageParser::default().parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.parts.len(), 3, "multipart/report with two parts");
        assert!(text.trim_end().ends_with("--"), "closed: {text}");
    }

    #[test]
    fn failure_report_has_the_rfc3464_parts() {
        let e = env(None, "FAILURE");
        let dsn =
            build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 1_800_000_000).unwrap();
        let text = String::from_utf8(dsn.body).unwrap();
        assert_eq!(dsn.to.to_string(), "s@sender.test");
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied",
            "Content-Type: message/delivery-status",
            "Reporting-MTA: dns; mx.test",
            "Original-Envelope-Id: E+1",
            "Final-Recipient: rfc822; a@example.test",
            "Original-Recipient: rfc822; a@example.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx1.example.test",
            "Diagnostic-Code: smtp; 550 5.1.1",
            "X-Ringpost-Bounce-Class: InvalidRecipient\r\n\r\n",
            "Content-Type: message/rfc822",
            "the body",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.ends_with(&format!("--{}/mx.test--\r\n", QueueId(5))));
        assert!(text.split("\r\n").all(|l| !l.contains('\n') && !l.contains('\r')), "CRLF only");
    }

    #[test]
    fn ret_hdrs_returns_headers_only() {
        let e = env(Some(Ret::Headers), "FAILURE");
        let dsn = build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 0).unwrap();
        let text = String::from_utf8(dsn.body).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nReceived: x\r\nSubject: hello\r\n"));
        assert!(!text.contains("the body"));
    }

    #[test]
    fn notify_and_null_sender_rules() {
        let e = env(None, "SUCCESS");
        assert!(
            build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 0).is_none(),
            "no FAILURE in NOTIFY"
        );
        let dsn = build("mx.test", &e, ORIGINAL, &[report(&e, Action::Delivered)], QueueId(5), 0).unwrap();
        assert!(String::from_utf8(dsn.body).unwrap().contains("Action: delivered"));
        let e = env(None, "NEVER");
        assert!(build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 0).is_none());
        let mut e = env(None, "FAILURE");
        e.reverse_path = ReversePath::Null;
        assert!(
            build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 0).is_none(),
            "never to <>"
        );
        let mut e = env(None, "FAILURE");
        e.recipients[0].notify = Notify::default();
        assert!(
            build("mx.test", &e, ORIGINAL, &[report(&e, Action::Failed)], QueueId(5), 0).is_some(),
            "failures by default"
        );
        assert!(
            build("mx.test", &e, ORIGINAL, &[report(&e, Action::Delivered)], QueueId(5), 0).is_none(),
            "no success by default"
        );
    }

    #[test]
    fn delayed_reports_tell_the_sender_it_is_late() {
        let e = env(Some(Ret::Full), "DELAY,FAILURE");
        let mut r = report(&e, Action::Delayed { until: 1_800_086_400 });
        r.status = "4.7.1".into();
        let dsn = build("mx.test", &e, ORIGINAL, &[r.clone()], QueueId(5), 1_800_000_000).unwrap();
        let text = String::from_utf8(dsn.body).unwrap();
        for want in [
            "Subject: Delayed Mail (still being retried)",
            "Action: delayed\r\nStatus: 4.7.1\r\nWill-Retry-Until: ",
            "keeps trying",
            "Content-Type: text/rfc822-headers",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        // Headers only, even with RET=FULL.
        let body_starts = ORIGINAL.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(!text.contains(std::str::from_utf8(&ORIGINAL[body_starts..]).unwrap().trim()));
        for notify in ["FAILURE", "NEVER", "SUCCESS"] {
            let e = env(None, notify);
            let r = report(&e, Action::Delayed { until: 0 });
            assert!(build("mx.test", &e, ORIGINAL, &[r], QueueId(5), 0).is_none(), "NOTIFY={notify}");
        }
        // No NOTIFY: the delay is reported (RFC 3461 leaves it to us; Postfix does too).
        let mut e = env(None, "DELAY");
        e.recipients[0].notify = Notify::default();
        assert!(build("mx.test", &e, ORIGINAL, &[report(&e, Action::Delayed { until: 0 })], QueueId(5), 0)
            .is_some());
    }
}
