//! The command line: `serve`, `migrate`, `user …`, `admin …`, `cert show`, `events`, `m365 …`.
//!
//! Commands other than `serve` open the database directly (SQLite in WAL mode lets them run
//! beside a live server), so admins can script without an API key.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::attributes::{Attribute, AttributeSpec, Kind, CATALOGUE};
use crate::binding::BindingState;
use crate::config::Config;
use crate::directory::{AdminAction, Directory, User, UserChanges, UserState};
use crate::events::Actor;
use crate::store::{EventFilter, Store, UserListQuery};

mod cert;
mod keys;
mod wait;

/// idbridge: directory integration and SAML identity provider for Microsoft 365.
#[derive(Parser, Debug)]
#[command(
    name = "idbridge",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILD_GIT_REVISION"), ")"),
    about
)]
pub struct Cli {
    /// Configuration file (default: idbridge.toml when present).
    #[arg(long, global = true, env = "IDBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the server (migrates the database and creates the signing certificate if needed).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Write a passphrase-encrypted backup of the database and the keys to FILE (safe while
    /// the server runs; the passphrase is prompted twice, or read from the first line of stdin).
    Backup {
        file: PathBuf,
        /// Only the keys (for PostgreSQL, whose database pg_dump backs up).
        #[arg(long)]
        keys_only: bool,
    },
    /// Restore a backup into an empty data directory (the configured database and key paths
    /// must not exist).
    Restore {
        file: PathBuf,
        /// Only the keys (after pg_restore of a PostgreSQL database).
        #[arg(long)]
        keys_only: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to standard output.
    Manpage,
    /// Check the configuration, or print every setting's default.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage directory users.
    #[command(subcommand)]
    User(Box<UserCommand>),
    /// Manage admin accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Inspect the SAML signing certificate, and roll it over to a new one.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Connect Microsoft 365, list and import its users.
    #[command(subcommand)]
    M365(M365Command),
    /// List Directory Insights events, newest first.
    Events {
        /// Only this event type (e.g. user_create).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events about this target (e.g. a username).
        #[arg(long)]
        target: Option<String>,
        /// Only events by this actor (e.g. admin:ops, apikey:ci, cli:root, system).
        #[arg(long)]
        actor: Option<String>,
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-23T11:15:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines, as the API's /api/v1/events.jsonl export does.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user. The password is read from a prompt (or stdin) with --password.
    Add {
        username: String,
        #[command(flatten)]
        attrs: AttributeArgs,
        /// Set a password now (prompted twice, or read from the first line of stdin).
        #[arg(long)]
        password: bool,
    },
    /// List users.
    List {
        /// Filter by username, email or name.
        #[arg(long)]
        search: Option<String>,
        /// At most this many users (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Skip this many users first (for the next page).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        offset: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Leave out the header line of the table (for scripts).
        #[arg(long)]
        no_header: bool,
    },
    /// Show one user (by username, email or id).
    Show {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Change attributes; an empty value clears an optional attribute.
    Set {
        user: String,
        /// New username.
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        attrs: AttributeArgs,
    },
    /// Set a user's password (prompted twice, or read from the first line of stdin).
    Passwd { user: String },
    /// Suspend a user: sign-in is refused and sessions end.
    Suspend { user: String },
    /// Re-activate a suspended user.
    Activate { user: String },
    /// Delete a user (not allowed while bound to Microsoft 365).
    Delete { user: String },
    /// Make the user choose a new password at their next sign-in.
    RequirePasswordChange { user: String },
    /// The user's second factors.
    #[command(subcommand)]
    Mfa(MfaCommand),
}

/// `user mfa …`
#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Show the user's second factors.
    Show { user: String },
    /// Remove every second factor of the user (a lost phone); under a policy that requires
    /// MFA they enrol again at the next sign-in.
    Reset { user: String },
    /// Require a second factor of the user under the `chosen` policy (`--off` to stop).
    Require {
        user: String,
        #[arg(long)]
        off: bool,
    },
}

/// User attributes settable from the command line: one flag per attribute of the catalogue
/// (but the username), named by its product name (`--jobTitle`,
/// `--addresses.work.streetAddress`); earlier flags (`--job-title`, `--work-street-address`)
/// still work.
#[derive(Debug, Default)]
pub struct AttributeArgs {
    changes: UserChanges,
}

impl AttributeArgs {
    /// The attributes that have a flag here (the username is an argument of its own).
    fn specs() -> impl Iterator<Item = &'static AttributeSpec> {
        CATALOGUE
            .iter()
            .filter(|s| s.attribute != Attribute::Username)
    }

    fn into_changes(self, username: Option<String>) -> UserChanges {
        let mut changes = self.changes;
        if let Some(username) = username {
            changes.set(Attribute::Username, username);
        }
        changes
    }
}

impl clap::FromArgMatches for AttributeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for spec in Self::specs() {
            if let Some(value) = matches.try_get_one::<String>(spec.name).ok().flatten() {
                self.changes.set(spec.attribute, value.clone());
            }
        }
        Ok(())
    }
}

