//! A portal without its HTTP side: a migrated database, a catalog, a clock that tests set,
//! and schedulers that talk to the real Keycloak or to a closed port.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use app::server::catalog::{Catalog, CatalogHandle};
use app::server::grants::mappings::RoleMappings;
use app::server::grants::reconcile::Reconciler;
use app::server::grants::scheduler::{Clock, Scheduler, SchedulerSettings};
use app::server::grants::store::{self as grants, Grant, GrantStatus};
use app::server::keycloak::KeycloakAdmin;
use app::server::requests::rules::{Decision, RequestStatus};
use app::server::requests::store::{self as requests, Actor, NewRequest};
use server::db::Database;

use crate::realm::TestUser;

/// The instant at which every test starts its clock, in Unix seconds.
pub const NOW: i64 = 1_800_000_000;

/// A Keycloak URL on a privileged port that no server of the test setup uses, so
/// connections are refused at once.
pub const CLOSED_PORT_URL: &str = "http://127.0.0.1:1";

/// A clock that only moves when a test sets it.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn new(at: i64) -> Self {
        Self(Arc::new(AtomicI64::new(at)))
    }

    pub fn set(&self, at: i64) {
        self.0.store(at, Ordering::SeqCst);
    }

    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn clock(&self) -> Clock {
        let time = self.0.clone();
        Arc::new(move || time.load(Ordering::SeqCst))
    }
}

/// Returns the portal's Admin API client, as the service account of `stint-portal`, for
/// the Keycloak at `url`.
pub fn portal_admin(url: &str) -> KeycloakAdmin {
    KeycloakAdmin::new(
        server::state::http_client().unwrap(),
        url,
        "stint",
        "stint-portal",
        "stint-dev-secret",
    )
}

/// Settings with four Keycloak calls in flight.
pub fn settings() -> SchedulerSettings {
    SchedulerSettings {
        lease: Duration::from_secs(60),
        concurrency: 4,
        max_backoff: Duration::from_secs(300),
        poll: Duration::from_secs(1),
        ..SchedulerSettings::default()
    }
}

/// Returns a catalog entry in TOML for realm role `realm_role` under `key`, which anyone
/// may request.
pub fn realm_role_entry(key: &str, realm_role: &str, jit_only: bool) -> String {
    format!(
        r#"
[[role]]
key = "{key}"
realm_role = "{realm_role}"
display_name = "Test role {realm_role}"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/stint-approvers"]
jit_only = {jit_only}
"#
    )
}

/// Returns a catalog entry in TOML for role `client_role` of client `client` under `key`,
/// which anyone may request.
pub fn client_role_entry(key: &str, client: &str, client_role: &str, jit_only: bool) -> String {
    format!(
        r#"
[[role]]
key = "{key}"
client = "{client}"
client_role = "{client_role}"
display_name = "Test role {client}/{client_role}"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/stint-approvers"]
jit_only = {jit_only}
"#
    )
}

/// Returns the text of the demo catalog, dev/catalog.toml.
pub fn demo_catalog_text() -> String {
    std::fs::read_to_string(crate::demo_catalog()).unwrap()
}

pub fn catalog_handle(text: &str) -> CatalogHandle {
    let catalog = Catalog::parse(text, "test catalog").unwrap();
    Arc::new(RwLock::new(Arc::new(catalog)))
}

/// The database engine of this run of the binary: `STINT_TEST_ENGINE` is `sqlite` (the
/// default) or `postgres`. scripts/test.sh runs the binary once for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub fn engine() -> Engine {
    match std::env::var("STINT_TEST_ENGINE").as_deref() {
        Err(_) | Ok("sqlite") => Engine::Sqlite,
        Ok("postgres") => Engine::Postgres,
        Ok(other) => panic!("STINT_TEST_ENGINE is `{other}`: set it to sqlite or postgres"),
    }
}

/// One portal database with its catalog and clock.
pub struct Harness {
    pub database: Database,
    /// The database's URL, for a second replica's own pool.
    pub database_url: String,
    /// Keeps the SQLite file until the test ends.
    _dir: Option<tempfile::TempDir>,
    pub catalog: CatalogHandle,
    pub clock: TestClock,
    pub keycloak_url: String,
}

