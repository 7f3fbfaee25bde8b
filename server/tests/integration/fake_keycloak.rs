//! An in-process stand-in for Keycloak's OIDC endpoints, for token validation cases that a
//! real Keycloak never produces: wrong issuer, wrong audience, bad signatures and so on.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use serde_json::{json, Value};

pub const KID: &str = "test-key";

pub fn signing_key(kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(
        include_str!("fixtures/signing-key.pem"),
        Some(JsonWebKeyId::new(kid.into())),
    )
    .unwrap()
}

pub fn other_key(kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(
        include_str!("fixtures/other-key.pem"),
        Some(JsonWebKeyId::new(kid.into())),
    )
    .unwrap()
}

/// Signs `payload` as an RS256 JWT with `key`, naming `kid` in the header.
pub fn sign(key: &CoreRsaPrivateSigningKey, kid: &str, payload: &Value) -> String {
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": kid });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = key
        .sign(
            &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            input.as_bytes(),
        )
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An unsigned token with `payload`, like the access tokens the portal reads but does not verify.
pub fn unsigned(payload: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

#[derive(Default)]
pub struct FakeState {
    /// Key sets served by successive JWKS fetches; the last one repeats.
    pub key_sets: Vec<Value>,
    pub jwks_fetches: usize,
    /// Body and status of the next token response.
    pub token_response: Option<(u16, Value)>,
}

#[derive(Clone)]
pub struct FakeKeycloak {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeKeycloak {
    pub fn issuer(&self) -> String {
        format!("{}/realms/stint", self.base)
    }

    pub fn set_token_response(&self, status: u16, body: Value) {
        self.state.lock().unwrap().token_response = Some((status, body));
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.lock().unwrap().jwks_fetches
    }
}

/// The public key of `key` as a JWK set.
pub fn key_set(keys: &[&CoreRsaPrivateSigningKey]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .map(|key| serde_json::to_value(key.as_verification_key()).unwrap())
        .collect();
    json!({ "keys": keys })
}

pub async fn start(key_sets: Vec<Value>) -> FakeKeycloak {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(FakeState {
        key_sets,
        ..FakeState::default()
    }));
    let fake = FakeKeycloak {
        base: base.clone(),
        state: state.clone(),
    };
    let issuer = fake.issuer();
    let discovery = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
        "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
        "end_session_endpoint": format!("{issuer}/protocol/openid-connect/logout"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let app = Router::new()
        .route(
            "/realms/stint/.well-known/openid-configuration",
            get(move || {
                let discovery = discovery.clone();
                async move { Json(discovery) }
            }),
        )
        .route("/realms/stint/protocol/openid-connect/certs", get(jwks))
        .route("/realms/stint/protocol/openid-connect/token", post(token))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    fake
}

async fn jwks(State(state): State<Arc<Mutex<FakeState>>>) -> Json<Value> {
    let mut state = state.lock().unwrap();
    let index = state
        .jwks_fetches
        .min(state.key_sets.len().saturating_sub(1));
    state.jwks_fetches += 1;
    Json(
        state
            .key_sets
            .get(index)
            .cloned()
            .unwrap_or(json!({ "keys": [] })),
    )
}

async fn token(
    State(state): State<Arc<Mutex<FakeState>>>,
) -> (axum::http::StatusCode, Json<Value>) {
    let (status, body) = state
        .lock()
        .unwrap()
        .token_response
        .take()
        .unwrap_or((500, json!({ "error": "no token response prepared" })));
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        Json(body),
    )
}