impl Args for AttributeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Self::specs().fold(cmd, |cmd, spec| {
            let value_name = match spec.kind {
                Kind::Email => "EMAIL",
                Kind::Phone => "PHONE",
                Kind::UserRef => "USER",
                Kind::Text | Kind::Username => "TEXT",
            };
            cmd.arg(
                clap::Arg::new(spec.name)
                    .long(spec.flag())
                    .aliases(spec.flag_aliases())
                    .value_name(value_name)
                    .help(spec.description()),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Subcommand, Debug)]
pub enum M365Command {
    /// Connect the tenant: prints the consent URL for an admin to open (delegated), or connects
    /// with the app registration's own credentials (--client-credentials).
    Connect {
        /// Use application permissions (client credentials) instead of an admin's consent.
        #[arg(long)]
        client_credentials: bool,
        /// Only print the consent URL; do not wait for the connection to complete.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the connection: tenant, default domain, since when, by whom, or what to fix.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the tenant's users and whether each is already imported or bound.
    Users {
        #[arg(long)]
        json: bool,
    },
    /// Import tenant users (by userPrincipalName or object ID, or --all).
    Import {
        /// Import every tenant user not imported yet.
        #[arg(long, conflicts_with = "users")]
        all: bool,
        /// userPrincipalNames or object IDs.
        users: Vec<String>,
    },
    /// Bind users to Microsoft 365: their M365 accounts are created or adopted, stamped with an
    /// immutable ID and kept in sync by the running server.
    Bind {
        /// Bind every user not bound yet.
        #[arg(long, conflicts_with = "users")]
        all: bool,
        /// Usernames or emails.
        users: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Unbind users: SAML sign-in stops at once and their M365 accounts are blocked from
    /// signing in (not deleted).
    Unbind {
        /// Usernames or emails.
        #[arg(required = true)]
        users: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show the attribute export table, or set an optional attribute's direction.
    Attributes {
        #[command(subcommand)]
        action: Option<AttributesAction>,
    },
    /// Show what is waiting for or failed to reach Microsoft 365 (all users, or one).
    Sync {
        /// One user (username or email): binding, last sync, queued and failed changes.
        user: Option<String>,
        /// Queue failed changes again.
        #[arg(long)]
        retry: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the tenant's domains: managed, federated to idbridge (and where Microsoft's
    /// settings differ from idbridge's) or to another provider.
    Domains {
        #[arg(long)]
        json: bool,
    },
    /// Federate a domain to idbridge through Graph: its users then sign in here. Without
    /// --yes, only shows who it affects and what would be sent (and the PowerShell equivalent).
    Federate {
        /// The domain, e.g. contoso.com (verified, not the initial onmicrosoft.com one).
        domain: String,
        /// Federate although some of the domain's users are not bound (they could no longer
        /// sign in to Microsoft 365).
        #[arg(long)]
        yes: bool,
        /// Needed when the domain is the tenant's default domain.
        #[arg(long)]
        default: bool,
    },
    /// Make a domain federated to idbridge managed again: Microsoft 365 checks the passwords.
    Unfederate {
        domain: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Deactivate the connection: users stay active in Microsoft 365 and here; every binding
    /// is cleared.
    Deactivate {
        /// Confirm (the bindings of all users are cleared).
        #[arg(long)]
        yes: bool,
    },
}

/// `--wait` and `--timeout` of `m365 bind` and `m365 unbind`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Return only when Microsoft 365 has the change (the running server delivers it); print
    /// each failure with Microsoft's message and exit non-zero if any.
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this many seconds (what is still pending is listed).
    #[arg(long, default_value_t = 300, requires = "wait", value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum AttributesAction {
    /// Set an optional attribute's direction: export (overwrites Microsoft 365's value for
    /// every bound user at once), import (follows Microsoft 365) or exclude.
    Set {
        /// The attribute, e.g. department or phoneNumbers.work.number.
        attribute: String,
        /// export, import or exclude.
        direction: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create an admin account and print its one-time password once.
    Create {
        username: String,
        /// admin (everything) or read_only (sees everything, changes nothing).
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Disable an admin: signed out at once, sign-in and the API keys they created refused
    /// until enabled (never the last active full admin).
    Disable { username: String },
    /// Enable a disabled admin again.
    Enable { username: String },
    /// Delete an admin; the API keys they created are revoked (never the last active full
    /// admin).
    Delete { username: String },
    /// Give an admin a new one-time password, printed once, and sign them out everywhere.
    ResetPassword {
        username: String,
        /// Also remove their authenticator app and recovery codes (a lost phone).
        #[arg(long)]
        remove_mfa: bool,
    },
    /// Manage API keys of the JSON API.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Lift a sign-in lock: an account name (console admin or directory user, both forms)
    /// and/or a client address.
    Unlock {
        /// The sign-in name whose lock and failure count are cleared.
        name: Option<String>,
        /// A client address whose lock and failure count are cleared.
        #[arg(long)]
        address: Option<std::net::IpAddr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key and print it once (only its hash is stored).
    Create {
        /// A name saying who or what uses the key (unique among live keys).
        name: String,
        /// admin (read and write) or read_only (reads only).
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// List API keys (never the keys themselves): id, name, role, created, last used.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key (by id, or by the name of a live key): requests with it are refused.
    Revoke {
        /// The key's id or name.
        key: String,
    },
}

/// `config …`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Read and validate the configuration (file and IDBRIDGE_* variables) and print the
    /// effective settings, secrets left out.
    Check,
    /// Print settings as TOML.
    Show {
        /// Every setting with its default value (the full reference).
        #[arg(long)]
        defaults: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Print the signing certificate's subject, fingerprint and validity.
    Show {
        /// Print only the base64 DER of the certificate: the `signingCertificate` value that
        /// Microsoft Entra ID's federation settings take.
        #[arg(long)]
        der_base64: bool,
    },
    /// Rollover, step 1: make the next key and certificate, publish them in the metadata and
    /// have Microsoft 365 trust them (`nextSigningCertificate` of every federated domain).
    Next,
    /// Rollover, step 2: sign with the next certificate (Microsoft 365 gets it as
    /// `signingCertificate`; the old one stays trusted as `nextSigningCertificate`).
    Promote,
    /// Rollover, step 3: stop publishing and trusting the previous certificate.
    Retire {
        /// Retire even though Responses it signed may still be on their way (a few minutes
        /// after the promotion).
        #[arg(long)]
        yes: bool,
    },
    /// Give up a prepared next certificate before it is promoted.
    Discard,
}

/// A CLI failure: printed as one line to stderr, exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    // Generated from the command definition itself, so they never drift from it; no
    // configuration needed (the package build runs them).
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "idbridge", &mut script);
            return std::io::stdout().write_all(&script).map_err(fail);
        }
        Command::Manpage => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map_err(fail)?;
            return Ok(());
        }
        _ => {}
    }
    if let Command::Config(ConfigCommand::Show { defaults: true }) = &cli.command {
        print!("{}", Config::defaults_toml().map_err(fail)?);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref()).map_err(fail)?;
    for name in Config::ignored_env_vars() {
        tracing::warn!(variable = %name, "ignoring an IDBRIDGE_ environment variable that names no setting (set by a container platform?); rename it if it was meant as a setting");
    }
    match cli.command {
        Command::Backup { file, keys_only } => {
            if file.exists() {
                return Err(CliError(format!(
                    "{} exists; choose a new file name (a backup never overwrites one)",
                    file.display()
                )));
            }
            let passphrase = read_secret("Backup passphrase")?;
            let store = open_store(&config).await?;
            let (sealed, contents) = crate::backup::create(&config, &store, &passphrase, keys_only)
                .await
                .map_err(fail)?;
            store.close().await;
            write_private_bytes(&file, &sealed).map_err(fail)?;
            for (name, size) in contents.entries {
                println!("  {name:<16} {size:>12} bytes");
            }
            println!(
                "backup written to {} (keep the passphrase apart from it)",
                file.display()
            );
            Ok(())
        }
        Command::Restore { file, keys_only } => {
            let sealed =
                std::fs::read(&file).map_err(|e| CliError(format!("{}: {e}", file.display())))?;
            let passphrase = read_secret("Backup passphrase")?;
            let contents =
                crate::backup::restore(&config, &sealed, &passphrase, keys_only).map_err(fail)?;
            for (name, size) in contents.entries {
                println!("  {name:<16} {size:>12} bytes");
            }
            println!("restored; start idbridge with this configuration");
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            print!("{}", config.to_redacted_toml().map_err(fail)?);
            for name in Config::ignored_env_vars() {
                eprintln!("note: {name} names no setting and is ignored (settings are IDBRIDGE_<SECTION>__<KEY>, e.g. IDBRIDGE_SAML__ISSUER)");
            }
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Config(ConfigCommand::Show { .. }) => {
            print!("{}", config.to_redacted_toml().map_err(fail)?);
            Ok(())
        }
        // Answered above, before the configuration is read.
        Command::Completions { .. } | Command::Manpage => Ok(()),
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let store = open_store(&config).await?;
            println!("database is up to date");
            store.close().await;
            Ok(())
        }
        Command::Cert(cmd) => cert::run(&config, cmd).await,
        Command::Admin(AdminCommand::Create { username, role }) => {
            let directory = open_directory(&config).await?;
            let password = directory
                .create_admin(
                    &Actor::cli(),
                    &username,
                    crate::directory::AdminRole::parse(&role).map_err(fail)?,
                    Utc::now(),
                )
                .await
                .map_err(fail)?;
            print_one_time_password(&username, &password);
            Ok(())
        }
        Command::Admin(AdminCommand::Disable { username }) => {
            change_admin(&config, &username, AdminAction::Disable, "disabled").await
        }
        Command::Admin(AdminCommand::Enable { username }) => {
            change_admin(&config, &username, AdminAction::Enable, "enabled").await
        }
        Command::Admin(AdminCommand::Delete { username }) => {
            change_admin(&config, &username, AdminAction::Delete, "deleted").await
        }
        Command::Admin(AdminCommand::ResetPassword {
            username,
            remove_mfa,
        }) => {
            let directory = open_directory(&config).await?;
            let result = directory
                .reset_admin_password(&Actor::cli(), None, &username, remove_mfa, Utc::now())
                .await;
            directory.store().close().await;
            let reset = result.map_err(fail)?;
            use secrecy::ExposeSecret;
            println!();
            println!(
                "  Password reset for admin: {}",
                username.trim().to_lowercase()
            );
            println!(
                "  One-time password:        {}",
                reset.password.expose_secret()
            );
            println!("  It is shown only now; it must be changed at the next sign-in.");
            if reset.mfa_removed {
                println!("  Their authenticator app and recovery codes were removed.");
            }
            println!();
            let _ = std::io::stdout().flush();
            Ok(())
        }
        Command::Admin(AdminCommand::Key(cmd)) => {
            let directory = open_directory(&config).await?;
            let result = keys::run(&directory, cmd, Utc::now()).await;
            directory.store().close().await;
            result
        }
        Command::Admin(AdminCommand::Unlock { name, address }) => {
            if name.is_none() && address.is_none() {
                return Err(CliError(
                    "name an account to unlock, or give --address IP".into(),
                ));
            }
            let store = open_store(&config).await?;
            if let Some(name) = &name {
                let had = crate::throttle::unlock_account(&store, name)
                    .await
                    .map_err(fail)?;
                println!(
                    "{}: {}",
                    crate::throttle::normalise(name),
                    if had {
                        "unlocked"
                    } else {
                        "had no failed sign-ins"
                    }
                );
            }
            if let Some(ip) = address {
                let had = crate::throttle::unlock_address(&store, &ip.to_string())
                    .await
                    .map_err(fail)?;
                println!(
                    "{ip}: {}",
                    if had {
                        "unlocked"
                    } else {
                        "had no failed sign-ins"
                    }
                );
            }
            store.close().await;
            Ok(())
        }
        Command::Events {
            event_type,
            target,
            actor,
            since,
            until,
            limit,
            json,
        } => {
            if let Some(t) = event_type.as_deref() {
                if !crate::events::kind::ALL.contains(&t) {
                    // An unknown type would list nothing, as if nothing had happened.
                    let near: Vec<&str> = crate::events::kind::ALL
                        .iter()
                        .copied()
                        .filter(|k| {
                            let stem = t.split('_').next().unwrap_or(t);
                            k.starts_with(stem) || k.contains(t)
                        })
                        .collect();
                    let known = if near.is_empty() {
                        crate::events::kind::ALL.join(", ")
                    } else {
                        near.join(", ")
                    };
                    return Err(CliError(format!(
                        "unknown event type {t:?}; {}: {known}",
                        if near.is_empty() {
                            "the types are"
                        } else {
                            "did you mean one of"
                        }
                    )));
                }
            }
            let filter = EventFilter {
                event_type,
                target,
                actor,
                since: rfc3339_arg("--since", since.as_deref())?,
                until: rfc3339_arg("--until", until.as_deref())?,
                limit,
                ..EventFilter::default()
            };
            let store = open_store(&config).await?;
            if json {
                let result = print_events_jsonl(&store, filter).await;
                store.close().await;
                return result;
            }
            let rows = store.list_events(&filter).await.map_err(fail)?;
            for e in rows {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    crate::directory::millis_to_rfc3339(e.at),
                    e.event_type,
                    e.actor,
                    e.target.unwrap_or_default(),
                    e.details
                );
            }
            Ok(())
        }
        Command::User(cmd) => user_command(&config, *cmd).await,
        Command::M365(cmd) => m365_command(&config, cmd).await,
    }
}

/// An optional RFC 3339 argument as milliseconds, refused with an example when malformed.
fn rfc3339_arg(flag: &str, value: Option<&str>) -> Result<Option<i64>, CliError> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    CliError(format!(
                        "{flag} must be an RFC 3339 time such as 2026-11-23T11:15:00Z (got {text:?})"
                    ))
                })
        })
        .transpose()
}

