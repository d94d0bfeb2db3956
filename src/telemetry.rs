//! Structured logging with `tracing`.

pub mod metrics;

use std::path::Path;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` wins over `log.level`; `log.format` picks text or
/// JSON. Config errors are reported later by the command itself, so defaults apply here.
pub fn init(config_file: Option<&Path>) {
    let log = crate::config::Config::load(config_file)
        .map(|c| c.log)
        .unwrap_or_default();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: under systemd or a container the escapes would land in
    // the journal as garbage.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
