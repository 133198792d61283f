//! The sender's feedback loop beyond delivery outcomes: complaint reports
//! (ARF) and one-click unsubscribes, both tied back to the message and
//! recipient by signed tokens.

pub mod arf;
pub mod token;
pub mod unsubscribe;

use std::collections::HashSet;

/// `[feedback]` as the server uses it.
#[derive(Debug, Clone)]
pub struct Feedback {
    /// Lower case.
    pub addresses: HashSet<String>,
    /// Signs and opens `X-Ringpost-Ref`.
    pub refs: token::Signer,
}

impl Feedback {
    pub fn new(addresses: &[String], key: &[u8]) -> Feedback {
        Feedback {
            addresses: addresses.iter().map(|a| a.trim_matches(['<', '>']).to_lowercase()).collect(),
            refs: token::Signer::new(key),
        }
    }

    pub fn is_feedback_address(&self, address: &str) -> bool {
        self.addresses.contains(&address.to_lowercase())
    }

    /// The `X-Ringpost-Ref` field for one copy of a message (CRLF-terminated).
    pub fn ref_field(&self, r: &token::Ref) -> Vec<u8> {
        format!("X-Ringpost-Ref: {}\r\n", self.refs.seal(token::Purpose::Reference, r)).into_bytes()
    }
}

/// A complaint report tied back to what we sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    pub reference: token::Ref,
    pub report: arf::Report,
}

/// Reads a complaint report: parsed, and its original's `X-Ringpost-Ref`
/// opened with our key. Err says why it cannot be used (not ARF, no
/// reference, a reference we did not sign or that names no single
/// recipient): such a report suppresses nobody.
pub fn read_complaint(f: &Feedback, raw: &[u8]) -> Result<Complaint, String> {
    let report = arf::parse(raw).map_err(|e| e.to_string())?;
    let token = report.reference.as_deref().ok_or("the original message has no X-Ringpost-Ref field")?;
    let reference = f
        .refs
        .open(token::Purpose::Reference, token)
        .ok_or("the X-Ringpost-Ref field is not one we signed (forged, altered or another key)")?;
    if reference.recipient.is_none() {
        return Err("the reference names no single recipient (one copy went to several)".into());
    }
    Ok(Complaint { reference, report })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    fn report_with(reference: &str) -> String {
        format!(
            "From: fbl@isp.test\r\nTo: fbl@example.test\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n\
             --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\
             Original-Rcpt-To: <other@isp.test>\r\n\r\n\
             --b\r\nContent-Type: message/rfc822\r\n\r\n{reference}Subject: x\r\n\r\nbody\r\n--b--\r\n"
        )
    }

    #[test]
    fn complaints_are_tied_back_by_our_reference_only() {
        let f = Feedback::new(&["FBL@example.test".into()], b"0123456789abcdef0123456789abcdef");
        assert!(f.is_feedback_address("fbl@EXAMPLE.test"));
        let r = token::Ref {
            id: "Q1".into(),
            recipient: Some("victim@isp.test".into()),
            tenant: Some("acme".into()),
            campaign: None,
        };
        let field = String::from_utf8(f.ref_field(&r)).unwrap();
        let c = read_complaint(&f, report_with(&field).as_bytes()).unwrap();
        assert_eq!(c.reference, r, "the recipient comes from our reference, not Original-Rcpt-To");
        assert_eq!(c.report.feedback_type, "abuse");
        // No reference, a forged one, one for several recipients, not ARF.
        assert!(read_complaint(&f, report_with("").as_bytes()).unwrap_err().contains("no X-Ringpost-Ref"));
        let other = Feedback::new(&[], b"another key, also thirty-two b.");
        let forged = String::from_utf8(other.ref_field(&r)).unwrap();
        assert!(read_complaint(&f, report_with(&forged).as_bytes())
            .unwrap_err()
            .contains("not one we signed"));
        let many = String::from_utf8(f.ref_field(&token::Ref { recipient: None, ..r.clone() })).unwrap();
        assert!(read_complaint(&f, report_with(&many).as_bytes()).unwrap_err().contains("single recipient"));
        assert!(read_complaint(&f, b"Subject: hi\r\n\r\nnot a report\r\n").is_err());
    }
}