/// Prints the events of `filter` (at most its limit) as JSON lines, with the same writer as
/// the API's `/api/v1/events.jsonl`.
async fn print_events_jsonl(store: &Store, filter: EventFilter) -> Result<(), CliError> {
    use futures_util::StreamExt;
    let max = if filter.limit > 0 { filter.limit } else { 50 };
    let pages = crate::admin::api::events::jsonl_pages(store.clone(), filter, max);
    futures_util::pin_mut!(pages);
    let mut out = std::io::stdout().lock();
    while let Some(page) = pages.next().await {
        out.write_all(&page.map_err(fail)?).map_err(fail)?;
    }
    out.flush().map_err(fail)
}

async fn serve(config: Config) -> Result<(), CliError> {
    let app = crate::server::App::build(config).await.map_err(fail)?;
    let state = app.state.clone();
    if app.generated_certificate {
        tracing::info!(
            fingerprint = %state.idp.signing().fingerprint_sha256(),
            file = %state.config.certs.cert_file.display(),
            "generated a new SAML signing key and self-signed certificate"
        );
    }
    if state.store.count_admins().await.map_err(fail)? == 0 {
        let password = state
            .directory
            .create_admin(
                &Actor::System,
                "admin",
                crate::directory::AdminRole::Admin,
                Utc::now(),
            )
            .await
            .map_err(fail)?;
        print_one_time_password("admin", &password);
        // Under systemd stdout is the journal, which others may read and which rotates: the
        // password also goes to a file only its owner reads, removed by hand once used.
        let file = state.config.data_dir.join(FIRST_ADMIN_PASSWORD_FILE);
        match write_private(&file, &password) {
            Ok(()) => println!(
                "  Also written to {} (mode 0600; delete it once you signed in)",
                file.display()
            ),
            Err(err) => {
                tracing::warn!(file = %file.display(), %err, "could not write the first admin's one-time password to a file")
            }
        }
        println!(
            "  Sign in to the admin console at {}/admin\n",
            state.config.base_url
        );
    }
    let listener = crate::server::bind(&state.config).await.map_err(fail)?;
    tracing::info!(
        listen = %state.config.listen,
        base_url = %state.config.base_url,
        metadata = %format!("{}/saml/metadata", state.config.base_url),
        console = %format!("{}/admin", state.config.base_url),
        "idbridge is serving"
    );
    crate::server::run(app, listener, crate::server::shutdown_signal())
        .await
        .map_err(fail)
}

