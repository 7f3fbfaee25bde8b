//! The real `stint` binary killed with SIGKILL while a grant is active, and started again
//! after the grant's end: the restarted process removes the mapping.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use app::server::grants::store::GrantStatus;

use crate::harness::{realm_role_entry, Harness};
use crate::realm::Fixture;

/// How long the test waits for the portal to apply or revoke, well above the scheduler's
/// one-second poll.
const PATIENCE: Duration = Duration::from_secs(45);

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts `stint serve` with `config`, its output discarded.
fn start_portal(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stint"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `check` every 250 ms until it returns true or `PATIENCE` runs out.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} did not happen within {PATIENCE:?}");
}

#[tokio::test]
async fn killed_portal_revokes_after_restart() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = fixture.user("restart").await;
    let role = fixture.realm_role("restart").await;
    let catalog = realm_role_entry("restart-role", &role, false);
    let harness = Harness::open(&url, &catalog).await;
    harness.clock.set(unix_now());

    let dir = tempfile::tempdir().unwrap();
    let catalog_path = dir.path().join("catalog.toml");
    std::fs::write(&catalog_path, &catalog).unwrap();
    let port = free_port();
    let config_path = dir.path().join("stint.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
database_url = "{database}"
catalog = "{catalog}"

[keycloak]
url = "{url}"
realm = "stint"
client_id = "stint-portal"
client_secret = "stint-dev-secret"

[scheduler]
lease = "20s"
reconcile_interval = "0s"
"#,
            database = harness.database_url,
            catalog = catalog_path.display(),
        ),
    )
    .unwrap();

    let grant = harness
        .approved_grant(&user, "restart-role", 8, None, None)
        .await;
    let mut portal = start_portal(&config_path);
    eventually("the portal applying the grant", || async {
        fixture.realm.holds_realm_role(&user.id, &role).await
            && harness.grant(&grant.id).await.status() == GrantStatus::Active
    })
    .await;

    portal.kill().unwrap();
    portal.wait().unwrap();
    // Wait past the grant's end with no portal running: nothing removes the mapping.
    let ends_at = harness.grant(&grant.id).await.ends_at;
    while unix_now() <= ends_at + 1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        fixture.realm.holds_realm_role(&user.id, &role).await,
        "no process should have revoked the grant while the portal was down"
    );

    let mut restarted = start_portal(&config_path);
    // The mapping goes first and the grant is stored ended just after: wait for both.
    eventually("the restarted portal revoking the grant", || async {
        !fixture.realm.holds_realm_role(&user.id, &role).await
            && harness.grant(&grant.id).await.status() == GrantStatus::Ended
    })
    .await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();

    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert!(ended.revoked_at.unwrap() > ends_at, "{ended:?}");
    let actions: Vec<String> = harness
        .events(&grant.id)
        .await
        .into_iter()
        .map(|event| event.action)
        .collect();
    assert_eq!(
        actions,
        ["grant_scheduled", "grant_applied", "grant_revoked"]
    );
}
