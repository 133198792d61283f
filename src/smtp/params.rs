//! ESMTP parameters of MAIL and RCPT: SIZE (RFC 1870), BODY (RFC 6152, 3030),
//! SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461), AUTH (RFC 4954),
//! REQUIRETLS (RFC 8689).

use crate::envelope::{BodyType, Notify, Ret};

/// What was wrong with a parameter; each maps to one reply in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("syntax error in parameters")]
    Syntax,
    #[error("unsupported parameter")]
    Unsupported,
    #[error("parameter given twice")]
    Duplicate,
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID, still xtext-encoded as received.
    pub envid: Option<String>,
    /// REQUIRETLS: onward only over verified TLS.
    pub requiretls: bool,
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Notify,
    /// ORCPT as `addr-type;xtext`, kept encoded as received.
    pub orcpt: Option<String>,
}

/// Splits `KEY=VALUE KEY2` into pairs. Keywords are ASCII alphanumerics and '-'.
fn pairs(s: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), ParamError>> {
    s.split(' ').filter(|p| !p.is_empty()).map(|p| {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| !v.is_empty() && v.bytes().all(is_esmtp_value_byte));
        if key_ok && value_ok {
            Ok((key, value))
        } else {
            Err(ParamError::Syntax)
        }
    })
}

/// RFC 5321 esmtp-value: printable ASCII except '=' and space; RFC 6531 adds UTF-8.
fn is_esmtp_value_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'=' || b >= 0x80
}

/// RFC 3461 §4 xtext: printable ASCII except '+' and '=', or `+XX` (upper-case hex).
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                if !(i + 2 < b.len() && hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            0x21..=0x7e => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decodes xtext (`+2B` to `+`). Invalid escapes are kept literally.
pub fn decode_xtext(s: &str) -> String {
    decode_hex_escapes(s, b'+')
}

/// Decodes `<marker>XX` hex escapes (`+` for xtext, `%` for URIs); invalid
/// escapes are kept literally, bytes that are not UTF-8 replaced.
pub fn decode_hex_escapes(s: &str, marker: u8) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == marker && i + 2 < b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl MailParams {
    pub fn parse(s: &str) -> Result<MailParams, ParamError> {
        let mut p = MailParams::default();
        let mut seen_body = false;
        for pair in pairs(s) {
            let (key, value) = pair?;
            match (key.to_ascii_uppercase().as_str(), value) {
                ("SIZE", Some(v)) if p.size.is_none() => {
                    p.size = Some(v.parse().map_err(|_| ParamError::Syntax)?);
                }
                ("BODY", Some(v)) if !seen_body => {
                    seen_body = true;
                    p.body = match v.to_ascii_uppercase().as_str() {
                        "7BIT" => BodyType::SevenBit,
                        "8BITMIME" => BodyType::EightBitMime,
                        "BINARYMIME" => BodyType::BinaryMime,
                        _ => return Err(ParamError::Syntax),
                    };
                }
                // A repeat cannot conflict (no value); smtplib sends it twice.
                ("SMTPUTF8", None) => p.smtputf8 = true,
                ("REQUIRETLS", None) => p.requiretls = true,
                ("RET", Some(v)) if p.ret.is_none() => {
                    p.ret = Some(match v.to_ascii_uppercase().as_str() {
                        "FULL" => Ret::Full,
                        "HDRS" => Ret::Headers,
                        _ => return Err(ParamError::Syntax),
                    });
                }
                ("ENVID", Some(v)) if p.envid.is_none() => {
                    if v.len() > 100 || !is_xtext(v) {
                        return Err(ParamError::Syntax);
                    }
                    p.envid = Some(v.to_owned());
                }
                // RFC 4954 §5: accepted and not trusted; we record nothing from it.
                ("AUTH", Some(_)) => {}
                ("SIZE" | "BODY" | "RET" | "ENVID", Some(_)) => return Err(ParamError::Duplicate),
                ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "REQUIRETLS", _) => {
                    return Err(ParamError::Syntax)
                }
                _ => return Err(ParamError::Unsupported),
            }
        }
        Ok(p)
    }
}

