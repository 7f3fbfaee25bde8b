//! `POST /auth/backchannel-logout`: Keycloak notifies the portal that a user's session ended.
//!
//! The request comes from Keycloak's server, not a browser, so it carries no cookie and no
//! Origin header. The signed logout token is its authentication (OpenID Connect
//! Back-Channel Logout 1.0). A valid token ends every portal session of its `sub`, because
//! Keycloak's admin "sign out" names only one of the user's Keycloak sessions.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyId, JwsSigningAlgorithm};
use serde::Deserialize;
use time::OffsetDateTime;

use super::provider::ProviderError;
use crate::session_store::DatabaseSessionStore;
use crate::state::AppState;

const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Accepted difference between Keycloak's clock and the portal's, in seconds.
const CLOCK_SKEW: i64 = 120;
/// Logout tokens older than this are rejected, so a captured token cannot be replayed later.
const MAX_TOKEN_AGE: i64 = 600;

#[derive(Deserialize)]
pub struct LogoutForm {
    logout_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: CoreJwsSigningAlgorithm,
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct LogoutClaims {
    iss: String,
    aud: Audience,
    iat: i64,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    events: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    nonce: Option<serde_json::Value>,
}

/// Reason a logout token was rejected. The text is returned to Keycloak and logged.
#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    #[error("the request has no logout_token")]
    Missing,
    #[error("the logout token is malformed: {0}")]
    Malformed(String),
    #[error("no signing key matches the logout token's kid {0:?}")]
    UnknownKey(Option<String>),
    #[error("the logout token's signature is invalid: {0}")]
    Signature(String),
    #[error("the logout token's claims are invalid: {0}")]
    Claims(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

pub async fn backchannel_logout(
    State(state): State<AppState>,
    Form(form): Form<LogoutForm>,
) -> Response {
    let result = match form.logout_token.as_deref() {
        None => Err(LogoutTokenError::Missing),
        Some(token) => {
            verify_logout_token(&state, token, OffsetDateTime::now_utc().unix_timestamp()).await
        }
    };
    let claims = match result {
        Ok(claims) => claims,
        Err(error) => {
            tracing::warn!(security_event = "backchannel_logout_rejected", %error, "back-channel logout rejected");
            let status = if matches!(error, LogoutTokenError::Provider(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            let body = serde_json::json!({
                "error": "invalid_request",
                "error_description": error.to_string(),
            });
            return (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
        }
    };

    let store = DatabaseSessionStore::new(state.database.clone());
    let ended = match (&claims.sub, &claims.sid) {
        (Some(subject), _) => store.delete_by_subject(subject).await,
        (None, Some(sid)) => store.delete_by_keycloak_sid(sid).await,
        (None, None) => Ok(0),
    };
    match ended {
        Ok(count) => {
            tracing::info!(
                security_event = "backchannel_logout",
                subject = claims.sub.as_deref().unwrap_or_default(),
                sid = claims.sid.as_deref().unwrap_or_default(),
                sessions_ended = count,
                "Keycloak ended a user's session; ended the user's portal sessions"
            );
            (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
        }
        Err(error) => {
            tracing::error!(%error, subject = claims.sub.as_deref().unwrap_or_default(), "back-channel logout failed: sessions could not be deleted");
            // A 5xx makes Keycloak report the failure instead of assuming success.
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CACHE_CONTROL, "no-store")],
            )
                .into_response()
        }
    }
}

/// Checks a logout token's signature against the realm's keys and its claims against
/// OpenID Connect Back-Channel Logout 1.0 section 2.6, with `now` in Unix seconds.
pub async fn verify_logout_token(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<LogoutClaims, LogoutTokenError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_part, payload_part, signature_part] = parts[..] else {
        return Err(LogoutTokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let header: Header = decode_part(header_part)?;
    let signature = URL_SAFE_NO_PAD.decode(signature_part).map_err(|error| {
        LogoutTokenError::Malformed(format!("signature is not base64url: {error}"))
    })?;
    let signing_input = format!("{header_part}.{payload_part}");

    let kid = header.kid.clone().map(JsonWebKeyId::new);
    let mut keys = candidate_keys(&state.oidc.metadata().await?, kid.as_ref(), &header.alg);
    if keys.is_empty() {
        keys = candidate_keys(&state.oidc.refresh_keys().await?, kid.as_ref(), &header.alg);
    }
    if keys.is_empty() {
        return Err(LogoutTokenError::UnknownKey(header.kid.clone()));
    }
    let mut last_error = String::new();
    let verified = keys.iter().any(|key| {
        match key.verify_signature(&header.alg, signing_input.as_bytes(), &signature) {
            Ok(()) => true,
            Err(error) => {
                last_error = error.to_string();
                false
            }
        }
    });
    if !verified {
        return Err(LogoutTokenError::Signature(last_error));
    }

    let claims: LogoutClaims = decode_part(payload_part)?;
    check_claims(&claims, state.oidc.issuer(), state.oidc.client_id(), now)?;
    Ok(claims)
}

/// Returns the realm's signing keys that `kid` and `alg` could name. Keycloak 26 publishes
/// an encryption key (`use: enc`) beside each signing key, sometimes of the same type.
fn candidate_keys(
    metadata: &openidconnect::ProviderMetadataWithLogout,
    kid: Option<&JsonWebKeyId>,
    alg: &CoreJwsSigningAlgorithm,
) -> Vec<CoreJsonWebKey> {
    let Some(key_type) = alg.key_type() else {
        return Vec::new();
    };
    metadata
        .jwks()
        .keys()
        .iter()
        .filter(|key| kid.is_none() || key.key_id() == kid)
        .filter(|key| key.key_type() == &key_type)
        .filter(|key| {
            key.key_use()
                .is_none_or(|key_use| *key_use == CoreJsonWebKeyUse::Signature)
        })
        .cloned()
        .collect()
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, LogoutTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|error| LogoutTokenError::Malformed(format!("part is not base64url: {error}")))?;
    serde_json::from_slice(&bytes).map_err(|error| LogoutTokenError::Malformed(error.to_string()))
}

fn check_claims(
    claims: &LogoutClaims,
    issuer: &str,
    client_id: &str,
    now: i64,
) -> Result<(), LogoutTokenError> {
    let fail = |message: String| Err(LogoutTokenError::Claims(message));
    if claims.iss != issuer {
        return fail(format!("issuer {} is not {issuer}", claims.iss));
    }
    let audience_ok = match &claims.aud {
        Audience::One(audience) => audience == client_id,
        Audience::Many(audiences) => audiences.iter().any(|audience| audience == client_id),
    };
    if !audience_ok {
        return fail(format!(
            "audience {:?} does not contain {client_id}",
            claims.aud
        ));
    }
    if claims.iat > now + CLOCK_SKEW {
        return fail(format!("issued at {} lies in the future", claims.iat));
    }
    if now - claims.iat > MAX_TOKEN_AGE {
        return fail(format!(
            "issued at {}, more than {MAX_TOKEN_AGE} s ago",
            claims.iat
        ));
    }
    if let Some(exp) = claims.exp {
        if exp + CLOCK_SKEW < now {
            return fail(format!("expired at {exp}"));
        }
    }
    if !claims.events.contains_key(LOGOUT_EVENT) {
        return fail(format!("the events claim lacks {LOGOUT_EVENT}"));
    }
    if claims.nonce.is_some() {
        return fail("a logout token must not contain a nonce".into());
    }
    if claims.sub.is_none() && claims.sid.is_none() {
        return fail("the token names neither sub nor sid".into());
    }
    Ok(())
}
