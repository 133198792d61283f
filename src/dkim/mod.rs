//! DKIM signing (RFC 6376; Ed25519-SHA256 from RFC 8463): relaxed/relaxed
//! canonicalization, RSA-SHA256 (2048 bits and up) and Ed25519-SHA256 keys,
//! any number of signatures per message (one per `[[dkim]]` entry of the
//! From: domain).
//!
//! Our own signer rather than the `mail-auth` crate: signing is the small
//! half of DKIM (canonicalize, hash, sign, fold), it must run on the bytes
//! we store exactly as we store them, it cost the same as `mail-auth`
//! 0.13.3 on the same backend (tuning/results/*-dkim-signers.md), and
//! `mail-auth` cannot sign without a resolver and tokio in the build. The
//! crypto is aws-lc-rs's: on this machine twice as fast as ring's for
//! RSA-2048 and three times for Ed25519 (tuning/results/*-dkim.md).
//! Verification is not ours to do: the tests check every signature with
//! `dkimpy`, an independent implementation.
//!
//! Pure: keys come in as PEM bytes (the shell reads the files), time as a
//! parameter.

pub mod canon;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;

use crate::mail;

/// Header fields signed when an entry names none: those a receiver shows
/// or acts on, the MIME structure, and RFC 8058's one-click unsubscribe
/// pair (which must be signed for Gmail and Yahoo to honour it).
pub const DEFAULT_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "sender",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
];

/// Longest line we fold the signature header to.
const LINE: usize = 76;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` tag value.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// A private key.
pub enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Rsa(k) => write!(f, "Key::Rsa({} bits)", k.public_modulus_len() * 8),
            Key::Ed25519(_) => f.write_str("Key::Ed25519"),
        }
    }
}

impl Key {
    /// A key from a PEM file's bytes: RSA as PKCS#1 (`BEGIN RSA PRIVATE
    /// KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`), Ed25519 as PKCS#8.
    pub fn from_pem(pem: &[u8]) -> Result<Key, String> {
        let der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key in PEM form: {e}"))?;
        let key = match &der {
            PrivateKeyDer::Pkcs1(k) => {
                Key::Rsa(RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(rsa_error)?)
            }
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(der) {
                    Ok(k) => Key::Rsa(k),
                    Err(e) if e.to_string() == "TooSmall" => return Err(rsa_error(e)),
                    Err(rsa) => match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                        Ok(k) => Key::Ed25519(k),
                        Err(_) => return Err(format!("neither a usable RSA key ({rsa}) nor an Ed25519 key")),
                    },
                }
            }
            PrivateKeyDer::Sec1(_) => return Err("an EC key: DKIM signs with RSA or Ed25519".into()),
            _ => return Err("an unknown kind of private key".into()),
        };
        if let Key::Rsa(k) = &key {
            let bits = k.public_modulus_len() * 8;
            if bits < 2048 {
                return Err(format!("an RSA key of {bits} bits: DKIM keys need at least 2048"));
            }
        }
        Ok(key)
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Key::Rsa(_) => Algorithm::RsaSha256,
            Key::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// The DNS TXT record that publishes this key's public half.
    pub fn dns_record(&self) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Key::Rsa(k) => format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(k.public_key().as_ref()))),
            Key::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", b64(k.public_key().as_ref())),
        }
    }

    /// Signs `data` (the canonical header data): RSA hashes it itself;
    /// Ed25519-SHA256 signs its SHA-256 hash (RFC 8463 section 3).
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    data,
                    &mut sig,
                )
                .map_err(|_| SignError)?;
                Ok(sig)
            }
            Key::Ed25519(k) => {
                let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
                Ok(k.sign(hash.as_ref()).as_ref().to_vec())
            }
        }
    }
}

fn rsa_error(e: aws_lc_rs::error::KeyRejected) -> String {
    match e.to_string().as_str() {
        "TooSmall" => "an RSA key of fewer than 2048 bits: DKIM keys need at least 2048".into(),
        "TooLarge" => "an RSA key of more than 8192 bits".into(),
        other => format!("not a usable RSA key: {other}"),
    }
}

/// An RSAPublicKey (PKCS#1) wrapped as the SubjectPublicKeyInfo DKIM
/// records carry (RFC 6376 section 3.6.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn der_len(out: &mut Vec<u8>, len: usize) {
        match len {
            0..=127 => out.push(len as u8),
            128..=255 => out.extend_from_slice(&[0x81, len as u8]),
            _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        }
    }
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    const ALGORITHM: &[u8] =
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bits = vec![0x03];
    der_len(&mut bits, pkcs1.len() + 1);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(&mut out, ALGORITHM.len() + bits.len());
    out.extend_from_slice(ALGORITHM);
    out.extend_from_slice(&bits);
    out
}

/// The crypto library failed to sign (it does not, short of a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the DKIM signature could not be computed")]
pub struct SignError;

/// One `[[dkim]]` entry, ready to sign.
#[derive(Debug)]
pub struct Signer {
    /// `d=`, lowercase.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    pub key: Key,
    /// Header fields to sign, lowercase, each once; From always among them.
    headers: Vec<String>,
}

impl Signer {
    /// `headers`: the fields to sign; empty for [`DEFAULT_HEADERS`].
    pub fn new(domain: &str, selector: &str, key: Key, headers: &[String]) -> Signer {
        let mut list: Vec<String> = Vec::new();
        let named = if headers.is_empty() {
            DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
        } else {
            headers.to_vec()
        };
        for h in std::iter::once("from".to_owned()).chain(named) {
            let h = h.trim().to_ascii_lowercase();
            if !h.is_empty() && !list.contains(&h) {
                list.push(h);
            }
        }
        Signer { domain: domain.to_ascii_lowercase(), selector: selector.to_owned(), key, headers: list }
    }

