//! The portal side of the benchmark: a migrated database, a catalog with the bench role,
//! grants made by approving requests, and the real scheduler loop with the product's
//! default settings apart from its concurrency. The database is a SQLite file in a
//! temporary folder, or a fresh database on the PostgreSQL server at `BENCH_POSTGRES_URL`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use app::server::catalog::{Catalog, CatalogHandle};
use app::server::grants::mappings::RoleMappings;
use app::server::grants::scheduler::{Clock, Scheduler, SchedulerSettings};
use app::server::grants::store as grants;
use app::server::requests::rules::{Decision, RequestStatus};
use app::server::requests::store::{self as requests, Actor, NewRequest};
use server::db::Database;
use tokio::sync::{oneshot, Notify};

use crate::{BenchError, BenchUser};

/// Grants last this long unless the benchmark moves their end.
const GRANT_SECONDS: i64 = 3600;

pub struct Portal {
    pub database: Database,
    catalog: CatalogHandle,
    role_key: String,
    /// Keeps the SQLite file until the portal is dropped.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL server's URL and the name of this portal's database on it, which
    /// [`Portal::close`] drops.
    postgres: Option<(String, String)>,
}

/// Returns the name of the engine that [`Portal::new`] uses, for the report.
pub fn engine() -> &'static str {
    if std::env::var_os("BENCH_POSTGRES_URL").is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

/// A scheduler whose [`Scheduler::run`] loop runs in a task until [`Self::stop`].
pub struct RunningScheduler {
    waker: Arc<Notify>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningScheduler {
    /// Makes the scheduler look for due work at once, as the portal does after a change.
    pub fn wake(&self) {
        self.waker.notify_one();
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            eprintln!("the scheduler task failed: {error}");
        }
    }
}

