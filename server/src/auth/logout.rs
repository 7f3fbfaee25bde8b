//! `POST /auth/logout`: ends the portal session, then Keycloak's through RP-initiated logout.

use std::str::FromStr;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::core::CoreIdToken;
use openidconnect::{ClientId, LogoutRequest, PostLogoutRedirectUrl};
use tower_sessions::Session;

use super::{SessionUser, USER_KEY};
use crate::state::AppState;

pub async fn logout(State(state): State<AppState>, session: Session) -> Response {
    let user: Option<SessionUser> = session.get(USER_KEY).await.ok().flatten();
    if let Err(error) = session.flush().await {
        tracing::error!(%error, "sign-out failed: the session could not be deleted");
    }
    let Some(user) = user else {
        return Redirect::to("/").into_response();
    };
    tracing::info!(
        security_event = "logout",
        subject = %user.user.subject,
        username = %user.user.username,
        "user signed out"
    );

    match end_session_url(&state, &user).await {
        Some(url) => Redirect::to(&url).into_response(),
        None => Redirect::to("/").into_response(),
    }
}

/// Builds Keycloak's end-session URL with `id_token_hint`, or `None` when Keycloak is
/// unreachable or advertises no end-session endpoint. The portal session is gone either
/// way; the Keycloak session then ends at its own idle timeout.
async fn end_session_url(state: &AppState, user: &SessionUser) -> Option<String> {
    let metadata = match state.oidc.metadata().await {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::warn!(%error, subject = %user.user.subject, "Keycloak logout skipped: Keycloak is unreachable");
            return None;
        }
    };
    let Some(endpoint) = metadata.additional_metadata().end_session_endpoint.clone() else {
        tracing::warn!(
            "Keycloak logout skipped: the discovery document has no end_session_endpoint"
        );
        return None;
    };
    let post_logout = format!(
        "{}/",
        state.config.public_url.as_str().trim_end_matches('/')
    );
    let mut request = LogoutRequest::from(endpoint)
        .set_client_id(ClientId::new(state.config.keycloak.client_id.clone()));
    match PostLogoutRedirectUrl::new(post_logout) {
        Ok(url) => request = request.set_post_logout_redirect_uri(url),
        Err(error) => {
            tracing::warn!(%error, "post-logout redirect URL is invalid; Keycloak will show its own page")
        }
    }
    match CoreIdToken::from_str(&user.id_token) {
        Ok(id_token) => request = request.set_id_token_hint(&id_token),
        Err(error) => {
            tracing::warn!(%error, "stored ID token could not be parsed; logging out without id_token_hint")
        }
    }
    Some(request.http_get_url().to_string())
}
