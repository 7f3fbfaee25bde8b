//! The Stint server: configuration, HTTP routes, background jobs and their start-up.

pub mod audit_routes;
pub mod auth;
pub mod config;
pub mod health;
pub mod jobs;
pub mod request_forms;
pub mod security;
pub mod session_store;
pub mod state;
pub mod telemetry;

/// The database layer lives in `app` so that server functions reach it too.
pub use app::server::db;
pub use app::with_pool;

use std::sync::Arc;
use std::time::Duration;

use app::{shell, App, CspSources, OUTPUT_NAME};
use axum::http::{HeaderName, Request};
use axum::middleware;
use axum::routing::get;
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tower_sessions::cookie::SameSite;
use tower_sessions::session_store::ExpiredDeletion;
use tower_sessions::{Expiry, SessionManagerLayer};

use app::server::catalog::{Catalog, CatalogError};
use app::server::grants::scheduler::{Scheduler, SchedulerSettings};
use app::server::keycloak::KeycloakAdmin;

use crate::config::Config;
use crate::db::{Database, DatabaseError};
use crate::session_store::DatabaseSessionStore;
use crate::state::AppState;

/// Name of the session cookie. It carries only the opaque session id.
pub const SESSION_COOKIE: &str = "stint_session";

/// A session unused for this long is signed out.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 60 * 60);

