//! Exports of the audit history and the command line's `export` and `audit verify`, on
//! SQLite and PostgreSQL.

use app::server::audit::{chain, export};
use app::server::grants::store::GrantTarget;
use app::server::requests::rules::Decision;
use app::server::requests::store::{self, Actor, NewRequest};
use server::db::Database;

use crate::support;

const NOW: i64 = 1_800_000_000;

fn actor(name: &str) -> Actor {
    Actor {
        subject: format!("{name}-sub"),
        username: name.to_owned(),
    }
}

/// Stores an approved request of alice whose justification looks like a formula, and a
/// cancelled one of dave: five audit events.
async fn history(database: &Database) -> String {
    let target = GrantTarget {
        client_id: None,
        role_name: "db-admin".into(),
        end_sessions: false,
    };
    let request = NewRequest {
        requester: actor("alice"),
        role_key: "db-admin".into(),
        duration_seconds: 3600,
        starts_at: None,
        justification: "=HYPERLINK(\"http://evil.test\",\"fix\"), then restore".into(),
        ticket: Some("OPS-9".into()),
        approvals_required: 1,
        approval_deadline: NOW + 600,
        auto_approved: false,
        target: target.clone(),
        extends_grant_id: None,
    };
    let id = store::create(database, &request, NOW).await.unwrap();
    store::decide(
        database,
        &id,
        &actor("bob"),
        true,
        Decision::Approve,
        "+1 from me",
        &target,
        NOW + 60,
    )
    .await
    .unwrap();
    let other = NewRequest {
        requester: actor("dave"),
        justification: "audit check".into(),
        ..request
    };
    let other = store::create(database, &other, NOW + 86_400).await.unwrap();
    store::cancel(database, &other, &actor("dave"), NOW + 86_460)
        .await
        .unwrap();
    id
}

async fn export_text(
    database: &Database,
    filter: &export::HistoryFilter,
    format: export::ExportFormat,
) -> (String, export::ExportSummary) {
    let mut out = Vec::new();
    let summary = export::write_export(database, filter, format, &mut out)
        .await
        .unwrap();
    (String::from_utf8(out).unwrap(), summary)
}

async fn exports_match_the_log(database: &Database) {
    let alice_request = history(database).await;
    let head = chain::head(database).await.unwrap().unwrap();

    let everything = export::HistoryFilter::default();
    let (json, summary) = export_text(database, &everything, export::ExportFormat::Json).await;
    assert_eq!(summary.rows, 5);
    assert_eq!(summary.chain_head.as_ref(), Some(&head));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "five events and the trailer");
    let trailer = &lines[5];
    assert_eq!(trailer["chain_head"]["event_id"], head.0);
    assert_eq!(trailer["chain_head"]["hash"], head.1.as_str());
    assert_eq!(trailer["rows"], 5);
    let created = &lines[0];
    assert_eq!(created["action"], "request_created");
    assert_eq!(created["occurred_at"], "2027-01-15T08:00:00Z");
    assert_eq!(created["requester_username"], "alice");
    assert_eq!(created["ticket"], "OPS-9");
    assert_eq!(
        created["comment"], "=HYPERLINK(\"http://evil.test\",\"fix\"), then restore",
        "JSON keeps the text exactly"
    );
    assert_eq!(lines[4]["hash"], head.1.as_str());

    let (csv, _) = export_text(database, &everything, export::ExportFormat::Csv).await;
    let rows: Vec<&str> = csv.split("\r\n").filter(|row| !row.is_empty()).collect();
    assert_eq!(rows[0], export::COLUMNS.join(","));
    assert_eq!(rows.len(), 7, "header, five events and the trailer");
    assert!(
        rows[1].contains("\"'=HYPERLINK(\"\"http://evil.test\"\",\"\"fix\"\"), then restore\""),
        "{}",
        rows[1]
    );
    assert!(rows[2].contains(",'+1 from me,"), "{}", rows[2]);
    assert!(
        rows[6].starts_with(&format!("{},,chain_head,", head.0)),
        "{}",
        rows[6]
    );
    assert!(rows[6].ends_with(&head.1), "{}", rows[6]);

    // A day range and a requester narrow the export to alice's first day.
    let narrow = export::HistoryFilter {
        from: Some(NOW - 10),
        to: Some(NOW + 3600),
        user: Some("alice".into()),
        ..export::HistoryFilter::default()
    };
    let (json, summary) = export_text(database, &narrow, export::ExportFormat::Json).await;
    assert_eq!(summary.rows, 3, "{json}");
    assert!(json
        .lines()
        .take(3)
        .all(|line| line.contains(&alice_request)));

    let approver = export::HistoryFilter {
        approver: Some("bob".into()),
        ..export::HistoryFilter::default()
    };
    let (_, summary) = export_text(database, &approver, export::ExportFormat::Csv).await;
    assert_eq!(summary.rows, 3, "only the request bob decided");
}

#[tokio::test]
async fn sqlite_exports_match_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stint.db").display());
    let database = Database::connect(&url, &url).await.unwrap();
    database.migrate(&url).await.unwrap();
    exports_match_the_log(&database).await;
}

#[tokio::test]
async fn postgres_exports_match_the_log() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    exports_match_the_log(&database).await;
}

/// Runs the `stint` binary with a configuration whose database is `database_url`.
fn stint(dir: &std::path::Path, database_url: &str, args: &[&str]) -> std::process::Output {
    let config = dir.join("cli.toml");
    std::fs::write(
        &config,
        format!(
            r#"
public_url = "http://127.0.0.1:3999"
database_url = "{database_url}"
catalog = "unused.toml"

[keycloak]
url = "http://127.0.0.1:1"
realm = "stint"
client_id = "stint-portal"
client_secret = "unused"
"#
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_stint"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn command_line_exports_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stint.db").display());
    let database = Database::connect(&url, &url).await.unwrap();
    database.migrate(&url).await.unwrap();
    history(&database).await;

    let verified = stint(dir.path(), &url, &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{stdout}");
    assert!(stdout.contains("intact: 5 events checked"), "{stdout}");

    let output = dir.path().join("day.jsonl");
    let exported = stint(
        dir.path(),
        &url,
        &[
            "export",
            "--from",
            "2027-01-15",
            "--to",
            "2027-01-15",
            "--format",
            "json",
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(
        text.lines().count(),
        4,
        "alice's three events and the trailer: {text}"
    );
    let bad = stint(dir.path(), &url, &["export", "--from", "15/01/2027"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("write it as YYYY-MM-DD"));

    // The export itself is in the log, and the chain is still intact with it.
    let events: Vec<(String, String)> = server::with_pool!(&database, |pool| {
        sqlx::query_as("select action, comment from audit_event where action = 'audit_exported'")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    assert_eq!(events.len(), 1, "the refused export wrote nothing");
    assert!(events[0]
        .1
        .contains("command-line export, format json, from 2027-01-15T00:00:00Z"));

    server::with_pool!(&database, |pool| {
        sqlx::query("drop trigger audit_event_no_update")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("update audit_event set actor_username = 'mallory' where id = 2")
            .execute(pool)
            .await
            .unwrap();
    });
    let broken = stint(dir.path(), &url, &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("breaks at event 2"), "{stdout}");
}
