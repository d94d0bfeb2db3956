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
