//! Time-based one-time passwords (RFC 6238) with the parameters every authenticator app
//! supports: SHA-1, six digits, 30-second steps, one step of clock drift either way.

use totp_rs::{Algorithm, Secret, TOTP};

/// Seconds per time step (RFC 6238 §4, the default X).
pub const STEP_SECONDS: u64 = 30;
/// Steps of drift accepted on either side of the current one (RFC 6238 §5.2 recommends at
/// most one).
const DRIFT_STEPS: u64 = 1;
/// Secret length in bytes: 160 bits, RFC 4226 §4's recommendation (totp-rs refuses < 128).
pub const SECRET_BYTES: usize = 20;

/// A TOTP generator for one secret.
pub struct Generator {
    totp: TOTP,
}

/// Why a TOTP generator cannot be made (a damaged or short secret).
#[derive(Debug, thiserror::Error)]
#[error("the TOTP secret cannot be used: {0}")]
pub struct TotpError(String);

impl Generator {
    /// A generator for `secret` (raw bytes), labelled for authenticator apps.
    pub fn new(secret: Vec<u8>, issuer: &str, account: &str) -> Result<Self, TotpError> {
        // totp-rs refuses ':' in the issuer and account of the otpauth URI.
        let clean = |s: &str| s.replace(':', " ");
        let totp = TOTP::new(
            Algorithm::SHA1,
            6,
            1,
            STEP_SECONDS,
            secret,
            Some(clean(issuer)),
            clean(account),
        )
        .map_err(|e| TotpError(e.to_string()))?;
        Ok(Self { totp })
    }

    /// A new random secret.
    pub fn new_secret() -> Vec<u8> {
        crate::secrets::random_bytes::<SECRET_BYTES>().to_vec()
    }

    /// The secret in base32, for typing into an app that cannot scan the QR code.
    pub fn secret_base32(&self) -> String {
        Secret::Raw(self.totp.secret.clone())
            .to_encoded()
            .to_string()
    }

    /// The `otpauth://totp/…` URI that authenticator apps scan.
    pub fn otpauth_uri(&self) -> String {
        self.totp.get_url()
    }

    /// The time step a typed code belongs to, if it matches the step at `unix_seconds` or
    /// one step either side. Compared in constant time.
    pub fn matching_step(&self, code: &str, unix_seconds: u64) -> Option<u64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now_step = unix_seconds / STEP_SECONDS;
        let first = now_step.saturating_sub(DRIFT_STEPS);
        (first..=now_step + DRIFT_STEPS).find(|step| {
            let expected = self.totp.generate(step * STEP_SECONDS);
            openssl::memcmp::eq(expected.as_bytes(), code.as_bytes())
        })
    }

    /// The code at a time (tests and the enrolment example use it).
    pub fn code_at(&self, unix_seconds: u64) -> String {
        self.totp.generate(unix_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_sha1_vectors() {
        // RFC 6238 Appendix B, SHA-1 seed "12345678901234567890", last six digits.
        let g = Generator::new(b"12345678901234567890".to_vec(), "idbridge", "a@b").unwrap();
        for (t, code) in [
            (59u64, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(g.code_at(t), code, "t={t}");
        }
    }

    #[test]
    fn accepts_one_step_of_drift_and_reports_the_step() {
        let g = Generator::new(Generator::new_secret(), "idbridge", "a@b").unwrap();
        let now = 1_700_000_000u64;
        let step = now / STEP_SECONDS;
        assert_eq!(g.matching_step(&g.code_at(now), now), Some(step));
        assert_eq!(g.matching_step(&g.code_at(now - 30), now), Some(step - 1));
        assert_eq!(g.matching_step(&g.code_at(now + 30), now), Some(step + 1));
        assert_eq!(g.matching_step(&g.code_at(now - 90), now), None);
        assert_eq!(g.matching_step("12345", now), None);
        assert_eq!(g.matching_step("abcdef", now), None);
        let spaced = format!("{} {}", &g.code_at(now)[..3], &g.code_at(now)[3..]);
        assert_eq!(g.matching_step(&spaced, now), Some(step));
    }

    #[test]
    fn the_uri_names_issuer_and_account() {
        let g = Generator::new(
            Generator::new_secret(),
            "Contoso: idbridge",
            "alice@contoso.com",
        )
        .unwrap();
        let uri = g.otpauth_uri();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains("issuer=Contoso"), "{uri}");
        assert!(uri.contains(&g.secret_base32()), "{uri}");
    }
}
