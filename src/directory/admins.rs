//! Admin accounts of the console and API, and API keys. No HTTP here.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{generate_password, new_record_id, validate_username, Directory, DirectoryError};
use crate::events::{kind, Actor, NewEvent};
use crate::store::{AdminRow, ApiKeyRow, StoreError};

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
        Ok(row.filter(|r| r.revoked_at.is_none()))
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
