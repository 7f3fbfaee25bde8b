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
    /// Compare the grants with Keycloak's mappings once, now, as the periodic
    /// reconciliation does, print the counts, and exit. Exits 1 when a role could not be
    /// checked.
    Reconcile,
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the audit history of a range to standard output or a file, for scheduled jobs.
    Export {
        /// First day (YYYY-MM-DD, UTC) or instant (RFC 3339) to include.
        #[arg(long)]
        from: Option<String>,
        /// Last day to include (YYYY-MM-DD, UTC), or the instant (RFC 3339) to stop before.
        #[arg(long)]
        to: Option<String>,
        /// csv, or json for one JSON object per line.
        #[arg(long, default_value = "csv")]
        format: String,
        /// File to write; standard output when omitted.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain and name the first event where it breaks. Exits 0
    /// when the chain is intact, 1 when it breaks, 2 when the log cannot be read.
    Verify,
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
        Command::Reconcile => reconcile(&config).await,
        Command::Audit {
            command: AuditCommand::Verify,
        } => verify_audit(&config).await,
        Command::Export {
            from,
            to,
            format,
            output,
        } => export(&config, from, to, &format, output).await,
        Command::Serve => serve(config).await,
    }
}

/// Builds the Admin API client of the portal's service account.
fn keycloak_admin(config: &Config) -> Result<app::server::keycloak::KeycloakAdmin, String> {
    let http = server::state::http_client()
        .map_err(|error| format!("could not build the HTTP client: {error}"))?;
    Ok(app::server::keycloak::KeycloakAdmin::new(
        http,
        config.keycloak.url.as_str(),
        &config.keycloak.realm,
        &config.keycloak.client_id,
        config.keycloak.client_secret(),
    ))
}

async fn check_catalog(config: &Config) -> ExitCode {
    let admin = match keycloak_admin(config) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::FAILURE;
        }
    };
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

async fn reconcile(config: &Config) -> ExitCode {
    use std::sync::{Arc, RwLock};

    let admin = match keycloak_admin(config) {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };
    let catalog = match app::server::catalog::Catalog::load(&config.catalog, &admin).await {
        Ok((catalog, warnings)) => {
            for warning in warnings {
                eprintln!("stint: catalog: {warning}");
            }
            catalog
        }
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };
    let database = match open_database(config).await {
        Ok(database) => database,
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };
    let reconciler = app::server::grants::reconcile::Reconciler::new(
        database,
        Arc::new(admin),
        Arc::new(RwLock::new(Arc::new(catalog))),
        format!("stint-reconcile-{}", uuid::Uuid::new_v4()),
        config.scheduler.lease().as_secs() as i64,
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match reconciler.run(now).await {
        Ok(summary) => {
            println!(
                "checked {} roles: {} mappings restored, {} standing mappings reported, {} removed",
                summary.roles_checked, summary.restored, summary.standing, summary.removed
            );
            for error in &summary.errors {
                eprintln!("stint: not checked: {error}");
            }
            if summary.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("stint: reconciliation failed: {error}");
            ExitCode::from(2)
        }
    }
}

async fn open_database(config: &Config) -> Result<server::db::Database, String> {
    let display = config.database_url.redacted();
    let database = server::db::Database::connect(config.database_url.expose(), &display)
        .await
        .map_err(|error| error.to_string())?;
    database
        .migrate(&display)
        .await
        .map_err(|error| error.to_string())?;
    Ok(database)
}

async fn verify_audit(config: &Config) -> ExitCode {
    let database = match open_database(config).await {
        Ok(database) => database,
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };
    match app::server::audit::chain::verify(&database).await {
        Ok(report) => {
            println!("{report}");
            if report.unchained > 0 {
                println!(
                    "{} older events were written before the chain existed and were not checked",
                    report.unchained
                );
            }
            if report.first_break.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("stint: reading the audit log failed: {error}");
            ExitCode::from(2)
        }
    }
}

async fn export(
    config: &Config,
    from: Option<String>,
    to: Option<String>,
    format: &str,
    output: Option<PathBuf>,
) -> ExitCode {
    use app::server::audit::export::{self, ExportFormat, HistoryFilter};
    let Some(format) = ExportFormat::parse(format) else {
        eprintln!("stint: unknown --format `{format}`: use csv or json");
        return ExitCode::from(2);
    };
    let bound = |text: Option<String>, name: &str, end: bool| -> Result<Option<i64>, String> {
        let Some(text) = text else { return Ok(None) };
        let at = export::parse_day(&text).map_err(|error| format!("--{name}: {error}"))?;
        // A whole day given as `--to` includes that day.
        let day_only = !text.contains('T');
        Ok(Some(if end && day_only { at + 86_400 } else { at }))
    };
    let filter = match (bound(from, "from", false), bound(to, "to", true)) {
        (Ok(from), Ok(to)) => HistoryFilter {
            from,
            to,
            ..HistoryFilter::default()
        },
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };
    let database = match open_database(config).await {
        Ok(database) => database,
        Err(error) => {
            eprintln!("stint: {error}");
            return ExitCode::from(2);
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let description = format!("command-line export, {}", export::describe(&filter, format));
    if let Err(error) = export::record_export(&database, None, &description, now).await {
        eprintln!("stint: recording the export in the audit log failed: {error}");
        return ExitCode::from(2);
    }
    let result = match &output {
        Some(path) => match tokio::fs::File::create(path).await {
            Ok(file) => {
                let mut file = tokio::io::BufWriter::new(file);
                export::write_export(&database, &filter, format, &mut file).await
            }
            Err(error) => {
                eprintln!("stint: could not create {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        None => {
            let mut stdout = tokio::io::BufWriter::new(tokio::io::stdout());
            export::write_export(&database, &filter, format, &mut stdout).await
        }
    };
    match result {
        Ok(summary) => {
            let head = summary
                .chain_head
                .map(|(id, hash)| format!("chain head event {id}, hash {hash}"))
                .unwrap_or_else(|| "the audit log is empty".into());
            eprintln!("stint: exported {} events; {head}", summary.rows);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("stint: {error}");
            ExitCode::from(2)
        }
    }
}
