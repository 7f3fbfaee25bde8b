//! Two `stint serve` processes on one PostgreSQL database: they split the scheduler's work
//! without doing a grant twice, and after one is killed the other finishes every grant.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{engine, realm_role_entry, Engine, Harness};
use crate::realm::Fixture;

const GRANTS: usize = 80;

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Writes a configuration for a replica on `port` and starts it, its log piped.
fn start_replica(dir: &std::path::Path, name: &str, database_url: &str, keycloak: &str) -> Child {
    let port = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
database_url = "{database_url}"
catalog = "{catalog}"

[keycloak]
url = "{keycloak}"
realm = "stint"
client_id = "stint-portal"
client_secret = "stint-dev-secret"

[scheduler]
lease = "20s"
concurrency = 1
reconcile_interval = "0s"
"#,
            catalog = dir.join("catalog.toml").display(),
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_stint"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("STINT_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills `child` and returns the ids of the grants its log reports as applied and ended.
fn stop_and_read_log(mut child: Child) -> (Vec<String>, Vec<String>) {
    child.kill().unwrap();
    let mut log = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child.wait().unwrap();
    let mut applied = Vec::new();
    let mut ended = Vec::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = entry["fields"]["message"].as_str().unwrap_or_default();
        let grant = entry["fields"]["grant_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match message {
            "grant applied" => applied.push(grant),
            "grant ended" => ended.push(grant),
            _ => {}
        }
    }
    (applied, ended)
}

#[tokio::test]
async fn two_replicas_split_work_and_survive_a_kill() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    // Replicas share a PostgreSQL database; SQLite is for one process.
    if engine() != Engine::Postgres {
        eprintln!("runs with STINT_TEST_ENGINE=postgres only");
        return;
    }
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("replicas").await;
    let catalog = realm_role_entry("replica-role", &role, false);
    let harness = Harness::open(&url, &catalog).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.toml"), &catalog).unwrap();

    // Every grant starts a few seconds from now, once both replicas run, and lasts 20 s. With
    // one Keycloak call in flight, a replica keeps at most 64 claimed grants that it has not
    // worked yet (`SchedulerSettings::claimed_per_slot`), so the other replica claims the
    // rest.
    let start = unix_now() + 6;
    harness.clock.set(unix_now());
    let mut users = Vec::new();
    let mut grants = Vec::new();
    for index in 0..GRANTS {
        let user = fixture.user(&format!("replica{index}")).await;
        let grant = harness
            .approved_grant(&user, "replica-role", 20, Some(start), None)
            .await;
        grants.push(grant.id);
        users.push(user);
    }

    let first = start_replica(dir.path(), "first", &harness.database_url, &url);
    let second = start_replica(dir.path(), "second", &harness.database_url, &url);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = harness.count_events("grant_applied").await;
        if grants
            .iter()
            .all(|grant| applied.get(grant).copied() == Some(1))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every grant was applied: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for user in &users {
        assert!(fixture.realm.holds_realm_role(&user.id, &role).await);
    }

    // The first replica dies with every grant active; the second must revoke them all.
    let (first_applied, _) = stop_and_read_log(first);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let revoked = harness.count_events("grant_revoked").await;
        if grants.iter().all(|grant| revoked.contains_key(grant)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every grant was revoked: {revoked:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (second_applied, second_ended) = stop_and_read_log(second);
    for user in &users {
        assert!(!fixture.realm.holds_realm_role(&user.id, &role).await);
    }

    let applied: HashMap<String, i64> = harness.count_events("grant_applied").await;
    let revoked: HashMap<String, i64> = harness.count_events("grant_revoked").await;
    for grant in &grants {
        assert_eq!(applied.get(grant), Some(&1), "grant {grant} applied once");
        assert_eq!(revoked.get(grant), Some(&1), "grant {grant} revoked once");
    }
    assert!(
        !first_applied.is_empty() && !second_applied.is_empty(),
        "both replicas took work: first {}, second {}",
        first_applied.len(),
        second_applied.len()
    );
    assert_eq!(first_applied.len() + second_applied.len(), GRANTS);
    assert_eq!(second_ended.len(), GRANTS, "the survivor ended every grant");
}
