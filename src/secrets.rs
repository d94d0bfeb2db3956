//! Encryption at rest for secrets idbridge must keep (OAuth tokens, PKCE verifiers, passwords
//! waiting to be pushed): AES-256-GCM with a key from config or a key file only idbridge reads.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use secrecy::{ExposeSecret, SecretString};

const VERSION: &str = "v1";

/// `N` bytes from the operating system's random generator (through OpenSSL).
///
/// Panics if the generator fails: every caller makes session tokens, record ids or passwords,
/// and handing out predictable ones would be worse than stopping.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[allow(clippy::expect_used)]
    openssl::rand::rand_bytes(&mut bytes).expect("the OS random generator failed");
    bytes
}

/// Hex SHA-256 of a token: sessions and pending requests are stored by hash, so a copy of the
/// database does not yield live cookies.
pub fn token_hash(token: &str) -> String {
    openssl::sha::sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random token for cookies and forms (256 bits, hex).
pub fn new_token() -> String {
    random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a secret cannot be sealed or opened; never includes the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {problem}. Fix: {fix}")]
    KeyFile {
        path: String,
        problem: String,
        fix: &'static str,
    },
    #[error("the secret key is invalid: {0}. Fix: give 32 random bytes, base64-encoded (openssl rand -base64 32)")]
    BadKey(String),
    #[error("a stored secret could not be decrypted (wrong key or damaged data)")]
    Open,
    #[error("encryption failed: {0}")]
    Seal(String),
}

/// Seals and opens secrets with one AES-256-GCM key.
#[derive(Clone)]
pub struct SecretBox {
    key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box from a base64 key (32 bytes).
    pub fn from_base64(key: &str) -> Result<Self, SecretError> {
        let bytes = BASE64
            .decode(key.trim())
            .map_err(|e| SecretError::BadKey(e.to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecretError::BadKey("it is not 32 bytes long".into()))?;
        Ok(Self { key })
    }

    /// Loads the key file, creating it (mode 0600) with a random key if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let key_error = |problem: String, fix| SecretError::KeyFile {
            path: path.display().to_string(),
            problem,
            fix,
        };
        if path.exists() {
            let meta =
                fs::metadata(path).map_err(|e| key_error(e.to_string(), "check the path"))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(key_error(
                    "the key file is readable by other users".into(),
                    "run `chmod 600` on it",
                ));
            }
            let text = fs::read_to_string(path)
                .map_err(|e| key_error(e.to_string(), "make it readable by idbridge"))?;
            return Self::from_base64(&text);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| key_error(e.to_string(), "create the directory"))?;
        }
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key).map_err(|e| SecretError::Seal(e.to_string()))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| key_error(e.to_string(), "check that the directory is writable"))?;
        file.write_all(BASE64.encode(key).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| key_error(e.to_string(), "check free disk space"))?;
        Ok(Self { key })
    }

    /// Encrypts `secret`; `context` (e.g. "m365.refresh_token") is authenticated, so a sealed
    /// value cannot be moved to another column.
    pub fn seal(&self, secret: &SecretString, context: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; 12];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| SecretError::Seal(e.to_string()))?;
        let mut tag = [0u8; 16];
        let ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            context.as_bytes(),
            secret.expose_secret().as_bytes(),
            &mut tag,
        )
        .map_err(|e| SecretError::Seal(e.to_string()))?;
        let mut sealed = Vec::with_capacity(12 + ciphertext.len() + 16);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed.extend_from_slice(&tag);
        Ok(format!("{VERSION}:{}", BASE64.encode(sealed)))
    }

    /// Decrypts a value made by [`SecretBox::seal`] with the same context.
    pub fn open(&self, sealed: &str, context: &str) -> Result<SecretString, SecretError> {
        let body = sealed
            .strip_prefix(&format!("{VERSION}:"))
            .ok_or(SecretError::Open)?;
        let bytes = BASE64.decode(body).map_err(|_| SecretError::Open)?;
        if bytes.len() < 28 {
            return Err(SecretError::Open);
        }
        let (nonce, rest) = bytes.split_at(12);
        let (ciphertext, tag) = rest.split_at(rest.len() - 16);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(nonce),
            context.as_bytes(),
            ciphertext,
            tag,
        )
        .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let sb = SecretBox::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = sb
            .seal(&SecretString::from("refresh-token-123".to_string()), "rt")
            .unwrap();
        assert!(!sealed.contains("refresh-token-123"));
        assert_eq!(
            sb.open(&sealed, "rt").unwrap().expose_secret(),
            "refresh-token-123"
        );
        assert!(
            sb.open(&sealed, "other").is_err(),
            "context is authenticated"
        );
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(
            again.open(&sealed, "rt").unwrap().expose_secret(),
            "refresh-token-123"
        );
        let other = SecretBox::from_base64(&BASE64.encode([9u8; 32])).unwrap();
        assert!(other.open(&sealed, "rt").is_err(), "wrong key fails");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(sb.open(&tampered, "rt").is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(SecretBox::from_base64("short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, BASE64.encode([1u8; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
