//! Reconciliation against the real Keycloak. Each test's catalog contains only a role the
//! test created, because the reconciler lists every holder of each catalog role and would
//! otherwise see the users of tests running at the same time.

use app::server::grants::reconcile::list_findings;
use app::server::grants::store::GrantStatus;

use crate::harness::{client_role_entry, realm_role_entry, Harness, NOW};
use crate::realm::Fixture;

/// Returns the open findings as (username, kind), sorted.
async fn findings(harness: &Harness) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = list_findings(&harness.database, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|finding| (finding.username, finding.kind))
        .collect();
    found.sort();
    found
}

/// Returns how many audit events `action` the log contains.
async fn count_action(harness: &Harness, action: &str) -> i64 {
    server::with_pool!(&harness.database, |pool| {
        sqlx::query_scalar("select count(*) from audit_event where action = $1")
            .bind(action)
            .fetch_one(pool)
            .await
    })
    .unwrap()
}

#[tokio::test]
async fn reconcile_restores_and_reports() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("reconcile").await;
    let grantee = fixture.user("grantee").await;
    let bystander = fixture.user("bystander").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&grantee, "temporary", 3600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);

    fixture.realm.unmap_realm_role(&grantee.id, &role).await;
    fixture.realm.map_realm_role(&bystander.id, &role).await;

    let reconciler = harness.reconciler(scheduler.owner());
    let summary = reconciler.run(NOW + 10).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.roles_checked, 1);
    assert_eq!(summary.restored, 1);
    assert_eq!(summary.standing, 1);
    assert_eq!(summary.removed, 0);
    assert!(
        fixture.realm.holds_realm_role(&grantee.id, &role).await,
        "the active grant's mapping was not restored"
    );
    assert!(
        fixture.realm.holds_realm_role(&bystander.id, &role).await,
        "standing access was removed from a role that is not JIT-only"
    );
    let restored = harness.event(&grant.id, "grant_mapping_restored").await;
    assert!(
        restored
            .comment
            .contains("POST …/users/{id}/role-mappings returned 204"),
        "{}",
        restored.comment
    );
    let active = harness.grant(&grant.id).await;
    assert_eq!(active.status(), GrantStatus::Active);
    assert_eq!(active.lease_owner, None, "the restore kept its lease");
    assert_eq!(
        findings(&harness).await,
        [
            (bystander.username.clone(), "standing_access".to_owned()),
            (grantee.username.clone(), "restored".to_owned()),
        ]
    );

    let summary = reconciler.run(NOW + 20).await.unwrap();
    assert_eq!(summary.restored, 0);
    assert_eq!(summary.standing, 1);
    assert_eq!(
        findings(&harness).await,
        [
            (bystander.username.clone(), "standing_access".to_owned()),
            (grantee.username.clone(), "restored".to_owned()),
        ],
        "the restore left the status page, or the standing access was not found again"
    );
    assert_eq!(count_action(&harness, "standing_access_found").await, 1);

    harness.set_catalog(&realm_role_entry("temporary", &role, true));
    let summary = reconciler.run(NOW + 30).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.removed, 1);
    assert_eq!(summary.standing, 0);
    assert!(
        !fixture.realm.holds_realm_role(&bystander.id, &role).await,
        "standing access to a JIT-only role was not removed"
    );
    assert!(
        fixture.realm.holds_realm_role(&grantee.id, &role).await,
        "the reconciliation removed a mapping that an active grant explains"
    );
    assert_eq!(
        findings(&harness).await,
        [
            (bystander.username.clone(), "removed".to_owned()),
            (grantee.username.clone(), "restored".to_owned()),
        ]
    );
    assert_eq!(count_action(&harness, "standing_access_removed").await, 1);
}

