//! Delivery events: one record per thing that happens to a message or a
//! recipient (received, delivered, deferred, bounced, expired, complained
//! about, suppressed, bounced by the administrator), written as JSON lines
//! to `[events] file` and posted to `[[webhook]]`s.
//!
//! This module is the data and its JSON form (pure); [`log`] is the thread
//! that makes events durable and writes them out, [`webhook`] the threads
//! that post them.

pub mod log;
pub mod webhook;

use serde::Serialize;

use crate::delivery::classify::Class;
use crate::envelope::Envelope;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    /// A message was accepted and queued (one per message).
    Reception,
    /// A recipient was delivered (or relayed) to its next hop.
    Delivery,
    /// An attempt for a recipient failed temporarily; it will be retried.
    TransientFailure,
    /// A recipient failed permanently.
    Bounce,
    /// A recipient was given up on: the message was queued too long.
    Expiration,
    /// A complaint or an unsubscribe about a message we sent.
    Feedback,
    /// A recipient was refused or dropped because it is suppressed.
    Suppressed,
    /// The administrator bounced a queued message.
    AdminBounce,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::Reception,
        EventType::Delivery,
        EventType::TransientFailure,
        EventType::Bounce,
        EventType::Expiration,
        EventType::Feedback,
        EventType::Suppressed,
        EventType::AdminBounce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Reception => "Reception",
            EventType::Delivery => "Delivery",
            EventType::TransientFailure => "TransientFailure",
            EventType::Bounce => "Bounce",
            EventType::Expiration => "Expiration",
            EventType::Feedback => "Feedback",
            EventType::Suppressed => "Suppressed",
            EventType::AdminBounce => "AdminBounce",
        }
    }

    pub fn index(self) -> usize {
        EventType::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// The reply an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Response {
    /// SMTP reply code; None for ringpost's own failures.
    pub code: Option<u16>,
    /// Enhanced status code (`5.1.1`).
    pub enhanced: String,
    pub text: String,
}

/// One event. Fields that do not apply are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The queue id of the message (None for a recipient refused at RCPT).
    pub id: Option<String>,
    /// RFC 3339, UTC, milliseconds (formatted when written out).
    pub timestamp: Timestamp,
    pub sender: String,
    /// The recipient this event is about (None for `Reception`).
    pub recipient: Option<String>,
    /// Every recipient (`Reception` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    /// The egress source the attempt went out from.
    pub source: Option<String>,
    /// Bounce class of a failure.
    pub class: Option<Class>,
    pub response: Option<Response>,
    /// Message size in bytes.
    pub size: u64,
    /// Delivery attempt number (1 for the first); 0 for `Reception`.
    pub attempt: u32,
    /// The host talked to: `name[ip]:port`, `local` for Maildir delivery.
    pub next_hop: Option<String>,
    /// TLS version and cipher of the connection, if it used TLS.
    pub tls: Option<String>,
    /// The client that sent the message (`Reception`).
    pub peer: Option<String>,
    /// `Feedback`: `abuse`, `unsubscribe`, ... (the ARF Feedback-Type).
    pub feedback_type: Option<String>,
    /// `Suppressed`: why the address is suppressed.
    pub reason: Option<String>,
}

impl Event {
    /// An event about `env` with its common fields filled in.
    pub fn about(kind: EventType, env: &Envelope, size: u64, at_ms: u64) -> Event {
        Event {
            kind,
            id: Some(env.id.to_string()),
            timestamp: Timestamp(at_ms),
            sender: env.reverse_path.to_string(),
            recipient: None,
            recipients: Vec::new(),
            tenant: env.tenant.clone(),
            campaign: env.campaign.clone(),
            source: None,
            class: None,
            response: None,
            size,
            attempt: 0,
            next_hop: None,
            tls: None,
            peer: env.client_ip.map(|ip| ip.to_string()),
            feedback_type: None,
            reason: None,
        }
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        self.write_line(&mut line);
        line
    }

    /// Appends the JSON line (newline included) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Serializing plain data into a Vec cannot fail; were it to, an
        // empty object keeps the stream valid JSON lines.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
        out.push(b'\n');
    }
}

/// Unix milliseconds, written as RFC 3339 in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; RFC3339_MS_LEN];
        s.serialize_str(rfc3339_ms_into(self.0, &mut buf))
    }
}

/// Length of [`rfc3339_ms`]'s form for years 0 to 9999.
const RFC3339_MS_LEN: usize = 24;

/// Unix milliseconds as RFC 3339 in UTC: `2026-11-30T09:41:07.250Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let mut buf = [0u8; RFC3339_MS_LEN];
    rfc3339_ms_into(ms, &mut buf).to_string()
}

/// [`rfc3339_ms`] written into `buf`, without allocating (every event has
/// one). Years past 9999 are written as 9999.
fn rfc3339_ms_into(ms: u64, buf: &mut [u8; RFC3339_MS_LEN]) -> &str {
    let secs = ms / 1000;
    let (y, mo, d) = crate::smtp::session::received::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let fields: [(u64, usize); 7] = [
        (y.clamp(0, 9999) as u64, 4),
        (u64::from(mo), 2),
        (u64::from(d), 2),
        (s / 3600, 2),
        (s / 60 % 60, 2),
        (s % 60, 2),
        (ms % 1000, 3),
    ];
    let seps = [b'-', b'-', b'T', b':', b':', b'.', b'Z'];
    let mut at = 0;
    for ((mut v, width), sep) in fields.into_iter().zip(seps) {
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        buf[at] = sep;
        at += 1;
    }
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&buf[..at]).unwrap_or("1970-01-01T00:00:00.000Z")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_796_031_667_250), "2026-11-30T09:41:07.250Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn json_shape() {
        let e = Event {
            kind: EventType::Bounce,
            id: Some("00000001".into()),
            timestamp: Timestamp(0),
            sender: "a@b.test".into(),
            recipient: Some("c@d.test".into()),
            recipients: Vec::new(),
            tenant: Some("acme".into()),
            campaign: None,
            source: Some("ip1".into()),
            class: Some(Class::InvalidRecipient),
            response: Some(Response {
                code: Some(550),
                enhanced: "5.1.1".into(),
                text: "550 5.1.1 no".into(),
            }),
            size: 1024,
            attempt: 2,
            next_hop: Some("mx.d.test[127.0.0.1]:25".into()),
            tls: None,
            peer: None,
            feedback_type: None,
            reason: None,
        };
        let line = e.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "Bounce");
        assert_eq!(v["class"], "InvalidRecipient");
        assert_eq!(v["response"]["code"], 550);
        assert_eq!(v["response"]["enhanced"], "5.1.1");
        assert_eq!(v["campaign"], serde_json::Value::Null);
        assert!(v.get("recipients").is_none());
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