impl RcptParams {
    pub fn parse(s: &str) -> Result<RcptParams, ParamError> {
        let mut p = RcptParams::default();
        let mut seen_notify = false;
        for pair in pairs(s) {
            let (key, value) = pair?;
            match (key.to_ascii_uppercase().as_str(), value) {
                ("NOTIFY", Some(v)) if !seen_notify => {
                    seen_notify = true;
                    p.notify = Notify::parse(v).ok_or(ParamError::Syntax)?;
                }
                ("ORCPT", Some(v)) if p.orcpt.is_none() => {
                    let (kind, addr) = v.split_once(';').ok_or(ParamError::Syntax)?;
                    let kind_ok =
                        !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !kind_ok || addr.is_empty() || v.len() > 500 || !is_xtext(addr) && addr.is_ascii() {
                        return Err(ParamError::Syntax);
                    }
                    p.orcpt = Some(v.to_owned());
                }
                ("NOTIFY" | "ORCPT", Some(_)) => return Err(ParamError::Duplicate),
                ("NOTIFY" | "ORCPT", None) => return Err(ParamError::Syntax),
                _ => return Err(ParamError::Unsupported),
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params_table() {
        let ok =
            MailParams::parse("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2B1 AUTH=<>").unwrap();
        assert_eq!(ok.size, Some(1000));
        assert_eq!(ok.body, BodyType::EightBitMime);
        assert!(ok.smtputf8);
        assert_eq!(ok.ret, Some(Ret::Headers));
        assert_eq!(ok.envid.as_deref(), Some("abc+2B1"));
        assert_eq!(MailParams::parse("").unwrap(), MailParams::default());
        assert_eq!(MailParams::parse("size=5").unwrap().size, Some(5));
        assert!(MailParams::parse("SMTPUTF8 SMTPUTF8 BODY=8BITMIME").unwrap().smtputf8);

        let errs: &[(&str, ParamError)] = &[
            ("SIZE=abc", ParamError::Syntax),
            ("SIZE=-1", ParamError::Syntax),
            ("SIZE=99999999999999999999999", ParamError::Syntax),
            ("SIZE", ParamError::Syntax),
            ("SIZE=1 SIZE=2", ParamError::Duplicate),
            ("BODY=9BIT", ParamError::Syntax),
            ("RET=ALL", ParamError::Syntax),
            ("ENVID=a=b", ParamError::Syntax),
            ("ENVID=a+zz", ParamError::Syntax),
            ("XFOO=1", ParamError::Unsupported),
            ("SMTPUTF8=yes", ParamError::Syntax),
            ("=x", ParamError::Syntax),
        ];
        for (input, want) in errs {
            assert_eq!(MailParams::parse(input), Err(*want), "{input}");
        }
    }

    #[test]
    fn rcpt_params_table() {
        let p = RcptParams::parse("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.test").unwrap();
        assert!(p.notify.success() && p.notify.failure() && !p.notify.delay());
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;a+2Bb@example.test"));
        assert!(RcptParams::parse("NOTIFY=NEVER").unwrap().notify.never());
        for bad in
            ["NOTIFY=NEVER,SUCCESS", "NOTIFY=", "NOTIFY=BOGUS", "ORCPT=nosemicolon", "ORCPT=;x", "FOO=1"]
        {
            assert!(RcptParams::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xtext() {
        assert!(is_xtext("abc+2Bdef"));
        assert!(!is_xtext("abc+2"));
        assert!(!is_xtext("abc+"));
        assert!(!is_xtext("a=b"));
        assert!(!is_xtext("a b"));
        assert_eq!(decode_xtext("a+2Bb+3D"), "a+b=");
    }
}
