//! The portal's database: SQLite by default, PostgreSQL when the URL starts with `postgres://`.
//!
//! Queries are written once with `$1`-style placeholders, which both sqlx drivers accept, and
//! run through [`with_pool!`], which compiles the same code once for each backend. SQL that
//! only one engine understands matches on [`Database`] itself.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// A connection pool to one of the supported engines.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend.
#[macro_export]
macro_rules! with_pool {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            $crate::server::db::Database::Sqlite($pool) => $body,
            $crate::server::db::Database::Postgres($pool) => $body,
        }
    };
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("invalid database_url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("could not open the database at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration failed on {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// Makes the SQLite file readable by its owner only, because it contains session ids and
/// Keycloak tokens. Failures are logged, not fatal, because the file may belong to another user.
fn restrict_file_mode(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !path.is_file() {
            return;
        }
        let owner_only = std::fs::Permissions::from_mode(0o600);
        if let Err(error) = std::fs::set_permissions(path, owner_only) {
            tracing::warn!(%error, path = %path.display(), "could not restrict the database file to its owner");
        }
    }
}

impl Database {
    /// Opens a pool for `url` (`sqlite://PATH`, `sqlite::memory:` or `postgres://…`). A
    /// SQLite file that does not exist yet is created. `display_url` is the URL with its
    /// password hidden, for error messages.
    pub async fn connect(url: &str, display_url: &str) -> Result<Self, DatabaseError> {
        let connect_error = |source| DatabaseError::Connect {
            url: display_url.to_owned(),
            source,
        };
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|error| DatabaseError::InvalidUrl {
                    url: display_url.to_owned(),
                    reason: error.to_string(),
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let path = options.get_filename().to_owned();
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(connect_error)?;
            restrict_file_mode(&path);
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(connect_error)?;
            Ok(Self::Postgres(pool))
        } else {
            Err(DatabaseError::InvalidUrl {
                url: display_url.to_owned(),
                reason: "use sqlite://PATH or postgres://USER@HOST/NAME".into(),
            })
        }
    }

    /// Applies every migration of this backend that the database has not seen yet.
    pub async fn migrate(&self, display_url: &str) -> Result<(), DatabaseError> {
        let result = match self {
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        };
        result.map_err(|source| DatabaseError::Migrate {
            url: display_url.to_owned(),
            source,
        })
    }

    /// Returns the statement that opens a transaction which reads rows and then writes
    /// depending on them. SQLite's `BEGIN IMMEDIATE` takes the write lock at once, so two
    /// such transactions queue instead of the later one failing when it starts to write.
    /// On PostgreSQL, row locks (`for update`) do that job.
    pub fn begin_for_write(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "BEGIN IMMEDIATE",
            Self::Postgres(_) => "BEGIN",
        }
    }

    /// Name of the engine, for logs and the readiness report.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Runs a trivial query to prove that a connection can be had and used.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, |pool| sqlx::query("select 1")
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}
