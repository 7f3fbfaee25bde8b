use super::*;

const VALID: &str = r#"
[[role]]
key = "db-admin"
realm_role = "db-admin"
display_name = "Database administrator"
description = "Full administrative access to production databases"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/db-approvers"]
approvals_required = 2
ticket_required = true
ticket_pattern = "^[A-Z]+-[0-9]+$"

[[role]]
key = "refunds"
client = "billing-app"
client_role = "refund-approver"
display_name = "Refund approver"
default_duration = "30m"
max_duration = "2h"
requesters.groups = ["/support"]
approvers.groups = ["/stint-approvers"]
auto_approve.groups = ["/stint-admins"]
"#;

fn problems(text: &str) -> Vec<String> {
    Catalog::parse(text, "catalog.toml").unwrap_err().problems
}

#[test]
fn valid_catalog_parses() {
    let catalog = Catalog::parse(VALID, "catalog.toml").unwrap();
    assert_eq!(catalog.roles.len(), 2);
    let db = catalog.find("db-admin").unwrap();
    assert_eq!(db.role, KeycloakRole::Realm("db-admin".into()));
    assert_eq!(db.max_duration, Duration::from_secs(4 * 3600));
    assert_eq!(db.approvals_required, 2);
    assert!(
        db.justification_required,
        "justification is required by default"
    );
    assert_eq!(db.approval_timeout, Duration::from_secs(24 * 3600));
    assert!(db.requesters.is_none(), "no requesters means everyone");
    assert!(db.ticket_pattern.as_ref().unwrap().is_match("OPS-12"));

    let refunds = catalog.find("refunds").unwrap();
    assert_eq!(
        refunds.role,
        KeycloakRole::Client("billing-app".into(), "refund-approver".into())
    );
    assert_eq!(refunds.approvals_required, 1);
    assert_eq!(
        refunds.auto_approve.as_ref().unwrap().groups,
        vec!["/stint-admins"]
    );
}

#[test]
fn empty_file_is_an_empty_catalog() {
    assert!(Catalog::parse("", "catalog.toml").unwrap().roles.is_empty());
}

#[test]
fn unknown_key_is_rejected() {
    let text = VALID.replace("approvals_required = 2", "approvals_requird = 2");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("approvals_requird"), "{found:?}");
}

#[test]
fn max_below_default_names_entry() {
    let text = VALID.replace("max_duration = \"4h\"", "max_duration = \"30m\"");
    let found = problems(&text);
    assert_eq!(
        found,
        vec!["role `db-admin`: max_duration 30m is below default_duration 1h".to_owned()]
    );
}

#[test]
fn bad_duration_names_field_and_format() {
    let text = VALID.replace(
        "default_duration = \"1h\"",
        "default_duration = \"an hour\"",
    );
    let found = problems(&text);
    assert!(
        found[0].starts_with("role `db-admin`: default_duration `an hour`"),
        "{found:?}"
    );
    assert!(found[0].contains("30m, 4h or 2d"), "{found:?}");
}

#[test]
fn zero_duration_is_rejected() {
    let text = VALID.replace("default_duration = \"1h\"", "default_duration = \"0s\"");
    assert!(problems(&text)[0].contains("must be longer than zero"));
}

#[test]
fn fractional_duration_is_rejected() {
    let text = VALID.replace("max_duration = \"4h\"", "max_duration = \"90500ms\"");
    assert_eq!(
        problems(&text),
        vec![
            "role `db-admin`: max_duration `90500ms` is not a whole number of seconds; write it like 90s, 30m or 4h"
                .to_owned()
        ]
    );
}

#[test]
fn overlong_maximum_is_rejected() {
    let text = VALID.replace("max_duration = \"4h\"", "max_duration = \"60d\"");
    assert!(problems(&text)[0].contains("exceeds the limit"));
}

#[test]
fn role_target_must_be_one_kind() {
    let text = VALID.replace(
        "realm_role = \"db-admin\"",
        "realm_role = \"db-admin\"\nclient_role = \"x\"",
    );
    assert!(problems(&text)[0].contains("set either realm_role, or both client and client_role"));
}

