//! Sign-in, token validation and back-channel logout against the fake Keycloak.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use server::state::AppState;
use time::OffsetDateTime;
use tower::ServiceExt;

use crate::fake_keycloak::{self, FakeKeycloak, KID};
use crate::support::{self, TestDir};

const PORTAL: &str = "http://127.0.0.1:3000";

/// A change to a token's claims that makes the token invalid.
type ClaimsChange = Box<dyn Fn(&mut Value)>;

struct Harness {
    _dir: TestDir,
    state: AppState,
    fake: FakeKeycloak,
}

async fn harness() -> Harness {
    let key = fake_keycloak::signing_key(KID);
    harness_with_keys(vec![fake_keycloak::key_set(&[&key])]).await
}

async fn harness_with_keys(key_sets: Vec<Value>) -> Harness {
    let fake = fake_keycloak::start(key_sets).await;
    let dir = TestDir::new();
    let state = support::state(dir.config(&fake.base)).await;
    Harness {
        _dir: dir,
        state,
        fake,
    }
}

/// A request through the portal's router, with an optional cookie and Origin.
async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> axum::http::Response<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    let body = match form {
        Some(form) => {
            builder = builder
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ORIGIN, PORTAL);
            Body::from(form)
        }
        None => Body::empty(),
    };
    server::router(state.clone())
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap()
}

fn location(response: &axum::http::Response<Body>) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn session_cookie(response: &axum::http::Response<Body>) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|value| value.starts_with("stint_session="))
        .map(|value| value.split(';').next().unwrap().to_owned())
}

/// A started sign-in: the session cookie and the state and nonce sent to Keycloak.
struct Started {
    cookie: String,
    state: String,
    nonce: String,
}

async fn start_login(harness: &Harness) -> Started {
    let response = send(
        &harness.state,
        "GET",
        "/auth/login?returnTo=/me",
        None,
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let url = url::Url::parse(&location(&response)).unwrap();
    assert!(url.as_str().starts_with(&harness.fake.issuer()), "{url}");
    let param = |name: &str| {
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .unwrap()
    };
    assert_eq!(param("code_challenge_method"), "S256");
    let cookie_header = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie_header.contains("Max-Age=600"),
        "a session with only a pending sign-in should live 10 minutes: {cookie_header}"
    );
    Started {
        cookie: session_cookie(&response).unwrap(),
        state: param("state"),
        nonce: param("nonce"),
    }
}

fn id_claims(harness: &Harness, nonce: &str) -> Value {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": harness.fake.issuer(),
        "aud": "stint-portal",
        "azp": "stint-portal",
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "nonce": nonce,
        "sid": "keycloak-session-1",
        "preferred_username": "alice",
        "name": "Alice Able",
    })
}

fn token_body(id_token: String) -> Value {
    let access = fake_keycloak::unsigned(&json!({
        "sub": "user-1",
        "groups": ["/engineering"],
        "realm_access": { "roles": ["employee"] },
    }));
    json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 300,
        "refresh_token": "refresh-1",
        "id_token": id_token,
    })
}

/// Runs the callback with an ID token made from `claims` and returns where it redirects.
async fn finish_with(
    harness: &Harness,
    started: &Started,
    id_token: String,
) -> (String, Option<String>) {
    harness.fake.set_token_response(200, token_body(id_token));
    let uri = format!("/auth/callback?code=code-1&state={}", started.state);
    let response = send(&harness.state, "GET", &uri, Some(&started.cookie), None).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    (location(&response), session_cookie(&response))
}

async fn finish_with_claims(harness: &Harness, started: &Started, claims: Value) -> String {
    let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
    finish_with(harness, started, token).await.0
}

