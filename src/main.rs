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

/// mimalloc instead of glibc's malloc: a sign-in makes a few hundred small allocations across
/// threads (HTTP, XML, base64), and glibc's arenas spent about 8 % of the CPU of an SSO on
/// them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = idbridge::cli::Cli::parse();
    // A command's output piped into `head` ends quietly when the reader goes, as other
    // command-line tools do, instead of a panic from println!. Not for `serve`, whose
    // sockets get EPIPE as an error to handle.
    if !matches!(cli.command, idbridge::cli::Command::Serve) {
        sigpipe::reset();
    }
    idbridge::telemetry::init(cli.config.as_deref());
    match idbridge::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
