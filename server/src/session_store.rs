//! A tower-sessions store in the portal's own database.
//!
//! Unlike a generic store, it records the Keycloak subject of a signed-in session in its own
//! column, so that a back-channel logout for a user can end every session of that user.

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, ExpiredDeletion, SessionStore};

use crate::db::Database;
use app::with_pool;

/// Session key under which sign-in stores the Keycloak subject (`sub`) as a JSON string.
pub const SUBJECT_KEY: &str = "stint.subject";
/// Session key under which sign-in stores Keycloak's session id (`sid`) as a JSON string.
pub const SID_KEY: &str = "stint.sid";

#[derive(Clone, Debug)]
pub struct DatabaseSessionStore {
    database: Database,
}

impl DatabaseSessionStore {
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// Deletes every session of the user whose Keycloak session `sid` signed in one of them,
    /// and returns how many there were.
    pub async fn delete_by_keycloak_sid(&self, sid: &str) -> Result<u64, sqlx::Error> {
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "delete from session where keycloak_sid = $1 or subject in \
                 (select subject from session where keycloak_sid = $1 and subject is not null)",
            )
            .bind(sid)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
    }

    /// Deletes every session signed in as `subject` and returns how many there were.
    pub async fn delete_by_subject(&self, subject: &str) -> Result<u64, sqlx::Error> {
        let result = with_pool!(&self.database, |pool| {
            sqlx::query("delete from session where subject = $1")
                .bind(subject)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(result)
    }
}

fn backend_error(error: sqlx::Error) -> session_store::Error {
    session_store::Error::Backend(error.to_string())
}

fn string_value(record: &Record, key: &str) -> Option<String> {
    record
        .data
        .get(key)
        .and_then(|value| value.as_str())
        .map(str::to_owned)
}

const INSERT: &str = "insert into session (id, data, subject, keycloak_sid, expires_at) \
     values ($1, $2, $3, $4, $5) on conflict (id) do nothing";
const UPSERT: &str = "insert into session (id, data, subject, keycloak_sid, expires_at) \
     values ($1, $2, $3, $4, $5) on conflict (id) do update set data = excluded.data, \
     subject = excluded.subject, keycloak_sid = excluded.keycloak_sid, \
     expires_at = excluded.expires_at";

impl DatabaseSessionStore {
    /// Runs `sql`, one of [`INSERT`] or [`UPSERT`], for `record` and returns the rows written.
    async fn write(&self, sql: &'static str, record: &Record) -> session_store::Result<u64> {
        let data = serde_json::to_string(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        with_pool!(&self.database, |pool| {
            sqlx::query(sql)
                .bind(record.id.to_string())
                .bind(&data)
                .bind(string_value(record, SUBJECT_KEY))
                .bind(string_value(record, SID_KEY))
                .bind(record.expiry_date.unix_timestamp())
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(backend_error)
    }
}

#[async_trait]
impl SessionStore for DatabaseSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A random 128-bit id rarely collides with a stored one. When it does, a new id is
        // drawn, because overwriting the row would hand over another user's session.
        for _ in 0..8 {
            if self.write(INSERT, record).await? == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "could not find a free session id".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.write(UPSERT, record).await.map(drop)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let row: Option<(String, i64)> = with_pool!(&self.database, |pool| {
            sqlx::query_as("select data, expires_at from session where id = $1 and expires_at > $2")
                .bind(id.to_string())
                .bind(now)
                .fetch_optional(pool)
                .await
        })
        .map_err(backend_error)?;
        let Some((data, expires_at)) = row else {
            return Ok(None);
        };
        let data =
            serde_json::from_str(&data).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        let expiry_date = OffsetDateTime::from_unix_timestamp(expires_at)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        with_pool!(&self.database, |pool| {
            sqlx::query("delete from session where id = $1")
                .bind(id.to_string())
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(backend_error)?;
        Ok(())
    }
}

#[async_trait]
impl ExpiredDeletion for DatabaseSessionStore {
    async fn delete_expired(&self) -> session_store::Result<()> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        with_pool!(&self.database, |pool| {
            sqlx::query("delete from session where expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(backend_error)?;
        Ok(())
    }
}
