use crate::support::{self, TestDir};

const ONE_ROLE: &str = r#"
[[role]]
key = "db-admin"
realm_role = "db-admin"
display_name = "Database administrator"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/db-approvers"]
"#;

#[tokio::test]
async fn bad_reload_keeps_previous_catalog() {
    let dir = TestDir::new();
    let catalog_path = dir.dir.path().join("catalog.toml");
    std::fs::write(&catalog_path, ONE_ROLE).unwrap();
    // Keycloak is unreachable, so names stay unverified but the file itself is checked.
    let state = support::state(dir.config(&support::closed_port_url().await)).await;
    assert_eq!(state.catalog().roles.len(), 1);

    std::fs::write(&catalog_path, ONE_ROLE.replace("\"4h\"", "\"30m\"")).unwrap();
    let error = state.reload_catalog().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("max_duration 30m is below default_duration 1h"),
        "{error}"
    );
    assert_eq!(state.catalog().roles.len(), 1, "the previous catalog stays");
    assert_eq!(state.catalog().roles[0].max_duration.as_secs(), 4 * 3600);

    std::fs::write(&catalog_path, "").unwrap();
    assert_eq!(state.reload_catalog().await.unwrap(), 0);
    assert!(state.catalog().roles.is_empty());
}

#[tokio::test]
async fn invalid_catalog_stops_start_up() {
    let dir = TestDir::new();
    std::fs::write(dir.dir.path().join("catalog.toml"), "[[role]]\nkey = 1\n").unwrap();
    let config = dir.config(&support::closed_port_url().await);
    let error = server::prepare(config).await.err().unwrap().to_string();
    assert!(error.contains("invalid catalog"), "{error}");
    assert!(error.contains("catalog.toml"), "{error}");
}
