//! Password hashes: argon2id PHC strings (`ringpost hash-password`) and checks.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// A hash of a password nobody has, checked when the user is unknown so that
/// unknown and known users take the same time.
const DUMMY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$cmluZ3Bvc3RkdW1teQ$GgBvL5ZHa7ZZ9Xpl8XG+TqvAfQOxbN3aCbDUzYhPnmo";

/// Hashes a password with argon2id and a random salt, as a PHC string.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Decodes a base64 SASL response that must be UTF-8 text.
pub fn decode_b64(b64: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`, base64. The
/// authorization identity must be empty or the user's own. Returns the user
/// and the password.
pub fn parse_plain(b64: &str) -> Result<(String, String), PlainError> {
    let text = decode_b64(b64).ok_or(PlainError::Base64)?;
    let mut parts = text.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(authz), Some(user), Some(pass), None) if authz.is_empty() || authz == user => {
            Ok((user.to_owned(), pass.to_owned()))
        }
        _ => Err(PlainError::Malformed),
    }
}

/// Why a SASL PLAIN response was refused before any password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainError {
    /// Not base64 of UTF-8 text.
    Base64,
    /// Not three fields, or a foreign authorization identity.
    Malformed,
}

/// Checks `password` against a PHC hash; `None` (unknown user) always fails,
/// after the same amount of work.
pub fn verify(hash: Option<&str>, password: &str) -> bool {
    let (phc, known) = match hash {
        Some(h) => (h, true),
        None => (DUMMY, false),
    };
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
    ok && known
}

/// A Dovecot passwd-file line for a `[[user]]`: `address:{SCHEME}hash`.
/// Dovecot 2.3 (built with libsodium, as Debian's is) verifies argon2id and
/// argon2i PHC strings under `{ARGON2ID}` / `{ARGON2I}`.
pub fn dovecot_line(address: &str, phc: &str) -> Result<String, String> {
    if address.is_empty() || address.contains([':', '\n', '\r', '\0']) {
        return Err(format!("{address:?} cannot be a passwd-file user name"));
    }
    let scheme = match PasswordHash::new(phc).map(|h| h.algorithm.as_str().to_owned()) {
        Ok(a) if a == "argon2id" => "ARGON2ID",
        Ok(a) if a == "argon2i" => "ARGON2I",
        Ok(a) => return Err(format!("{address}: Dovecot cannot verify {a} hashes")),
        Err(e) => return Err(format!("{address}: not a PHC hash: {e}")),
    };
    Ok(format!("{}:{{{scheme}}}{phc}", address.to_lowercase()))
}

/// One bearer token of the injection API (`[[http_token]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    /// argon2 PHC hash of the token.
    pub hash: String,
    /// The tenant all its mail belongs to.
    pub tenant: Option<String>,
}

/// The injection API's tokens, and which presented tokens have matched one
/// (by SHA-256): an argon2 check costs tens of milliseconds, so it runs once
/// per token, and later requests cost a hash lookup.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
    known: std::sync::Mutex<std::collections::HashMap<[u8; 32], usize>>,
}

/// Most distinct good tokens remembered (past it, the memory starts over).
const KNOWN_MAX: usize = 256;

impl Tokens {
    pub fn new(tokens: Vec<Token>) -> Tokens {
        Tokens { tokens, known: Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn digest(token: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The token `presented` is, if it matched before: cheap.
    pub fn known(&self, presented: &str) -> Option<&Token> {
        let i = *self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&Self::digest(presented))?;
        self.tokens.get(i)
    }

    /// Checks `presented` against every hash (argon2: call it off the
    /// worker) and remembers a match.
    pub fn verify(&self, presented: &str) -> Option<&Token> {
        let i = self.tokens.iter().position(|t| verify(Some(&t.hash), presented))?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(Self::digest(presented), i);
        self.tokens.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(Some(&h), "s3cret"));
        assert!(!verify(Some(&h), "wrong"));
        assert!(!verify(None, "anything"));
        assert!(!verify(Some("not a hash"), "x"));
        assert!(PasswordHash::new(DUMMY).is_ok());
    }

    #[test]
    fn dovecot_lines() {
        let h = hash("pw").unwrap();
        assert_eq!(
            dovecot_line("Alice@Example.test", &h).unwrap(),
            format!("alice@example.test:{{ARGON2ID}}{h}")
        );
        assert!(dovecot_line("a:b@x", &h).unwrap_err().contains("passwd-file"));
        assert!(dovecot_line("a@x", "plain").unwrap_err().contains("PHC"));
        let argon2d = "$argon2d$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$7oYkHW0eZ4vMxUs0qCJWOQ";
        assert!(dovecot_line("a@x", argon2d).unwrap_err().contains("cannot verify"));
    }

    #[test]
    fn tokens_are_checked_once() {
        let t =
            |name: &str, secret: &str| Token { name: name.into(), hash: hash(secret).unwrap(), tenant: None };
        let tokens = Tokens::new(vec![t("a", "one"), t("b", "two")]);
        assert_eq!(tokens.known("two"), None);
        assert_eq!(tokens.verify("two").unwrap().name, "b");
        assert_eq!(tokens.known("two").unwrap().name, "b");
        assert_eq!(tokens.verify("three"), None);
        assert_eq!(tokens.known("three"), None);
        assert_eq!(tokens.known("one"), None);
        assert!(Tokens::default().is_empty());
    }
}
