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
}
