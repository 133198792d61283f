//! Abuse Reporting Format (RFC 5965) reports, as mailbox providers send
//! them (Yahoo's and Microsoft JMRP's complaint feedback loops, among
//! others): `multipart/report; report-type=feedback-report` with a
//! human-readable part, a `message/feedback-report` part of header-like
//! fields, and the original message (`message/rfc822`) or its headers
//! (`text/rfc822-headers`). MIME is parsed by `mail-parser`.
//!
//! Pure: bytes in, a report or the reason it is not one out.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What ringpost needs of a report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// `abuse`, `fraud`, `virus`, `other`, `not-spam`, ... (lower case).
    pub feedback_type: String,
    pub user_agent: Option<String>,
    pub original_rcpt_to: Option<String>,
    pub original_mail_from: Option<String>,
    pub source_ip: Option<String>,
    pub reporting_mta: Option<String>,
    /// The `X-Ringpost-Ref` field of the original message, if it is there.
    pub reference: Option<String>,
    /// The original's Message-ID, for logs.
    pub original_message_id: Option<String>,
}

/// Why some bytes are not a report we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArfError {
    #[error("not a MIME message")]
    NotMime,
    #[error("not multipart/report with report-type=feedback-report")]
    NotFeedbackReport,
    #[error("no message/feedback-report part")]
    NoReportPart,
    #[error("the report has no Feedback-Type")]
    NoFeedbackType,
}

/// Longest report considered (providers send the original, often whole).
pub const MAX_REPORT: usize = 10 << 20;

pub fn parse(raw: &[u8]) -> Result<Report, ArfError> {
    let raw = &raw[..raw.len().min(MAX_REPORT)];
    let msg = MessageParser::default().parse(raw).ok_or(ArfError::NotMime)?;
    let is_report = msg.content_type().is_some_and(|ct| {
        ct.c_type.eq_ignore_ascii_case("multipart")
            && ct.c_subtype.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct.attribute("report-type").is_some_and(|t| t.eq_ignore_ascii_case("feedback-report"))
    });
    if !is_report {
        return Err(ArfError::NotFeedbackReport);
    }
    let mut report = None;
    let mut reference = None;
    let mut message_id = None;
    for part in msg.parts.iter().skip(1) {
        if part.is_content_type("message", "feedback-report") {
            report = Some(fields(part.contents()));
        } else if let PartType::Message(original) = &part.body {
            reference = reference.or_else(|| ref_field(original));
            message_id = message_id.or_else(|| original.message_id().map(str::to_owned));
        } else if part.is_content_type("text", "rfc822-headers") {
            if let Some(h) = MessageParser::default().parse_headers(part.contents()) {
                reference = reference.or_else(|| ref_field(&h));
                message_id = message_id.or_else(|| h.message_id().map(str::to_owned));
            }
        }
    }
    let fields = report.ok_or(ArfError::NoReportPart)?;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let feedback_type = get("Feedback-Type").ok_or(ArfError::NoFeedbackType)?.to_ascii_lowercase();
    Ok(Report {
        feedback_type,
        user_agent: get("User-Agent"),
        original_rcpt_to: get("Original-Rcpt-To").map(|a| a.trim_matches(['<', '>']).to_owned()),
        original_mail_from: get("Original-Mail-From").map(|a| a.trim_matches(['<', '>']).to_owned()),
        source_ip: get("Source-IP"),
        reporting_mta: get("Reporting-MTA"),
        reference,
        original_message_id: message_id,
    })
}

/// The `X-Ringpost-Ref` field, unfolded, without spaces (a token has none).
fn ref_field(m: &mail_parser::Message<'_>) -> Option<String> {
    let v = m.header("X-Ringpost-Ref")?.as_text()?;
    Some(v.chars().filter(|c| !c.is_whitespace()).collect())
}

/// `Name: value` fields (continuation lines folded in), at most 200.
fn fields(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            if out.len() >= 200 {
                break;
            }
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    /// A report in the shape Yahoo's complaint feedback loop sends.
    pub const YAHOO: &str = "From: feedback@arf.mail.yahoo.com\r\n\
To: fbl@example.test\r\n\
Subject: FW: spring sale\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"----=_Part_1\"\r\n\
\r\n\
------=_Part_1\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is an email abuse report for an email message received from IP 203.0.113.10.\r\n\
\r\n\
------=_Part_1\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: Yahoo!-Mail-Feedback/2.0\r\n\
Version: 1\r\n\
Original-Mail-From: <bounce@example.test>\r\n\
Original-Rcpt-To: <someone@yahoo.test>\r\n\
Arrival-Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n\
Reporting-MTA: dns; mta.yahoo.test\r\n\
Source-IP: 203.0.113.10\r\n\
\r\n\
------=_Part_1\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
X-Ringpost-Ref: v1.abc\r\n\
\x20.def\r\n\
Message-ID: <m1@example.test>\r\n\
From: news@example.test\r\n\
To: someone@yahoo.test\r\n\
Subject: spring sale\r\n\
\r\n\
buy now\r\n\
------=_Part_1--\r\n";

    #[test]
    fn a_yahoo_report() {
        let r = parse(YAHOO.as_bytes()).unwrap();
        assert_eq!(r.feedback_type, "abuse");
        assert_eq!(r.original_rcpt_to.as_deref(), Some("someone@yahoo.test"));
        assert_eq!(r.original_mail_from.as_deref(), Some("bounce@example.test"));
        assert_eq!(r.source_ip.as_deref(), Some("203.0.113.10"));
        assert_eq!(r.reference.as_deref(), Some("v1.abc.def"));
        assert_eq!(r.original_message_id.as_deref(), Some("m1@example.test"));
    }

    /// Headers only (text/rfc822-headers), as some providers send.
    #[test]
    fn headers_only_original() {
        let text = YAHOO.replace("Content-Type: message/rfc822", "Content-Type: text/rfc822-headers");
        let r = parse(text.as_bytes()).unwrap();
        assert_eq!(r.reference.as_deref(), Some("v1.abc.def"));
    }

    #[test]
    fn what_is_not_a_report() {
        assert_eq!(parse(b"").unwrap_err(), ArfError::NotMime);
        assert_eq!(parse(b"Subject: hi\r\n\r\nplain\r\n").unwrap_err(), ArfError::NotFeedbackReport);
        let dsn = YAHOO.replace("report-type=feedback-report", "report-type=delivery-status");
        assert_eq!(parse(dsn.as_bytes()).unwrap_err(), ArfError::NotFeedbackReport);
        let no_part = YAHOO.replace("message/feedback-report", "text/plain");
        assert_eq!(parse(no_part.as_bytes()).unwrap_err(), ArfError::NoReportPart);
        let no_type = YAHOO.replace("Feedback-Type: abuse\r\n", "");
        assert_eq!(parse(no_type.as_bytes()).unwrap_err(), ArfError::NoFeedbackType);
        // Garbage of every kind: an error, never a panic.
        for junk in
            [&b"\xff\xfe\x00"[..], b"Content-Type: multipart/report; report-type=feedback-report\r\n\r\n--"]
        {
            let _ = parse(junk);
        }
    }
}