/// The file in `data_dir` holding the first admin's one-time password (mode 0600).
const FIRST_ADMIN_PASSWORD_FILE: &str = "initial-admin-password";

/// Writes a secret to a file only its owner can read (replacing an older one).
fn write_private(path: &std::path::Path, secret: &SecretString) -> std::io::Result<()> {
    use secrecy::ExposeSecret;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    write_private_bytes(path, format!("{}\n", secret.expose_secret()).as_bytes())
}

/// Prints a one-time password to stdout (never to the log), once.
/// `admin disable|enable|delete`: the same rules as the console (never the last active full
/// admin), from the command line.
async fn change_admin(
    config: &Config,
    username: &str,
    action: AdminAction,
    done: &str,
) -> Result<(), CliError> {
    let directory = open_directory(config).await?;
    let result = directory
        .change_admin(&Actor::cli(), None, username, action, Utc::now())
        .await;
    directory.store().close().await;
    result.map_err(fail)?;
    println!("admin {}: {done}", username.trim().to_lowercase());
    Ok(())
}

fn print_one_time_password(username: &str, password: &SecretString) {
    use secrecy::ExposeSecret;
    println!();
    println!("  Admin account created: {username}");
    println!("  One-time password:     {}", password.expose_secret());
    println!("  It is shown only now; you must change it at first sign-in.");
    println!();
    let _ = std::io::stdout().flush();
}

