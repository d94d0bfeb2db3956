#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = idbridge::cli::Cli::parse();
    idbridge::telemetry::init(cli.config.as_deref());
    match idbridge::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
