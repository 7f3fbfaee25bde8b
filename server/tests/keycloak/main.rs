//! Tests against the real dev Keycloak that scripts/test.sh starts, at the URL in
//! `STINT_TEST_KEYCLOAK_URL`, with the realm from dev/realm/. scripts/test.sh runs this
//! binary after Keycloak is ready.
//!
//! The scheduler and reconciliation tests also sign in as the master realm's `admin` to
//! create throwaway users, roles and groups. Each opens a fresh portal database of the
//! engine in `STINT_TEST_ENGINE`: `sqlite` (the default) or `postgres`, on the server at
//! `STINT_TEST_POSTGRES_URL`, whose user may create databases. scripts/test.sh runs the
//! binary once with each.

mod harness;
mod outage;
mod proxy;
mod realm;
mod reconcile;
mod replicas;
mod restart;
mod scheduler;

use std::path::Path;

use app::server::catalog::{Catalog, Directory, KeycloakRole};
use app::server::keycloak::KeycloakAdmin;

/// Returns the Keycloak base URL from `STINT_TEST_KEYCLOAK_URL`, or `None` outside CI
/// when it is unset, so the case is skipped.
fn keycloak_url() -> Option<String> {
    let Ok(url) = std::env::var("STINT_TEST_KEYCLOAK_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "STINT_TEST_KEYCLOAK_URL is unset in CI: run the suite through scripts/test.sh"
        );
        eprintln!("STINT_TEST_KEYCLOAK_URL is unset: skipping the real-Keycloak case");
        return None;
    };
    Some(url)
}

fn admin() -> Option<KeycloakAdmin> {
    keycloak_url().map(|url| harness::portal_admin(&url))
}

fn demo_catalog() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/catalog.toml")
}

#[tokio::test]
async fn demo_catalog_matches_demo_realm() {
    let Some(admin) = admin() else { return };
    let (catalog, warnings) = Catalog::load(&demo_catalog(), &admin).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(catalog.roles.len(), 4);
}

#[tokio::test]
async fn directory_reports_missing_names() {
    let Some(admin) = admin() else { return };
    let present = KeycloakRole::Client("billing-app".into(), "invoice-admin".into());
    assert!(admin.role_exists(&present).await.unwrap());
    let missing_role = KeycloakRole::Realm("no-such-role".into());
    assert!(!admin.role_exists(&missing_role).await.unwrap());
    let missing_client = KeycloakRole::Client("no-such-client".into(), "x".into());
    assert!(!admin.role_exists(&missing_client).await.unwrap());
    assert!(admin.group_exists("/db-approvers").await.unwrap());
    assert!(!admin.group_exists("/no-such-group").await.unwrap());
}

#[tokio::test]
async fn catalog_with_unknown_names_is_rejected() {
    let Some(admin) = admin() else { return };
    let text = std::fs::read_to_string(demo_catalog())
        .unwrap()
        .replace(
            "realm_role = \"prod-deployer\"",
            "realm_role = \"prod-deployr\"",
        )
        .replace("\"/db-approvers\"", "\"/db-aprovers\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, text).unwrap();
    let error = Catalog::load(&path, &admin).await.unwrap_err();
    assert_eq!(error.problems.len(), 2, "{:?}", error.problems);
    assert!(
        error.problems[0]
            .starts_with("role `db-admin`: approvers group `/db-aprovers` does not exist"),
        "{:?}",
        error.problems
    );
    assert!(
        error.problems[1]
            .starts_with("role `prod-deployer`: realm role prod-deployr does not exist"),
        "{:?}",
        error.problems
    );
}

#[tokio::test]
async fn wrong_secret_is_reported() {
    let Some(url) = keycloak_url() else { return };
    let admin = KeycloakAdmin::new(
        server::state::http_client().unwrap(),
        &url,
        "stint",
        "stint-portal",
        "wrong-secret",
    );
    let error = admin
        .role_exists(&KeycloakRole::Realm("db-admin".into()))
        .await
        .unwrap_err();
    assert!(
        error.contains("service-account token request failed"),
        "{error}"
    );
    assert!(
        !error.contains("wrong-secret"),
        "the secret leaked into {error}"
    );
}