async fn open_store(config: &Config) -> Result<Store, CliError> {
    let store = Store::connect(&config.database_url()).await.map_err(fail)?;
    store.migrate().await.map_err(fail)?;
    Ok(store)
}

async fn open_directory(config: &Config) -> Result<Directory, CliError> {
    let key = crate::m365::data_key(config).map_err(fail)?;
    Ok(
        Directory::new(open_store(config).await?, config.password_policy.clone())
            .with_password_sealer(key),
    )
}

async fn mfa_command(
    directory: &Directory,
    mfa: &crate::mfa::Mfa,
    actor: &Actor,
    cmd: MfaCommand,
    now: chrono::DateTime<Utc>,
) -> Result<(), CliError> {
    match cmd {
        MfaCommand::Show { user } => {
            let u = directory.get_user(&user).await.map_err(fail)?;
            let f = mfa.factors(&u.id).await.map_err(fail)?;
            println!("user:            {}", u.username);
            println!("policy:          {:?}", mfa.policy());
            println!("required:        {}", mfa.required_for(&u));
            println!("authenticator:   {}", if f.totp { "yes" } else { "no" });
            println!("passkeys:        {}", f.passkeys);
            println!("recovery codes:  {} unused", f.recovery_codes);
        }
        MfaCommand::Reset { user } => {
            let u = directory.get_user(&user).await.map_err(fail)?;
            mfa.reset(actor, &u, now).await.map_err(fail)?;
            println!("removed every second factor of {}", u.username);
        }
        MfaCommand::Require { user, off } => {
            let u = directory.get_user(&user).await.map_err(fail)?;
            mfa.set_required(actor, &u, !off, now).await.map_err(fail)?;
            if mfa.policy() != crate::mfa::MfaPolicy::Chosen {
                eprintln!(
                    "note: the policy is {:?}; this setting counts only with [mfa] policy = \"chosen\"",
                    mfa.policy()
                );
            }
            println!(
                "{} {} a second factor",
                u.username,
                if off { "no longer needs" } else { "now needs" }
            );
        }
    }
    Ok(())
}

async fn user_command(config: &Config, cmd: UserCommand) -> Result<(), CliError> {
    let directory = open_directory(config).await?;
    let actor = Actor::cli();
    let now = Utc::now();
    match cmd {
        UserCommand::Add {
            username,
            attrs,
            password,
        } => {
            let password = if password {
                Some(read_password()?)
            } else {
                None
            };
            let changes = attrs.into_changes(Some(username));
            let user = directory
                .create_user(&actor, &changes, password.as_ref(), now)
                .await
                .map_err(fail)?;
            println!("created user {} ({})", user.username, user.id);
        }
        UserCommand::List {
            search,
            limit,
            offset,
            json,
            no_header,
        } => {
            let users = directory
                .list_users(&UserListQuery {
                    search,
                    limit,
                    offset,
                })
                .await
                .map_err(fail)?;
            if !json && !no_header {
                println!("USERNAME\tEMAIL\tNAME\tSTATE\tMICROSOFT 365");
            }
            for u in users {
                if json {
                    println!("{}", u.to_json());
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        u.username,
                        u.email,
                        u.display_name(),
                        u.state.as_str(),
                        u.m365.as_ref().map_or(BindingState::Unbound, |b| b.state)
                    );
                }
            }
        }
        UserCommand::Show { user, json } => {
            let u = directory.get_user(&user).await.map_err(fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&u.to_json()).map_err(fail)?
                );
            } else {
                print_user(&u);
            }
        }
        UserCommand::Set {
            user,
            username,
            attrs,
        } => {
            let changes = attrs.into_changes(username);
            let u = directory
                .update_user(&actor, &user, &changes, now)
                .await
                .map_err(fail)?;
            println!("updated user {}", u.username);
        }
        UserCommand::Passwd { user } => {
            // Look the user up first, so a typo fails before the password prompt.
            let u = directory.get_user(&user).await.map_err(fail)?;
            let password = read_password()?;
            directory
                .set_password(&actor, &u.id, &password, now)
                .await
                .map_err(fail)?;
            println!("password set for {}", u.username);
        }
        UserCommand::Suspend { user } => {
            let u = directory
                .set_state(&actor, &user, UserState::Suspended, now)
                .await
                .map_err(fail)?;
            println!("suspended {}", u.username);
        }
        UserCommand::Activate { user } => {
            let u = directory
                .set_state(&actor, &user, UserState::Active, now)
                .await
                .map_err(fail)?;
            println!("activated {}", u.username);
        }
        UserCommand::Delete { user } => {
            directory
                .delete_user(&actor, &user, now)
                .await
                .map_err(fail)?;
            println!("deleted {user}");
        }
        UserCommand::RequirePasswordChange { user } => {
            let u = directory
                .require_password_change(&actor, &user, now)
                .await
                .map_err(fail)?;
            println!(
                "{} must choose a new password at the next sign-in",
                u.username
            );
        }
        UserCommand::Mfa(cmd) => {
            let key = crate::m365::data_key(config).map_err(fail)?;
            let mfa = crate::mfa::Mfa::new(
                directory.store().clone(),
                key,
                config.mfa.policy,
                config.mfa_issuer(),
            );
            mfa_command(&directory, &mfa, &actor, cmd, now).await?;
        }
    }
    directory.store().close().await;
    Ok(())
}

/// A long value (a certificate) cut for a terminal line.
fn shorten(text: &str) -> String {
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text.to_string()
    }
}

