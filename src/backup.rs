//! Backups: one passphrase-encrypted file holding a consistent copy of the database and the
//! keys idbridge cannot work without (the SAML signing key and certificate, the data key that
//! seals Microsoft 365 tokens and TOTP secrets). `restore` brings it back into an empty data
//! directory. No HTTP here.
//!
//! The file is written by hand rather than as a tar inside an encryption tool: it is a short
//! list of named blobs in one AES-256-GCM envelope whose key comes from the passphrase through
//! argon2id, which needs nothing beyond the crates idbridge already trusts (openssl, argon2),
//! and authenticates the whole archive, names included.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::store::{Backend, Store, StoreError};

/// The first bytes of a backup file (and the AEAD's additional data).
const MAGIC: &[u8] = b"idbridge-backup-v1\n";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Names of the blobs in a backup.
const DATABASE: &str = "database.sqlite";
const SIGNING_KEY: &str = "signing.key";
const SIGNING_CERT: &str = "signing.crt";
const DATA_KEY: &str = "token.key";

/// Why a backup or a restore did not happen; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this is not an idbridge backup file")]
    NotABackup,
    #[error("the passphrase is wrong, or the backup file is damaged")]
    WrongPassphrase,
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("{0} already exists: restore only into an empty data directory (move the current files away first)")]
    NotEmpty(PathBuf),
    #[error("the database is PostgreSQL: back it up with pg_dump (e.g. `pg_dump -Fc -f idbridge.dump DBNAME`), and the keys with `idbridge backup FILE --keys-only`")]
    Postgres,
    #[error("the backup holds no database; restore it with `idbridge restore FILE --keys-only` after pg_restore")]
    KeysOnly,
    #[error("cannot derive the key from the passphrase: {0}")]
    Kdf(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// What a backup or a restore covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Names and sizes of the blobs, in the file's order.
    pub entries: Vec<(String, usize)>,
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the data key lives when it is a file (`None` when it is set inline in the config,
/// which the operator backs up with the config).
fn data_key_file(config: &Config) -> Option<PathBuf> {
    match config.m365.token_key {
        Some(_) => None,
        None => Some(
            config
                .m365
                .token_key_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("token.key")),
        ),
    }
}

/// The SQLite database file of the configuration, if it is SQLite.
fn sqlite_file(config: &Config) -> Option<PathBuf> {
    let url = config.database_url();
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// The key files of the configuration with their blob names.
fn key_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut files = vec![
        (SIGNING_KEY, config.certs.key_file.clone()),
        (SIGNING_CERT, config.certs.cert_file.clone()),
    ];
    if let Some(path) = data_key_file(config) {
        files.push((DATA_KEY, path));
    }
    files
}

/// Takes a consistent copy of the database (SQLite's `VACUUM INTO`, safe while the server
/// runs) and the keys, and seals them with `passphrase`. With `keys_only` the database is left
/// out (PostgreSQL is backed up with pg_dump).
pub async fn create(
    config: &Config,
    store: &Store,
    passphrase: &SecretString,
    keys_only: bool,
) -> Result<(Vec<u8>, Contents), BackupError> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    if !keys_only {
        if store.backend() != Backend::Sqlite {
            return Err(BackupError::Postgres);
        }
        let hex: String = crate::secrets::random_bytes::<8>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let copy = config.data_dir.join(format!(".backup-{hex}.sqlite"));
        store.vacuum_into(&copy.display().to_string()).await?;
        let bytes = std::fs::read(&copy).map_err(file_error(&copy));
        let _ = std::fs::remove_file(&copy);
        entries.push((DATABASE.into(), bytes?));
    }
    for (name, path) in key_files(config) {
        entries.push((
            name.into(),
            std::fs::read(&path).map_err(file_error(&path))?,
        ));
    }
    let contents = Contents {
        entries: entries.iter().map(|(n, b)| (n.clone(), b.len())).collect(),
    };
    Ok((seal(&entries, passphrase)?, contents))
}