#[tokio::test]
async fn valid_id_token_cycles_session_id() {
    let harness = harness().await;
    let started = start_login(&harness).await;
    let claims = id_claims(&harness, &started.nonce);
    let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
    let (target, cookie) = finish_with(&harness, &started, token).await;
    assert_eq!(target, "/me");
    let cookie = cookie.expect("sign-in sets a new session cookie");
    assert_ne!(cookie, started.cookie);

    let me = send(
        &harness.state,
        "POST",
        "/api/current_user",
        Some(&cookie),
        Some(String::new()),
    )
    .await;
    assert_eq!(me.status(), StatusCode::OK);
    let user = support::body_json(me).await;
    assert_eq!(user["subject"], "user-1");
    assert_eq!(user["groups"], json!(["/engineering"]));

    // The session id from before sign-in is not signed in.
    let old = send(
        &harness.state,
        "POST",
        "/api/current_user",
        Some(&started.cookie),
        Some(String::new()),
    )
    .await;
    assert_eq!(support::body_json(old).await, Value::Null);
}

#[tokio::test]
async fn id_token_validation_failures() {
    let cases: Vec<(&str, ClaimsChange)> = vec![
        (
            "wrong issuer",
            Box::new(|c| c["iss"] = json!("http://127.0.0.1:1/realms/stint")),
        ),
        (
            "wrong audience",
            Box::new(|c| c["aud"] = json!("another-client")),
        ),
        (
            "expired",
            Box::new(|c| c["exp"] = json!(OffsetDateTime::now_utc().unix_timestamp() - 600)),
        ),
        (
            "wrong nonce",
            Box::new(|c| c["nonce"] = json!("not-the-nonce")),
        ),
        (
            "foreign azp",
            Box::new(|c| {
                c["aud"] = json!(["stint-portal", "another-client"]);
                c["azp"] = json!("another-client");
            }),
        ),
    ];
    for (name, mutate) in cases {
        let harness = harness().await;
        let started = start_login(&harness).await;
        let mut claims = id_claims(&harness, &started.nonce);
        mutate(&mut claims);
        let target = finish_with_claims(&harness, &started, claims).await;
        assert!(
            target.starts_with("/signin-error?reason=invalid_token"),
            "{name}: {target}"
        );
    }
}

#[tokio::test]
async fn bad_signature_is_rejected() {
    let harness = harness().await;
    let started = start_login(&harness).await;
    let claims = id_claims(&harness, &started.nonce);
    // Same kid as the published key, signed by another key.
    let token = fake_keycloak::sign(&fake_keycloak::other_key(KID), KID, &claims);
    let (target, _) = finish_with(&harness, &started, token).await;
    assert!(
        target.starts_with("/signin-error?reason=invalid_token"),
        "{target}"
    );
}

#[tokio::test]
async fn missing_subject_is_reported() {
    let harness = harness().await;
    let started = start_login(&harness).await;
    let mut claims = id_claims(&harness, &started.nonce);
    claims.as_object_mut().unwrap().remove("sub");
    let target = finish_with_claims(&harness, &started, claims).await;
    assert!(
        target.starts_with("/signin-error?reason=missing_subject"),
        "{target}"
    );
}

#[tokio::test]
async fn unknown_kid_refetches_keys_once() {
    let old = fake_keycloak::other_key("old-key");
    let new = fake_keycloak::signing_key("new-key");
    let harness = harness_with_keys(vec![
        fake_keycloak::key_set(&[&old]),
        fake_keycloak::key_set(&[&old, &new]),
    ])
    .await;
    let started = start_login(&harness).await;
    assert_eq!(harness.fake.jwks_fetches(), 1);
    let claims = id_claims(&harness, &started.nonce);
    let token = fake_keycloak::sign(&new, "new-key", &claims);
    let (target, _) = finish_with(&harness, &started, token).await;
    assert_eq!(target, "/me");
    assert_eq!(harness.fake.jwks_fetches(), 2);
}

#[tokio::test]
async fn used_code_is_reported_as_expired() {
    let harness = harness().await;
    let started = start_login(&harness).await;
    harness.fake.set_token_response(
        400,
        json!({ "error": "invalid_grant", "error_description": "Code not valid" }),
    );
    let uri = format!("/auth/callback?code=used&state={}", started.state);
    let response = send(&harness.state, "GET", &uri, Some(&started.cookie), None).await;
    assert!(location(&response).starts_with("/signin-error?reason=expired"));
}

