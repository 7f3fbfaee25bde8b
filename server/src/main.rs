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
    /// Check the catalog file against Keycloak, print each problem, and exit.
    CheckCatalog,
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
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{config}");
            ExitCode::SUCCESS
        }
        Command::CheckCatalog => check_catalog(&config).await,
        Command::Serve => serve(config).await,
    }
}

async fn check_catalog(config: &Config) -> ExitCode {
    let http = match server::state::http_client() {
        Ok(http) => http,
        Err(error) => {
            eprintln!("stint: could not build the HTTP client: {error}");
            return ExitCode::FAILURE;
        }
    };
    let admin = app::server::keycloak::KeycloakAdmin::new(
        http,
        config.keycloak.url.as_str(),
        &config.keycloak.realm,
        &config.keycloak.client_id,
        config.keycloak.client_secret(),
    );
    match app::server::catalog::Catalog::load(&config.catalog, &admin).await {
        Ok((catalog, warnings)) if warnings.is_empty() => {
            println!(
                "catalog {} is valid: {} requestable roles",
                config.catalog.display(),
                catalog.roles.len()
            );
            ExitCode::SUCCESS
        }
        Ok((_, warnings)) => {
            eprintln!(
                "stint: catalog {} could not be fully checked:",
                config.catalog.display()
            );
            for warning in warnings {
                eprintln!("  {warning}");
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("stint: {error}");
            ExitCode::FAILURE
        }
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
