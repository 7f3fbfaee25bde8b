//! The grant scheduler and the reconciliation against an in-memory realm, on SQLite and on
//! PostgreSQL, with a clock the test moves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::server::catalog::{Catalog, CatalogHandle, KeycloakRole};
use app::server::grants::mappings::{Failure, RoleMappings};
use app::server::grants::reconcile::{self, Reconciler};
use app::server::grants::scheduler::{Clock, Scheduler, SchedulerSettings};
use app::server::grants::store::{self as grants, GrantStatus, GrantTarget};
use app::server::keycloak::{KeycloakAnswer, RoleRef};
use app::server::requests::rules::Decision;
use app::server::requests::store::{self, Actor, NewRequest, StoreError};
use server::db::Database;

use crate::support;

#[allow(unused_imports)]
use support as _;

const NOW: i64 = 1_900_000_000;

const CATALOG: &str = r#"
[[role]]
key = "db-admin"
realm_role = "db-admin"
display_name = "Database administrator"
default_duration = "1h"
max_duration = "4h"
approvers.groups = ["/db-approvers"]
end_sessions = true

[[role]]
key = "deployer"
realm_role = "deployer"
display_name = "Deployer"
default_duration = "1h"
max_duration = "4h"
requesters.groups = ["/engineering"]
approvers.groups = ["/db-approvers"]
jit_only = true
"#;

/// A realm in memory: roles, users with groups, direct mappings, and mappings that stay
/// effective through a group. `down` makes every call fail as if Keycloak were stopped;
/// `effective_reads_fail` makes only the reads of effective roles fail.
#[derive(Default)]
struct Realm {
    roles: HashMap<String, RoleRef>,
    users: HashMap<String, Vec<String>>,
    direct: HashSet<(String, String)>,
    through_group: HashSet<(String, String)>,
    down: bool,
    effective_reads_fail: bool,
    /// Mapping writes take effect and then fail as if the response was lost on the way.
    responses_lost: bool,
    writes: Vec<String>,
    logouts: Vec<String>,
}

struct FakeKeycloak {
    realm: Mutex<Realm>,
    /// Every `remove_mapping` call waits for this lock, so a test that holds it keeps a
    /// removal in flight.
    removals: tokio::sync::Mutex<()>,
    /// Notified when a `remove_mapping` call starts.
    removal_started: tokio::sync::Notify,
}

impl FakeKeycloak {
    fn new() -> Arc<Self> {
        let mut realm = Realm::default();
        for name in ["db-admin", "deployer"] {
            realm.roles.insert(
                format!("{name}-id"),
                RoleRef {
                    id: format!("{name}-id"),
                    name: name.into(),
                    client_uuid: None,
                },
            );
        }
        for user in ["alice-sub", "bob-sub"] {
            realm
                .users
                .insert(user.into(), vec!["/engineering".to_owned()]);
        }
        Arc::new(Self {
            realm: Mutex::new(realm),
            removals: tokio::sync::Mutex::new(()),
            removal_started: tokio::sync::Notify::new(),
        })
    }

    fn with<T>(&self, change: impl FnOnce(&mut Realm) -> T) -> T {
        change(&mut self.realm.lock().unwrap())
    }

    fn has(&self, user: &str, role: &str) -> bool {
        self.with(|realm| {
            realm
                .direct
                .contains(&(user.to_owned(), format!("{role}-id")))
        })
    }

