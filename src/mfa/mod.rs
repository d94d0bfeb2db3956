//! Second factors: TOTP authenticators, recovery codes and (in `passkey`) WebAuthn, and the
//! policy of who must use one. No HTTP here (but in `http`, the passkey endpoints); time is a
//! parameter.

pub mod http;
pub mod passkey;
pub mod recovery;
pub mod totp;

use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

pub use crate::config::MfaPolicy;
use crate::directory::User;
use crate::events::{kind, Actor, NewEvent};
use crate::secrets::SecretBox;
use crate::store::{FactorOwner, Store, StoreError};

/// The sealed TOTP secret's context (AES-GCM additional data): it opens only in its column.
const TOTP_SECRET_CONTEXT: &str = "mfa_totp.secret";

/// A kind of second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKind {
    /// A TOTP code from an authenticator app.
    Totp,
    /// A WebAuthn passkey or security key.
    Passkey,
    /// A single-use recovery code.
    RecoveryCode,
}

impl FactorKind {
    /// The name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            FactorKind::Totp => "totp",
            FactorKind::Passkey => "passkey",
            FactorKind::RecoveryCode => "recovery_code",
        }
    }
}

/// Failures of the second-factor service (wrong codes are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a stored second-factor secret cannot be used: {0}")]
    Secret(String),
    #[error("{0} already has a confirmed authenticator app; remove it before adding another")]
    TotpExists(String),
    #[error("{0} has no authenticator app waiting to be confirmed; start again")]
    NoEnrolment(String),
}

/// A TOTP enrolment waiting for its confirming code: what the user scans or types.
#[derive(Debug, Clone)]
pub struct TotpEnrolment {
    /// The secret in base32 (for typing into the app).
    pub secret_base32: String,
    /// The `otpauth://` URI.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG `data:` URL for an `<img>`.
    pub qr_data_url: String,
}

/// The second factors a user has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Factors {
    /// A confirmed authenticator app.
    pub totp: bool,
    /// Registered passkeys.
    pub passkeys: i64,
    /// Unused recovery codes.
    pub recovery_codes: i64,
}

impl Factors {
    /// Whether the user can pass a second factor with something other than a recovery code
    /// (recovery codes alone do not count as enrolled).
    pub fn any(&self) -> bool {
        self.totp || self.passkeys > 0
    }
}

/// What a typed second-factor code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOutcome {
    /// Accepted, as this factor.
    Passed(FactorKind),
    /// Wrong, already used, or not a code.
    Wrong,
}

/// Whose second factor: what the store keys it by, the name authenticator apps show, and the
/// name events give as actor and target. Users and console admins share every check.
#[derive(Debug, Clone)]
pub struct Account<'a> {
    /// The factor's owner in the store.
    pub owner: FactorOwner<'a>,
    /// The account name shown in authenticator apps.
    pub label: String,
    /// Who acts when the owner passes or sets up a factor.
    pub actor: Actor,
    /// The name events show as target.
    pub target: &'a str,
}

impl<'a> Account<'a> {
    /// A directory user (apps show the email).
    pub fn user(user: &'a User) -> Self {
        Self {
            owner: FactorOwner::User(&user.id),
            label: user.email.clone(),
            actor: Actor::User(user.username.clone()),
            target: &user.username,
        }
    }

    /// A console admin (apps show the username and that it is the console).
    pub fn admin(admin_id: &'a str, username: &'a str) -> Self {
        Self {
            owner: FactorOwner::Admin(admin_id),
            label: format!("{username} (admin console)"),
            actor: Actor::Admin(username.to_string()),
            target: username,
        }
    }
}

/// The second-factor service.
#[derive(Debug, Clone)]
pub struct Mfa {
    store: Store,
    sealer: SecretBox,
    policy: MfaPolicy,
    issuer: String,
}

impl Mfa {
    /// The service; `issuer` names idbridge in authenticator apps.
    pub fn new(store: Store, sealer: SecretBox, policy: MfaPolicy, issuer: String) -> Self {
        Self {
            store,
            sealer,
            policy,
            issuer,
        }
    }

    /// The configured policy.
    pub fn policy(&self) -> MfaPolicy {
        self.policy
    }

    /// Whether the policy makes this user pass a second factor (enrolling first if needed).
    pub fn required_for(&self, user: &User) -> bool {
        match self.policy {
            MfaPolicy::Required => true,
            MfaPolicy::Chosen => user.mfa_required,
            MfaPolicy::Optional => false,
        }
    }

    /// The user's second factors.
    pub async fn factors(&self, user_id: &str) -> Result<Factors, MfaError> {
        let counts = self.store.factor_counts(user_id).await?;
        Ok(Factors {
            totp: counts.totp,
            passkeys: counts.passkeys,
            recovery_codes: counts.recovery_codes,
        })
    }