async fn m365_command(config: &Config, cmd: M365Command) -> Result<(), CliError> {
    use crate::m365::federation::{Confirmation, DomainSignIn, FederationError};
    use crate::m365::{ImportSelection, M365};
    let directory = open_directory(config).await?;
    let m365 = M365::new(config, directory.store().clone()).map_err(fail)?;
    m365.load_registration().await.map_err(fail)?;
    let actor = Actor::cli();
    match cmd {
        M365Command::Connect {
            client_credentials: true,
            ..
        } => {
            let status = m365
                .connect_application(&actor, Utc::now())
                .await
                .map_err(fail)?;
            print_status(&status);
        }
        M365Command::Connect { no_wait, .. } => {
            let url = m365.begin_connect(&actor, Utc::now()).await.map_err(fail)?;
            println!("Open this URL in a browser and sign in as an administrator of the tenant:");
            println!();
            println!("  {url}");
            println!();
            println!(
                "Microsoft then returns to {} (idbridge must be running at its base_url).",
                m365.redirect_uri()
            );
            if !no_wait {
                println!("Waiting up to 10 minutes for the connection (Ctrl-C stops waiting)…");
                let before = m365.status().await.map_err(fail)?.connected_at;
                for _ in 0..600 {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let status = m365.status().await.map_err(fail)?;
                    if status.state == "connected" && status.connected_at != before {
                        print_status(&status);
                        return Ok(());
                    }
                }
                return Err(CliError(
                    "no connection within 10 minutes; run `idbridge m365 connect` again".into(),
                ));
            }
        }
        M365Command::Status { json } => {
            let status = m365.status().await.map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).map_err(fail)?);
            } else {
                print_status(&status);
            }
        }
        M365Command::Users { json } => {
            let users = m365.tenant_users().await.map_err(fail)?;
            for u in users {
                if json {
                    println!("{}", serde_json::to_string(&u).map_err(fail)?);
                } else {
                    println!(
                        "{}\t{}\t{}\t{}",
                        u.user.user_principal_name.as_deref().unwrap_or("-"),
                        u.user.display_name.as_deref().unwrap_or("-"),
                        if u.bound {
                            "bound"
                        } else if u.imported {
                            "imported"
                        } else {
                            "-"
                        },
                        u.local_username.as_deref().unwrap_or("-"),
                    );
                }
            }
        }
        M365Command::Import { all, users } => {
            let selection = if all {
                ImportSelection::All
            } else if users.is_empty() {
                return Err(CliError(
                    "name the users to import (userPrincipalName or object ID), or pass --all"
                        .into(),
                ));
            } else {
                ImportSelection::Users(users)
            };
            let report = m365
                // Reported once per batch written (a page of up to 999 users); importing
                // everyone, the total counts the users listed so far.
                .import(&directory, &actor, &selection, Utc::now(), |p| {
                    if p.total > 0 {
                        eprintln!(
                            "progress: {}/{} ({} imported, {} failed)",
                            p.done, p.total, p.imported, p.failed
                        );
                    }
                })
                .await
                .map_err(fail)?;
            for r in &report.results {
                println!(
                    "{}\t{}\t{}",
                    r.user_principal_name
                        .as_deref()
                        .unwrap_or(&r.m365_object_id),
                    r.outcome,
                    r.message.as_deref().unwrap_or("")
                );
            }
            println!(
                "import {}: {} imported, {} failed, {} already imported",
                report.run_id, report.imported, report.failed, report.already_imported
            );
        }
        M365Command::Bind { all, users, wait } => {
            let sync = open_sync(config, &directory, m365)?;
            let now = Utc::now();
            let report = if all {
                sync.bind_all(&actor, now).await
            } else if users.is_empty() {
                return Err(CliError(
                    "name the users to bind (username or email), or pass --all".into(),
                ));
            } else {
                sync.bind(&actor, &users, now).await
            }
            .map_err(fail)?;
            if wait.wait {
                let result =
                    wait_for_delivery(config, &directory, wait::Change::Bind, &report, now, &wait)
                        .await;
                directory.store().close().await;
                return result;
            }
            print_bind_report("bind", &report);
        }
        M365Command::Unbind { users, wait } => {
            let sync = open_sync(config, &directory, m365)?;
            let now = Utc::now();
            let report = sync.unbind(&actor, &users, now).await.map_err(fail)?;
            if wait.wait {
                let result = wait_for_delivery(
                    config,
                    &directory,
                    wait::Change::Unbind,
                    &report,
                    now,
                    &wait,
                )
                .await;
                directory.store().close().await;
                return result;
            }
            print_bind_report("unbind", &report);
        }
        M365Command::Attributes { action } => {
            let sync = open_sync(config, &directory, m365)?;
            if let Some(AttributesAction::Set {
                attribute,
                direction,
            }) = action
            {
                let from = sync
                    .set_direction(&actor, &attribute, &direction, Utc::now())
                    .await
                    .map_err(fail)?;
                println!(
                    "{attribute}: {} -> {}",
                    from.as_str(),
                    direction.to_lowercase()
                );
                if direction.eq_ignore_ascii_case("export") {
                    println!("note: Microsoft 365's values of this attribute are overwritten with idbridge's for every bound user");
                }
            }
            for (m, d) in sync.attribute_table().await.map_err(fail)? {
                println!(
                    "{:<30} {:<18} {}",
                    m.attribute,
                    m.graph_property,
                    if m.always {
                        "always exported"
                    } else {
                        d.as_str()
                    }
                );
            }
        }
        M365Command::Sync { user, retry, json } => {
            let sync = open_sync(config, &directory, m365)?;
            let user = match user {
                Some(key) => Some(directory.get_user(&key).await.map_err(fail)?),
                None => None,
            };
            if retry {
                let n = sync
                    .retry_failed(&actor, user.as_ref(), Utc::now())
                    .await
                    .map_err(fail)?;
                println!("{n} failed changes queued again");
            }
            match &user {
                Some(u) => {
                    let status = sync.user_status(u).await.map_err(fail)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&status).map_err(fail)?);
                    } else {
                        println!(
                            "binding:        {}",
                            status.state.unwrap_or(BindingState::Unbound)
                        );
                        if let Some(id) = &status.immutable_id {
                            println!("immutable ID:   {id}");
                        }
                        if let Some(id) = &status.m365_object_id {
                            println!("M365 object ID: {id}");
                        }
                        if let Some(at) = &status.last_sync_at {
                            println!("last sync:      {at}");
                        }
                        if let Some(e) = &status.last_error {
                            println!("last error:     {e}");
                        }
                        println!(
                            "password here:  {}",
                            if status.password_pushed {
                                "pushed to Microsoft 365"
                            } else {
                                "not yet pushed (at the next sign-in or change)"
                            }
                        );
                        println!("queued:         {}", status.queued_jobs.join(", "));
                        for f in &status.failed_jobs {
                            println!(
                                "failed:         {} ({} attempts): {}",
                                f.kind,
                                f.attempts,
                                f.error.as_deref().unwrap_or("")
                            );
                        }
                    }
                }
                None => {
                    let counts = sync.counts().await.map_err(fail)?;
                    let failed = sync.failed_jobs(None).await.map_err(fail)?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &serde_json::json!({"counts": counts, "failed": failed})
                            )
                            .map_err(fail)?
                        );
                    } else {
                        println!(
                            "bindings: {} bound, {} pending, {} failed, {} unbound; changes: {} queued, {} failed",
                            counts.bound, counts.pending, counts.bind_failed, counts.unbound, counts.queued, counts.failed
                        );
                        for f in failed {
                            let who = directory
                                .get_user(&f.user_id)
                                .await
                                .map(|u| u.username)
                                .unwrap_or(f.user_id.clone());
                            println!("failed\t{who}\t{}\t{}", f.kind, f.error.unwrap_or_default());
                        }
                    }
                }
            }
        }
        M365Command::Domains { json } => {
            let signing = cert::signing_set(config, m365.store()).await?;
            let known = crate::m365::federation::KnownFederations::load(m365.store())
                .await
                .map_err(fail)?;
            let domains = m365
                .domain_statuses(|d| signing.federation_settings(config, d, &known))
                .await
                .map_err(fail)?;
            for d in domains {
                if json {
                    println!("{}", serde_json::to_string(&d).map_err(fail)?);
                    continue;
                }
                let flags = d.flags();
                let sign_in = match d.sign_in {
                    DomainSignIn::Managed => "managed".to_string(),
                    DomainSignIn::Idbridge => "federated to idbridge".to_string(),
                    DomainSignIn::OtherProvider => format!(
                        "federated elsewhere ({})",
                        d.issuer_uri.as_deref().unwrap_or("unknown issuer")
                    ),
                };
                println!("{}\t{sign_in}\t{}", d.domain, flags.join(","));
                for drift in &d.drift {
                    println!(
                        "  differs: {} is {} in Microsoft 365, idbridge sends {}",
                        drift.property,
                        drift.microsoft.as_deref().unwrap_or("(not set)"),
                        shorten(&drift.idbridge)
                    );
                }
            }
        }
        M365Command::Federate {
            domain,
            yes,
            default,
        } => {
            let settings = cert::signing_set(config, m365.store())
                .await?
                .new_federation_settings(config, &domain);
            match m365
                .federate_domain(&actor, &domain, &settings, default, yes, Utc::now())
                .await
            {
                Ok(preview) => {
                    println!(
                        "{} is federated to idbridge: its {} bound user(s) sign in here (Microsoft may take a few minutes, at most 2 hours, to switch){}",
                        preview.domain,
                        preview.bound.len(),
                        if preview.not_bound.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; {} user(s) not bound can no longer sign in until you bind them",
                                preview.not_bound.len()
                            )
                        }
                    );
                }
                Err(FederationError::NeedsConfirmation {
                    confirmation,
                    message,
                }) => {
                    eprintln!("would send to Microsoft Graph (POST /domains/{domain}/federationConfiguration):");
                    eprintln!(
                        "{}",
                        serde_json::to_string_pretty(&settings.body()).map_err(fail)?
                    );
                    eprintln!(
                        "or by hand in PowerShell:\n{}",
                        settings.powershell(&domain)
                    );
                    let flag = if confirmation == Confirmation::DefaultDomain {
                        "--default"
                    } else {
                        "--yes"
                    };
                    return Err(CliError(format!("nothing changed: {message} ({flag})")));
                }
                Err(e) => return Err(CliError(format!("nothing changed: {e}"))),
            }
        }
        M365Command::Unfederate { domain, yes } => {
            match m365.unfederate_domain(&actor, &domain, yes, Utc::now()).await {
                Err(FederationError::NeedsConfirmation { message, .. }) => {
                    return Err(CliError(format!("nothing changed: {message} (--yes)")))
                }
                Ok(preview) => println!(
                    "{} is managed again: Microsoft 365 checks the passwords of its {} user(s) (Microsoft may take up to 2 hours to switch)",
                    preview.domain,
                    preview.bound.len() + preview.not_bound.len()
                ),
                Err(e) => return Err(CliError(format!("nothing changed: {e}"))),
            }
        }
        M365Command::Deactivate { yes } => {
            if !yes {
                return Err(CliError(
                    "deactivating keeps every user active in Microsoft 365 and in idbridge, but clears every user's binding (you must bind them again after reconnecting). Run again with --yes to confirm".into(),
                ));
            }
            let cleared = m365.deactivate(&actor, Utc::now()).await.map_err(fail)?;
            println!("deactivated; {cleared} bindings cleared. Users stay active in Microsoft 365 and in idbridge.");
        }
    }
    directory.store().close().await;
    Ok(())
}