impl Harness {
    /// Opens a harness on a fresh database of the engine that [`engine`] names. On
    /// PostgreSQL, `STINT_TEST_POSTGRES_URL` must name the server.
    pub async fn open(keycloak_url: &str, catalog_text: &str) -> Self {
        match engine() {
            Engine::Sqlite => Self::sqlite(keycloak_url, catalog_text).await,
            Engine::Postgres => Self::postgres(keycloak_url, catalog_text)
                .await
                .expect("STINT_TEST_ENGINE=postgres needs STINT_TEST_POSTGRES_URL"),
        }
    }

    /// Opens a harness on a fresh SQLite file in a temporary folder.
    pub async fn sqlite(keycloak_url: &str, catalog_text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("stint.db").display());
        let database = Database::connect(&url, &url).await.unwrap();
        database.migrate(&url).await.unwrap();
        Self {
            database,
            database_url: url,
            _dir: Some(dir),
            catalog: catalog_handle(catalog_text),
            clock: TestClock::new(NOW),
            keycloak_url: keycloak_url.to_owned(),
        }
    }

    /// Opens a harness on a fresh database of the PostgreSQL server at
    /// `STINT_TEST_POSTGRES_URL`. Returns `None` when the variable is unset outside CI.
    pub async fn postgres(keycloak_url: &str, catalog_text: &str) -> Option<Self> {
        let Ok(server_url) = std::env::var("STINT_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "STINT_TEST_POSTGRES_URL is unset in CI: run the suite through scripts/test.sh"
            );
            eprintln!("STINT_TEST_POSTGRES_URL is unset: skipping the PostgreSQL case");
            return None;
        };
        let server = sqlx::PgPool::connect(&server_url).await.unwrap();
        let name = format!("stint_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&server)
            .await
            .unwrap();
        server.close().await;
        let mut url = url::Url::parse(&server_url).unwrap();
        url.set_path(&name);
        let database = Database::connect(url.as_str(), url.as_str()).await.unwrap();
        database.migrate(url.as_str()).await.unwrap();
        Some(Self {
            database,
            database_url: url.to_string(),
            _dir: None,
            catalog: catalog_handle(catalog_text),
            clock: TestClock::new(NOW),
            keycloak_url: keycloak_url.to_owned(),
        })
    }

    /// Opens a new pool on the same database, as a second replica would.
    pub async fn second_pool(&self) -> Database {
        Database::connect(&self.database_url, &self.database_url)
            .await
            .unwrap()
    }

    /// Creates a scheduler replica on this harness's database that calls the real Keycloak.
    pub fn scheduler(&self) -> Scheduler {
        self.scheduler_on(self.database.clone(), &self.keycloak_url)
    }

    /// Creates a scheduler replica on `database` that calls the Keycloak at `keycloak_url`.
    pub fn scheduler_on(&self, database: Database, keycloak_url: &str) -> Scheduler {
        self.replica(database, keycloak_url, settings())
    }

    /// Creates a scheduler replica with `settings` on `database` that calls the Keycloak at
    /// `keycloak_url`.
    pub fn replica(
        &self,
        database: Database,
        keycloak_url: &str,
        settings: SchedulerSettings,
    ) -> Scheduler {
        let mappings: Arc<dyn RoleMappings> = Arc::new(portal_admin(keycloak_url));
        Scheduler::new(
            database,
            mappings,
            self.catalog.clone(),
            settings,
            self.clock.clock(),
        )
    }

    /// Creates a scheduler replica on this harness's database that calls Keycloak through
    /// `admin`.
    pub fn scheduler_with(&self, admin: KeycloakAdmin) -> Scheduler {
        Scheduler::new(
            self.database.clone(),
            Arc::new(admin),
            self.catalog.clone(),
            settings(),
            self.clock.clock(),
        )
    }

    /// Creates a reconciler that calls the real Keycloak and leases grants as `owner`.
    pub fn reconciler(&self, owner: &str) -> Reconciler {
        self.reconciler_on(owner, &self.keycloak_url)
    }

    /// Creates a reconciler that calls the Keycloak at `keycloak_url` and leases grants as
    /// `owner`.
    pub fn reconciler_on(&self, owner: &str, keycloak_url: &str) -> Reconciler {
        let mappings: Arc<dyn RoleMappings> = Arc::new(portal_admin(keycloak_url));
        Reconciler::new(
            self.database.clone(),
            mappings,
            self.catalog.clone(),
            owner.to_owned(),
            60,
        )
    }

    /// Replaces the catalog in force, as a reload does.
    pub fn set_catalog(&self, text: &str) {
        let catalog = Catalog::parse(text, "test catalog").unwrap();
        *self.catalog.write().unwrap() = Arc::new(catalog);
    }

    /// Stores a request by `user` for `role_key` lasting `duration_seconds` from
    /// `starts_at` (now when `None`), has an approver approve it now, and returns the grant
    /// that the approval created.
    pub async fn approved_grant(
        &self,
        user: &TestUser,
        role_key: &str,
        duration_seconds: i64,
        starts_at: Option<i64>,
        extends_grant_id: Option<&str>,
    ) -> Grant {
        let now = self.clock.now();
        let target = app::server::catalog::current(&self.catalog)
            .find(role_key)
            .unwrap_or_else(|| panic!("`{role_key}` is not in the test catalog"))
            .grant_target();

        let request = NewRequest {
            requester: Actor {
                subject: user.id.clone(),
                username: user.username.clone(),
            },
            role_key: role_key.to_owned(),
            duration_seconds,
            starts_at,
            justification: "integration test of the grant scheduler".into(),
            ticket: None,
            approvals_required: 1,
            approval_deadline: now + 600,
            auto_approved: false,
            target: target.clone(),
            extends_grant_id: extends_grant_id.map(str::to_owned),
        };
        let request_id = requests::create(&self.database, &request, now)
            .await
            .unwrap();

        let approver = Actor {
            subject: "approver-sub".into(),
            username: "approver".into(),
        };
        let status = requests::decide(
            &self.database,
            &request_id,
            &approver,
            true,
            Decision::Approve,
            "approved by the test",
            &target,
            now,
        )
        .await
        .unwrap();
        assert_eq!(status, RequestStatus::Approved);

        let grant = grants::for_request(&self.database, &request_id)
            .await
            .unwrap()
            .expect("the approval created no grant");
        assert_eq!(grant.status(), GrantStatus::Scheduled);
        grant
    }

    /// Reads grant `id` again.
    pub async fn grant(&self, id: &str) -> Grant {
        grants::find(&self.database, id).await.unwrap()
    }

    /// Returns the audit events of grant `id`, oldest first.
    pub async fn events(&self, id: &str) -> Vec<GrantAudit> {
        server::with_pool!(&self.database, |pool| {
            sqlx::query_as::<_, GrantAudit>(
                "select action, from_status, to_status, comment from audit_event \
                 where grant_id = $1 order by id",
            )
            .bind(id)
            .fetch_all(pool)
            .await
        })
        .unwrap()
    }

    /// Returns the one audit event `action` of grant `id`, failing when there is none or
    /// more than one.
    pub async fn event(&self, id: &str, action: &str) -> GrantAudit {
        let mut matching: Vec<GrantAudit> = self
            .events(id)
            .await
            .into_iter()
            .filter(|event| event.action == action)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "grant {id} has {} `{action}` events: {matching:?}",
            matching.len()
        );
        matching.remove(0)
    }

    /// Returns the number of audit events `action` of each grant, keyed by grant id.
    pub async fn count_events(&self, action: &str) -> std::collections::HashMap<String, i64> {
        let rows: Vec<(String, i64)> = server::with_pool!(&self.database, |pool| {
            sqlx::query_as(
                "select grant_id, count(*) from audit_event where action = $1 \
                 and grant_id is not null group by grant_id",
            )
            .bind(action)
            .fetch_all(pool)
            .await
        })
        .unwrap();
        rows.into_iter().collect()
    }

    /// Runs one SQL statement with `binds` as text parameters `$1`, `$2`, …, or as integers
    /// where the text parses as one.
    pub async fn execute(&self, sql: &str, binds: &[&str]) {
        server::with_pool!(&self.database, |pool| {
            let mut query = sqlx::query(sql);
            for bind in binds {
                query = match bind.parse::<i64>() {
                    Ok(number) => query.bind(number),
                    Err(_) => query.bind(bind.to_string()),
                };
            }
            query.execute(pool).await.map(drop)
        })
        .unwrap();
    }
}

/// One audit event of a grant.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct GrantAudit {
    pub action: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub comment: String,
}

impl GrantAudit {
    /// Returns the event's transition as `from -> to`.
    pub fn transition(&self) -> String {
        format!(
            "{} -> {}",
            self.from_status.as_deref().unwrap_or("none"),
            self.to_status.as_deref().unwrap_or("none")
        )
    }
}