    fn generator(
        &self,
        account: &Account<'_>,
        secret: Vec<u8>,
    ) -> Result<totp::Generator, MfaError> {
        totp::Generator::new(secret, &self.issuer, &account.label)
            .map_err(|e| MfaError::Secret(e.to_string()))
    }

    fn open_secret(&self, sealed: &str) -> Result<Vec<u8>, MfaError> {
        let secret = self
            .sealer
            .open(sealed, TOTP_SECRET_CONTEXT)
            .map_err(|e| MfaError::Secret(e.to_string()))?;
        base64::engine::general_purpose::STANDARD
            .decode(secret.expose_secret())
            .map_err(|e| MfaError::Secret(e.to_string()))
    }

    fn enrolment(&self, generator: &totp::Generator) -> Result<TotpEnrolment, MfaError> {
        let uri = generator.otpauth_uri();
        let svg = qrcode::QrCode::new(uri.as_bytes())
            .map_err(|e| MfaError::Secret(e.to_string()))?
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(220, 220)
            .quiet_zone(true)
            .build();
        Ok(TotpEnrolment {
            secret_base32: generator.secret_base32(),
            otpauth_uri: uri,
            qr_data_url: format!(
                "data:image/svg+xml;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(svg)
            ),
        })
    }

    /// The enrolment waiting for its confirming code, or a new one. Showing the same secret
    /// again (a page reload, a wrong confirming code) keeps what the user already scanned.
    pub async fn totp_enrolment(
        &self,
        user: &User,
        now: DateTime<Utc>,
    ) -> Result<TotpEnrolment, MfaError> {
        self.account_totp_enrolment(&Account::user(user), now).await
    }

    /// [`totp_enrolment`](Self::totp_enrolment) for any account.
    pub async fn account_totp_enrolment(
        &self,
        account: &Account<'_>,
        now: DateTime<Utc>,
    ) -> Result<TotpEnrolment, MfaError> {
        if let Some(row) = self.store.totp(account.owner).await? {
            if row.confirmed_at.is_some() {
                return Err(MfaError::TotpExists(account.target.to_string()));
            }
            let generator = self.generator(account, self.open_secret(&row.secret)?)?;
            return self.enrolment(&generator);
        }
        let secret = totp::Generator::new_secret();
        let generator = self.generator(account, secret.clone())?;
        let sealed = self
            .sealer
            .seal(
                &SecretString::from(base64::engine::general_purpose::STANDARD.encode(&secret)),
                TOTP_SECRET_CONTEXT,
            )
            .map_err(|e| MfaError::Secret(e.to_string()))?;
        if !self
            .store
            .begin_totp_enrolment(account.owner, &sealed, now.timestamp_millis())
            .await?
        {
            return Err(MfaError::TotpExists(account.target.to_string()));
        }
        self.enrolment(&generator)
    }

    /// Checks a code against the account's authenticator app; confirms a waiting enrolment.
    /// A code is accepted once: its time step must be later than the last one accepted.
    async fn check_totp(
        &self,
        account: &Account<'_>,
        code: &str,
        now: DateTime<Utc>,
        want_confirmed: bool,
    ) -> Result<bool, MfaError> {
        let Some(row) = self.store.totp(account.owner).await? else {
            return Ok(false);
        };
        if row.confirmed_at.is_some() != want_confirmed {
            return Ok(false);
        }
        let generator = self.generator(account, self.open_secret(&row.secret)?)?;
        let unix = u64::try_from(now.timestamp()).unwrap_or_default();
        let Some(step) = generator.matching_step(code, unix) else {
            return Ok(false);
        };
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let event = (!want_confirmed).then(|| {
            NewEvent::new(
                now,
                &account.actor,
                kind::MFA_TOTP_ENROLLED,
                Some(account.target),
            )
        });
        Ok(self
            .store
            .take_totp_step(account.owner, step, now.timestamp_millis(), event.as_ref())
            .await?)
    }

