//! All integration tests in one binary (each extra test binary is another slow link).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod admins;
mod api;
mod app_registration;
mod attributes;
mod branding;
mod browser;
mod cli;
mod cluster;
mod console;
mod console_m365;
mod console_pages;
mod directory;
mod federation;
mod front_door;
mod fuzz;
mod graph_fake_selftest;
mod i18n;
mod m365;
mod metrics;
mod mfa;
mod overview;
mod package;
mod passkeys;
mod portal;
mod proxy;
mod rollover;
mod server;
mod service_providers;
mod sso;
mod sync;
mod sync_parts;
mod throttle;
