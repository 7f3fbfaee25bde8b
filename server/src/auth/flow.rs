//! `/auth/login` and `/auth/callback`: the authorization code flow with PKCE (S256), `state`
//! and `nonce`.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::core::{CoreAuthenticationFlow, CoreErrorResponseType, CoreIdToken};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, CsrfToken, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RequestTokenError, SignatureVerificationError,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tower_sessions::{Expiry, Session};

use super::claims::{self, AccessClaims, Identity};
use super::provider::error_chain;
use super::{SessionUser, SignInFailure, SID_KEY, USER_KEY};
use crate::session_store::SUBJECT_KEY;
use crate::state::AppState;

/// Session key of the sign-ins started in this browser and not finished yet.
const PENDING_KEY: &str = "stint.pending_logins";
/// Sign-ins kept per session; one per open tab is plenty, and older ones are dropped.
const MAX_PENDING: usize = 5;
/// A sign-in not finished within this many seconds is rejected as expired. Keycloak's own
/// login page has a longer timeout, but the authorization code lives only 60 s.
const PENDING_LIFETIME: i64 = 600;

#[derive(Clone, Serialize, Deserialize)]
struct PendingLogin {
    state: String,
    nonce: String,
    pkce_verifier: String,
    return_to: String,
    started_at: i64,
}

/// Returns the sign-ins pending in `session`. An unreadable entry counts as none, so the
/// user starts a new sign-in instead of seeing an error.
async fn pending_logins(session: &Session) -> Vec<PendingLogin> {
    match session.get(PENDING_KEY).await {
        Ok(pending) => pending.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, "pending sign-ins could not be read from the session");
            Vec::new()
        }
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(rename = "returnTo")]
    return_to: Option<String>,
}

/// Validates a requested return-to path and falls back to `/` for anything that could
/// leave the portal.
fn return_to(requested: Option<&str>) -> String {
    match requested {
        None => "/".to_owned(),
        Some(target) => match app::url::safe_return_to(target) {
            Some(path) => path.to_owned(),
            None => {
                tracing::warn!(
                    return_to = %truncate(target, 200).escape_debug(),
                    "ignored a returnTo that is not a local path"
                );
                "/".to_owned()
            }
        },
    }
}

/// Returns at most `max` characters of `text`, for logging values that callers control.
fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub async fn login(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<LoginQuery>,
) -> Response {
    let return_to = return_to(query.return_to.as_deref());
    if matches!(session.get::<SessionUser>(USER_KEY).await, Ok(Some(_))) {
        return Redirect::to(&return_to).into_response();
    }

    // Discovery is cached for an hour, so a cached document does not show whether the
    // browser can reach Keycloak now. A quick probe turns a dead redirect into a readable page.
    let metadata = match state.oidc.probe().await.and(state.oidc.metadata().await) {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::warn!(%error, "sign-in could not start: Keycloak is unreachable");
            return SignInFailure::KeycloakUnreachable
                .redirect(&return_to)
                .into_response();
        }
    };
    let client = state.oidc.client(metadata);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf_state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge)
        .url();

    let mut pending = pending_logins(&session).await;
    let started_at = now();
    pending.retain(|login| started_at - login.started_at < PENDING_LIFETIME);
    pending.push(PendingLogin {
        state: csrf_state.secret().clone(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
        return_to,
        started_at,
    });
    if pending.len() > MAX_PENDING {
        pending.drain(..pending.len() - MAX_PENDING);
    }
    // A session that only carries a pending sign-in lives as long as the sign-in may take,
    // so anonymous visits to /auth/login do not leave rows for the full session lifetime.
    if !matches!(session.get::<SessionUser>(USER_KEY).await, Ok(Some(_))) {
        session.set_expiry(Some(Expiry::OnInactivity(time::Duration::seconds(
            PENDING_LIFETIME,
        ))));
    }
    if let Err(error) = session.insert(PENDING_KEY, pending).await {
        tracing::error!(%error, "sign-in could not start: the session could not be saved");
        return SignInFailure::Failed.redirect("/").into_response();
    }
    Redirect::to(url.as_str()).into_response()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<CallbackQuery>,
) -> Response {
    match finish_login(&state, &session, query).await {
        Ok(return_to) => Redirect::to(&return_to).into_response(),
        Err((failure, return_to)) => failure.redirect(&return_to).into_response(),
    }
}

