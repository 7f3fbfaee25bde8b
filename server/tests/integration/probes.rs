use axum::http::StatusCode;
use serde_json::json;

use crate::support::{self, TestDir};

#[tokio::test]
async fn healthz_answers_without_keycloak() {
    let dir = TestDir::new();
    let state = support::state(dir.config(&support::closed_port_url().await)).await;
    let response = support::get(&state, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = support::body_json(response).await;
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn readyz_fails_when_keycloak_is_down() {
    let dir = TestDir::new();
    let keycloak = support::closed_port_url().await;
    let state = support::state(dir.config(&keycloak)).await;
    let response = support::get(&state, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = support::body_json(response).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert_eq!(body["checks"]["keycloak"]["ok"], false);
    let error = body["checks"]["keycloak"]["error"].as_str().unwrap();
    assert!(error.contains(&keycloak), "{error}");
    assert!(error.contains("connection failed"), "{error}");
}

#[tokio::test]
async fn readyz_passes_with_matching_issuer() {
    let dir = TestDir::new();
    let keycloak =
        support::fake_keycloak(|base| json!({ "issuer": format!("{base}/realms/stint") })).await;
    let state = support::state(dir.config(&keycloak)).await;
    let response = support::get(&state, "/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = support::body_json(response).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["detail"], "sqlite");
    assert_eq!(
        body["checks"]["keycloak"]["detail"],
        format!("{keycloak}/realms/stint")
    );
}

#[tokio::test]
async fn readyz_fails_on_issuer_mismatch() {
    let dir = TestDir::new();
    let keycloak =
        support::fake_keycloak(|_| json!({ "issuer": "http://localhost:8180/realms/stint" })).await;
    let state = support::state(dir.config(&keycloak)).await;
    let response = support::get(&state, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = support::body_json(response).await;
    let error = body["checks"]["keycloak"]["error"].as_str().unwrap();
    assert!(
        error.contains("http://localhost:8180/realms/stint"),
        "{error}"
    );
    assert!(error.contains("hostname"), "{error}");
}

#[tokio::test]
async fn home_page_references_hydration_bundle() {
    let dir = TestDir::new();
    let state = support::state(dir.config(&support::closed_port_url().await)).await;
    let response = support::get(&state, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = support::body_text(response).await;
    assert!(html.contains("/pkg/stint.js"), "{html}");
    assert!(html.contains("/pkg/stint_bg.wasm"), "{html}");
    assert!(html.contains("/pkg/stint.css"), "{html}");
    assert!(html.contains(r#"data-hydrated="false""#), "{html}");
}

#[tokio::test]
async fn unknown_page_is_not_found() {
    let dir = TestDir::new();
    let state = support::state(dir.config(&support::closed_port_url().await)).await;
    let response = support::get(&state, "/no-such-page").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(support::body_text(response)
        .await
        .contains("Page not found"));
}

#[tokio::test]
async fn responses_carry_request_id() {
    let dir = TestDir::new();
    let state = support::state(dir.config(&support::closed_port_url().await)).await;
    let response = support::get(&state, "/healthz").await;
    let id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn missing_catalog_stops_start_up() {
    let dir = TestDir::new();
    let mut config = dir.config(&support::closed_port_url().await);
    config.catalog = dir.dir.path().join("absent.toml");
    let error = server::prepare(config).await.err().unwrap().to_string();
    assert!(error.contains("absent.toml"), "{error}");
    assert!(error.contains("could not read the file"), "{error}");
}