#[tokio::test]
async fn reconcile_keeps_explained_mappings() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("reconcile-jit").await;
    let grantee = fixture.user("jit-grantee").await;
    let earlier = fixture.user("jit-earlier").await;
    let bystander = fixture.user("jit-bystander").await;
    fixture.realm.map_realm_role(&earlier.id, &role).await;
    fixture.realm.map_realm_role(&bystander.id, &role).await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, true)).await;
    let grant = harness
        .approved_grant(&grantee, "temporary", 3600, None, None)
        .await;
    let preexisting = harness
        .approved_grant(&earlier, "temporary", 3600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 2);
    assert_eq!(harness.grant(&preexisting.id).await.preexisting, 1);

    let reconciler = harness.reconciler(scheduler.owner());
    let summary = reconciler.run(NOW + 10).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.restored, 0);
    assert_eq!(summary.removed, 1);
    assert!(fixture.realm.holds_realm_role(&grantee.id, &role).await);
    assert!(
        fixture.realm.holds_realm_role(&earlier.id, &role).await,
        "a mapping that an open grant explains was removed"
    );
    assert!(!fixture.realm.holds_realm_role(&bystander.id, &role).await);
    let detail = list_findings(&harness.database, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|finding| finding.username == bystander.username)
        .map(|finding| finding.detail)
        .unwrap_or_default();
    assert!(
        detail.contains("removed because the role is JIT-only"),
        "{detail}"
    );

    // Once the grant of the user who held the role before has ended, that mapping is
    // standing access like any other.
    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 2);
    assert!(fixture.realm.holds_realm_role(&earlier.id, &role).await);
    assert!(!fixture.realm.holds_realm_role(&grantee.id, &role).await);
    let summary = reconciler.run(grant.ends_at + 10).await.unwrap();
    assert_eq!(summary.removed, 1);
    assert!(!fixture.realm.holds_realm_role(&earlier.id, &role).await);
}

#[tokio::test]
async fn reconcile_checks_client_role() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.client_role("billing-app", "reconcile-client").await;
    let grantee = fixture.user("client-grantee").await;
    let bystander = fixture.user("client-bystander").await;
    fixture
        .map_client_role(&bystander, "billing-app", &role)
        .await;
    let catalog = client_role_entry("temporary", "billing-app", &role, false);
    let harness = Harness::open(&url, &catalog).await;
    harness
        .approved_grant(&grantee, "temporary", 3600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);

    let reconciler = harness.reconciler(scheduler.owner());
    let summary = reconciler.run(NOW + 10).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.standing, 1);
    assert_eq!(
        findings(&harness).await,
        [(bystander.username.clone(), "standing_access".to_owned())]
    );

    harness.set_catalog(&client_role_entry("temporary", "billing-app", &role, true));
    let summary = reconciler.run(NOW + 20).await.unwrap();
    assert_eq!(summary.removed, 1);
    assert!(fixture
        .realm
        .direct_client_roles(&bystander.id, "billing-app")
        .await
        .is_empty());
    assert_eq!(
        fixture
            .realm
            .direct_client_roles(&grantee.id, "billing-app")
            .await,
        [role.as_str()]
    );
}

#[tokio::test]
async fn reconcile_special_role_name() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("x/y z+w;v=u%41").await;
    let bystander = fixture.user("special-bystander").await;
    fixture.realm.map_realm_role(&bystander.id, &role).await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, true)).await;
    let reconciler = harness.reconciler("stint-reconcile-test");
    let summary = reconciler.run(NOW).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.roles_checked, 1);
    assert_eq!(summary.removed, 1);
    assert!(!fixture.realm.holds_realm_role(&bystander.id, &role).await);
}

/// Returns how many reconciliation writes are stored as pending.
async fn pending_writes(harness: &Harness) -> i64 {
    server::with_pool!(&harness.database, |pool| {
        sqlx::query_scalar("select count(*) from reconcile_action")
            .fetch_one(pool)
            .await
    })
    .unwrap()
}

/// Returns the comments of the audit events `action`, oldest first.
async fn comments(harness: &Harness, action: &str) -> Vec<String> {
    server::with_pool!(&harness.database, |pool| {
        sqlx::query_scalar("select comment from audit_event where action = $1 order by id")
            .bind(action)
            .fetch_all(pool)
            .await
    })
    .unwrap()
}