    fn check(&self) -> Result<(), Failure> {
        if self.with(|realm| realm.down) {
            Err(Failure::Transient("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl RoleMappings for FakeKeycloak {
    async fn find_role(&self, role: &KeycloakRole) -> Result<Option<RoleRef>, Failure> {
        self.check()?;
        let KeycloakRole::Realm(name) = role else {
            return Ok(None);
        };
        Ok(self.with(|realm| {
            realm
                .roles
                .values()
                .find(|known| &known.name == name)
                .cloned()
        }))
    }

    async fn role_by_id(&self, id: &str) -> Result<Option<RoleRef>, Failure> {
        self.check()?;
        Ok(self.with(|realm| realm.roles.get(id).cloned()))
    }

    async fn has_direct_mapping(
        &self,
        user: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        self.check()?;
        Ok(self.with(|realm| {
            realm
                .users
                .contains_key(user)
                .then(|| realm.direct.contains(&(user.to_owned(), role.id.clone())))
        }))
    }

    async fn has_effective_role(
        &self,
        user: &str,
        role: &RoleRef,
    ) -> Result<Option<bool>, Failure> {
        self.check()?;
        if self.with(|realm| realm.effective_reads_fail) {
            return Err(Failure::Transient("read timed out".into()));
        }
        Ok(self.with(|realm| {
            let key = (user.to_owned(), role.id.clone());
            realm
                .users
                .contains_key(user)
                .then(|| realm.direct.contains(&key) || realm.through_group.contains(&key))
        }))
    }

    async fn add_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        self.check()?;
        self.with(|realm| {
            if !realm.users.contains_key(user) {
                return Err(Failure::Gone("user not found".into()));
            }
            realm.writes.push(format!("add {user} {}", role.name));
            realm.direct.insert((user.to_owned(), role.id.clone()));
            if realm.responses_lost {
                return Err(Failure::Transient("POST timed out".into()));
            }
            Ok(KeycloakAnswer("POST returned 204".into()))
        })
    }

    async fn remove_mapping(&self, user: &str, role: &RoleRef) -> Result<KeycloakAnswer, Failure> {
        self.removal_started.notify_one();
        let _removal = self.removals.lock().await;
        self.check()?;
        self.with(|realm| {
            if !realm.users.contains_key(user) {
                return Err(Failure::Gone("user not found".into()));
            }
            realm.writes.push(format!("remove {user} {}", role.name));
            realm.direct.remove(&(user.to_owned(), role.id.clone()));
            if realm.responses_lost {
                return Err(Failure::Transient("DELETE timed out".into()));
            }
            Ok(KeycloakAnswer("DELETE returned 204".into()))
        })
    }

    async fn logout_user(&self, user: &str) -> Result<KeycloakAnswer, Failure> {
        self.check()?;
        self.with(|realm| realm.logouts.push(user.to_owned()));
        Ok(KeycloakAnswer("POST logout returned 204".into()))
    }

    async fn memberships(&self, user: &str) -> Result<Option<(Vec<String>, Vec<String>)>, Failure> {
        self.check()?;
        Ok(self.with(|realm| {
            realm
                .users
                .get(user)
                .map(|groups| (groups.clone(), Vec::new()))
        }))
    }

    async fn role_holders(&self, role: &RoleRef) -> Result<Vec<(String, String)>, Failure> {
        self.check()?;
        Ok(self.with(|realm| {
            let mut holders: Vec<(String, String)> = realm
                .direct
                .iter()
                .filter(|(_, role_id)| *role_id == role.id)
                .map(|(user, _)| (user.clone(), user.trim_end_matches("-sub").to_owned()))
                .collect();
            holders.sort();
            holders
        }))
    }

    async fn access_token_lifespan(&self) -> Result<i64, Failure> {
        self.check()?;
        Ok(300)
    }
}

struct Harness {
    database: Database,
    keycloak: Arc<FakeKeycloak>,
    catalog: CatalogHandle,
    clock: Arc<AtomicI64>,
}

impl Harness {
    fn new(database: Database) -> Self {
        let catalog = Catalog::parse(CATALOG, "test").unwrap();
        Self {
            database,
            keycloak: FakeKeycloak::new(),
            catalog: Arc::new(std::sync::RwLock::new(Arc::new(catalog))),
            clock: Arc::new(AtomicI64::new(NOW)),
        }
    }

    fn scheduler(&self) -> Scheduler {
        self.scheduler_with_lease(Duration::from_secs(60))
    }

    fn scheduler_with_lease(&self, lease: Duration) -> Scheduler {
        let clock = self.clock.clone();
        let clock: Clock = Arc::new(move || clock.load(Ordering::SeqCst));
        Scheduler::new(
            self.database.clone(),
            self.keycloak.clone(),
            self.catalog.clone(),
            SchedulerSettings {
                lease,
                concurrency: 4,
                max_backoff: Duration::from_secs(300),
                poll: Duration::from_millis(50),
                ..SchedulerSettings::default()
            },
            clock,
        )
    }

    fn set_time(&self, at: i64) {
        self.clock.store(at, Ordering::SeqCst);
    }

    /// Stores an approved request of `role` for `user` lasting `seconds` from `starts_at`
    /// (or its approval), and returns the grant id.
    async fn grant(&self, user: &str, role: &str, seconds: i64, starts_at: Option<i64>) -> String {
        self.request(user, role, seconds, starts_at, None)
            .await
            .unwrap()
    }

    async fn request(
        &self,
        user: &str,
        role: &str,
        seconds: i64,
        starts_at: Option<i64>,
        extends: Option<String>,
    ) -> Result<String, StoreError> {
        let now = self.clock.load(Ordering::SeqCst);
        let request = NewRequest {
            requester: actor(user),
            role_key: role.into(),
            duration_seconds: seconds,
            starts_at,
            justification: "maintenance".into(),
            ticket: None,
            approvals_required: 1,
            approval_deadline: now + 600,
            auto_approved: false,
            target: GrantTarget {
                client_id: None,
                role_name: role.into(),
                end_sessions: role == "db-admin",
            },
            extends_grant_id: extends,
        };
        let id = store::create(&self.database, &request, now).await?;
        store::decide(
            &self.database,
            &id,
            &actor("carol"),
            true,
            Decision::Approve,
            "",
            &request.target,
            now,
        )
        .await?;
        Ok(grants::for_request(&self.database, &id)
            .await
            .unwrap()
            .unwrap()
            .id)
    }

    async fn status(&self, grant: &str) -> GrantStatus {
        grants::find(&self.database, grant).await.unwrap().status()
    }

    async fn pending_effective_checks(&self) -> i64 {
        let sql = "select count(*) from access_grant where effective_check_pending = 1";
        server::with_pool!(&self.database, |pool| {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(pool)
                .await
                .unwrap()
        })
    }

    async fn actions(&self, grant: &str) -> Vec<String> {
        let sql = "select action from audit_event where grant_id = $1 order by id";
        server::with_pool!(&self.database, |pool| {
            sqlx::query_scalar::<_, String>(sql)
                .bind(grant)
                .fetch_all(pool)
                .await
                .unwrap()
        })
    }
}

fn actor(name: &str) -> Actor {
    Actor {
        subject: format!("{name}-sub"),
        username: name.to_owned(),
    }
}

async fn apply_and_revoke(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 3600, None).await;
    assert_eq!(harness.status(&grant).await, GrantStatus::Scheduled);

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.status(&grant).await, GrantStatus::Active);
    assert!(harness.keycloak.has("alice-sub", "db-admin"));

    harness.set_time(NOW + 3599);
    assert_eq!(
        scheduler.run_once().await.unwrap(),
        0,
        "nothing is due before the end"
    );
    assert!(harness.keycloak.has("alice-sub", "db-admin"));

    harness.set_time(NOW + 3600);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert!(!harness.keycloak.has("alice-sub", "db-admin"));
    assert_eq!(ended.tokens_expire_by, Some(NOW + 3600 + 300));
    assert_eq!(
        harness.keycloak.with(|realm| realm.logouts.clone()),
        vec!["alice-sub".to_owned()],
        "db-admin ends the user's sessions"
    );
    assert_eq!(
        harness.actions(&grant).await,
        ["grant_scheduled", "grant_applied", "grant_revoked"]
    );
    let answer: String = server::with_pool!(&harness.database, |pool| {
        sqlx::query_scalar(
            "select comment from audit_event where grant_id = $1 and action = 'grant_revoked'",
        )
        .bind(&grant)
        .fetch_one(pool)
        .await
        .unwrap()
    });
    assert!(answer.contains("DELETE returned 204"), "{answer}");
}

async fn preexisting_mapping_is_kept(database: Database) {
    let harness = Harness::new(database);
    harness.keycloak.with(|realm| {
        realm
            .direct
            .insert(("alice-sub".into(), "db-admin-id".into()))
    });
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();
    let applied = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(applied.preexisting, 1);
    harness.set_time(NOW + 600);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&grant).await, GrantStatus::Ended);
    assert!(harness.keycloak.has("alice-sub", "db-admin"));
    assert!(harness.keycloak.with(|realm| realm.writes.is_empty()));
}

