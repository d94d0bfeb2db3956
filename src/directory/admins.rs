//! Admin accounts of the console and API, and API keys. No HTTP here.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{generate_password, new_record_id, validate_username, Directory, DirectoryError};
use crate::events::{kind, Actor, NewEvent};
use crate::store::{AdminChange, AdminRow, AdminUpdate, ApiKeyRow, StoreError};

/// The start of every API key, so leaked keys are easy to recognise (secret scanners).
pub const API_KEY_PREFIX: &str = "idb_";

/// What an admin (or an API key) may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Everything.
    Admin,
    /// Read everything, change nothing.
    ReadOnly,
}

impl AdminRole {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::ReadOnly => "read_only",
        }
    }

    /// Parses `admin` or `read_only` (also `read-only`, `readonly`).
    pub fn parse(text: &str) -> Result<Self, DirectoryError> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "admin" | "full" | "full_admin" => Ok(AdminRole::Admin),
            "read_only" | "readonly" => Ok(AdminRole::ReadOnly),
            _ => Err(DirectoryError::UnknownRole(text.to_string())),
        }
    }

    /// Whether this role may change things.
    pub fn can_write(self) -> bool {
        self == AdminRole::Admin
    }
}

/// A change one admin makes to another admin's account (or the CLI to any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Refuse sign-in, end the sessions, refuse the API keys the admin created.
    Disable,
    /// Allow sign-in again.
    Enable,
    /// Remove the account (the API keys it created are revoked).
    Delete,
    /// Give the account another role.
    SetRole(AdminRole),
}

impl AdminAction {
    /// The verb, for messages ("you cannot disable your own admin account").
    pub fn verb(self) -> &'static str {
        match self {
            AdminAction::Disable => "disable",
            AdminAction::Enable => "enable",
            AdminAction::Delete => "delete",
            AdminAction::SetRole(_) => "change the role of",
        }
    }

    fn event(self) -> &'static str {
        match self {
            AdminAction::Disable => kind::ADMIN_DISABLE,
            AdminAction::Enable => kind::ADMIN_ENABLE,
            AdminAction::Delete => kind::ADMIN_DELETE,
            AdminAction::SetRole(_) => kind::ADMIN_ROLE_CHANGE,
        }
    }
}

/// An admin's password just reset: the one-time password is shown once.
#[derive(Debug)]
pub struct AdminReset {
    pub password: SecretString,
    /// Whether the admin's authenticator app and recovery codes were removed.
    pub mfa_removed: bool,
}

/// A key just created: the secret is shown once and never stored.
#[derive(Debug)]
pub struct NewApiKey {
    pub row: ApiKeyRow,
    pub key: SecretString,
}

