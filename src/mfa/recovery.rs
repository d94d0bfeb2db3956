//! Recovery codes: single-use codes a user keeps on paper for when their authenticator is
//! lost. Each carries 80 random bits, so a SHA-256 digest is enough at rest (nothing can be
//! brute-forced from it), and sign-in throttling bounds online guessing.

use base64::Engine;

/// How many codes a user gets at a time.
pub const COUNT: usize = 10;

/// Crockford's base32 alphabet: no I, L, O or U, so codes survive being read aloud or typed
/// from paper.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new code, `XXXX-XXXX-XXXX-XXXX` (16 symbols of 5 bits).
pub fn new_code() -> String {
    let bytes = crate::secrets::random_bytes::<10>();
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(b);
    }
    let mut out = String::with_capacity(19);
    for i in 0..16 {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        let index = ((bits >> (75 - 5 * i)) & 31) as usize;
        out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'0')));
    }
    out
}

/// The code as typed, normalised: upper case, without separators or spaces, with the
/// letters Crockford maps to digits (O → 0, I and L → 1).
pub fn normalise(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect()
}

/// The stored digest of a code (as typed or as generated).
pub fn digest(code: &str) -> String {
    let normal = normalise(code);
    let hash = openssl::sha::sha256(normal.as_bytes());
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
}

/// Whether typed text has the shape of a recovery code (so a TOTP code is not mistaken
/// for one).
pub fn looks_like_code(typed: &str) -> bool {
    normalise(typed).len() == 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_typed_forms_match() {
        let a = new_code();
        let b = new_code();
        assert_ne!(a, b);
        assert_eq!(a.len(), 19);
        assert!(looks_like_code(&a));
        assert_eq!(digest(&a), digest(&a.to_lowercase().replace('-', " ")));
        assert_ne!(digest(&a), digest(&b));
        assert!(!looks_like_code("123456"));
    }
}