#[test]
fn duplicate_keys_and_roles_are_rejected() {
    let text = format!(
        "{VALID}\n{}",
        &VALID
            [VALID.find("[[role]]").unwrap()..VALID.find("\n[[role]]\nkey = \"refunds\"").unwrap()]
    );
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("the key is used twice")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("already listed")),
        "{found:?}"
    );
}

#[test]
fn invalid_ticket_pattern_is_rejected() {
    let text = VALID.replace("^[A-Z]+-[0-9]+$", "^[A-Z+$");
    assert!(
        problems(&text)[0].contains("ticket_pattern `^[A-Z+$` is not a valid regular expression")
    );
}

#[test]
fn approvers_are_required() {
    let text = VALID.replace(
        "approvers.groups = [\"/db-approvers\"]",
        "approvers.groups = []",
    );
    assert!(problems(&text)[0].contains("nobody could approve"));
}

#[test]
fn zero_approvals_is_rejected() {
    let text = VALID.replace("approvals_required = 2", "approvals_required = 0");
    assert!(problems(&text)[0].contains("approvals_required must be at least 1"));
}

#[test]
fn bad_key_is_rejected() {
    let text = VALID.replace("key = \"db-admin\"", "key = \"DB Admin\"");
    assert!(problems(&text)[0].contains("may contain only a-z, 0-9 and -"));
}

/// Keycloak as a fixed list of names.
struct FakeDirectory {
    roles: Vec<KeycloakRole>,
    groups: Vec<&'static str>,
}

#[async_trait::async_trait]
impl Directory for FakeDirectory {
    async fn role_exists(&self, role: &KeycloakRole) -> Result<bool, String> {
        Ok(self.roles.contains(role))
    }

    async fn group_exists(&self, path: &str) -> Result<bool, String> {
        Ok(self.groups.contains(&path))
    }
}

fn full_directory() -> FakeDirectory {
    FakeDirectory {
        roles: vec![
            KeycloakRole::Realm("db-admin".into()),
            KeycloakRole::Client("billing-app".into(), "refund-approver".into()),
        ],
        groups: vec![
            "/db-approvers",
            "/stint-approvers",
            "/support",
            "/stint-admins",
        ],
    }
}

#[tokio::test]
async fn verify_passes_when_everything_exists() {
    let catalog = Catalog::parse(VALID, "catalog.toml").unwrap();
    let warnings = catalog
        .verify(&full_directory(), "catalog.toml")
        .await
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test]
async fn verify_names_missing_role_and_group() {
    let catalog = Catalog::parse(VALID, "catalog.toml").unwrap();
    let mut directory = full_directory();
    directory.roles.remove(0);
    directory
        .groups
        .retain(|group| *group != "/stint-approvers");
    let error = catalog
        .verify(&directory, "catalog.toml")
        .await
        .unwrap_err();
    assert_eq!(
        error.problems,
        vec![
            "role `db-admin`: realm role db-admin does not exist in Keycloak; create it or fix the name"
                .to_owned(),
            "role `refunds`: approvers group `/stint-approvers` does not exist in Keycloak".to_owned(),
        ]
    );
}

/// Keycloak that cannot be reached.
struct DownDirectory;

#[async_trait::async_trait]
impl Directory for DownDirectory {
    async fn role_exists(&self, _role: &KeycloakRole) -> Result<bool, String> {
        Err("connection refused".into())
    }

    async fn group_exists(&self, _path: &str) -> Result<bool, String> {
        Err("connection refused".into())
    }
}

#[tokio::test]
async fn unreachable_keycloak_gives_warnings_not_errors() {
    let catalog = Catalog::parse(VALID, "catalog.toml").unwrap();
    let warnings = catalog
        .verify(&DownDirectory, "catalog.toml")
        .await
        .unwrap();
    assert!(!warnings.is_empty());
    assert!(warnings[0].contains("could not look up"), "{warnings:?}");
}
