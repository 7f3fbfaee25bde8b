use std::io::Write;
use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use server::config::Config;
use server::db::Database;
use server::state::AppState;
use tower::ServiceExt;

/// A temporary folder with a catalog file, kept alive as long as the test needs it.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("catalog.toml"), "").unwrap();
        Self { dir }
    }

    /// A configuration whose database is a fresh SQLite file in this folder and whose
    /// Keycloak is `keycloak_url`.
    pub fn config(&self, keycloak_url: &str) -> Config {
        let text = format!(
            r#"
public_url = "http://127.0.0.1:3000"
catalog = "{catalog}"
database_url = "sqlite://{database}"

[keycloak]
url = "{keycloak_url}"
realm = "stint"
client_id = "stint-portal"
client_secret = "test-secret"

[personas.approver]
groups = ["/stint-approvers"]
"#,
            catalog = self.dir.path().join("catalog.toml").display(),
            database = self.dir.path().join("stint.db").display(),
        );
        let path = self.dir.path().join("stint.toml");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Config::load_from(Some(&path), Vec::new()).unwrap()
    }
}

pub async fn state(config: Config) -> AppState {
    server::prepare(config).await.unwrap()
}

pub async fn get(state: &AppState, uri: &str) -> Response<Body> {
    server::router(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

pub async fn body_text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub async fn body_json(response: Response<Body>) -> serde_json::Value {
    serde_json::from_str(&body_text(response).await).unwrap()
}

/// Serves `discovery` as the stint realm's discovery document on a free loopback port and
/// returns the base URL, standing in for Keycloak.
pub async fn fake_keycloak(
    discovery: impl Fn(&str) -> serde_json::Value + Send + Sync + 'static,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let base = format!("http://{address}");
    let document = discovery(&base);
    let app = axum::Router::new().route(
        "/realms/stint/.well-known/openid-configuration",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A loopback URL on which nothing listens: bind a port, then release it.
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// A fresh, migrated PostgreSQL database on the server at `STINT_TEST_POSTGRES_URL`, or
/// `None` outside CI when the variable is unset. In CI a missing server fails the test.
pub async fn postgres_database() -> Option<(Database, String)> {
    let Ok(admin_url) = std::env::var("STINT_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "STINT_TEST_POSTGRES_URL is unset in CI: run the suite through scripts/test.sh"
        );
        eprintln!("STINT_TEST_POSTGRES_URL is unset: skipping the PostgreSQL case");
        return None;
    };
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let name = format!("stint_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    let database = Database::connect(url.as_str(), url.as_str()).await.unwrap();
    database.migrate(url.as_str()).await.unwrap();
    Some((database, url.to_string()))
}
