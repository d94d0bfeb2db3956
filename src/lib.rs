//! idbridge: keep users in one directory and sign them in to Microsoft 365 / Entra ID.
//!
//! Rooms: `saml` (protocol, no HTTP), `sso` (login and SAML endpoints), `directory` (users,
//! passwords, policy), `store` (SQL), `web` (shared HTTP plumbing), `portal` (the user portal at
//! `/`), `mail` (SMTP), `server` (assembly), `cli`.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod admin;
pub mod attributes;
pub mod backup;
pub mod binding;
pub mod branding;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod events;
pub mod i18n;
pub mod m365;
pub mod mail;
pub mod mfa;
pub mod overview;
pub mod portal;
pub mod saml;
pub mod secrets;
pub mod server;
pub mod sso;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod web;