type Failure = (SignInFailure, String);

async fn finish_login(
    state: &AppState,
    session: &Session,
    query: CallbackQuery,
) -> Result<String, Failure> {
    // Each pending sign-in is used once: it leaves the session before the code is redeemed.
    let mut pending = pending_logins(session).await;
    let position = query
        .state
        .as_deref()
        .and_then(|wanted| pending.iter().position(|login| login.state == wanted));
    let Some(position) = position else {
        tracing::warn!(
            pending = pending.len(),
            "sign-in rejected: the state parameter matches no sign-in started in this session"
        );
        return Err((SignInFailure::StateMismatch, "/".into()));
    };
    let login = pending.remove(position);
    if let Err(error) = session.insert(PENDING_KEY, pending).await {
        tracing::error!(%error, "sign-in failed: the session could not be saved");
        return Err((SignInFailure::Failed, login.return_to));
    }
    let fail = |failure: SignInFailure| (failure, login.return_to.clone());

    if let Some(error) = query.error.as_deref() {
        let description = query.error_description.as_deref().unwrap_or_default();
        // Both values come from the query string: escaped, so they cannot forge log lines.
        tracing::warn!(
            error = %error.escape_debug(),
            description = %truncate(description, 200).escape_debug(),
            "sign-in ended by Keycloak with an error"
        );
        let failure = if error == "access_denied" {
            SignInFailure::AccessDenied
        } else {
            SignInFailure::Failed
        };
        return Err(fail(failure));
    }
    if now() - login.started_at >= PENDING_LIFETIME {
        tracing::warn!(
            age_seconds = now() - login.started_at,
            "sign-in rejected: started too long ago"
        );
        return Err(fail(SignInFailure::Expired));
    }
    let Some(code) = query.code else {
        tracing::warn!("sign-in rejected: the callback has neither a code nor an error");
        return Err(fail(SignInFailure::Failed));
    };

    let metadata = state.oidc.metadata().await.map_err(|error| {
        tracing::warn!(%error, "sign-in failed: Keycloak is unreachable");
        fail(SignInFailure::KeycloakUnreachable)
    })?;
    let client = state.oidc.client(metadata);
    let exchange = client.exchange_code(AuthorizationCode::new(code)).map_err(|error| {
        tracing::error!(%error, "sign-in failed: the discovery document names no token endpoint");
        fail(SignInFailure::Failed)
    })?;
    let response = exchange
        .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
        .request_async(state.oidc.http())
        .await
        .map_err(|error| fail(classify_token_error(&error)))?;

    let Some(id_token) = response.id_token() else {
        tracing::warn!("sign-in failed: the token response has no ID token");
        return Err(fail(SignInFailure::InvalidToken));
    };
    let nonce = Nonce::new(login.nonce.clone());
    let identity = verify_id_token(state, id_token, &nonce)
        .await
        .map_err(fail)?;

    let access_token = response.access_token().secret().clone();
    let access: AccessClaims = claims::decode_unverified(&access_token).map_err(|error| {
        tracing::warn!(%error, "sign-in failed: the access token could not be read");
        fail(SignInFailure::InvalidToken)
    })?;
    let sid = id_token_sid(id_token);
    let user = claims::current_user(
        identity,
        &access,
        state.oidc.client_id(),
        &state.config.personas,
    );
    let session_user = SessionUser {
        access_token,
        refresh_token: response.refresh_token().map(|token| token.secret().clone()),
        id_token: id_token.to_string(),
        access_expires_at: super::access_expires_at(response.expires_in()),
        refresh_retry_at: None,
        user: user.clone(),
    };

    // A new session id at sign-in, so an id planted in the browser before sign-in (session
    // fixation) never becomes a signed-in session.
    let saved = async {
        session.cycle_id().await?;
        session.set_expiry(Some(Expiry::OnInactivity(time::Duration::seconds(
            crate::SESSION_IDLE.as_secs() as i64,
        ))));
        session.insert(SUBJECT_KEY, &user.subject).await?;
        session.insert(SID_KEY, sid).await?;
        session.insert(USER_KEY, session_user).await
    };
    if let Err(error) = saved.await {
        tracing::error!(%error, "sign-in failed: the session could not be saved");
        return Err(fail(SignInFailure::Failed));
    }
    tracing::info!(
        security_event = "login",
        subject = %user.subject,
        username = %user.username,
        personas = ?user.personas,
        "user signed in"
    );
    Ok(login.return_to)
}