async fn extension_keeps_mapping_until_the_last_end(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let first = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();

    // Asking again for an overlapping window is refused; an extension is not.
    let again = harness.request("alice", "db-admin", 600, None, None).await;
    assert!(
        matches!(again, Err(StoreError::OverlappingGrant { ref grant_id, until, .. }) if *grant_id == first && until == NOW + 600),
        "{again:?}"
    );
    harness.set_time(NOW + 300);
    let second = harness
        .request("alice", "db-admin", 600, None, Some(first.clone()))
        .await
        .unwrap();
    let extension = grants::find(&harness.database, &second).await.unwrap();
    assert_eq!(
        (extension.starts_at, extension.ends_at),
        (NOW + 300, NOW + 1200)
    );
    scheduler.run_once().await.unwrap();
    let extension = grants::find(&harness.database, &second).await.unwrap();
    assert_eq!(extension.status(), GrantStatus::Active);
    assert_eq!(
        extension.preexisting, 0,
        "the first grant explains the mapping"
    );

    harness.set_time(NOW + 600);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&first).await, GrantStatus::Ended);
    assert!(
        harness.keycloak.has("alice-sub", "db-admin"),
        "the extension still holds it"
    );

    harness.set_time(NOW + 1200);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&second).await, GrantStatus::Ended);
    assert!(!harness.keycloak.has("alice-sub", "db-admin"));
}

async fn ending_a_grant_ends_its_extension(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let first = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();
    harness.set_time(NOW + 100);
    let extension = harness
        .request("alice", "db-admin", 600, None, Some(first.clone()))
        .await
        .unwrap();
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&extension).await, GrantStatus::Active);

    grants::end_early(&harness.database, &first, &actor("alice"), NOW + 100)
        .await
        .unwrap();
    // The extension began this second, so it ends one second later, not before it began.
    harness.set_time(NOW + 101);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&first).await, GrantStatus::Ended);
    assert_eq!(harness.status(&extension).await, GrantStatus::Ended);
    assert!(
        !harness.keycloak.has("alice-sub", "db-admin"),
        "End now removes the role even with an extension"
    );
    assert!(harness
        .actions(&extension)
        .await
        .contains(&"grant_ended_early".to_owned()));
}

async fn outage_is_retried_until_revoked(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();

    harness.keycloak.with(|realm| realm.down = true);
    harness.set_time(NOW + 600);
    let mut due = NOW + 600;
    for attempt in 1..=12 {
        scheduler.run_once().await.unwrap();
        let stored = grants::find(&harness.database, &grant).await.unwrap();
        assert_eq!(stored.status(), GrantStatus::Revoking);
        assert_eq!(stored.attempts, attempt);
        assert!(stored.last_error.unwrap().contains("connection refused"));
        assert!(stored.due_at > due, "each attempt waits longer");
        due = stored.due_at;
        harness.set_time(due);
    }
    assert!(
        harness.keycloak.has("alice-sub", "db-admin"),
        "the fake kept its state while down"
    );
    let attention = grants::list_needing_attention(&harness.database, 10)
        .await
        .unwrap();
    assert_eq!(attention.len(), 1, "admins see the failing revocation");

    harness.keycloak.with(|realm| realm.down = false);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&grant).await, GrantStatus::Ended);
    assert!(!harness.keycloak.has("alice-sub", "db-admin"));
}