/// How long requests in flight may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the complete HTTP router: probes, pages, server functions and static assets.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let options = state.leptos_options.clone();
    let csp = CspSources {
        form_action: state.config.keycloak.url.origin().ascii_serialization(),
    };
    let page_context = {
        let csp = csp.clone();
        let database = state.database.clone();
        let catalog = state.catalog.clone();
        let admin = state.admin.clone();
        move || {
            provide_context(admin.clone());
            provide_context(csp.clone());
            provide_context(database.clone());
            provide_context(catalog.clone());
        }
    };
    let session_layer = SessionManagerLayer::new(DatabaseSessionStore::new(state.database.clone()))
        .with_name(SESSION_COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(state.config.is_https())
        .with_expiry(Expiry::OnInactivity(time::Duration::seconds(
            SESSION_IDLE.as_secs() as i64,
        )));

    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(auth::router())
        .merge(request_forms::router())
        .merge(audit_routes::router())
        .leptos_routes_with_context(&state, routes, page_context.clone(), move || {
            shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(page_context, shell))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::middleware::resolve_user,
        ))
        .layer(session_layer)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::reject_cross_site,
        ))
        .layer(middleware::from_fn(security::security_headers))
        .layer(CompressionLayer::new())
        .layer(
            TraceLayer::new_for_http()
                // A 503 from /readyz is an expected result, not a server fault.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN))
                .make_span_with(|request: &Request<_>| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        request_id,
                        method = %request.method(),
                        path = request.uri().path(),
                    )
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Leptos settings for this configuration. The output name is set here, not through
/// `LEPTOS_OUTPUT_NAME`, so the page requests the `stint.js` and `stint_bg.wasm` that
/// wasm-bindgen writes.
pub fn leptos_options(config: &Config) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(config.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(config.listen)
        .build()
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("invalid OIDC settings: {0}")]
    Oidc(String),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("could not listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Permissions(String),
}

/// Opens the database, applies migrations and builds the shared state.
pub async fn prepare(config: Config) -> Result<AppState, StartError> {
    let display_url = config.database_url.redacted();
    let database = Database::connect(config.database_url.expose(), &display_url).await?;
    database.migrate(&display_url).await?;
    tracing::info!(database = %display_url, backend = database.backend(), "database ready");

    let http = state::http_client()?;
    let oidc = auth::provider::Provider::new(&config, http.clone()).map_err(StartError::Oidc)?;
    let admin = KeycloakAdmin::new(
        http.clone(),
        config.keycloak.url.as_str(),
        &config.keycloak.realm,
        &config.keycloak.client_id,
        config.keycloak.client_secret(),
    );
    let (catalog, warnings) = Catalog::load(&config.catalog, &admin).await?;
    for warning in &warnings {
        tracing::warn!(%warning, "catalog entry not verified against Keycloak; it is checked again at the next reload (SIGHUP)");
    }
    tracing::info!(catalog = %config.catalog.display(), roles = catalog.roles.len(), "catalog loaded");
    check_service_account(&admin, &catalog).await?;

    let admin = Arc::new(admin);
    let catalog: app::server::catalog::CatalogHandle =
        Arc::new(std::sync::RwLock::new(Arc::new(catalog)));
    let settings = SchedulerSettings {
        lease: config.scheduler.lease(),
        concurrency: config.scheduler.concurrency,
        max_backoff: config.scheduler.max_backoff(),
        ..SchedulerSettings::default()
    };
    let scheduler = Scheduler::new(
        database.clone(),
        admin.clone(),
        catalog.clone(),
        settings,
        Arc::new(|| time::OffsetDateTime::now_utc().unix_timestamp()),
    );

    Ok(AppState {
        leptos_options: leptos_options(&config),
        config: Arc::new(config),
        database,
        http,
        oidc: Arc::new(oidc),
        admin,
        catalog,
        scheduler: Arc::new(scheduler),
    })
}

/// The `realm-management` roles the service account needs, and what each one is for.
const REQUIRED_ROLES: &[(&str, &str)] = &[
    ("manage-users", "add and remove role mappings, end sessions"),
    ("view-users", "read users, their groups and role mappings"),
    ("view-realm", "read realm roles and the token lifespan"),
    ("query-groups", "look up the catalog's groups"),
];

/// Checks at start-up that the service account has the realm-management roles the
/// portal needs, so a missing permission stops the start with its name instead of failing
/// the first grant. Keycloak being unreachable only logs a warning; the scheduler retries.
async fn check_service_account(admin: &KeycloakAdmin, catalog: &Catalog) -> Result<(), StartError> {
    let roles = match admin.service_account_roles().await {
        Ok(roles) => roles,
        Err(error) => {
            tracing::warn!(%error, "could not check the service account's permissions; Keycloak may be down");
            return Ok(());
        }
    };
    let mut required: Vec<(&str, &str)> = REQUIRED_ROLES.to_vec();
    if catalog
        .roles
        .iter()
        .any(|role| matches!(role.role, app::server::catalog::KeycloakRole::Client(..)))
    {
        required.push((
            "view-clients",
            "look up the clients of the catalog's client roles",
        ));
    }
    let missing: Vec<String> = required
        .iter()
        .filter(|(role, _)| !roles.iter().any(|held| held == role))
        .map(|(role, purpose)| format!("{role} (to {purpose})"))
        .collect();
    if missing.is_empty() {
        tracing::info!("the service account has every realm-management role the portal needs");
        return Ok(());
    }
    Err(StartError::Permissions(format!(
        "the service account of client `{}` lacks realm-management roles: {}. Assign them in \
         Keycloak under Clients → the portal's client → Service account roles",
        admin.client_id(),
        missing.join(", ")
    )))
}

/// Serves HTTP until `shutdown` is cancelled, then lets requests in flight finish.
pub async fn serve(state: AppState, shutdown: CancellationToken) -> Result<(), StartError> {
    let address = state.config.listen;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })?;

    let sessions = DatabaseSessionStore::new(state.database.clone());
    let cleanup_shutdown = shutdown.clone();
    let cleanup = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(300));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cleanup_shutdown.cancelled() => break,
                _ = interval.tick() => {
                    if let Err(error) = sessions.delete_expired().await {
                        tracing::warn!(%error, "deleting expired sessions failed; retrying at the next interval");
                    }
                }
            }
        }
    });

    let expiry_database = state.database.clone();
    let expiry_shutdown = shutdown.clone();
    let expiry =
        tokio::spawn(async move { jobs::expire_requests(expiry_database, expiry_shutdown).await });

    let scheduler = if state.config.scheduler.enabled {
        let scheduler = state.scheduler.clone();
        let scheduler_shutdown = shutdown.clone().cancelled_owned();
        Some(tokio::spawn(async move {
            scheduler.run(scheduler_shutdown).await
        }))
    } else {
        tracing::info!("the grant scheduler is off in this process (scheduler.enabled = false)");
        None
    };
    let reconcile = {
        let reconcile_state = state.clone();
        let reconcile_shutdown = shutdown.clone();
        tokio::spawn(async move { jobs::reconcile(reconcile_state, reconcile_shutdown).await })
    };

    let approvers = {
        let approver_state = state.clone();
        let approver_shutdown = shutdown.clone();
        tokio::spawn(
            async move { jobs::recheck_approvers(approver_state, approver_shutdown).await },
        )
    };

    let reload_state = state.clone();
    let reload_shutdown = shutdown.clone();
    let reload = tokio::spawn(async move { reload_on_sighup(reload_state, reload_shutdown).await });

    tracing::info!(
        listen = %address,
        public_url = %state.config.public_url,
        "stint is listening"
    );
    let database = state.database.clone();
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        result = std::future::IntoFuture::into_future(server) => result.map_err(StartError::Serve),
        _ = deadline => {
            tracing::warn!(
                grace_seconds = SHUTDOWN_GRACE.as_secs(),
                "connections still open after the shutdown grace period; stopping anyway"
            );
            Ok(())
        }
    };

    shutdown.cancel();
    let _ = cleanup.await;
    let _ = reload.await;
    let _ = expiry.await;
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    let _ = reconcile.await;
    let _ = approvers.await;
    database.close().await;
    result
}

/// Reloads the catalog on every SIGHUP until `shutdown` is cancelled.
async fn reload_on_sighup(state: AppState, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "could not listen for SIGHUP; the catalog reloads only on restart");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangups.recv() => {
                    match state.reload_catalog().await {
                        Ok(roles) => tracing::info!(roles, "catalog reloaded on SIGHUP"),
                        Err(error) => tracing::error!(%error, "catalog reload rejected; the previous catalog stays in force"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    shutdown.cancelled().await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "could not listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "could not listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C, shutting down"),
        _ = terminate => tracing::info!("received SIGTERM, shutting down"),
    }
}
