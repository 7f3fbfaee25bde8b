use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use server::config::Config;
use tokio_util::sync::CancellationToken;

/// Stint: just-in-time access to Keycloak roles.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file. Every key can also be set as STINT_<KEY> in the environment.
    #[arg(long, short, env = "STINT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the portal (the default).
    Serve,
    /// Load and validate the configuration, print it with secrets hidden, and exit.
    CheckConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    server::telemetry::init();

    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };

    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{config}");
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config).await,
    }
}

async fn serve(config: Config) -> ExitCode {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.listen,
        public_url = %config.public_url,
        database = %config.database_url.redacted(),
        keycloak = %config.keycloak.issuer_url(),
        client_id = %config.keycloak.client_id,
        "stint starting"
    );
    let state = match server::prepare(config).await {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(%error, "stint could not start");
            eprintln!("stint: {error}");
            return ExitCode::FAILURE;
        }
    };

    let shutdown = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        signal_shutdown.cancel();
    });

    match server::serve(state, shutdown).await {
        Ok(()) => {
            tracing::info!("stint stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "stint stopped with an error");
            eprintln!("stint: {error}");
            ExitCode::FAILURE
        }
    }
}
