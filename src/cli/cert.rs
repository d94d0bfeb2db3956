//! `idbridge cert`: the signing certificates, and their rollover (prepare, promote, retire).
//!
//! The command line changes the database and Microsoft 365; running nodes pick the stored
//! certificates up within [`crate::certs::rollover::RELOAD_EVERY`].

use std::sync::Arc;

use chrono::Utc;

use super::{fail, open_store, CertCommand, CliError};
use crate::certs::rollover::{MicrosoftUpdate, Rollover, RolloverError, SigningSet, StepTaken};
use crate::config::Config;
use crate::events::Actor;
use crate::m365::M365;
use crate::saml::CertificateInfo;
use crate::store::Store;

/// The certificates every node signs with and publishes: the files', unless a rollover stored
/// others.
pub(super) async fn signing_set(config: &Config, store: &Store) -> Result<SigningSet, CliError> {
    let file = Arc::new(crate::certs::load(config).map_err(fail)?);
    let key = crate::m365::data_key(config).map_err(fail)?;
    SigningSet::load(store, &key, file).await.map_err(fail)
}

pub(super) async fn run(config: &Config, cmd: CertCommand) -> Result<(), CliError> {
    let store = open_store(config).await?;
    let result = step(config, &store, cmd).await;
    store.close().await;
    result
}

async fn step(config: &Config, store: &Store, cmd: CertCommand) -> Result<(), CliError> {
    if let CertCommand::Show { der_base64 } = cmd {
        let set = signing_set(config, store).await?;
        if der_base64 {
            println!("{}", set.current.certificate_der_base64());
            return Ok(());
        }
        print_set(config, &set);
        return Ok(());
    }
    let key = crate::m365::data_key(config).map_err(fail)?;
    let m365 = M365::new(config, store.clone()).map_err(fail)?;
    m365.load_registration().await.map_err(fail)?;
    let rollover = Rollover {
        config,
        store,
        key: &key,
        file: Arc::new(crate::certs::load(config).map_err(fail)?),
        m365: &m365,
    };
    let actor = Actor::cli();
    let now = Utc::now();
    let (taken, done) = match cmd {
        CertCommand::Show { .. } => return Ok(()),
        CertCommand::Next => (
            rollover.prepare(&actor, now).await,
            "next signing certificate prepared and published; it signs once promoted (`idbridge cert promote`)",
        ),
        CertCommand::Promote => (
            rollover.promote(&actor, now).await,
            "promoted: idbridge signs with the new certificate (every node within seconds); the previous one stays trusted until `idbridge cert retire`",
        ),
        CertCommand::Retire { yes } => (
            rollover.retire(&actor, yes, now).await,
            "previous signing certificate retired: no longer published nor trusted by Microsoft 365",
        ),
        CertCommand::Discard => (
            rollover.discard(&actor, now).await,
            "the prepared next certificate was discarded",
        ),
    };
    let taken = taken.map_err(|e| match e {
        RolloverError::TooSoon { .. } => CliError(format!("{e} with --yes")),
        other => fail(other),
    })?;
    println!("{done}");
    print_microsoft(&taken);
    print_set(config, &taken.set);
    Ok(())
}

fn print_microsoft(taken: &StepTaken) {
    match &taken.microsoft {
        MicrosoftUpdate::Domains(domains) if domains.is_empty() => {
            println!("Microsoft 365: no domain is federated to idbridge, nothing to update");
        }
        MicrosoftUpdate::Domains(domains) => {
            println!("Microsoft 365 updated: {}", domains.join(", "));
        }
        MicrosoftUpdate::ByHand(powershell) => {
            println!(
                "Microsoft 365 is not connected, so it was not told. For each domain federated to idbridge, run:\n{powershell}"
            );
        }
    }
}

fn print_set(config: &Config, set: &SigningSet) {
    let overview = set.overview();
    print_certificate("", &overview.current);
    println!("key:                RSA {} bits", set.current.key_bits());
    if overview.from_files {
        println!("file:               {}", config.certs.cert_file.display());
    } else {
        println!("stored:             in the database (promoted by a rollover; certs.cert_file is no longer used)");
    }
    if let Some(next) = &overview.next {
        print_certificate("next ", next);
    }
    if let Some(previous) = &overview.previous {
        print_certificate("previous ", previous);
    }
}

fn print_certificate(role: &str, c: &CertificateInfo) {
    let label = |name: &str| format!("{role}{name}:");
    println!("{:<20}{}", label("subject"), c.subject);
    println!(
        "{:<20}{}",
        label("sha256 fingerprint"),
        c.fingerprint_sha256
    );
    println!("{:<20}{}", label("not before"), c.not_before.to_rfc3339());
    println!("{:<20}{}", label("not after"), c.not_after.to_rfc3339());
}
