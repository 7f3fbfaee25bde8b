use std::sync::Arc;

use app::server::catalog::{Catalog, CatalogError, CatalogHandle};
use app::server::grants::scheduler::Scheduler;
use app::server::keycloak::KeycloakAdmin;
use axum::extract::FromRef;
use leptos::config::LeptosOptions;

use crate::auth::provider::Provider;
use crate::config::Config;
use crate::db::Database;

/// Shared state of every request handler.
#[derive(Clone)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub config: Arc<Config>,
    pub database: Database,
    /// Client for Keycloak. It follows no redirects, so a token or secret is never sent on
    /// to a host that a redirect names.
    pub http: reqwest::Client,
    /// The realm's OpenID provider, discovered at the first sign-in.
    pub oidc: Arc<Provider>,
    /// Keycloak's Admin REST API, as the portal's service account.
    pub admin: Arc<KeycloakAdmin>,
    /// The requestable roles. A reload swaps the whole catalog, so readers never see a mix.
    pub catalog: CatalogHandle,
    /// The grant scheduler; request handlers wake it when a grant becomes due at once.
    pub scheduler: Arc<Scheduler>,
}

impl AppState {
    /// Makes the scheduler look for due grants now instead of at its next poll.
    pub fn wake_scheduler(&self) {
        self.scheduler.waker().notify_one();
    }

    /// Returns the catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        app::server::catalog::current(&self.catalog)
    }

    /// Reads the catalog file again and swaps it in if it passes every check. A bad file
    /// keeps the catalog in force and returns the problems.
    pub async fn reload_catalog(&self) -> Result<usize, CatalogError> {
        let (catalog, warnings) = Catalog::load(&self.config.catalog, self.admin.as_ref()).await?;
        for warning in &warnings {
            tracing::warn!(%warning, "catalog entry not verified against Keycloak");
        }
        let count = catalog.roles.len();
        let mut slot = match self.catalog.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(catalog);
        Ok(count)
    }
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

/// Builds the HTTP client used for every call to Keycloak.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15))
        .user_agent(concat!("stint/", env!("CARGO_PKG_VERSION")))
        .build()
}