    /// The `DKIM-Signature` header field (CRLF-terminated) for `message`
    /// (header block, empty line, body: exactly as it will be sent), signed
    /// at `now` (Unix seconds, the `t=` tag). The field goes in front of
    /// `message`, whose first line must start a field (ours starts with our
    /// Received field), not continue one.
    ///
    /// Every present instance of each listed field is signed (bottom-up, as
    /// verifiers select them), and From once more than present, so no From
    /// can be added later without breaking the signature.
    pub fn sign(&self, message: &[u8], now: u64) -> Result<Vec<u8>, SignError> {
        let (fields, body_at) = mail::fields(message);
        let mut body_hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        canon::body(&message[body_at..], |piece| body_hash.update(piece));
        let bh = base64::engine::general_purpose::STANDARD.encode(body_hash.finish());

        let mut data = Vec::with_capacity(1024);
        let mut signed: Vec<&str> = Vec::new();
        for name in &self.headers {
            for f in fields.iter().rev().filter(|f| f.is(message, name)) {
                canon::header(&message[f.raw.clone()], true, &mut data);
                signed.push(name);
            }
        }
        signed.push("from");

        let mut head = Folder::new("DKIM-Signature:");
        head.tag(&format!("v=1; a={}; c=relaxed/relaxed;", self.key.algorithm().tag()));
        head.tag(&format!("d={}; s={};", self.domain, self.selector));
        head.tag(&format!("t={now};"));
        head.list("h=", &signed);
        head.tag(&format!("bh={bh};"));
        head.tag("b=");
        canon::header(head.text.as_bytes(), false, &mut data);
        let sig = self.key.sign(&data)?;
        head.chunks(&base64::engine::general_purpose::STANDARD.encode(sig));
        head.text.push_str("\r\n");
        Ok(head.text.into_bytes())
    }
}

/// Builds a folded header field: tags separated by spaces, a new line
/// (CRLF TAB) before one that would pass [`LINE`].
struct Folder {
    text: String,
    col: usize,
}

impl Folder {
    fn new(name: &str) -> Folder {
        Folder { text: name.to_owned(), col: name.len() }
    }

    fn tag(&mut self, tag: &str) {
        if self.col + 1 + tag.len() > LINE {
            self.text.push_str("\r\n\t");
            self.col = 1;
        } else {
            self.text.push(' ');
            self.col += 1;
        }
        self.text.push_str(tag);
        self.col += tag.len();
    }

    /// `prefix` then `items` joined by colons, folded between items.
    fn list(&mut self, prefix: &str, items: &[&str]) {
        self.tag(prefix);
        for (i, item) in items.iter().enumerate() {
            let piece = if i + 1 == items.len() { format!("{item};") } else { format!("{item}:") };
            if self.col + piece.len() > LINE {
                self.text.push_str("\r\n\t");
                self.col = 1;
            }
            self.text.push_str(&piece);
            self.col += piece.len();
        }
    }

    /// Appends `value` (no white space in it), folded into lines.
    fn chunks(&mut self, value: &str) {
        let mut rest = value;
        while !rest.is_empty() {
            if self.col >= LINE {
                self.text.push_str("\r\n\t");
                self.col = 1;
            }
            let n = (LINE - self.col).min(rest.len());
            self.text.push_str(&rest[..n]);
            self.col += n;
            rest = &rest[n..];
        }
    }
}

/// The signers of every domain, from `[[dkim]]`.
#[derive(Debug, Default)]
pub struct Signers {
    by_domain: HashMap<String, Vec<Arc<Signer>>>,
}

impl Signers {
    pub fn new(signers: Vec<Signer>) -> Signers {
        let mut by_domain: HashMap<String, Vec<Arc<Signer>>> = HashMap::new();
        for s in signers {
            by_domain.entry(s.domain.clone()).or_default().push(Arc::new(s));
        }
        Signers { by_domain }
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// Who signs `message`: the entries of its From: domain. None if it
    /// has no single From: field, or its addresses are not all of one
    /// domain (a verifier could not align such a message anyway).
    pub fn for_message(&self, message: &[u8]) -> &[Arc<Signer>] {
        if self.by_domain.is_empty() {
            return &[];
        }
        from_domain(message).and_then(|d| self.by_domain.get(&d)).map_or(&[], |v| v.as_slice())
    }
}

/// The domain of the From: field's addresses (lowercase), if the message
/// has exactly one From: field and all its addresses share one domain.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let (fields, _) = mail::fields(message);
    let mut from = fields.iter().filter(|f| f.is(message, "from"));
    let field = from.next()?;
    if from.next().is_some() {
        return None;
    }
    let parsed = mail_parser::MessageParser::new().parse_headers(&message[field.raw.clone()])?;
    let mut domain: Option<String> = None;
    for addr in parsed.from()?.iter() {
        let address = addr.address.as_deref()?;
        let (_, d) = address.rsplit_once('@')?;
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() || domain.as_ref().is_some_and(|seen| *seen != d) {
            return None;
        }
        domain = Some(d);
    }
    domain
}

/// A short description of an entry for logs: `d=... s=... a=...`.
pub fn describe(s: &Signer) -> String {
    let mut out = String::new();
    let _ = write!(out, "d={} s={} a={}", s.domain, s.selector, s.key.algorithm().tag());
    out
}

#[cfg(test)]
mod tests;