#[tokio::test]
async fn state_is_single_use() {
    let harness = harness().await;
    let started = start_login(&harness).await;
    let claims = id_claims(&harness, &started.nonce);
    let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
    let (_, cookie) = finish_with(&harness, &started, token.clone()).await;
    let cookie = cookie.unwrap();
    harness.fake.set_token_response(200, token_body(token));
    let uri = format!("/auth/callback?code=code-1&state={}", started.state);
    let again = send(&harness.state, "GET", &uri, Some(&cookie), None).await;
    assert!(location(&again).starts_with("/signin-error?reason=state_mismatch"));
}

#[tokio::test]
async fn unreachable_keycloak_at_login() {
    let dir = TestDir::new();
    let state = support::state(dir.config(&support::closed_port_url().await)).await;
    let response = send(&state, "GET", "/auth/login?returnTo=/me", None, None).await;
    assert_eq!(
        location(&response),
        "/signin-error?reason=keycloak_unreachable&returnTo=/me"
    );
}

#[tokio::test]
async fn cross_site_post_is_rejected() {
    let harness = harness().await;
    let request = Request::post("/auth/logout")
        .header(header::ORIGIN, "http://evil.test")
        .body(Body::empty())
        .unwrap();
    let response = server::router(harness.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let request = Request::post("/auth/logout").body(Body::empty()).unwrap();
    let response = server::router(harness.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "no Origin and no Referer"
    );
}

fn logout_claims(harness: &Harness) -> Value {
    json!({
        "iss": harness.fake.issuer(),
        "aud": "stint-portal",
        "iat": OffsetDateTime::now_utc().unix_timestamp(),
        "jti": "logout-1",
        "sub": "user-1",
        "sid": "keycloak-session-1",
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    })
}

async fn signed_in(harness: &Harness) -> String {
    let started = start_login(harness).await;
    let claims = id_claims(harness, &started.nonce);
    let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
    finish_with(harness, &started, token).await.1.unwrap()
}

async fn is_signed_in(harness: &Harness, cookie: &str) -> bool {
    let me = send(
        &harness.state,
        "POST",
        "/api/current_user",
        Some(cookie),
        Some(String::new()),
    )
    .await;
    support::body_json(me).await != Value::Null
}

async fn post_logout_token(harness: &Harness, token: &str) -> StatusCode {
    let request = Request::post("/auth/backchannel-logout")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("logout_token={token}")))
        .unwrap();
    server::router(harness.state.clone())
        .oneshot(request)
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn rejected_server_function_statuses() {
    let harness = harness().await;
    let signed_out = send(
        &harness.state,
        "POST",
        "/api/grant_status",
        None,
        Some(String::new()),
    )
    .await;
    assert_eq!(signed_out.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(support::body_json(signed_out).await, json!("SignedOut"));

    // user-1 is in /engineering, which gives the Requester persona and not Admin.
    let cookie = signed_in(&harness).await;
    let forbidden = send(
        &harness.state,
        "POST",
        "/api/grant_status",
        Some(&cookie),
        Some(String::new()),
    )
    .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        support::body_json(forbidden).await,
        json!({ "Forbidden": "Admin" })
    );

    let queue = send(
        &harness.state,
        "POST",
        "/api/approval_queue",
        Some(&cookie),
        Some(String::new()),
    )
    .await;
    assert_eq!(queue.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn backchannel_logout_ends_every_session_of_subject() {
    let harness = harness().await;
    let first = signed_in(&harness).await;
    let second = signed_in(&harness).await;
    assert!(is_signed_in(&harness, &first).await);
    assert!(is_signed_in(&harness, &second).await);

    let token = fake_keycloak::sign(
        &fake_keycloak::signing_key(KID),
        KID,
        &logout_claims(&harness),
    );
    assert_eq!(post_logout_token(&harness, &token).await, StatusCode::OK);
    assert!(!is_signed_in(&harness, &first).await);
    assert!(!is_signed_in(&harness, &second).await);
}

#[tokio::test]
async fn backchannel_logout_by_sid_only() {
    let harness = harness().await;
    let cookie = signed_in(&harness).await;
    let mut claims = logout_claims(&harness);
    claims.as_object_mut().unwrap().remove("sub");
    let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
    assert_eq!(post_logout_token(&harness, &token).await, StatusCode::OK);
    assert!(!is_signed_in(&harness, &cookie).await);
}

#[tokio::test]
async fn invalid_logout_tokens_are_rejected() {
    let cases: Vec<(&str, ClaimsChange)> = vec![
        (
            "wrong audience",
            Box::new(|c| c["aud"] = json!("another-client")),
        ),
        (
            "wrong issuer",
            Box::new(|c| c["iss"] = json!("http://127.0.0.1:1/realms/stint")),
        ),
        ("nonce present", Box::new(|c| c["nonce"] = json!("n"))),
        ("no logout event", Box::new(|c| c["events"] = json!({}))),
        (
            "too old",
            Box::new(|c| c["iat"] = json!(OffsetDateTime::now_utc().unix_timestamp() - 3600)),
        ),
        (
            "no sub or sid",
            Box::new(|c| {
                let object = c.as_object_mut().unwrap();
                object.remove("sub");
                object.remove("sid");
            }),
        ),
    ];
    let harness = harness().await;
    let cookie = signed_in(&harness).await;
    for (name, mutate) in cases {
        let mut claims = logout_claims(&harness);
        mutate(&mut claims);
        let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
        assert_eq!(
            post_logout_token(&harness, &token).await,
            StatusCode::BAD_REQUEST,
            "{name}"
        );
    }
    let forged = fake_keycloak::sign(
        &fake_keycloak::other_key(KID),
        KID,
        &logout_claims(&harness),
    );
    assert_eq!(
        post_logout_token(&harness, &forged).await,
        StatusCode::BAD_REQUEST,
        "bad signature"
    );
    assert_eq!(
        post_logout_token(&harness, "not-a-jwt").await,
        StatusCode::BAD_REQUEST,
        "malformed"
    );
    assert!(
        is_signed_in(&harness, &cookie).await,
        "a rejected token ended the session"
    );
}

/// Signs in with an access token that is already due for refresh.
async fn signed_in_with_expiring_token(harness: &Harness) -> String {
    let started = start_login(harness).await;
    let claims = id_claims(harness, &started.nonce);
    let token = fake_keycloak::sign(&fake_keycloak::signing_key(KID), KID, &claims);
    let mut body = token_body(token);
    body["expires_in"] = json!(1);
    harness.fake.set_token_response(200, body);
    let uri = format!("/auth/callback?code=code-1&state={}", started.state);
    let response = send(&harness.state, "GET", &uri, Some(&started.cookie), None).await;
    session_cookie(&response).unwrap()
}

#[tokio::test]
async fn rejected_refresh_token_ends_session() {
    let harness = harness().await;
    let cookie = signed_in_with_expiring_token(&harness).await;
    harness.fake.set_token_response(
        400,
        json!({ "error": "invalid_grant", "error_description": "Session not active" }),
    );
    assert!(!is_signed_in(&harness, &cookie).await);
    // The session row is gone, not only hidden for one request.
    harness
        .fake
        .set_token_response(200, token_body(String::new()));
    assert!(!is_signed_in(&harness, &cookie).await);
}

#[tokio::test]
async fn refresh_updates_groups_and_personas() {
    let harness = harness().await;
    let cookie = signed_in_with_expiring_token(&harness).await;
    let access = fake_keycloak::unsigned(&json!({
        "sub": "user-1",
        "groups": ["/engineering", "/stint-approvers"],
        "realm_access": { "roles": ["employee"] },
    }));
    harness.fake.set_token_response(
        200,
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": "refresh-2",
        }),
    );
    let me = send(
        &harness.state,
        "POST",
        "/api/current_user",
        Some(&cookie),
        Some(String::new()),
    )
    .await;
    let user = support::body_json(me).await;
    assert_eq!(user["groups"], json!(["/engineering", "/stint-approvers"]));
    assert_eq!(user["personas"], json!(["Requester", "Approver"]));
}

#[tokio::test]
async fn unreachable_keycloak_keeps_session_during_refresh() {
    let harness = harness().await;
    let cookie = signed_in_with_expiring_token(&harness).await;
    // The fake returns 500 when no response is prepared, as a failing Keycloak would.
    assert!(is_signed_in(&harness, &cookie).await);
}