/// Writes a backup's database and keys to the places the configuration names, which must not
/// exist yet. With `keys_only` a backup without a database is accepted.
pub fn restore(
    config: &Config,
    sealed: &[u8],
    passphrase: &SecretString,
    keys_only: bool,
) -> Result<Contents, BackupError> {
    let entries = open(sealed, passphrase)?;
    let find = |name: &str| entries.iter().find(|(n, _)| n == name).map(|(_, b)| b);
    let mut targets: Vec<(PathBuf, &Vec<u8>, u32)> = Vec::new();
    match (find(DATABASE), keys_only) {
        (Some(db), false) => {
            let path = sqlite_file(config).ok_or(BackupError::Postgres)?;
            targets.push((path, db, 0o600));
        }
        (None, false) => return Err(BackupError::KeysOnly),
        (_, true) => {}
    }
    for (name, path) in key_files(config) {
        let blob = find(name).ok_or_else(|| BackupError::Damaged(format!("{name} is missing")))?;
        let mode = if name == SIGNING_CERT { 0o644 } else { 0o600 };
        targets.push((path, blob, mode));
    }
    // Nothing is written unless every target is free: a restore never overwrites a live
    // installation halfway.
    if let Some((path, _, _)) = targets.iter().find(|(p, _, _)| p.exists()) {
        return Err(BackupError::NotEmpty(path.clone()));
    }
    for (path, blob, mode) in &targets {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(file_error(parent))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(path)
            .map_err(file_error(path))?;
        std::io::Write::write_all(&mut file, blob)
            .and_then(|()| file.sync_all())
            .map_err(file_error(path))?;
    }
    Ok(Contents {
        entries: entries.iter().map(|(n, b)| (n.clone(), b.len())).collect(),
    })
}

fn derive_key(passphrase: &SecretString, salt: &[u8]) -> Result<[u8; 32], BackupError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut key)
        .map_err(|e| BackupError::Kdf(e.to_string()))?;
    Ok(key)
}

/// Seals named blobs: MAGIC, salt, nonce, AES-256-GCM(entries), tag.
fn seal(entries: &[(String, Vec<u8>)], passphrase: &SecretString) -> Result<Vec<u8>, BackupError> {
    let mut plain = Vec::new();
    for (name, bytes) in entries {
        let name_len =
            u16::try_from(name.len()).map_err(|e| BackupError::Damaged(e.to_string()))?;
        plain.extend_from_slice(&name_len.to_be_bytes());
        plain.extend_from_slice(name.as_bytes());
        plain.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        plain.extend_from_slice(bytes);
    }
    let salt = crate::secrets::random_bytes::<SALT_LEN>();
    let nonce = crate::secrets::random_bytes::<NONCE_LEN>();
    let key = derive_key(passphrase, &salt)?;
    let mut tag = [0u8; TAG_LEN];
    let cipher = encrypt_aead(
        Cipher::aes_256_gcm(),
        &key,
        Some(&nonce),
        MAGIC,
        &plain,
        &mut tag,
    )
    .map_err(|e| BackupError::Crypto(e.to_string()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + SALT_LEN + NONCE_LEN + cipher.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&cipher);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a sealed backup into its named blobs.
fn open(sealed: &[u8], passphrase: &SecretString) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
    let body = sealed.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    if body.len() < SALT_LEN + NONCE_LEN + TAG_LEN {
        return Err(BackupError::NotABackup);
    }
    let (salt, rest) = body.split_at(SALT_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (cipher, tag) = rest.split_at(rest.len() - TAG_LEN);
    let key = derive_key(passphrase, salt)?;
    let plain = decrypt_aead(Cipher::aes_256_gcm(), &key, Some(nonce), MAGIC, cipher, tag)
        .map_err(|_| BackupError::WrongPassphrase)?;
    let mut entries = Vec::new();
    let mut rest: &[u8] = &plain;
    while !rest.is_empty() {
        let (name, after) = take(rest, 2)
            .and_then(|(len, after)| {
                let n = usize::from(u16::from_be_bytes([
                    len.first().copied()?,
                    len.get(1).copied()?,
                ]));
                take(after, n)
            })
            .ok_or_else(|| BackupError::Damaged("a name is cut short".into()))?;
        let (len, after) =
            take(after, 8).ok_or_else(|| BackupError::Damaged("a size is cut short".into()))?;
        let mut size = [0u8; 8];
        size.copy_from_slice(len);
        let n = usize::try_from(u64::from_be_bytes(size))
            .map_err(|e| BackupError::Damaged(e.to_string()))?;
        let (bytes, after) =
            take(after, n).ok_or_else(|| BackupError::Damaged("a file is cut short".into()))?;
        entries.push((String::from_utf8_lossy(name).into_owned(), bytes.to_vec()));
        rest = after;
    }
    Ok(entries)
}

/// The first `n` bytes and the rest, if there are `n`.
fn take(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_archive_opens_only_with_its_passphrase_and_intact() {
        let entries = vec![
            ("a".to_string(), b"first".to_vec()),
            ("b".to_string(), vec![0u8; 70_000]),
        ];
        let pass = SecretString::from("correct horse".to_string());
        let sealed = seal(&entries, &pass).unwrap();
        assert_eq!(open(&sealed, &pass).unwrap(), entries);
        let wrong = SecretString::from("wrong".to_string());
        assert!(matches!(
            open(&sealed, &wrong),
            Err(BackupError::WrongPassphrase)
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(matches!(
            open(&flipped, &pass),
            Err(BackupError::WrongPassphrase)
        ));
        assert!(matches!(
            open(b"not a backup", &pass),
            Err(BackupError::NotABackup)
        ));
    }
}
