use server::db::Database;
use server::session_store::{DatabaseSessionStore, SUBJECT_KEY};
use time::{Duration, OffsetDateTime};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{ExpiredDeletion, SessionStore};

use crate::support;

async fn sqlite_database(dir: &tempfile::TempDir) -> Database {
    let url = format!("sqlite://{}", dir.path().join("nested-name.db").display());
    let database = Database::connect(&url, &url).await.unwrap();
    database.migrate(&url).await.unwrap();
    database
}

fn record(subject: Option<&str>, expires_in: Duration) -> Record {
    let mut data = std::collections::HashMap::new();
    if let Some(subject) = subject {
        data.insert(SUBJECT_KEY.to_owned(), serde_json::json!(subject));
    }
    data.insert("note".to_owned(), serde_json::json!("kept"));
    Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::now_utc() + expires_in,
    }
}

async fn stored_rows(database: &Database, id: &Id) -> i64 {
    server::with_pool!(database, |pool| {
        sqlx::query_scalar("select count(*) from session where id = $1")
            .bind(id.to_string())
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

/// Exercises the session store on `database`: save, load, expiry, delete by subject.
async fn check_session_store(database: Database) {
    let store = DatabaseSessionStore::new(database.clone());

    let mut alice = record(Some("alice-sub"), Duration::hours(1));
    store.create(&mut alice).await.unwrap();
    let loaded = store.load(&alice.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["note"], "kept");
    assert_eq!(loaded.data[SUBJECT_KEY], "alice-sub");

    let mut alice_elsewhere = record(Some("alice-sub"), Duration::hours(1));
    store.create(&mut alice_elsewhere).await.unwrap();
    let mut bob = record(Some("bob-sub"), Duration::hours(1));
    store.create(&mut bob).await.unwrap();
    let expired = record(None, Duration::seconds(-5));
    store.save(&expired).await.unwrap();
    assert!(store.load(&expired.id).await.unwrap().is_none());

    assert_eq!(store.delete_by_subject("alice-sub").await.unwrap(), 2);
    assert!(store.load(&alice.id).await.unwrap().is_none());
    assert!(store.load(&alice_elsewhere.id).await.unwrap().is_none());
    assert!(store.load(&bob.id).await.unwrap().is_some());

    bob.data
        .insert("note".to_owned(), serde_json::json!("changed"));
    store.save(&bob).await.unwrap();
    assert_eq!(
        store.load(&bob.id).await.unwrap().unwrap().data["note"],
        "changed"
    );

    assert_eq!(stored_rows(&database, &expired.id).await, 1);
    store.delete_expired().await.unwrap();
    assert_eq!(stored_rows(&database, &expired.id).await, 0);
    assert_eq!(stored_rows(&database, &bob.id).await, 1);
    store.delete(&bob.id).await.unwrap();
    assert!(store.load(&bob.id).await.unwrap().is_none());
    database.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_file_is_created_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_database(&dir).await;
    assert!(dir.path().join("nested-name.db").is_file());
    assert_eq!(database.backend(), "sqlite");
    // A second migration run on the same file finds nothing to do.
    let url = format!("sqlite://{}", dir.path().join("nested-name.db").display());
    database.migrate(&url).await.unwrap();
}

#[tokio::test]
async fn sqlite_session_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    check_session_store(sqlite_database(&dir).await).await;
}

#[tokio::test]
async fn postgres_session_store_round_trip() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    assert_eq!(database.backend(), "postgres");
    check_session_store(database).await;
}

#[tokio::test]
async fn unsupported_database_url_is_rejected() {
    let error = Database::connect("mysql://localhost/stint", "mysql://localhost/stint")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("mysql://localhost/stint"), "{error}");
    assert!(error.contains("sqlite://PATH or postgres://"), "{error}");
}

/// Tables and columns of `database`, each column with whether it accepts null, sorted;
/// the migration bookkeeping table is left out.
async fn logical_schema(database: &Database) -> Vec<(String, String, bool)> {
    let mut columns: Vec<(String, String, bool)> = match database {
        Database::Sqlite(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "select name from sqlite_master where type = 'table' \
                 and name not like 'sqlite_%' and name <> '_sqlx_migrations'",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let mut columns = Vec::new();
            for table in tables {
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
                    "select name, \"notnull\", pk from pragma_table_info('{table}')"
                ))
                .fetch_all(pool)
                .await
                .unwrap();
                for (column, not_null, primary_key) in rows {
                    // SQLite lets a non-integer primary key column hold null unless it is declared
                    // `not null`, while PostgreSQL never does.
                    columns.push((table.clone(), column, not_null == 0 && primary_key == 0));
                }
            }
            columns
        }
        Database::Postgres(pool) => {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "select table_name::text, column_name::text, is_nullable::text \
                 from information_schema.columns where table_schema = 'public' \
                 and table_name <> '_sqlx_migrations'",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            rows.into_iter()
                .map(|(table, column, nullable)| (table, column, nullable == "YES"))
                .collect()
        }
    };
    columns.sort();
    columns
}

#[tokio::test]
async fn both_engines_have_one_logical_schema() {
    let Some((postgres, _)) = support::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_database(&dir).await;
    let on_sqlite = logical_schema(&sqlite).await;
    let on_postgres = logical_schema(&postgres).await;
    assert!(on_sqlite.len() > 40, "{on_sqlite:?}");
    let only_sqlite: Vec<_> = on_sqlite
        .iter()
        .filter(|column| !on_postgres.contains(column))
        .collect();
    let only_postgres: Vec<_> = on_postgres
        .iter()
        .filter(|column| !on_sqlite.contains(column))
        .collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "the migrations differ: only on SQLite {only_sqlite:?}, only on PostgreSQL {only_postgres:?}"
    );
}