impl Directory {
    /// Creates an admin account with a one-time password, returned once to be shown once.
    pub async fn create_admin(
        &self,
        actor: &Actor,
        username: &str,
        role: AdminRole,
        now: DateTime<Utc>,
    ) -> Result<SecretString, DirectoryError> {
        let username = validate_username(username)?;
        if self.store().find_admin(&username).await?.is_some() {
            return Err(DirectoryError::AdminExists(username));
        }
        let password = generate_password();
        let row = AdminRow {
            id: new_record_id(),
            username: username.clone(),
            password_hash: self.hash(&password).await?,
            role: role.as_str().into(),
            must_change_password: 1,
            created_at: now.timestamp_millis(),
            disabled_at: None,
        };
        let event = NewEvent::new(now, actor, kind::ADMIN_CREATE, Some(&username))
            .details(json!({"role": role.as_str()}));
        self.store()
            .insert_admin(&row, &event)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => DirectoryError::AdminExists(username.clone()),
                other => other.into(),
            })?;
        Ok(password)
    }

    /// Checks an admin's username and password; `None` when they do not match (the caller must
    /// not say which part was wrong). Takes the same time whether or not the admin exists.
    pub async fn authenticate_admin(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Option<AdminRow>, DirectoryError> {
        let admin = self
            .store()
            .find_admin(&username.trim().to_lowercase())
            .await?;
        let hash = admin.as_ref().map(|a| a.password_hash.clone());
        self.count_sign_in_check();
        let matched = self.check_password(password, hash.as_deref()).await?;
        Ok(if matched { admin } else { None })
    }

    /// Changes an admin's own password (policy applies; the one-time password must be
    /// replaced at first sign-in). Other sessions of the admin end.
    pub async fn change_admin_password(
        &self,
        admin: &AdminRow,
        new_password: &SecretString,
        keep_session: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        self.policy()
            .check(new_password.expose_secret(), &admin.username)?;
        let hash = self.hash(new_password).await?;
        let event = NewEvent::new(
            now,
            &Actor::Admin(admin.username.clone()),
            kind::ADMIN_PASSWORD_CHANGE,
            Some(&admin.username),
        );
        self.store()
            .set_admin_password(
                &admin.id,
                &hash,
                keep_session,
                now.timestamp_millis(),
                &event,
            )
            .await?;
        Ok(())
    }

    /// Disables, enables, deletes or changes the role of an admin account. `caller` is the
    /// admin making the change (none from the CLI): nobody changes their own account this way,
    /// and no change leaves zero active full admins. Refusals are events.
    pub async fn change_admin(
        &self,
        actor: &Actor,
        caller: Option<&str>,
        username: &str,
        action: AdminAction,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        let admin = self
            .admin_to_change(actor, caller, username, action.verb(), now)
            .await?;
        let now_ms = now.timestamp_millis();
        let by = actor.to_string();
        let update = match action {
            AdminAction::Disable => AdminUpdate::Disable(now_ms),
            AdminAction::Enable => AdminUpdate::Enable,
            AdminAction::Delete => AdminUpdate::Delete { by: &by, now_ms },
            AdminAction::SetRole(role) => AdminUpdate::Role(role.as_str()),
        };
        let details = match action {
            AdminAction::SetRole(role) => json!({"from": admin.role, "to": role.as_str()}),
            _ => json!({"role": admin.role}),
        };
        let event =
            NewEvent::new(now, actor, action.event(), Some(&admin.username)).details(details);
        self.apply_admin_change(actor, &admin, update, &[event], action.verb(), now)
            .await
    }

    /// Gives another admin a new one-time password (changed at their next sign-in), ends
    /// their sessions and, when `remove_mfa`, removes their authenticator app and recovery
    /// codes (for a lost phone). The password is returned once, to be shown once.
    pub async fn reset_admin_password(
        &self,
        actor: &Actor,
        caller: Option<&str>,
        username: &str,
        remove_mfa: bool,
        now: DateTime<Utc>,
    ) -> Result<AdminReset, DirectoryError> {
        let admin = self
            .admin_to_change(actor, caller, username, "reset the password of", now)
            .await?;
        let factors = self.store().admin_factor_counts(&admin.id).await?;
        let mfa_removed = remove_mfa && (factors.totp || factors.recovery_codes > 0);
        let password = generate_password();
        let hash = self.hash(&password).await?;
        let mut events = vec![NewEvent::new(
            now,
            actor,
            kind::ADMIN_PASSWORD_RESET,
            Some(&admin.username),
        )
        .details(json!({"mfaRemoved": mfa_removed}))];
        if mfa_removed {
            events.push(
                NewEvent::new(now, actor, kind::MFA_RESET, Some(&admin.username)).details(json!({
                    "account": "admin",
                    "totp": factors.totp,
                    "recoveryCodes": factors.recovery_codes,
                })),
            );
        }
        let update = AdminUpdate::ResetPassword {
            hash: &hash,
            remove_mfa,
        };
        self.apply_admin_change(actor, &admin, update, &events, "reset", now)
            .await?;
        Ok(AdminReset {
            password,
            mfa_removed,
        })
    }

    /// The admin named `username`, unless it is the caller's own account (refused, as an
    /// event).
    async fn admin_to_change(
        &self,
        actor: &Actor,
        caller: Option<&str>,
        username: &str,
        verb: &'static str,
        now: DateTime<Utc>,
    ) -> Result<AdminRow, DirectoryError> {
        let name = username.trim().to_lowercase();
        let admin = self
            .store()
            .find_admin(&name)
            .await?
            .ok_or_else(|| DirectoryError::NoAdmin(name.clone()))?;
        if caller.is_some_and(|c| c.eq_ignore_ascii_case(&admin.username)) {
            self.record_admin_refusal(actor, &admin.username, verb, "own_account", now)
                .await?;
            return Err(DirectoryError::OwnAccount(verb));
        }
        Ok(admin)
    }

    async fn apply_admin_change(
        &self,
        actor: &Actor,
        admin: &AdminRow,
        update: AdminUpdate<'_>,
        events: &[NewEvent],
        verb: &'static str,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        match self.store().update_admin(&admin.id, update, events).await? {
            AdminChange::Done => Ok(()),
            AdminChange::NotFound => Err(DirectoryError::NoAdmin(admin.username.clone())),
            AdminChange::LastAdmin => {
                self.record_admin_refusal(actor, &admin.username, verb, "last_admin", now)
                    .await?;
                Err(DirectoryError::LastAdmin(admin.username.clone()))
            }
        }
    }

    async fn record_admin_refusal(
        &self,
        actor: &Actor,
        username: &str,
        verb: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        let event = NewEvent::new(now, actor, kind::ADMIN_CHANGE_REFUSED, Some(username))
            .details(json!({"reason": reason, "change": verb}));
        self.store().record_event(&event).await?;
        Ok(())
    }

    /// Creates an API key; the key is returned once (only its hash is stored).
    pub async fn create_api_key(
        &self,
        actor: &Actor,
        name: &str,
        role: AdminRole,
        now: DateTime<Utc>,
    ) -> Result<NewApiKey, DirectoryError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(DirectoryError::ApiKeyName);
        }
        let secret = crate::secrets::new_token();
        let prefix = secret[..8].to_string();
        let key = format!("{API_KEY_PREFIX}{secret}");
        let row = ApiKeyRow {
            id: new_record_id(),
            name: name.to_string(),
            key_hash: crate::secrets::token_hash(&key),
            prefix: format!("{API_KEY_PREFIX}{prefix}"),
            role: role.as_str().into(),
            created_by: actor.to_string(),
            created_at: now.timestamp_millis(),
            last_used_at: None,
            revoked_at: None,
            revoked_by: None,
        };
        let event = NewEvent::new(now, actor, kind::API_KEY_CREATE, Some(name))
            .details(json!({"keyId": row.id, "prefix": row.prefix, "role": role.as_str()}));
        self.store().insert_api_key(&row, &event).await?;
        Ok(NewApiKey {
            row,
            key: SecretString::from(key),
        })
    }

    /// The live key matching `key`, if any.
    pub async fn verify_api_key(&self, key: &str) -> Result<Option<ApiKeyRow>, DirectoryError> {
        if !key.starts_with(API_KEY_PREFIX) || key.len() > 200 {
            return Ok(None);
        }
        let row = self
            .store()
            .find_api_key(&crate::secrets::token_hash(key))
            .await?;
        let Some(row) = row.filter(|r| r.revoked_at.is_none()) else {
            return Ok(None);
        };
        // A disabled admin's keys are refused while the admin is disabled.
        if self
            .store()
            .api_key_creator_disabled(&row.created_by)
            .await?
        {
            return Ok(None);
        }
        Ok(Some(row))
    }

    /// Revokes an API key; false when there is no such live key.
    pub async fn revoke_api_key(
        &self,
        actor: &Actor,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, DirectoryError> {
        let event = NewEvent::new(now, actor, kind::API_KEY_REVOKE, Some(id));
        Ok(self
            .store()
            .revoke_api_key(id, &actor.to_string(), now.timestamp_millis(), &event)
            .await?)
    }
}
