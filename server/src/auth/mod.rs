//! Sign-in through Keycloak: authorization code flow with PKCE, server-side sessions,
//! refresh, RP-initiated logout and back-channel logout.

pub mod backchannel;
pub mod claims;
pub mod flow;
pub mod logout;
pub mod middleware;
pub mod provider;

use app::model::user::CurrentUser;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::state::AppState;

/// Session key of the signed-in user and their tokens.
pub const USER_KEY: &str = "stint.user";
pub use crate::session_store::SID_KEY;

/// The signed-in user and their tokens, stored only in the server-side session.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionUser {
    pub user: CurrentUser,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// The ID token, kept as `id_token_hint` for RP-initiated logout.
    pub id_token: String,
    /// Unix seconds at which the access token expires.
    pub access_expires_at: i64,
    /// Unix seconds before which no refresh is tried again, after Keycloak failed to respond.
    #[serde(default)]
    pub refresh_retry_at: Option<i64>,
}

impl std::fmt::Debug for SessionUser {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SessionUser")
            .field("subject", &self.user.subject)
            .field("username", &self.user.username)
            .field("access_expires_at", &self.access_expires_at)
            .finish_non_exhaustive()
    }
}

/// Returns the Unix time at which an access token that lives `expires_in` expires. Keycloak
/// always sends `expires_in`; without it the token is assumed to live 60 s, so it is
/// refreshed early rather than late.
pub fn access_expires_at(expires_in: Option<std::time::Duration>) -> i64 {
    let lifetime = expires_in.map_or(60, |duration| duration.as_secs() as i64);
    time::OffsetDateTime::now_utc().unix_timestamp() + lifetime
}

/// Reason of a failed sign-in. The `/signin-error` page shows a text for each code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignInFailure {
    KeycloakUnreachable,
    AccessDenied,
    Expired,
    StateMismatch,
    MissingSubject,
    InvalidToken,
    Failed,
}

impl SignInFailure {
    pub fn code(self) -> &'static str {
        match self {
            Self::KeycloakUnreachable => "keycloak_unreachable",
            Self::AccessDenied => "access_denied",
            Self::Expired => "expired",
            Self::StateMismatch => "state_mismatch",
            Self::MissingSubject => "missing_subject",
            Self::InvalidToken => "invalid_token",
            Self::Failed => "failed",
        }
    }

    /// Redirects to the page that explains this failure and offers to sign in again.
    pub fn redirect(self, return_to: &str) -> Redirect {
        Redirect::to(&format!(
            "/signin-error?reason={}&returnTo={}",
            self.code(),
            app::url::encode_query_value(return_to)
        ))
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", get(flow::login))
        .route("/auth/callback", get(flow::callback))
        .route("/auth/logout", post(logout::logout))
        .route(
            "/auth/backchannel-logout",
            post(backchannel::backchannel_logout),
        )
}
