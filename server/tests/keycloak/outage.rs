//! A real Keycloak stopped while a grant ends and started again: the revocation fails while
//! Keycloak is down, is retried with back-off, and removes the mapping once Keycloak is
//! back. The test runs a Keycloak of its own through dev/keycloak.sh, with the dev-file
//! database so that users and mappings survive the restart, because stopping the shared
//! test Keycloak would break the tests running beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use app::server::grants::store::GrantStatus;

use crate::harness::{demo_catalog_text, Harness};
use crate::realm::Fixture;

/// A Keycloak started with dev/keycloak.sh on a free port. Dropping it stops it.
struct OwnKeycloak {
    port: u16,
    state_dir: PathBuf,
}

impl OwnKeycloak {
    /// Starts a Keycloak with a new dev-file database and the realms of dev/realm, and
    /// waits until the stint realm is served.
    async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        // The state folder is kept between runs: start-dev builds Keycloak for the dev-file
        // database once per folder, which takes about a minute on two cores.
        let state_dir = cache_dir().join("keycloak-run").join("outage-test");
        let keycloak = Self { port, state_dir };
        keycloak.script("stop").await;
        keycloak.script("reset").await;
        keycloak.script("start").await;
        keycloak
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `dev/keycloak.sh command` for this instance and fails the test if it fails.
    async fn script(&self, command: &'static str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/keycloak.sh");
        let mut process = Command::new(script);
        process
            .arg(command)
            .env("KEYCLOAK_PORT", self.port.to_string())
            .env("KEYCLOAK_DB", "dev-file")
            .env("KEYCLOAK_STATE_DIR", &self.state_dir);
        let output = tokio::task::spawn_blocking(move || process.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            output.status.success(),
            "dev/keycloak.sh {command} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnKeycloak {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/keycloak.sh");
        let stopped = Command::new(script)
            .arg("stop")
            .env("KEYCLOAK_PORT", self.port.to_string())
            .env("KEYCLOAK_STATE_DIR", &self.state_dir)
            .output();
        if let Err(error) = stopped {
            eprintln!("stopping the test's own Keycloak failed: {error}");
        }
    }
}

/// Returns the cache folder of dev/keycloak.sh: `STINT_CACHE`, else
/// `$XDG_CACHE_HOME/stint`, else `~/.cache/stint`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STINT_CACHE") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir).join("stint"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/stint"),
    }
}

#[tokio::test]
async fn stopped_keycloak_revokes_after_restart() {
    if crate::keycloak_url().is_none() {
        return;
    }
    // Declared first so that it is dropped last, after the fixture has deleted its user.
    let keycloak = OwnKeycloak::start().await;
    let url = keycloak.url();
    let fixture = Fixture::new(&url);
    let user = fixture.user("keycloak-restart").await;
    fixture.join_group(&user, "/engineering").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    keycloak.script("stop").await;
    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let failing = harness.grant(&grant.id).await;
    assert_eq!(failing.status(), GrantStatus::Revoking);
    assert_eq!(failing.attempts, 1);
    assert_eq!(failing.revoked_at, None);
    let error = failing.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("Keycloak request") && error.contains("failed"),
        "last error: {error}"
    );
    // A second attempt while Keycloak is still down backs off further.
    harness.clock.set(failing.due_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let failing = harness.grant(&grant.id).await;
    assert_eq!(failing.status(), GrantStatus::Revoking);
    assert_eq!(failing.attempts, 2);

    keycloak.script("start").await;
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the mapping is gone although no revocation reached Keycloak"
    );
    harness.clock.set(failing.due_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.revoked_at, Some(failing.due_at));
    assert_eq!(ended.last_error, None);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "Keycloak still has the mapping after it came back"
    );
    let revoked = harness.event(&grant.id, "grant_revoked").await;
    assert_eq!(revoked.transition(), "revoking -> ended");
}
