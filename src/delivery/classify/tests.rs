#![allow(clippy::unwrap_used)] // reason: tests fail loudly

use super::*;

/// Replies as providers send them (texts from their published error
/// references and real bounces), and ringpost's own failures.
#[test]
fn real_world_replies() {
    let c = Classifier::defaults();
    let table: &[(Option<u16>, &str, &str, Class)] = &[
        // Gmail
        (Some(550), "5.1.1", "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser", Class::InvalidRecipient),
        (Some(550), "5.2.1", "550 5.2.1 The email account that you tried to reach is disabled.", Class::InvalidRecipient),
        (Some(452), "4.2.2", "452 4.2.2 The email account that you tried to reach is over quota.", Class::QuotaIssues),
        (Some(421), "4.7.28", "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.", Class::RateLimited),
        (Some(450), "4.2.1", "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.", Class::RateLimited),
        (Some(550), "5.7.26", "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.", Class::AuthenticationFailed),
        (Some(421), "4.7.27", "421 4.7.27 Your email has been rate limited because SPF authentication didn't pass for this message.", Class::AuthenticationFailed),
        (Some(550), "5.7.1", "550 5.7.1 Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.", Class::SpamContent),
        (Some(550), "5.7.1", "550 5.7.1 Our system has detected that this message is likely suspicious due to the very low reputation of the sending IP address.", Class::SpamBlock),
        // Microsoft
        (Some(550), "5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", Class::InvalidRecipient),
        (Some(550), "5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", Class::InvalidRecipient),
        (Some(550), "5.7.515", "550 5.7.515 Access denied, sending domain example.com does not meet the required authentication level.", Class::AuthenticationFailed),
        (Some(550), "5.7.606", "550 5.7.606 Access denied, banned sending IP [203.0.113.10].", Class::SpamBlock),
        (Some(451), "4.7.650", "451 4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due to IP reputation.", Class::RateLimited),
        (Some(550), "5.7.1", "550 5.7.1 Service unavailable, Client host [203.0.113.10] blocked using Spamhaus.", Class::SpamBlock),
        // Yahoo / AOL
        (Some(554), "5.0.0", "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - mta1.mail.yahoo.com", Class::InvalidRecipient),
        (Some(421), "4.7.0", "421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints", Class::RateLimited),
        (Some(553), "5.7.2", "553 5.7.2 [TSS09] All messages from 203.0.113.10 will be permanently deferred; Retrying will NOT succeed.", Class::SpamBlock),
        (Some(554), "5.7.9", "554 5.7.9 Message not accepted for policy reasons.", Class::PolicyRelated),
        (Some(552), "5.0.0", "552 1 Requested mail action aborted, mailbox not found", Class::InvalidRecipient),
        // Postfix and generic
        (Some(550), "5.1.1", "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local recipient table", Class::InvalidRecipient),
        (Some(450), "4.2.0", "450 4.2.0 <a@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/", Class::PolicyRelated),
        (Some(450), "4.1.1", "450 4.1.1 <a@example.org>: Recipient address rejected: unverified address", Class::Uncategorized),
        (Some(554), "5.7.1", "554 5.7.1 <a@example.org>: Relay access denied", Class::PolicyRelated),
        (Some(552), "5.3.4", "552 5.3.4 Message size exceeds fixed limit", Class::PolicyRelated),
        (Some(500), "5.5.2", "500 5.5.2 Error: bad syntax", Class::ProtocolErrors),
        (Some(451), "4.3.0", "451 4.3.0 Error: queue file write error", Class::Uncategorized),
        // ringpost's own
        (None, "4.4.7", "4.4.7 delivery time expired after 5 days", Class::MessageExpired),
        (None, "4.4.2", "mx.example.org[127.0.0.1]:25: connection refused", Class::BadConnection),
        (None, "4.4.1", "127.0.0.1:25 was unreachable moments ago; not trying again yet", Class::BadConnection),
        (None, "5.1.2", "example.invalid: no such domain", Class::DNSFailure),
        (None, "4.4.3", "example.org: DNS lookup timed out", Class::DNSFailure),
        (None, "5.6.3", "the next hop does not support 8BITMIME", Class::ProtocolErrors),
    ];
    let mut wrong = Vec::new();
    for (code, enhanced, text, want) in table {
        let got = c.classify(*code, enhanced, text);
        if got != *want {
            wrong.push(format!("{text:?}: got {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
}

#[test]
fn the_subject_does_not_repeat_codes() {
    assert_eq!(subject(Some(550), "5.1.1", "550 5.1.1 no such user"), "550 5.1.1 no such user");
    assert_eq!(subject(Some(550), "5.0.0", "550 no such user"), "550 5.0.0 no such user");
    assert_eq!(subject(None, "4.4.7", "4.4.7 expired"), "4.4.7 expired");
    assert_eq!(subject(None, "4.4.2", "connection refused"), "4.4.2 connection refused");
}

/// The user's rules come first; first match wins.
#[test]
fn user_rules_come_first() {
    let user = r#"
[[bounce]]
class = "SpamBlock"
reply = 'no such user'
"#;
    let c = Classifier::new(&[("mine.toml".into(), user.into())]).unwrap();
    assert_eq!(c.classify(Some(550), "5.1.1", "550 5.1.1 no such user"), Class::SpamBlock);
    assert_eq!(c.classify(Some(550), "5.1.1", "550 5.1.1 user unknown"), Class::InvalidRecipient);
}

#[test]
fn bad_rules_are_errors_naming_the_file() {
    let cases = [
        ("[[bounce]]\nclass = \"Nope\"\nreply = 'x'\n", "bounce[0].class"),
        ("[[bounce]]\nclass = \"SpamBlock\"\nreply = '('\n", "bounce[0].reply"),
        ("[[bounce]]\nclass = \"SpamBlock\"\n", "reply"),
        ("[[bounce]]\nclass = \"SpamBlock\"\nreply = 'x'\nextra = 1\n", "extra"),
    ];
    for (text, want) in cases {
        let e = Classifier::new(&[("r.toml".into(), text.into())]).unwrap_err();
        assert!(e.starts_with("r.toml: ") && e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn the_shipped_rules_compile() {
    let rules = parse_rules(DEFAULT_RULES).unwrap();
    assert!(rules.len() >= 10);
    // Every class but the fallback has a rule.
    for class in Class::ALL.iter().filter(|c| **c != Class::Uncategorized) {
        assert!(rules.iter().any(|r| r.class == *class), "no rule for {class}");
    }
}

#[test]
fn class_names_round_trip() {
    for c in Class::ALL {
        assert_eq!(Class::parse(c.as_str()), Some(c));
        assert_eq!(Class::ALL[c.index()], c);
    }
    assert_eq!(Class::parse("nope"), None);
}
