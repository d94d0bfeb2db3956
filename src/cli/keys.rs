//! `idbridge admin key create|list|revoke`: API keys from the command line, through the same
//! directory code as the console's *Admins & API keys* page (same events, same hashing).

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::{fail, CliError, KeyCommand};
use crate::directory::{millis_to_rfc3339, AdminRole, Directory};
use crate::events::Actor;
use crate::store::ApiKeyRow;

/// One key as `list --json` prints it (never the key or its hash).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyLine<'a> {
    id: &'a str,
    name: &'a str,
    role: &'a str,
    /// The key's first characters, to recognise it (not enough to use it).
    prefix: &'a str,
    created_at: String,
    created_by: &'a str,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
    revoked_by: Option<&'a str>,
}

impl<'a> From<&'a ApiKeyRow> for KeyLine<'a> {
    fn from(k: &'a ApiKeyRow) -> Self {
        Self {
            id: &k.id,
            name: &k.name,
            role: &k.role,
            prefix: &k.prefix,
            created_at: millis_to_rfc3339(k.created_at),
            created_by: &k.created_by,
            last_used_at: k.last_used_at.map(millis_to_rfc3339),
            revoked_at: k.revoked_at.map(millis_to_rfc3339),
            revoked_by: k.revoked_by.as_deref(),
        }
    }
}

/// Runs one `admin key` command at `now`.
pub(super) async fn run(
    directory: &Directory,
    cmd: KeyCommand,
    now: DateTime<Utc>,
) -> Result<(), CliError> {
    let actor = Actor::cli();
    match cmd {
        KeyCommand::Create { name, role } => {
            let role = AdminRole::parse(&role).map_err(fail)?;
            // Names are not unique in the database (the console allows twins), but a script
            // revokes by name, so the command line keeps live names unambiguous.
            let keys = directory.store().list_api_keys().await.map_err(fail)?;
            if let Some(twin) = live_named(&keys, name.trim()).first() {
                return Err(CliError(format!(
                    "a live API key is already named {:?} (id {}); choose another name, or revoke that key first",
                    twin.name, twin.id
                )));
            }
            let created = directory
                .create_api_key(&actor, &name, role, now)
                .await
                .map_err(fail)?;
            println!();
            println!(
                "  API key created: {} ({})",
                created.row.name, created.row.role
            );
            println!("  id:              {}", created.row.id);
            println!("  key:             {}", created.key.expose_secret());
            println!("  It is shown only now (only its hash is stored). Send it as");
            println!("  `Authorization: Bearer <key>`.");
            println!();
        }
        KeyCommand::List { json } => {
            let keys = directory.store().list_api_keys().await.map_err(fail)?;
            for k in &keys {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&KeyLine::from(k)).map_err(fail)?
                    );
                } else {
                    println!(
                        "{}\t{}\t{}\t{}…\tcreated {} by {}\t{}\t{}",
                        k.id,
                        k.name,
                        k.role,
                        k.prefix,
                        millis_to_rfc3339(k.created_at),
                        k.created_by,
                        k.last_used_at
                            .map(|t| format!("last used {}", millis_to_rfc3339(t)))
                            .unwrap_or_else(|| "never used".into()),
                        k.revoked_at
                            .map(|t| format!("revoked {}", millis_to_rfc3339(t)))
                            .unwrap_or_else(|| "live".into()),
                    );
                }
            }
        }
        KeyCommand::Revoke { key } => {
            let keys = directory.store().list_api_keys().await.map_err(fail)?;
            let id = resolve(&keys, key.trim())?;
            if !directory
                .revoke_api_key(&actor, &id, now)
                .await
                .map_err(fail)?
            {
                // Revoked by someone else between the lookup and now.
                return Err(CliError(format!("API key {id} is already revoked")));
            }
            println!("revoked API key {id}; requests with it are refused from now on");
        }
    }
    Ok(())
}

/// The live keys named `name`.
fn live_named<'a>(keys: &'a [ApiKeyRow], name: &str) -> Vec<&'a ApiKeyRow> {
    keys.iter()
        .filter(|k| k.revoked_at.is_none() && k.name == name)
        .collect()
}

/// The id of the live key with this id or name, or why there is none.
fn resolve(keys: &[ApiKeyRow], key: &str) -> Result<String, CliError> {
    if let Some(k) = keys.iter().find(|k| k.id == key) {
        return match k.revoked_at {
            None => Ok(k.id.clone()),
            Some(at) => Err(CliError(format!(
                "API key {} ({}) was already revoked at {}",
                k.id,
                k.name,
                millis_to_rfc3339(at)
            ))),
        };
    }
    match live_named(keys, key).as_slice() {
        [one] => Ok(one.id.clone()),
        [] if keys.iter().any(|k| k.name == key) => Err(CliError(format!(
            "every API key named {key:?} is already revoked"
        ))),
        [] => Err(CliError(format!(
            "no API key has the id or name {key:?}; `idbridge admin key list` shows them"
        ))),
        several => Err(CliError(format!(
            "{} live API keys are named {key:?}; revoke one by id: {}",
            several.len(),
            several
                .iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, name: &str, revoked: bool) -> ApiKeyRow {
        ApiKeyRow {
            id: id.into(),
            name: name.into(),
            key_hash: format!("hash-{id}"),
            prefix: "idb_abcdefgh".into(),
            role: "admin".into(),
            created_by: "cli:test".into(),
            created_at: 0,
            last_used_at: None,
            revoked_at: revoked.then_some(1),
            revoked_by: None,
        }
    }

    #[test]
    fn a_key_is_found_by_id_or_by_the_name_of_one_live_key() {
        let keys = [
            key("k1", "ci", true),
            key("k2", "ci", false),
            key("k3", "x", false),
        ];
        assert_eq!(resolve(&keys, "k3").unwrap(), "k3");
        assert_eq!(
            resolve(&keys, "ci").unwrap(),
            "k2",
            "the revoked twin is ignored"
        );
        assert!(resolve(&keys, "k1")
            .unwrap_err()
            .0
            .contains("already revoked"));
        assert!(resolve(&keys, "nope")
            .unwrap_err()
            .0
            .contains("admin key list"));
        let twins = [key("a", "ci", false), key("b", "ci", false)];
        let err = resolve(&twins, "ci").unwrap_err().0;
        assert!(err.contains("revoke one by id: a, b"), "{err}");
    }
}
