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