async fn deleted_user_and_role_fail_without_retries(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let alice = harness.grant("alice", "db-admin", 600, None).await;
    let bob = harness.grant("bob", "deployer", 600, None).await;
    scheduler.run_once().await.unwrap();
    harness.keycloak.with(|realm| {
        realm.users.remove("alice-sub");
        realm.roles.remove("deployer-id");
    });
    harness.set_time(NOW + 600);
    scheduler.run_once().await.unwrap();
    for (grant, reason) in [(&alice, "user no longer exists"), (&bob, "was deleted")] {
        let stored = grants::find(&harness.database, grant).await.unwrap();
        assert_eq!(stored.status(), GrantStatus::Failed);
        assert!(stored.outcome.unwrap().contains(reason));
        assert_eq!(stored.attempts, 0);
    }
    harness.set_time(NOW + 3600);
    assert_eq!(
        scheduler.run_once().await.unwrap(),
        0,
        "a failed grant is not retried"
    );
}

async fn ineligible_requester_is_refused_at_start(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness
        .grant("alice", "deployer", 600, Some(NOW + 100))
        .await;
    harness
        .keycloak
        .with(|realm| realm.users.insert("alice-sub".into(), Vec::new()));
    harness.set_time(NOW + 100);
    scheduler.run_once().await.unwrap();
    let stored = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(stored.status(), GrantStatus::Refused);
    assert!(stored.outcome.unwrap().contains("/engineering"));
    assert!(!harness.keycloak.has("alice-sub", "deployer"));
    let request_trail = store::audit_trail(&harness.database, &stored.request_id)
        .await
        .unwrap();
    assert!(request_trail
        .iter()
        .any(|event| event.action == "grant_refused"));
}

async fn still_effective_role_is_flagged(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();
    harness.keycloak.with(|realm| {
        realm
            .through_group
            .insert(("alice-sub".into(), "db-admin-id".into()))
    });
    harness.set_time(NOW + 600);
    scheduler.run_once().await.unwrap();
    let stored = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(stored.still_effective, 1);
    let attention = grants::list_needing_attention(&harness.database, 10)
        .await
        .unwrap();
    assert_eq!(attention.first().map(|grant| grant.id.clone()), Some(grant));
}

async fn failed_effective_read_is_retried(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();
    harness.keycloak.with(|realm| {
        realm.effective_reads_fail = true;
        realm
            .through_group
            .insert(("alice-sub".into(), "db-admin-id".into()));
    });
    harness.set_time(NOW + 600);
    scheduler.run_once().await.unwrap();
    // The mapping is gone and the grant ended; the read of the effective roles waits.
    assert!(!harness.keycloak.has("alice-sub", "db-admin"));
    let ended = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.still_effective, 0);
    assert_eq!(harness.pending_effective_checks().await, 1);

    // Keycloak responds again, but the retry is not due yet.
    harness
        .keycloak
        .with(|realm| realm.effective_reads_fail = false);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.pending_effective_checks().await, 1);

    harness.set_time(NOW + 660);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.pending_effective_checks().await, 0);
    let flagged = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(flagged.still_effective, 1);
    assert!(flagged
        .outcome
        .unwrap()
        .contains("still effective through a group or a composite role"));
    scheduler.run_once().await.unwrap();
    let flags = harness
        .actions(&grant)
        .await
        .into_iter()
        .filter(|action| action == "grant_still_effective")
        .count();
    assert_eq!(flags, 1);
}

async fn burst_of_ends_is_stored_once_each(database: Database) {
    const USERS: usize = 150;
    let harness = Harness::new(database);
    let names: Vec<String> = (0..USERS).map(|n| format!("user{n}")).collect();
    harness.keycloak.with(|realm| {
        for name in &names {
            realm
                .users
                .insert(format!("{name}-sub"), vec!["/engineering".to_owned()]);
        }
    });
    let mut ids = Vec::new();
    for name in &names {
        ids.push(harness.grant(name, "deployer", 600, None).await);
    }
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), USERS);
    harness.set_time(NOW + 600);
    // One pass claims, revokes and stores all of them, in more than one transaction.
    assert_eq!(scheduler.run_once().await.unwrap(), USERS);
    for (name, id) in names.iter().zip(&ids) {
        assert!(!harness.keycloak.has(&format!("{name}-sub"), "deployer"));
        assert_eq!(harness.status(id).await, GrantStatus::Ended);
        assert_eq!(
            harness.actions(id).await,
            ["grant_scheduled", "grant_applied", "grant_revoked"],
            "grant of {name}"
        );
    }
    assert_eq!(harness.pending_effective_checks().await, 0);
    let report = app::server::audit::chain::verify(&harness.database)
        .await
        .unwrap();
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
}