    /// Confirms the waiting enrolment with a code from the app (recorded as an event).
    pub async fn confirm_totp(
        &self,
        user: &User,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, MfaError> {
        self.confirm_account_totp(&Account::user(user), code, now)
            .await
    }

    /// [`confirm_totp`](Self::confirm_totp) for any account.
    pub async fn confirm_account_totp(
        &self,
        account: &Account<'_>,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, MfaError> {
        match self.store.totp(account.owner).await? {
            Some(row) if row.confirmed_at.is_none() => {}
            Some(_) => return Err(MfaError::TotpExists(account.target.to_string())),
            None => return Err(MfaError::NoEnrolment(account.target.to_string())),
        }
        self.check_totp(account, code, now, false).await
    }

    /// Checks a typed second-factor code: a recovery code by its shape, else a TOTP code.
    pub async fn check_code(
        &self,
        user: &User,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<CodeOutcome, MfaError> {
        self.check_account_code(&Account::user(user), code, now)
            .await
    }

    /// [`check_code`](Self::check_code) for any account.
    pub async fn check_account_code(
        &self,
        account: &Account<'_>,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<CodeOutcome, MfaError> {
        if recovery::looks_like_code(code) {
            let used = self
                .store
                .use_recovery_code(
                    account.owner,
                    &recovery::digest(code),
                    now.timestamp_millis(),
                )
                .await?;
            if used {
                let left = self.owner_factors(account.owner).await?.recovery_codes;
                let event = NewEvent::new(
                    now,
                    &account.actor,
                    kind::MFA_RECOVERY_CODE_USED,
                    Some(account.target),
                )
                .details(json!({"codesLeft": left}));
                self.store.record_event(&event).await?;
                return Ok(CodeOutcome::Passed(FactorKind::RecoveryCode));
            }
            return Ok(CodeOutcome::Wrong);
        }
        Ok(if self.check_totp(account, code, now, true).await? {
            CodeOutcome::Passed(FactorKind::Totp)
        } else {
            CodeOutcome::Wrong
        })
    }

    /// The second factors of a user or an admin.
    pub async fn owner_factors(&self, owner: FactorOwner<'_>) -> Result<Factors, MfaError> {
        let counts = match owner {
            FactorOwner::User(id) => self.store.factor_counts(id).await?,
            FactorOwner::Admin(id) => self.store.admin_factor_counts(id).await?,
        };
        Ok(Factors {
            totp: counts.totp,
            passkeys: counts.passkeys,
            recovery_codes: counts.recovery_codes,
        })
    }

    /// Makes a new set of recovery codes (the old ones stop working) and returns them; they
    /// are shown once and only their digests are kept.
    pub async fn new_recovery_codes(
        &self,
        actor: &Actor,
        user: &User,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, MfaError> {
        self.new_account_recovery_codes(actor, &Account::user(user), now)
            .await
    }

    /// [`new_recovery_codes`](Self::new_recovery_codes) for any account.
    pub async fn new_account_recovery_codes(
        &self,
        actor: &Actor,
        account: &Account<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, MfaError> {
        let codes: Vec<String> = (0..recovery::COUNT).map(|_| recovery::new_code()).collect();
        let digests: Vec<String> = codes.iter().map(|c| recovery::digest(c)).collect();
        let event = NewEvent::new(
            now,
            actor,
            kind::MFA_RECOVERY_CODES_CREATED,
            Some(account.target),
        )
        .details(json!({"count": codes.len()}));
        self.store
            .replace_recovery_codes(account.owner, &digests, now.timestamp_millis(), &event)
            .await?;
        Ok(codes)
    }

    /// Removes the user's authenticator app.
    pub async fn remove_totp(
        &self,
        actor: &Actor,
        user: &User,
        now: DateTime<Utc>,
    ) -> Result<bool, MfaError> {
        self.remove_account_totp(actor, &Account::user(user), now)
            .await
    }

    /// [`remove_totp`](Self::remove_totp) for any account.
    pub async fn remove_account_totp(
        &self,
        actor: &Actor,
        account: &Account<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, MfaError> {
        let event = NewEvent::new(now, actor, kind::MFA_TOTP_REMOVED, Some(account.target));
        Ok(self.store.delete_totp(account.owner, &event).await?)
    }

    /// Removes every second factor of the user (an admin's reset for a lost device); under
    /// a policy that requires MFA the user enrols again at the next sign-in.
    pub async fn reset(
        &self,
        actor: &Actor,
        user: &User,
        now: DateTime<Utc>,
    ) -> Result<(), MfaError> {
        let before = self.factors(&user.id).await?;
        let event =
            NewEvent::new(now, actor, kind::MFA_RESET, Some(&user.username)).details(json!({
                "totp": before.totp,
                "passkeys": before.passkeys,
                "recoveryCodes": before.recovery_codes,
            }));
        self.store.reset_factors(&user.id, &event).await?;
        Ok(())
    }

    /// Sets whether the `chosen` policy requires the user's second factor.
    pub async fn set_required(
        &self,
        actor: &Actor,
        user: &User,
        required: bool,
        now: DateTime<Utc>,
    ) -> Result<(), MfaError> {
        let event = NewEvent::new(now, actor, kind::MFA_REQUIREMENT_SET, Some(&user.username))
            .details(json!({"required": required, "policy": self.policy}));
        self.store
            .set_mfa_required(&user.id, required, &event)
            .await?;
        Ok(())
    }
}
