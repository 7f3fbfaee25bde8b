use std::sync::Arc;

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