async fn crash_mid_apply_is_finished_by_another_replica(database: Database) {
    let harness = Harness::new(database);
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    // A replica recorded "not held before" and died before adding the mapping; its lease
    // runs until NOW + 60.
    server::with_pool!(&harness.database, |pool| {
        sqlx::query(
            "update access_grant set status = 'applying', preexisting = 0, role_id = 'db-admin-id', \
             lease_owner = 'dead-replica', lease_expires_at = $1 where id = $2",
        )
        .bind(NOW + 60)
        .bind(&grant)
        .execute(pool)
        .await
        .unwrap()
            .rows_affected()
    });
    let scheduler = harness.scheduler();
    assert_eq!(
        scheduler.run_once().await.unwrap(),
        0,
        "the lease still holds"
    );
    harness.set_time(NOW + 60);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let stored = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(stored.status(), GrantStatus::Active);
    assert_eq!(
        stored.preexisting, 0,
        "the recorded decision is kept, not re-read"
    );
    assert!(harness.keycloak.has("alice-sub", "db-admin"));
}

async fn two_replicas_never_work_one_grant_twice(database: Database) {
    let harness = Harness::new(database);
    let mut ids = Vec::new();
    for index in 0..12 {
        let user = format!("user{index}");
        harness
            .keycloak
            .with(|realm| realm.users.insert(format!("{user}-sub"), Vec::new()));
        ids.push(harness.grant(&user, "db-admin", 600, None).await);
    }
    let first = harness.scheduler();
    let second = harness.scheduler();
    let (a, b) = tokio::join!(first.run_once(), second.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 12, "every grant claimed once: {a} + {b}");
    for id in &ids {
        assert_eq!(
            harness
                .actions(id)
                .await
                .iter()
                .filter(|action| *action == "grant_applied")
                .count(),
            1
        );
    }
    let adds = harness.keycloak.with(|realm| realm.writes.len());
    assert_eq!(adds, 12);
}

async fn end_early_and_cancel(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let active = harness.grant("alice", "db-admin", 600, None).await;
    let later = harness
        .grant("bob", "db-admin", 600, Some(NOW + 1000))
        .await;
    scheduler.run_once().await.unwrap();

    let stranger = grants::end_early(&harness.database, &active, &actor("bob"), NOW + 10).await;
    assert!(
        matches!(stranger, Err(StoreError::GrantAction(_))),
        "{stranger:?}"
    );

    harness.set_time(NOW + 10);
    let status = grants::end_early(&harness.database, &active, &actor("alice"), NOW + 10)
        .await
        .unwrap();
    assert_eq!(status, GrantStatus::Active);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&active).await, GrantStatus::Ended);
    assert!(!harness.keycloak.has("alice-sub", "db-admin"));

    let status = grants::end_early(&harness.database, &later, &actor("bob"), NOW + 10)
        .await
        .unwrap();
    assert_eq!(status, GrantStatus::Cancelled);
    harness.set_time(NOW + 1000);
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert!(!harness.keycloak.has("bob-sub", "db-admin"));
    let again = grants::end_early(&harness.database, &active, &actor("alice"), NOW + 20).await;
    assert!(
        matches!(again, Err(StoreError::GrantAction(_))),
        "{again:?}"
    );
}

async fn reconciliation_restores_and_reports(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 3600, None).await;
    scheduler.run_once().await.unwrap();
    harness.keycloak.with(|realm| {
        realm
            .direct
            .remove(&("alice-sub".into(), "db-admin-id".into()));
        realm
            .direct
            .insert(("bob-sub".into(), "db-admin-id".into()));
        realm
            .direct
            .insert(("bob-sub".into(), "deployer-id".into()));
    });
    let reconciler = reconciler(&harness, "reconciler");
    let summary = reconciler.run(NOW + 100).await.unwrap();
    assert_eq!(
        (summary.restored, summary.standing, summary.removed),
        (1, 1, 1),
        "{summary:?}"
    );
    assert!(harness.keycloak.has("alice-sub", "db-admin"), "restored");
    assert!(
        harness.keycloak.has("bob-sub", "db-admin"),
        "reported, not removed"
    );
    assert!(
        !harness.keycloak.has("bob-sub", "deployer"),
        "deployer is JIT-only"
    );
    assert!(harness
        .actions(&grant)
        .await
        .contains(&"grant_mapping_restored".to_owned()));
    let kinds: HashSet<String> = reconcile::list_findings(&harness.database, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|finding| format!("{} {}", finding.kind, finding.role_key))
        .collect();
    assert_eq!(
        kinds,
        HashSet::from([
            "restored db-admin".to_owned(),
            "standing_access db-admin".to_owned(),
            "removed deployer".to_owned()
        ])
    );

    // A second run finds the standing mapping again and writes no second audit event.
    let before: i64 = count_audit(&harness.database, "standing_access_found").await;
    reconciler.run(NOW + 200).await.unwrap();
    assert_eq!(
        count_audit(&harness.database, "standing_access_found").await,
        before
    );
    // Once bob's mapping is gone, the finding closes.
    harness.keycloak.with(|realm| {
        realm
            .direct
            .remove(&("bob-sub".into(), "db-admin-id".into()))
    });
    reconciler.run(NOW + 300).await.unwrap();
    let open = reconcile::list_findings(&harness.database, 10)
        .await
        .unwrap();
    assert!(
        open.iter().all(|finding| finding.kind != "standing_access"),
        "{open:?}"
    );
}