/// Runs `reconciler` at `now` until Keycloak has done its first mapping write through the
/// holding proxy, then drops the run, as a replica killed at that moment stops.
async fn run_until_first_write(
    reconciler: app::server::grants::reconcile::Reconciler,
    write_done: &tokio::sync::Notify,
    now: i64,
) {
    let run = tokio::spawn(async move { reconciler.run(now).await });
    tokio::time::timeout(std::time::Duration::from_secs(30), write_done.notified())
        .await
        .expect("the reconciliation sent no mapping write within 30 s");
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn interrupted_reconcile_writes_are_recorded() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("interrupted").await;
    let grantee = fixture.user("grantee").await;
    let holder = fixture.user("holder").await;
    let harness = Harness::open(&url, &realm_role_entry("cut", &role, true)).await;
    let grant = harness
        .approved_grant(&grantee, "cut", 3600, None, None)
        .await;
    assert_eq!(harness.scheduler().run_once().await.unwrap(), 1);
    let (proxy, write_done) = crate::proxy::holding_proxy(&url).await;

    // A restore that Keycloak did and the replica never recorded.
    fixture.realm.unmap_realm_role(&grantee.id, &role).await;
    run_until_first_write(
        harness.reconciler_on("dead-replica", &proxy),
        &write_done,
        NOW + 10,
    )
    .await;
    assert!(fixture.realm.holds_realm_role(&grantee.id, &role).await);
    assert_eq!(count_action(&harness, "grant_mapping_restored").await, 0);
    assert_eq!(pending_writes(&harness).await, 1);

    let live = harness.reconciler("live-replica");
    let summary = live.run(NOW + 100).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.restored, 1);
    let restored = harness.event(&grant.id, "grant_mapping_restored").await;
    assert!(
        restored
            .comment
            .contains("a read afterwards found the mapping"),
        "{}",
        restored.comment
    );
    assert_eq!(pending_writes(&harness).await, 0);

    // A removal of standing access that Keycloak did and the replica never recorded.
    fixture.realm.map_realm_role(&holder.id, &role).await;
    run_until_first_write(
        harness.reconciler_on("dead-replica", &proxy),
        &write_done,
        NOW + 200,
    )
    .await;
    assert!(!fixture.realm.holds_realm_role(&holder.id, &role).await);
    assert_eq!(count_action(&harness, "standing_access_removed").await, 0);
    assert_eq!(pending_writes(&harness).await, 1);

    let summary = live.run(NOW + 300).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.removed, 1);
    let removed = comments(&harness, "standing_access_removed").await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(
        removed[0].contains("a read afterwards found no mapping"),
        "{removed:?}"
    );
    assert_eq!(pending_writes(&harness).await, 0);
    assert!(
        fixture.realm.holds_realm_role(&grantee.id, &role).await,
        "the reconciliation removed the mapping of the active grant"
    );
    assert_eq!(
        findings(&harness).await,
        [
            (grantee.username.clone(), "restored".to_owned()),
            (holder.username.clone(), "removed".to_owned()),
        ]
    );
}

#[tokio::test]
async fn held_before_mapping_is_restored() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("heldbefore").await;
    let user = fixture.user("heldbefore").await;
    fixture.realm.map_realm_role(&user.id, &role).await;
    let harness = Harness::open(&url, &realm_role_entry("held", &role, false)).await;
    let grant = harness.approved_grant(&user, "held", 600, None, None).await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&grant.id).await.preexisting, 1);

    fixture.realm.unmap_realm_role(&user.id, &role).await;
    let summary = harness.reconciler("live").run(NOW + 10).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.restored, 1);
    assert!(fixture.realm.holds_realm_role(&user.id, &role).await);
    let restored = harness.event(&grant.id, "grant_mapping_restored").await;
    assert!(
        restored.comment.contains("held the role directly before"),
        "{}",
        restored.comment
    );
    assert_eq!(harness.grant(&grant.id).await.preexisting, 0);

    harness.clock.set(NOW + 600);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&grant.id).await.status(), GrantStatus::Ended);
    assert!(
        !fixture.realm.holds_realm_role(&user.id, &role).await,
        "the mapping that the portal restored outlived the grant"
    );
}