fn open_sync(
    config: &Config,
    directory: &Directory,
    m365: crate::m365::M365,
) -> Result<crate::m365::M365Sync, CliError> {
    Ok(crate::m365::M365Sync::new(
        directory.store().clone(),
        directory.clone(),
        std::sync::Arc::new(m365),
        crate::m365::data_key(config).map_err(fail)?,
        config.m365.sync.clone(),
    ))
}

/// `--wait` of bind/unbind: follows what `report` queued at `queued_at` until Microsoft 365 has
/// it, and fails with one line when anything failed or is still pending at the timeout.
async fn wait_for_delivery(
    config: &Config,
    directory: &Directory,
    change: wait::Change,
    report: &crate::m365::sync::BindReport,
    queued_at: chrono::DateTime<Utc>,
    args: &WaitArgs,
) -> Result<(), CliError> {
    let plan = wait::plan(directory, change, report, queued_at)
        .await
        .map_err(fail)?;
    let settings = wait::Settings {
        timeout: std::time::Duration::from_secs(args.timeout),
        poll_interval_ms: config.m365.sync.poll_interval_ms,
        progress: std::io::stderr().is_terminal(),
    };
    wait::follow(directory.store(), change, plan, &settings).await
}

fn print_bind_report(what: &str, report: &crate::m365::sync::BindReport) {
    for user in &report.queued {
        println!("{user}\tqueued");
    }
    for (user, why) in &report.skipped {
        println!("{user}\tskipped: {why}");
    }
    println!(
        "{what}: {} queued, {} skipped. The running server sends the changes to Microsoft 365 within seconds; see `idbridge m365 sync`.",
        report.queued.len(),
        report.skipped.len()
    );
}

