//! Liveness and readiness probes.
//!
//! `/healthz` returns 200 as long as the process serves HTTP. `/readyz` also proves that
//! the database runs a query and that Keycloak serves the realm's discovery document with the
//! issuer the portal expects, so a load balancer sends no traffic to a replica that could not
//! sign anyone in.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    version: &'static str,
}

pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Serialize)]
pub struct Readiness {
    /// `ready` when every check passed, else `unavailable`.
    status: &'static str,
    checks: Checks,
}

#[derive(Serialize)]
struct Checks {
    database: Check,
    keycloak: Check,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Check {
    fn passed(detail: String) -> Self {
        Self {
            ok: true,
            detail: Some(detail),
            error: None,
        }
    }

    fn failed(error: String) -> Self {
        Self {
            ok: false,
            detail: None,
            error: Some(error),
        }
    }
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (database, keycloak) = tokio::join!(check_database(&state), check_keycloak(&state));
    let ready = database.ok && keycloak.ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        checks: Checks { database, keycloak },
    };
    (status, Json(body))
}

async fn check_database(state: &AppState) -> Check {
    let backend = state.database.backend();
    match tokio::time::timeout(CHECK_TIMEOUT, state.database.ping()).await {
        Ok(Ok(())) => Check::passed(backend.to_owned()),
        Ok(Err(error)) => {
            tracing::warn!(%error, backend, "readiness: database query failed");
            Check::failed(format!("{backend} query failed: {error}"))
        }
        Err(_) => {
            tracing::warn!(backend, "readiness: database query timed out");
            Check::failed(format!(
                "{backend} query timed out after {} s",
                CHECK_TIMEOUT.as_secs()
            ))
        }
    }
}

#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
}

async fn check_keycloak(state: &AppState) -> Check {
    let issuer = state.config.keycloak.issuer_url();
    let url = format!("{issuer}/.well-known/openid-configuration");
    let response = state.http.get(&url).timeout(CHECK_TIMEOUT).send().await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            let reason = if error.is_timeout() {
                format!("timed out after {} s", CHECK_TIMEOUT.as_secs())
            } else if error.is_connect() {
                "connection failed".to_owned()
            } else {
                error.to_string()
            };
            tracing::warn!(%url, %reason, "readiness: Keycloak discovery request failed");
            return Check::failed(format!("GET {url}: {reason}"));
        }
    };
    if !response.status().is_success() {
        let status = response.status();
        tracing::warn!(%url, %status, "readiness: Keycloak discovery returned an error status");
        return Check::failed(format!(
            "GET {url} returned {status}: check keycloak.url and keycloak.realm"
        ));
    }
    match response.json::<Discovery>().await {
        Ok(discovery) if discovery.issuer == issuer => Check::passed(discovery.issuer),
        Ok(discovery) => {
            tracing::warn!(expected = %issuer, found = %discovery.issuer, "readiness: issuer mismatch");
            Check::failed(format!(
                "Keycloak reports issuer {} but the portal expects {issuer}: set Keycloak's \
                 hostname so that both see one URL",
                discovery.issuer
            ))
        }
        Err(error) => {
            tracing::warn!(%url, %error, "readiness: discovery document is not valid JSON");
            Check::failed(format!("GET {url}: not a discovery document: {error}"))
        }
    }
}
