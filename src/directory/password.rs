//! Password hashing (argon2id) and generated passwords.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use secrecy::{ExposeSecret, SecretString};

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &SecretString) -> Result<String, String> {
    let salt =
        SaltString::encode_b64(&crate::secrets::random_bytes::<16>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a stored PHC hash; a malformed hash never matches.
pub fn verify_password(password: &SecretString, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password that satisfies any policy this crate allows (four classes, 20 characters).
#[allow(clippy::indexing_slicing)] // reason: `i < 4` indexes the four sets; `% len` keeps every other index in range
pub fn generate_password() -> SecretString {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"!#%+-=?@";
    let sets = [LOWER, UPPER, DIGIT, SYMBOL];
    let bytes = crate::secrets::random_bytes::<20>();
    let password: String = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            // The first four characters cover every class; the rest draw from all sets.
            let set = if i < 4 {
                sets[i]
            } else {
                sets[usize::from(*b) % 4]
            };
            char::from(set[usize::from(*b) % set.len()])
        })
        .collect();
    SecretString::from(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::PasswordPolicy;

    #[test]
    fn hash_and_verify() {
        let pw = SecretString::from("Correct horse 1!".to_string());
        let hash = hash_password(&pw).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&pw, &hash));
        assert!(!verify_password(
            &SecretString::from("wrong".to_string()),
            &hash
        ));
        assert!(!verify_password(&pw, "not a hash"));
    }

    #[test]
    fn generated_passwords_pass_the_strictest_policy() {
        let strict = PasswordPolicy {
            min_character_classes: 4,
            ..PasswordPolicy::default()
        };
        for _ in 0..200 {
            let pw = generate_password();
            assert_eq!(strict.check(pw.expose_secret(), "nobody"), Ok(()));
        }
    }
}