fn print_status(s: &crate::m365::ConnectionStatus) {
    println!("state:          {}", s.state);
    if let Some(mode) = &s.mode {
        println!("mode:           {mode}");
    }
    if let Some(t) = &s.tenant_id {
        println!("tenant:         {t}");
    }
    if let Some(d) = &s.default_domain {
        println!("default domain: {d}");
    }
    if let Some(at) = &s.connected_at {
        println!(
            "connected:      {at} by {}",
            s.connected_by.as_deref().unwrap_or("?")
        );
    }
    if let Some(e) = &s.last_error {
        println!("last error:     {e}");
    }
    if s.state == "connected" {
        match &s.granted_permissions {
            Some(granted) => println!("granted:        {}", granted.join(" ")),
            None => println!("granted:        unknown (Microsoft's token could not be read)"),
        }
        for missing in &s.missing_permissions {
            println!(
                "missing:        {}: without it, no {} (grant it to the app registration in the Entra admin center, then run `idbridge m365 connect` again)",
                missing.name, missing.needed_for
            );
        }
    }
    match s.state.as_str() {
        "reconnect" => println!("fix:            run `idbridge m365 connect` again"),
        "not_connected" | "deactivated" => println!("fix:            run `idbridge m365 connect`"),
        _ => {}
    }
}

fn print_user(u: &User) {
    let mut rows: Vec<(&str, Option<String>)> = vec![("id", Some(u.id.clone()))];
    rows.extend(
        CATALOGUE
            .iter()
            .map(|spec| (spec.name, u.get(spec.attribute).map(str::to_string))),
    );
    rows.extend([
        ("state", Some(u.state.as_str().into())),
        (
            "password",
            Some(match u.password_changed_at {
                Some(t) if u.has_password() => {
                    format!("set {}", crate::directory::millis_to_rfc3339(t))
                }
                _ => "not set".into(),
            }),
        ),
        (
            "m365",
            Some(match &u.m365 {
                Some(b) => format!(
                    "{} (immutable ID {}, UPN {})",
                    b.state, b.immutable_id, b.user_principal_name
                ),
                None => "unbound".into(),
            }),
        ),
    ]);
    for (name, value) in rows {
        println!("{name:<30}{}", value.unwrap_or_default());
    }
}

/// Reads a new password: prompted twice on a terminal, else the first line of stdin.
/// A secret from a prompt (asked twice for a new one) or the first line of stdin.
fn read_secret(what: &str) -> Result<SecretString, CliError> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("{what}: ")).map_err(fail)?;
        let second = rpassword::prompt_password(format!("Repeat {}: ", what.to_lowercase()))
            .map_err(fail)?;
        if first != second {
            return Err(CliError("the two entries differ; nothing was done".into()));
        }
        return Ok(SecretString::from(first));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(fail)?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.len() < 8 {
        return Err(CliError(format!(
            "{what}: give at least 8 characters on the first line of stdin, or run in a terminal to be prompted"
        )));
    }
    Ok(SecretString::from(secret))
}

/// Writes bytes to a new file only its owner can read.
fn write_private_bytes(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn read_password() -> Result<SecretString, CliError> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New password: ").map_err(fail)?;
        let second = rpassword::prompt_password("Repeat password: ").map_err(fail)?;
        if first != second {
            return Err(CliError(
                "the two passwords differ; nothing was changed".into(),
            ));
        }
        Ok(SecretString::from(first))
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(fail)?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(CliError(
                "no password on stdin; pipe it in (echo \"$PW\" | idbridge user passwd NAME) or run in a terminal to be prompted".into(),
            ));
        }
        Ok(SecretString::from(password))
    }
}
