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
