//! The `Received:` trace header (RFC 5321 §4.4) we put on every message.

use std::io::Write;

use super::{Session, Transaction};
use crate::envelope::QueueId;

/// Writes our Received header, folded so no line exceeds 998 octets.
pub(super) fn write_header(out: &mut Vec<u8>, s: &Session, tx: &Transaction, id: QueueId, unix: u64) {
    let helo = trace_helo(s.helo.as_ref().map_or("unknown", |h| h.0.as_str()), tx.params.smtputf8);
    let ip = match s.conn.peer {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    // RFC 3848 protocol names.
    let esmtp = s.helo.as_ref().is_some_and(|h| h.1);
    let with = match (esmtp, s.conn.tls.is_some(), s.auth_user.is_some()) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let _ = write!(out, "Received: from {helo} ([{ip}])\r\n");
    if let Some(tls) = &s.conn.tls {
        let _ = write!(out, "\t(using {} with cipher {})\r\n", tls.version, tls.cipher);
    }
    let _ = write!(out, "\tby {} (ringpost) with {with} id {id}", s.config.hostname);
    if let [only] = tx.recipients.as_slice() {
        let _ = write!(out, "\r\n\tfor <{}>", only.address);
    }
    let _ = write!(out, ";\r\n\t{}\r\n", format_rfc5322_date(unix));
}

/// The EHLO name as our Received header gives it. A UTF-8 name is written
/// as it is only in an SMTPUTF8 transaction; otherwise it would make a 7-bit
/// message 8-bit (and a next hop without 8BITMIME would refuse it), so it
/// becomes its A-label form (`xn--...`), or `unknown` if it has none.
fn trace_helo(helo: &str, smtputf8: bool) -> std::borrow::Cow<'_, str> {
    if helo.is_ascii() || smtputf8 {
        return helo.into();
    }
    match idna::domain_to_ascii(helo) {
        Ok(ascii) if ascii.is_ascii() => ascii.into(),
        _ => "unknown".into(),
    }
}

/// Formats Unix seconds as an RFC 5322 date in UTC: `Mon, 23 Nov 2026 11:20:17 +0000`.
pub fn format_rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_helo_names_stay_out_of_7bit_messages() {
        assert_eq!(trace_helo("client.test", false), "client.test");
        assert_eq!(trace_helo("пример.test", false), "xn--e1afmkfd.test");
        assert_eq!(trace_helo("пример.test", true), "пример.test");
        assert_eq!(trace_helo("bad\u{fffd}.test", false), "unknown");
    }

    #[test]
    fn dates() {
        assert_eq!(format_rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(format_rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(format_rfc5322_date(1_795_432_817), "Mon, 23 Nov 2026 11:20:17 +0000");
    }
}
