//! A reverse proxy on a loopback port in front of Keycloak. It forwards every request and
//! can replace Keycloak's response to a role-mapping write with a 504, as a gateway does
//! when it times out after Keycloak has already done the write. It can also withhold the
//! response to a write that Keycloak has done, so a test can stop the caller between the
//! write and its record.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};

struct Upstream {
    http: reqwest::Client,
    base_url: String,
    /// How many more responses to `POST …/role-mappings/…` to replace with a 504.
    responses_to_drop: AtomicUsize,
    /// Whether role-mapping writes (POST and DELETE) are held without a response.
    hold_writes: AtomicBool,
    /// Notified each time Keycloak has done a held write.
    write_done: Arc<tokio::sync::Notify>,
}

impl Upstream {
    fn new(keycloak_url: &str, dropped_writes: usize, hold_writes: bool) -> Arc<Self> {
        Arc::new(Self {
            http: reqwest::Client::new(),
            base_url: keycloak_url.trim_end_matches('/').to_owned(),
            responses_to_drop: AtomicUsize::new(dropped_writes),
            hold_writes: AtomicBool::new(hold_writes),
            write_done: Arc::new(tokio::sync::Notify::new()),
        })
    }
}

/// Serves `upstream` on a loopback port until the test's runtime stops, and returns the
/// base URL.
async fn serve(upstream: Arc<Upstream>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Starts a proxy to the Keycloak at `keycloak_url` that drops the responses to the first
/// `dropped_writes` role-mapping POSTs, and returns its base URL. The proxy runs until the
/// test's runtime stops.
pub async fn lossy_proxy(keycloak_url: &str, dropped_writes: usize) -> String {
    serve(Upstream::new(keycloak_url, dropped_writes, false)).await
}

/// Starts a proxy to the Keycloak at `keycloak_url` that forwards every role-mapping write
/// and never sends the response back. Returns its base URL and a `Notify` that is signalled once
/// Keycloak has done each such write.
pub async fn holding_proxy(keycloak_url: &str) -> (String, Arc<tokio::sync::Notify>) {
    let upstream = Upstream::new(keycloak_url, 0, true);
    let write_done = upstream.write_done.clone();
    (serve(upstream).await, write_done)
}

async fn forward(State(upstream): State<Arc<Upstream>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();

    let mut outgoing = upstream.http.request(
        method.clone(),
        format!("{}{path_and_query}", upstream.base_url),
    );
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let upstream_response = match outgoing.body(body).send().await {
        Ok(response) => response,
        Err(error) => {
            return (StatusCode::BAD_GATEWAY, format!("proxy: {error}")).into_response();
        }
    };

    let mapping_write = method == Method::POST && path.contains("/role-mappings/");
    let any_mapping_write =
        (method == Method::POST || method == Method::DELETE) && path.contains("/role-mappings/");
    if any_mapping_write && upstream.hold_writes.load(Ordering::SeqCst) {
        assert!(
            upstream_response.status().is_success(),
            "Keycloak rejected a held write: {}",
            upstream_response.status()
        );
        upstream.write_done.notify_one();
        std::future::pending::<()>().await;
    }
    if mapping_write
        && upstream
            .responses_to_drop
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    {
        return (
            StatusCode::GATEWAY_TIMEOUT,
            "the test proxy dropped Keycloak's response",
        )
            .into_response();
    }

    let mut response = Response::builder().status(upstream_response.status());
    for (name, value) in upstream_response.headers() {
        if name != header::TRANSFER_ENCODING
            && name != header::CONTENT_LENGTH
            && name != header::CONNECTION
        {
            response = response.header(name, value);
        }
    }
    let bytes = upstream_response.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}
