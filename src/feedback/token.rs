//! Signed references to a message and recipient: the `X-Ringpost-Ref`
//! header on outgoing mail (so a complaint can be traced back) and the
//! one-click unsubscribe URL. A token is `v1.<payload>.<tag>`: the payload
//! is the base64url of a JSON array (queue id, recipient, tenant, campaign),
//! the tag the first 16 bytes of its HMAC-SHA256 under a secret key, with
//! the purpose mixed in, so a reference cannot be used as an unsubscribe
//! token or the other way round. A forged or altered token does not open.
//!
//! Pure: the key comes in as bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `X-Ringpost-Ref` on outgoing mail.
    Reference,
    /// A one-click unsubscribe URL.
    Unsubscribe,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Reference => b"ringpost-ref\0",
            Purpose::Unsubscribe => b"ringpost-unsubscribe\0",
        }
    }
}

/// Who and what a token names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ref {
    pub id: String,
    /// None when one copy went to several recipients.
    pub recipient: Option<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
}

/// A key for signing tokens.
#[derive(Debug, Clone)]
pub struct Signer {
    key: hmac::Key,
}

/// Longest token accepted (a reference to a long address and campaign fits
/// easily).
/// (Fields of any content fit: 736 bytes of fields, each escaped to six in
/// JSON at worst, is under 6 KiB in base64.)
pub const MAX_TOKEN: usize = 8192;
const TAG: usize = 16;

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    fn tag(&self, purpose: Purpose, payload: &str) -> [u8; TAG] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(purpose.label());
        ctx.update(payload.as_bytes());
        let full = ctx.sign();
        let mut out = [0u8; TAG];
        out.copy_from_slice(&full.as_ref()[..TAG]);
        out
    }

    /// The token for `r`.
    pub fn seal(&self, purpose: Purpose, r: &Ref) -> String {
        let fields = serde_json::json!([r.id, r.recipient, r.tenant, r.campaign]);
        let payload = B64.encode(fields.to_string());
        let tag = B64.encode(self.tag(purpose, &payload));
        format!("v1.{payload}.{tag}")
    }

    /// The reference in `token`, if it is ours, for this purpose and unaltered.
    pub fn open(&self, purpose: Purpose, token: &str) -> Option<Ref> {
        let token = token.trim();
        if token.len() > MAX_TOKEN {
            return None;
        }
        let rest = token.strip_prefix("v1.")?;
        let (payload, tag) = rest.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        // Constant time: verify recomputes and compares the whole tag.
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(purpose.label());
        ctx.update(payload.as_bytes());
        let full = ctx.sign();
        if tag.len() != TAG || !constant_eq(&full.as_ref()[..TAG], &tag) {
            return None;
        }
        let json = B64.decode(payload).ok()?;
        let v: (String, Option<String>, Option<String>, Option<String>) =
            serde_json::from_slice(&json).ok()?;
        Some(Ref { id: v.0, recipient: v.1, tenant: v.2, campaign: v.3 })
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;

    fn r() -> Ref {
        Ref {
            id: "6B0D3FF001000000".into(),
            recipient: Some("r@example.test".into()),
            tenant: Some("acme".into()),
            campaign: Some("spring \"sale\"".into()),
        }
    }

    #[test]
    fn round_trip() {
        let s = Signer::new(b"secret");
        let t = s.seal(Purpose::Reference, &r());
        assert!(t.starts_with("v1.") && t.bytes().all(|b| b.is_ascii_graphic()), "{t}");
        assert_eq!(s.open(Purpose::Reference, &t), Some(r()));
        let none = Ref { id: "1".into(), ..Ref::default() };
        assert_eq!(s.open(Purpose::Reference, &s.seal(Purpose::Reference, &none)), Some(none));
    }

    #[test]
    fn forged_altered_or_misused_tokens_do_not_open() {
        let s = Signer::new(b"secret");
        let t = s.seal(Purpose::Reference, &r());
        assert_eq!(Signer::new(b"other").open(Purpose::Reference, &t), None, "another key");
        assert_eq!(s.open(Purpose::Unsubscribe, &t), None, "another purpose");
        // Another recipient in the payload, the old tag.
        let (_, rest) = t.split_at(3);
        let (_, tag) = rest.split_once('.').unwrap();
        let other = Ref { recipient: Some("victim@example.test".into()), ..r() };
        let forged_payload = s.seal(Purpose::Reference, &other);
        let forged_payload = forged_payload[3..].split_once('.').unwrap().0;
        assert_eq!(s.open(Purpose::Reference, &format!("v1.{forged_payload}.{tag}")), None);
        // Every single-character change.
        for i in 3..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            if altered != t {
                assert_eq!(s.open(Purpose::Reference, &altered), None, "{altered}");
            }
        }
        for junk in ["", "v1.", "v1..", "v2.a.b", "v1.!!.!!", &"v1.".repeat(1000)] {
            assert_eq!(s.open(Purpose::Reference, junk), None);
        }
    }
}