impl Portal {
    /// Opens a fresh database whose catalog offers realm role `role` under the same key,
    /// to anyone, without ending sessions.
    pub async fn new(role: &str) -> Result<Self, BenchError> {
        let (database, dir, postgres) = match std::env::var("BENCH_POSTGRES_URL") {
            Ok(server_url) => {
                let name = format!("stint_bench_{}", uuid::Uuid::new_v4().simple());
                let server = sqlx::PgPool::connect(&server_url).await?;
                sqlx::query(&format!("create database {name}"))
                    .execute(&server)
                    .await?;
                server.close().await;
                let mut url = url::Url::parse(&server_url)?;
                url.set_path(&name);
                let database = Database::connect(url.as_str(), url.as_str()).await?;
                database.migrate(url.as_str()).await?;
                (database, None, Some((server_url, name)))
            }
            Err(_) => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("stint.db").display());
                let database = Database::connect(&url, &url).await?;
                database.migrate(&url).await?;
                (database, Some(dir), None)
            }
        };
        let text = format!(
            r#"
[[role]]
key = "{role}"
realm_role = "{role}"
display_name = "Revocation benchmark role"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/stint-approvers"]
"#
        );
        let catalog = Catalog::parse(&text, "benchmark catalog")?;
        Ok(Self {
            database,
            catalog: Arc::new(RwLock::new(Arc::new(catalog))),
            role_key: role.to_owned(),
            _dir: dir,
            postgres,
        })
    }

    /// Closes the database and drops it when it is on PostgreSQL. A failure is reported on
    /// stderr and leaves the database behind.
    pub async fn close(self) {
        server::with_pool!(&self.database, |pool| pool.close().await);
        let Some((server_url, name)) = self.postgres else {
            return;
        };
        let dropped = async {
            let server = sqlx::PgPool::connect(&server_url).await?;
            sqlx::query(&format!("drop database if exists {name}"))
                .execute(&server)
                .await?;
            server.close().await;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(error) = dropped {
            eprintln!("dropping the benchmark database {name} failed: {error}");
        }
    }

    /// Stores a request by `user` for the bench role starting now, approves it and returns
    /// the grant that the approval created.
    pub async fn approve(&self, user: &BenchUser) -> Result<String, BenchError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let target = app::server::catalog::current(&self.catalog)
            .find(&self.role_key)
            .ok_or("the bench role is missing from the catalog")?
            .grant_target();
        let request = NewRequest {
            requester: Actor {
                subject: user.id.clone(),
                username: user.username.clone(),
            },
            role_key: self.role_key.clone(),
            duration_seconds: GRANT_SECONDS,
            starts_at: None,
            justification: "revocation benchmark".into(),
            ticket: None,
            approvals_required: 1,
            approval_deadline: now + 600,
            auto_approved: false,
            target: target.clone(),
            extends_grant_id: None,
        };
        let request_id = requests::create(&self.database, &request, now).await?;
        let approver = Actor {
            subject: "bench-approver-sub".into(),
            username: "bench-approver".into(),
        };
        let status = requests::decide(
            &self.database,
            &request_id,
            &approver,
            true,
            Decision::Approve,
            "",
            &target,
            now,
        )
        .await?;
        if status != RequestStatus::Approved {
            return Err(format!("request {request_id} is {status:?} after the approval").into());
        }
        let grant = grants::for_request(&self.database, &request_id)
            .await?
            .ok_or_else(|| format!("the approval of {request_id} created no grant"))?;
        Ok(grant.id)
    }

    /// Starts [`Scheduler::run`] with `mappings`, the wall clock, and the default settings
    /// with `concurrency` Keycloak calls in flight.
    pub fn start_scheduler(
        &self,
        mappings: Arc<dyn RoleMappings>,
        concurrency: usize,
    ) -> RunningScheduler {
        let clock: Clock = Arc::new(|| time::OffsetDateTime::now_utc().unix_timestamp());
        let settings = SchedulerSettings {
            concurrency,
            ..SchedulerSettings::default()
        };
        let scheduler = Arc::new(Scheduler::new(
            self.database.clone(),
            mappings,
            self.catalog.clone(),
            settings,
            clock,
        ));
        let waker = scheduler.waker();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(scheduler.run(async {
            let _ = stopped.await;
        }));
        RunningScheduler { waker, stop, task }
    }

    async fn count(&self, sql: &str) -> Result<i64, BenchError> {
        let count: i64 = server::with_pool!(&self.database, |pool| {
            sqlx::query_scalar(sql).fetch_one(pool).await
        })?;
        Ok(count)
    }

    /// Returns how many grants the scheduler still has work on.
    pub async fn open_count(&self) -> Result<i64, BenchError> {
        self.count(
            "select count(*) from access_grant \
             where status in ('scheduled', 'applying', 'active', 'revoking')",
        )
        .await
    }

    /// Returns how many ended grants wait for the read of the user's effective roles.
    pub async fn effective_checks_pending(&self) -> Result<i64, BenchError> {
        self.count("select count(*) from access_grant where effective_check_pending = 1")
            .await
    }

    /// Returns how many grants are marked still effective through a group or composite.
    pub async fn still_effective_count(&self) -> Result<i64, BenchError> {
        self.count("select count(*) from access_grant where still_effective = 1")
            .await
    }

    /// Waits until `expected` grants are active and none is still scheduled or applying.
    pub async fn wait_active(&self, expected: usize, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let active = self
                .count("select count(*) from access_grant where status = 'active'")
                .await?;
            let pending = self
                .count(
                    "select count(*) from access_grant where status in ('scheduled', 'applying')",
                )
                .await?;
            if active == expected as i64 && pending == 0 {
                return Ok(());
            }
            let stopped = self
                .count(
                    "select count(*) from access_grant \
                     where status in ('refused', 'failed', 'cancelled')",
                )
                .await?;
            if stopped > 0 {
                return Err(format!("{stopped} grants stopped instead of being applied").into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{active} of {expected} grants active after {} s",
                    timeout.as_secs()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves the end of every active grant to Unix second `at`, as an approval with that
    /// end would have stored it. Returns how many grants moved.
    pub async fn end_active_at(&self, at: i64) -> Result<u64, BenchError> {
        let moved = server::with_pool!(&self.database, |pool| {
            sqlx::query("update access_grant set ends_at = $1, due_at = $1 where status = 'active'")
                .bind(at)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(moved)
    }

    /// Moves the end of active grant `id` to Unix second `at`.
    pub async fn end_grant_at(&self, id: &str, at: i64) -> Result<(), BenchError> {
        let moved = server::with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set ends_at = $1, due_at = $1 \
                 where id = $2 and status = 'active'",
            )
            .bind(at)
            .bind(id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if moved != 1 {
            return Err(format!("grant {id} is not active").into());
        }
        Ok(())
    }
}
