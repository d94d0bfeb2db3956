//! The SAML signing key and certificate on disk: loaded, or generated on first start; and
//! their rollover to a new key ([`rollover`]).

pub mod rollover;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::config::Config;
use crate::saml::SigningCredential;

/// Why the signing credential cannot be loaded or created; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {problem}. Fix: {fix}")]
    File {
        path: String,
        problem: String,
        fix: &'static str,
    },
    #[error("signing key/certificate: {0}. Fix: give a matching PEM key and certificate in certs.key_file and certs.cert_file, or remove both to generate new ones")]
    Invalid(String),
}

fn file_error(path: &Path, problem: impl ToString, fix: &'static str) -> CertError {
    CertError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
        fix,
    }
}

/// When the signing certificate no longer names the host idbridge serves (its CN came from
/// `base_url` at first start and `base_url` changed since): what to tell the operator.
/// Entra checks the certificate itself, not its name, so sign-ins keep working; the name only
/// misleads whoever reads it (and some other service providers compare it).
pub fn name_mismatch(config: &Config, credential: &SigningCredential) -> Option<String> {
    let expected = config.certificate_common_name();
    let subject = credential.subject();
    let names_it = subject
        .split(", ")
        .any(|part| part.strip_prefix("CN=") == Some(expected.as_str()));
    (!names_it).then(|| {
        format!(
            "the signing certificate names {subject}, but idbridge now serves {expected}. Roll it over to one that names {expected}: `idbridge cert next`, `idbridge cert promote`, `idbridge cert retire` (Microsoft 365 is told through Graph; a domain federated by hand gets the printed PowerShell)"
        )
    })
}

/// Loads the signing credential, or generates a key and self-signed certificate when neither
/// file exists. Returns the credential and whether it was generated now.
pub fn load_or_generate(config: &Config) -> Result<(SigningCredential, bool), CertError> {
    let key_path = &config.certs.key_file;
    let cert_path = &config.certs.cert_file;
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => {
            check_key_permissions(key_path)?;
            let key = fs::read(key_path)
                .map_err(|e| file_error(key_path, e, "make the key file readable by idbridge"))?;
            let cert = fs::read(cert_path)
                .map_err(|e| file_error(cert_path, e, "make the certificate readable"))?;
            let credential = SigningCredential::from_pem(&key, &cert)
                .map_err(|e| CertError::Invalid(e.to_string()))?;
            Ok((credential, false))
        }
        (false, false) => {
            let (credential, key_pem, cert_pem) = SigningCredential::generate(
                config.certs.key_bits,
                &config.certificate_common_name(),
                config.certs.validity_days,
            )
            .map_err(|e| CertError::Invalid(e.to_string()))?;
            write_new(key_path, &key_pem, 0o600)?;
            write_new(cert_path, &cert_pem, 0o644)?;
            Ok((credential, true))
        }
        (true, false) => Err(file_error(
            cert_path,
            "is missing while the signing key exists",
            "restore the certificate, or remove the key too to generate a new pair (Microsoft 365 must then be given the new certificate)",
        )),
        (false, true) => Err(file_error(
            key_path,
            "is missing while the certificate exists",
            "restore the key, or remove the certificate too to generate a new pair (Microsoft 365 must then be given the new certificate)",
        )),
    }
}

/// Loads the existing credential without generating one (for `cert show`).
pub fn load(config: &Config) -> Result<SigningCredential, CertError> {
    if !config.certs.key_file.exists() || !config.certs.cert_file.exists() {
        return Err(file_error(
            &config.certs.cert_file,
            "no signing certificate yet",
            "run `idbridge serve` once to generate it, or place your own key and certificate there",
        ));
    }
    load_or_generate(config).map(|(c, _)| c)
}

fn check_key_permissions(path: &Path) -> Result<(), CertError> {
    let meta = fs::metadata(path).map_err(|e| file_error(path, e, "check the path"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file_error(
            path,
            format!(
                "the private key is readable by other users (mode {:o})",
                meta.permissions().mode() & 0o777
            ),
            "run `chmod 600` on the key file",
        ));
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| file_error(dir, e, "create the directory or point certs.* elsewhere"))?;
    }
    // create_new + mode at open time: the key is never readable by others, not even briefly.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_error(path, e, "check that the directory is writable"))?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .map_err(|e| file_error(path, e, "check free disk space"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_naming_an_old_host_is_pointed_out_with_the_renewal() {
        let (credential, _, _) = SigningCredential::generate(2048, "old.contoso.com", 30).unwrap();
        let same = Config::from_toml("base_url = \"https://old.contoso.com\"").unwrap();
        assert_eq!(name_mismatch(&same, &credential), None);
        let moved = Config::from_toml("base_url = \"https://idp.contoso.com\"").unwrap();
        let warning = name_mismatch(&moved, &credential).expect("a warning");
        assert!(warning.contains("CN=old.contoso.com"), "{warning}");
        assert!(warning.contains("idp.contoso.com"), "{warning}");
        assert!(warning.contains("idbridge cert next"), "{warning}");
    }
}
