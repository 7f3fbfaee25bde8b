//! Per-request middleware: resolve the signed-in user (refreshing Keycloak tokens as they
//! expire) and send signed-out browsers from protected pages to the sign-in page.

use app::auth::RequestUser;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::core::CoreErrorResponseType;
use openidconnect::{OAuth2TokenResponse, RefreshToken, RequestTokenError};
use time::OffsetDateTime;
use tower_sessions::Session;

use super::claims::{self, AccessClaims, Identity};
use super::provider::{error_chain, PROBE_TIMEOUT};
use super::{SessionUser, USER_KEY};
use crate::state::AppState;

/// Tokens are refreshed this many seconds before they expire, so a request never carries
/// one that expires while it is being served.
const REFRESH_MARGIN: i64 = 30;

/// After Keycloak failed to respond to a refresh, requests of that session skip refreshing
/// for this many seconds, so a hung Keycloak does not slow every page down.
const REFRESH_BACKOFF: i64 = 30;

/// Pages that need a signed-in user. Which persona each needs is checked by the page and by
/// the server functions behind it.
const SIGNED_IN_PATHS: &[&str] = &[
    "/me",
    "/catalog",
    "/requests",
    "/approvals",
    "/audit",
    "/admin",
];

enum Refresh {
    Refreshed(Box<SessionUser>),
    /// Keycloak rejected the refresh token: the Keycloak session is over.
    Ended(String),
    /// Keycloak could not be asked; the current tokens stay until it can.
    Unavailable(String),
}

/// Puts a [`RequestUser`] into the request's extensions for every handler and page.
pub async fn resolve_user(
    State(state): State<AppState>,
    session: Session,
    mut request: Request,
    next: Next,
) -> Response {
    // Static assets need no user, and skipping them saves a session read per asset.
    let path = request.uri().path();
    if path.starts_with("/pkg/") || path == "/favicon.svg" {
        return next.run(request).await;
    }
    let stored = match session.get::<SessionUser>(USER_KEY).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, "the session could not be read; treating the request as signed out");
            None
        }
    };
    let backing_off = |stored: &SessionUser| stored.refresh_retry_at.is_some_and(|at| at > now());
    let user = match stored {
        Some(stored)
            if stored.access_expires_at - REFRESH_MARGIN <= now() && !backing_off(&stored) =>
        {
            match refresh(&state, &stored).await {
                Refresh::Refreshed(updated) => {
                    let user = updated.user.clone();
                    if let Err(error) = session.insert(USER_KEY, *updated).await {
                        tracing::error!(%error, subject = %user.subject, "refreshed tokens could not be saved in the session");
                    }
                    Some(user)
                }
                Refresh::Ended(reason) => {
                    tracing::info!(
                        security_event = "session_ended",
                        subject = %stored.user.subject,
                        %reason,
                        "Keycloak rejected the refresh token; ending the portal session"
                    );
                    if let Err(error) = session.flush().await {
                        tracing::error!(%error, "the ended session could not be deleted");
                    }
                    None
                }
                Refresh::Unavailable(reason) => {
                    tracing::warn!(
                        subject = %stored.user.subject,
                        %reason,
                        retry_in_seconds = REFRESH_BACKOFF,
                        "token refresh failed; keeping the session until Keycloak responds"
                    );
                    let user = stored.user.clone();
                    let retry = SessionUser {
                        refresh_retry_at: Some(now() + REFRESH_BACKOFF),
                        ..stored
                    };
                    if let Err(error) = session.insert(USER_KEY, retry).await {
                        tracing::error!(%error, "the refresh back-off could not be saved in the session");
                    }
                    Some(user)
                }
            }
        }
        Some(stored) => Some(stored.user),
        None => None,
    };

    let path = request.uri().path();
    let needs_sign_in = SIGNED_IN_PATHS
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")));
    if user.is_none() && needs_sign_in && request.method() == Method::GET {
        let target = request
            .uri()
            .path_and_query()
            .map(|value| value.as_str().to_owned())
            .unwrap_or_else(|| path.to_owned());
        let login = format!(
            "/auth/login?returnTo={}",
            app::url::encode_query_value(&target)
        );
        return Redirect::to(&login).into_response();
    }

    request.extensions_mut().insert(RequestUser(user));
    next.run(request).await
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

async fn refresh(state: &AppState, stored: &SessionUser) -> Refresh {
    let Some(refresh_token) = stored.refresh_token.clone() else {
        return Refresh::Ended("the session has no refresh token".into());
    };
    let metadata = match state.oidc.metadata().await {
        Ok(metadata) => metadata,
        Err(error) => return Refresh::Unavailable(error.to_string()),
    };
    let client = state.oidc.client(metadata);
    let refresh_token = RefreshToken::new(refresh_token);
    let request = match client.exchange_refresh_token(&refresh_token) {
        Ok(request) => request,
        Err(error) => return Refresh::Unavailable(error.to_string()),
    };
    let response =
        match tokio::time::timeout(PROBE_TIMEOUT, request.request_async(state.oidc.http())).await {
            Err(_) => {
                return Refresh::Unavailable(format!(
                    "the token endpoint did not respond within {} s",
                    PROBE_TIMEOUT.as_secs()
                ))
            }
            Ok(Ok(response)) => response,
            Ok(Err(RequestTokenError::ServerResponse(response))) => {
                let reason = format!(
                    "{}: {}",
                    response.error(),
                    response.error_description().cloned().unwrap_or_default()
                );
                return match response.error() {
                    CoreErrorResponseType::InvalidGrant
                    | CoreErrorResponseType::UnauthorizedClient => Refresh::Ended(reason),
                    _ => Refresh::Unavailable(reason),
                };
            }
            Ok(Err(error)) => return Refresh::Unavailable(error_chain(&error)),
        };

    let access_token = response.access_token().secret().clone();
    let access: AccessClaims = match claims::decode_unverified(&access_token) {
        Ok(access) => access,
        Err(error) => return Refresh::Unavailable(format!("unreadable access token: {error}")),
    };
    if access
        .sub
        .as_deref()
        .is_some_and(|sub| sub != stored.user.subject)
    {
        return Refresh::Ended("the refreshed token names another subject".into());
    }
    let identity = Identity {
        subject: stored.user.subject.clone(),
        username: access.preferred_username.clone(),
        name: access.name.clone(),
        email: access.email.clone(),
    };
    let user = claims::current_user(
        identity,
        &access,
        state.oidc.client_id(),
        &state.config.personas,
    );
    let id_token = openidconnect::TokenResponse::id_token(&response)
        .map(|token| token.to_string())
        .unwrap_or_else(|| stored.id_token.clone());
    Refresh::Refreshed(Box::new(SessionUser {
        user,
        access_token,
        refresh_token: response
            .refresh_token()
            .map(|token| token.secret().clone())
            .or_else(|| stored.refresh_token.clone()),
        id_token,
        access_expires_at: super::access_expires_at(response.expires_in()),
        refresh_retry_at: None,
    }))
}