/// Checks that a grant starting while the reconciliation removes a standing mapping of its
/// JIT-only role waits for the removal, and then adds the mapping as its own.
async fn standing_removal_holds_back_a_start(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    harness.keycloak.with(|realm| {
        realm
            .direct
            .insert(("alice-sub".into(), "deployer-id".into()))
    });
    let grant = harness.grant("alice", "deployer", 3600, None).await;
    let reconciler = reconciler(&harness, "reconciler");

    let paused = harness.keycloak.removals.lock().await;
    let reconciliation = tokio::spawn(async move { reconciler.run(NOW).await });
    harness.keycloak.removal_started.notified().await;
    assert_eq!(
        scheduler.run_once().await.unwrap(),
        0,
        "a grant of the lane was claimed while its standing mapping was being removed"
    );
    assert_eq!(harness.status(&grant).await, GrantStatus::Scheduled);

    drop(paused);
    let summary = reconciliation.await.unwrap().unwrap();
    assert_eq!(summary.removed, 1, "{summary:?}");
    assert!(!harness.keycloak.has("alice-sub", "deployer"));

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let started = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(started.status(), GrantStatus::Active);
    assert_eq!(
        started.preexisting, 0,
        "the removed mapping was recorded as held before"
    );
    assert!(harness.keycloak.has("alice-sub", "deployer"));
    let lanes: i64 = server::with_pool!(&harness.database, |pool| {
        sqlx::query_scalar("select count(*) from lane_lease")
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(lanes, 0, "the reconciliation left its lane lease behind");
}

async fn pending_writes(database: &Database) -> i64 {
    server::with_pool!(database, |pool| {
        sqlx::query_scalar("select count(*) from reconcile_action")
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

async fn audit_comments(database: &Database, action: &str) -> Vec<String> {
    server::with_pool!(database, |pool| {
        sqlx::query_scalar("select comment from audit_event where action = $1 order by id")
            .bind(action)
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

fn reconciler(harness: &Harness, owner: &str) -> Reconciler {
    Reconciler::new(
        harness.database.clone(),
        harness.keycloak.clone(),
        harness.catalog.clone(),
        owner.into(),
        60,
    )
}

/// Checks that a restore and a removal whose responses time out after Keycloak did the
/// write are read back and recorded once each.
async fn lost_write_responses_are_read_back(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness.grant("alice", "db-admin", 3600, None).await;
    scheduler.run_once().await.unwrap();
    harness.keycloak.with(|realm| {
        realm
            .direct
            .remove(&("alice-sub".into(), "db-admin-id".into()));
        realm
            .direct
            .insert(("bob-sub".into(), "deployer-id".into()));
        realm.responses_lost = true;
    });

    let summary = reconciler(&harness, "reconciler")
        .run(NOW + 100)
        .await
        .unwrap();
    assert_eq!(summary.restored, 1, "{summary:?}");
    assert_eq!(summary.removed, 1, "{summary:?}");
    assert!(harness.keycloak.has("alice-sub", "db-admin"));
    assert!(!harness.keycloak.has("bob-sub", "deployer"));

    let restored = audit_comments(&harness.database, "grant_mapping_restored").await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert!(
        restored[0].contains("response to the write was lost"),
        "{restored:?}"
    );
    assert!(harness
        .actions(&grant)
        .await
        .contains(&"grant_mapping_restored".to_owned()));
    let removed = audit_comments(&harness.database, "standing_access_removed").await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(
        removed[0].contains("response to the removal was lost"),
        "{removed:?}"
    );
    assert_eq!(pending_writes(&harness.database).await, 0);
    let granted = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(
        granted.lease_owner, None,
        "the restore kept the grant's lease"
    );
}

/// Checks that a removal whose replica stopped after the DELETE and before recording it
/// holds back the starts of its lane, and that a later run records it once.
async fn interrupted_removal_is_recorded_later(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    harness.keycloak.with(|realm| {
        realm
            .direct
            .insert(("alice-sub".into(), "deployer-id".into()))
    });
    let dead = reconciler(&harness, "dead-replica");

    let paused = harness.keycloak.removals.lock().await;
    let reconciliation = tokio::spawn(async move { dead.run(NOW).await });
    harness.keycloak.removal_started.notified().await;
    // Keycloak does the DELETE and the replica dies before it hears back.
    harness.keycloak.with(|realm| {
        realm
            .direct
            .remove(&("alice-sub".into(), "deployer-id".into()))
    });
    reconciliation.abort();
    assert!(reconciliation.await.unwrap_err().is_cancelled());
    drop(paused);
    assert_eq!(
        count_audit(&harness.database, "standing_access_removed").await,
        0
    );
    assert_eq!(pending_writes(&harness.database).await, 1);

    // Past the lane lease, a grant of the lane is still held back, because it would find
    // the mapping gone and record nothing about the removal.
    harness.set_time(NOW + 120);
    let grant = harness.grant("alice", "deployer", 3600, None).await;
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert_eq!(harness.status(&grant).await, GrantStatus::Scheduled);

    let summary = reconciler(&harness, "live-replica")
        .run(NOW + 120)
        .await
        .unwrap();
    assert_eq!(summary.removed, 1, "{summary:?}");
    let removed = audit_comments(&harness.database, "standing_access_removed").await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(
        removed[0].contains("a read afterwards found no mapping"),
        "{removed:?}"
    );
    assert_eq!(pending_writes(&harness.database).await, 0);
    let kinds: Vec<String> = reconcile::list_findings(&harness.database, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|finding| finding.kind)
        .collect();
    assert_eq!(kinds, ["removed"]);

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let started = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(started.status(), GrantStatus::Active);
    assert_eq!(started.preexisting, 0);
}

/// Checks that a pending removal that never reached Keycloak is dropped without an audit
/// event, and the run then removes the standing mapping itself.
async fn unsent_removal_is_dropped(database: Database) {
    let harness = Harness::new(database);
    harness.keycloak.with(|realm| {
        realm
            .direct
            .insert(("alice-sub".into(), "deployer-id".into()))
    });
    let dead = reconciler(&harness, "dead-replica");
    let paused = harness.keycloak.removals.lock().await;
    let reconciliation = tokio::spawn(async move { dead.run(NOW).await });
    harness.keycloak.removal_started.notified().await;
    reconciliation.abort();
    assert!(reconciliation.await.unwrap_err().is_cancelled());
    drop(paused);
    assert!(harness.keycloak.has("alice-sub", "deployer"));

    // Within the dead replica's lease, the pending write is left alone.
    let live = reconciler(&harness, "live-replica");
    let summary = live.run(NOW + 30).await.unwrap();
    assert_eq!(summary.removed, 0, "{summary:?}");
    assert_eq!(pending_writes(&harness.database).await, 1);

    let summary = live.run(NOW + 120).await.unwrap();
    assert_eq!(summary.removed, 1, "{summary:?}");
    assert!(!harness.keycloak.has("alice-sub", "deployer"));
    let removed = audit_comments(&harness.database, "standing_access_removed").await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(removed[0].contains("DELETE returned 204"), "{removed:?}");
    assert_eq!(pending_writes(&harness.database).await, 0);
}

/// Checks that the scheduled event names the grant's start and end as RFC 3339 instants.
async fn scheduled_event_names_instants(database: Database) {
    let harness = Harness::new(database);
    harness.grant("alice", "db-admin", 600, None).await;
    let comments = audit_comments(&harness.database, "grant_scheduled").await;
    assert_eq!(
        comments,
        ["from 2030-03-17T17:46:40Z to 2030-03-17T17:56:40Z"]
    );
}

/// Checks that a grant of a role held before gets the mapping back when it is removed
/// during the grant, and then removes it at its end.
async fn held_before_grant_is_restored(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    harness.keycloak.with(|realm| {
        realm
            .direct
            .insert(("alice-sub".into(), "db-admin-id".into()))
    });
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();
    let applied = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(applied.preexisting, 1);

    harness.keycloak.with(|realm| {
        realm
            .direct
            .remove(&("alice-sub".into(), "db-admin-id".into()))
    });
    let summary = reconciler(&harness, "reconciler")
        .run(NOW + 100)
        .await
        .unwrap();
    assert_eq!(summary.restored, 1, "{summary:?}");
    assert!(harness.keycloak.has("alice-sub", "db-admin"));
    let restored = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(
        restored.preexisting, 0,
        "the grant still leaves the mapping at its end"
    );
    let comments = audit_comments(&harness.database, "grant_mapping_restored").await;
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].contains("held the role directly before"),
        "{comments:?}"
    );

    harness.set_time(NOW + 600);
    scheduler.run_once().await.unwrap();
    assert_eq!(harness.status(&grant).await, GrantStatus::Ended);
    assert!(
        !harness.keycloak.has("alice-sub", "db-admin"),
        "the mapping the portal restored outlived the grant"
    );
}

/// Checks that restores stay on the status page for a week, each with its audit event,
/// and carry the grant's ids.
async fn restores_stay_listed_for_a_week(database: Database) {
    let harness = Harness::new(database);
    let scheduler = harness.scheduler();
    let grant = harness
        .grant("alice", "db-admin", 30 * 24 * 3600, None)
        .await;
    scheduler.run_once().await.unwrap();
    let reconciler = reconciler(&harness, "reconciler");
    let drift = || {
        harness.keycloak.with(|realm| {
            realm
                .direct
                .remove(&("alice-sub".into(), "db-admin-id".into()))
        })
    };

    drift();
    reconciler.run(NOW + 100).await.unwrap();
    reconciler.run(NOW + 200).await.unwrap();
    let kinds = |findings: Vec<reconcile::Finding>| -> Vec<String> {
        findings.into_iter().map(|finding| finding.kind).collect()
    };
    let listed = reconcile::list_findings(&harness.database, 10)
        .await
        .unwrap();
    assert_eq!(
        kinds(listed),
        ["restored"],
        "a run without drift closed the restore"
    );

    drift();
    let summary = reconciler.run(NOW + 300).await.unwrap();
    assert_eq!(summary.restored, 1, "{summary:?}");
    assert_eq!(
        count_audit(&harness.database, "drift_mapping_restored").await,
        2
    );
    let grant_ids: Vec<Option<String>> = server::with_pool!(&harness.database, |pool| {
        sqlx::query_scalar(
            "select grant_id from audit_event where action = 'drift_mapping_restored'",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    assert_eq!(grant_ids, [Some(grant.clone()), Some(grant.clone())]);

    reconciler.run(NOW + 300 + 7 * 24 * 3600).await.unwrap();
    let listed = reconcile::list_findings(&harness.database, 10)
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// Checks that replicas on one database take turns at the reconciliation, and that a
/// replica takes over once the one that ran stops taking its turns.
async fn replicas_take_reconcile_turns(database: Database) {
    let harness = Harness::new(database);
    let first = reconciler(&harness, "first");
    let second = reconciler(&harness, "second");
    assert!(first.take_turn(NOW, 20).await.unwrap());
    assert!(!second.take_turn(NOW + 7, 20).await.unwrap());
    assert!(first.take_turn(NOW + 20, 20).await.unwrap());
    assert!(!second.take_turn(NOW + 27, 20).await.unwrap());
    // The first replica stops, so the second runs at its first tick an interval after the
    // last run.
    assert!(second.take_turn(NOW + 47, 20).await.unwrap());
    assert!(!first.take_turn(NOW + 60, 20).await.unwrap());
}

/// Checks that a revocation waiting for Keycloak keeps its lease past the claim's expiry,
/// so another replica does not take the grant meanwhile.
async fn waiting_revocation_keeps_its_lease(database: Database) {
    let harness = Harness::new(database);
    let scheduler = Arc::new(harness.scheduler_with_lease(Duration::from_secs(3)));
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();

    harness.set_time(NOW + 600);
    let paused = harness.keycloak.removals.lock().await;
    let pass = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.run_once().await }
    });
    harness.keycloak.removal_started.notified().await;
    // The claim leased the grant until NOW + 603. The keeper extends it every second of
    // real time by the lease, from the clock's time.
    harness.set_time(NOW + 602);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leased = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(leased.lease_expires_at, Some(NOW + 605));

    harness.set_time(NOW + 604);
    let other = harness.scheduler();
    assert_eq!(
        other.run_once().await.unwrap(),
        0,
        "another replica took a grant whose revocation was still waiting"
    );
    drop(paused);
    assert_eq!(pass.await.unwrap().unwrap(), 1);
    assert_eq!(harness.status(&grant).await, GrantStatus::Ended);
    let revoked = harness
        .actions(&grant)
        .await
        .into_iter()
        .filter(|action| action == "grant_revoked")
        .count();
    assert_eq!(revoked, 1);
}

/// Checks that a grant claimed again by the same replica after its lease expired, while
/// the first claim's revocation still waits, is ended once with one audit event.
async fn reclaimed_grant_is_ended_once(database: Database) {
    let harness = Harness::new(database);
    let scheduler = Arc::new(harness.scheduler_with_lease(Duration::from_secs(3)));
    let grant = harness.grant("alice", "db-admin", 600, None).await;
    scheduler.run_once().await.unwrap();

    harness.set_time(NOW + 600);
    let paused = harness.keycloak.removals.lock().await;
    let pass = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.run_once().await }
    });
    harness.keycloak.removal_started.notified().await;
    // Far past the lease, which the keeper no longer extends: the pass's claimer takes the
    // grant again under a new lease token, and that lane waits for Keycloak too.
    harness.set_time(NOW + 700);
    harness.keycloak.removal_started.notified().await;
    drop(paused);
    assert_eq!(pass.await.unwrap().unwrap(), 2, "claims of the pass");

    let ended = grants::find(&harness.database, &grant).await.unwrap();
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(
        ended.revoked_at,
        Some(NOW + 700),
        "the second claim stored the end"
    );
    let revoked = harness
        .actions(&grant)
        .await
        .into_iter()
        .filter(|action| action == "grant_revoked")
        .count();
    assert_eq!(revoked, 1, "one audit event for one end");
    assert!(!harness.keycloak.has("alice-sub", "db-admin"));
}

async fn count_audit(database: &Database, action: &str) -> i64 {
    server::with_pool!(database, |pool| {
        sqlx::query_scalar("select count(*) from audit_event where action = $1")
            .bind(action)
            .fetch_one(pool)
            .await
            .unwrap()
    })
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("stint.db").display());
                    let database = server::db::Database::connect(&url, &url).await.unwrap();
                    database.migrate(&url).await.unwrap();
                    super::$name(database).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((database, _)) = super::support::postgres_database().await else { return };
                    super::$name(database).await;
                }
            )*
        }
    };
}

on_both_engines!(
    apply_and_revoke,
    preexisting_mapping_is_kept,
    extension_keeps_mapping_until_the_last_end,
    ending_a_grant_ends_its_extension,
    outage_is_retried_until_revoked,
    deleted_user_and_role_fail_without_retries,
    ineligible_requester_is_refused_at_start,
    still_effective_role_is_flagged,
    failed_effective_read_is_retried,
    burst_of_ends_is_stored_once_each,
    crash_mid_apply_is_finished_by_another_replica,
    two_replicas_never_work_one_grant_twice,
    end_early_and_cancel,
    reconciliation_restores_and_reports,
    standing_removal_holds_back_a_start,
    waiting_revocation_keeps_its_lease,
    reclaimed_grant_is_ended_once,
    lost_write_responses_are_read_back,
    interrupted_removal_is_recorded_later,
    unsent_removal_is_dropped,
    held_before_grant_is_restored,
    scheduled_event_names_instants,
    restores_stay_listed_for_a_week,
    replicas_take_reconcile_turns,
);