/// Validates the ID token's signature, issuer, audience, `azp`, expiry and nonce. An unknown
/// signing key triggers one fetch of the key set and a second attempt.
async fn verify_id_token(
    state: &AppState,
    id_token: &CoreIdToken,
    nonce: &Nonce,
) -> Result<Identity, SignInFailure> {
    let metadata = state
        .oidc
        .metadata()
        .await
        .map_err(|_| SignInFailure::KeycloakUnreachable)?;
    let first = {
        let client = state.oidc.client(metadata);
        let verifier = client.id_token_verifier();
        id_token.claims(&verifier, nonce).map(identity_of)
    };
    let result = match first {
        Err(ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        )) => {
            let metadata = state.oidc.refresh_keys().await.map_err(|error| {
                tracing::warn!(%error, "sign-in failed: the signing keys could not be refetched");
                SignInFailure::KeycloakUnreachable
            })?;
            let client = state.oidc.client(metadata);
            let verifier = client.id_token_verifier();
            id_token.claims(&verifier, nonce).map(identity_of)
        }
        other => other,
    };
    result.map_err(|error| {
        tracing::warn!(error = %error_chain(&error), "sign-in rejected: the ID token is invalid");
        SignInFailure::InvalidToken
    })
}

fn identity_of(claims: &openidconnect::core::CoreIdTokenClaims) -> Identity {
    Identity {
        subject: claims.subject().to_string(),
        username: claims.preferred_username().map(|name| name.to_string()),
        name: claims
            .name()
            .and_then(|name| name.get(None))
            .map(|name| name.to_string()),
        email: claims.email().map(|email| email.to_string()),
    }
}

/// Reads Keycloak's session id (`sid`) from a validated ID token.
fn id_token_sid(id_token: &CoreIdToken) -> Option<String> {
    #[derive(Deserialize)]
    struct Sid {
        sid: Option<String>,
    }
    claims::decode_unverified::<Sid>(&id_token.to_string())
        .ok()
        .and_then(|claims| claims.sid)
}

/// Maps a failed code exchange to the reason shown to the user, and logs the details.
fn classify_token_error<E: std::error::Error + 'static>(
    error: &RequestTokenError<E, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> SignInFailure {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().cloned().unwrap_or_default();
            tracing::warn!(error = %response.error(), %description, "sign-in rejected by Keycloak's token endpoint");
            if *response.error() == CoreErrorResponseType::InvalidGrant {
                SignInFailure::Expired
            } else {
                SignInFailure::Failed
            }
        }
        RequestTokenError::Request(inner) => {
            tracing::warn!(error = %error_chain(inner), "sign-in failed: the token endpoint is unreachable");
            SignInFailure::KeycloakUnreachable
        }
        RequestTokenError::Parse(inner, _body) => {
            let text = inner.to_string();
            tracing::warn!(error = %text, path = %inner.path(), "sign-in failed: the token response could not be parsed");
            if text.contains("missing field `sub`") {
                SignInFailure::MissingSubject
            } else {
                SignInFailure::InvalidToken
            }
        }
        RequestTokenError::Other(text) => {
            tracing::warn!(error = %text, "sign-in failed at the token endpoint");
            SignInFailure::Failed
        }
    }
}
