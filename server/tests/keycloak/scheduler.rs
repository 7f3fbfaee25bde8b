//! The grant scheduler against the real Keycloak. Every case reads the mapping back
//! through the Admin API as the master admin, not only the grant row.

use std::sync::Arc;

use app::server::grants::scheduler::{Scheduler, SchedulerSettings};
use app::server::grants::store::{self as grants, GrantActionError, GrantStatus};
use app::server::requests::store::{Actor, StoreError};

use crate::harness::{
    demo_catalog_text, realm_role_entry, settings, Harness, CLOSED_PORT_URL, NOW,
};
use crate::realm::{Fixture, TestUser, TEST_CLIENT_SECRET};

/// The realm's access-token lifespan in dev/realm/stint-realm.json, in seconds.
const TOKEN_LIFESPAN: i64 = 300;

const APPLIED: &str = "POST …/users/{id}/role-mappings returned 204";
const REMOVED: &str = "DELETE …/users/{id}/role-mappings returned 204";

/// Returns a user in `/engineering`, the requesters of `prod-deployer` in the demo catalog.
async fn engineer(fixture: &Fixture, label: &str) -> TestUser {
    let user = fixture.user(label).await;
    fixture.join_group(&user, "/engineering").await;
    user
}

fn holder(user: &TestUser) -> Actor {
    Actor {
        subject: user.id.clone(),
        username: user.username.clone(),
    }
}

#[tokio::test]
async fn grant_applied_then_revoked() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "apply").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let starts_at = NOW + 600;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 3600, Some(starts_at), None)
        .await;
    assert_eq!(grant.starts_at, starts_at);
    assert_eq!(grant.ends_at, starts_at + 3600);
    let scheduler = harness.scheduler();

    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the role was mapped before the grant's start"
    );

    harness.clock.set(starts_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(active.status(), GrantStatus::Active);
    assert_eq!(active.applied_at, Some(starts_at));
    assert_eq!(active.preexisting, 0);
    assert_eq!(active.due_at, active.ends_at);
    assert_eq!(active.lease_owner, None);
    let role = fixture.realm.realm_role("prod-deployer").await;
    assert_eq!(active.role_id.as_deref(), role["id"].as_str());
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "Keycloak has no mapping after the start"
    );
    let applied = harness.event(&grant.id, "grant_applied").await;
    assert_eq!(applied.transition(), "applying -> active");
    assert!(applied.comment.contains(APPLIED), "{}", applied.comment);

    harness.clock.set(active.ends_at - 1);
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    harness.clock.set(active.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.revoked_at, Some(active.ends_at));
    assert_eq!(
        ended.tokens_expire_by,
        Some(active.ends_at + TOKEN_LIFESPAN)
    );
    assert_eq!(ended.still_effective, 0);
    assert_eq!(
        ended.outcome.as_deref(),
        Some("ended; the mapping was removed")
    );
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "Keycloak still has the mapping after the end"
    );
    let revoked = harness.event(&grant.id, "grant_revoked").await;
    assert_eq!(revoked.transition(), "active -> ended");
    assert!(revoked.comment.contains(REMOVED), "{}", revoked.comment);

    let actions: Vec<String> = harness
        .events(&grant.id)
        .await
        .into_iter()
        .map(|event| event.action)
        .collect();
    assert_eq!(
        actions,
        ["grant_scheduled", "grant_applied", "grant_revoked"]
    );

    harness.clock.set(active.ends_at + 3600);
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert_eq!(scheduler.next_due().await.unwrap(), None);
}

#[tokio::test]
async fn client_role_grant_ends_sessions() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = fixture.user("client-role").await;
    let catalog = r#"
[[role]]
key = "refunds"
client = "billing-app"
client_role = "refund-approver"
display_name = "Refund approver"
default_duration = "30m"
max_duration = "2h"
approvers.groups = ["/stint-approvers"]
end_sessions = true
"#;
    let harness = Harness::open(&url, catalog).await;
    let grant = harness
        .approved_grant(&user, "refunds", 1800, None, None)
        .await;
    assert_eq!(grant.client_id.as_deref(), Some("billing-app"));
    assert_eq!(grant.end_sessions, 1);
    let scheduler = harness.scheduler();

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&grant.id).await.status(), GrantStatus::Active);
    assert_eq!(
        fixture
            .realm
            .direct_client_roles(&user.id, "billing-app")
            .await,
        ["refund-approver"]
    );
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "refund-approver")
            .await,
        "the client role was mapped as a realm role"
    );

    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert!(fixture
        .realm
        .direct_client_roles(&user.id, "billing-app")
        .await
        .is_empty());
    let revoked = harness.event(&grant.id, "grant_revoked").await;
    assert!(revoked.comment.contains(REMOVED), "{}", revoked.comment);
    assert!(
        revoked
            .comment
            .contains("POST …/users/{id}/logout returned 204"),
        "{}",
        revoked.comment
    );
}

#[tokio::test]
async fn preexisting_mapping_is_kept() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "preexisting").await;
    fixture
        .realm
        .map_realm_role(&user.id, "prod-deployer")
        .await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 3600, None, None)
        .await;
    let scheduler = harness.scheduler();

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(active.status(), GrantStatus::Active);
    assert_eq!(active.preexisting, 1);
    let applied = harness.event(&grant.id, "grant_applied").await;
    assert!(
        applied.comment.starts_with("no write"),
        "{}",
        applied.comment
    );

    harness.clock.set(active.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.preexisting, 1);
    assert_eq!(ended.tokens_expire_by, None);
    assert_eq!(
        ended.outcome.as_deref(),
        Some("ended; the mapping stays, because the user held the role directly before the grant")
    );
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the end of the grant removed a mapping the user held before it"
    );
    let revoked = harness.event(&grant.id, "grant_revoked").await;
    assert!(
        revoked.comment.ends_with("Keycloak: no write"),
        "{}",
        revoked.comment
    );
}

#[tokio::test]
async fn extension_keeps_mapping_until_last_end() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "extension").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let first = harness
        .approved_grant(&user, "prod-deployer", 3600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&first.id).await.status(), GrantStatus::Active);

    harness.clock.set(NOW + 600);
    let second = harness
        .approved_grant(&user, "prod-deployer", 1800, None, Some(&first.id))
        .await;
    assert_eq!(second.starts_at, NOW + 600);
    assert_eq!(second.ends_at, first.ends_at + 1800);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let second_active = harness.grant(&second.id).await;
    assert_eq!(second_active.status(), GrantStatus::Active);
    assert_eq!(
        second_active.preexisting, 0,
        "the first grant's mapping was taken for one the user held before"
    );

    harness.clock.set(first.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let first_ended = harness.grant(&first.id).await;
    assert_eq!(first_ended.status(), GrantStatus::Ended);
    let outcome = first_ended.outcome.unwrap_or_default();
    assert!(
        outcome.contains(&format!("the mapping stays for grant {}", second.id)),
        "{outcome}"
    );
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the end of the first grant removed the mapping the extension holds"
    );

    harness.clock.set(second.ends_at - 1);
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    harness.clock.set(second.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let second_ended = harness.grant(&second.id).await;
    assert_eq!(second_ended.status(), GrantStatus::Ended);
    assert_eq!(
        second_ended.outcome.as_deref(),
        Some("ended; the mapping was removed")
    );
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "Keycloak still has the mapping after the last grant ended"
    );
}

#[tokio::test]
async fn outage_during_revocation_is_retried() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "revoke-outage").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    let offline = harness.scheduler_on(harness.database.clone(), CLOSED_PORT_URL);
    harness.clock.set(grant.ends_at);
    assert_eq!(offline.run_once().await.unwrap(), 1);
    let failing = harness.grant(&grant.id).await;
    assert_eq!(failing.status(), GrantStatus::Revoking);
    assert_eq!(failing.attempts, 1);
    let error = failing.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("service-account token request failed"),
        "{error}"
    );
    // The first retry waits 1 s (2^0, with no room for jitter).
    assert_eq!(failing.due_at, grant.ends_at + 1);
    assert_eq!(failing.lease_owner, None);
    assert_eq!(failing.revoked_at, None);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the mapping disappeared although Keycloak was unreachable"
    );
    let attention = grants::list_needing_attention(&harness.database, 10)
        .await
        .unwrap();
    assert!(attention.iter().any(|listed| listed.id == grant.id));

    assert_eq!(
        scheduler.run_once().await.unwrap(),
        0,
        "the grant was worked before its back-off passed"
    );

    harness.clock.set(failing.due_at);
    assert_eq!(offline.run_once().await.unwrap(), 1);
    let failing = harness.grant(&grant.id).await;
    assert_eq!(failing.status(), GrantStatus::Revoking);
    assert_eq!(failing.attempts, 2);
    assert!(
        (grant.ends_at + 2..=grant.ends_at + 3).contains(&failing.due_at),
        "second retry due at {}",
        failing.due_at
    );

    harness.clock.set(failing.due_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.attempts, 0);
    assert_eq!(ended.last_error, None);
    assert_eq!(ended.revoked_at, Some(failing.due_at));
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "Keycloak still has the mapping after it came back"
    );
    let revoked = harness.event(&grant.id, "grant_revoked").await;
    assert_eq!(revoked.transition(), "revoking -> ended");
    assert!(revoked.comment.contains(REMOVED), "{}", revoked.comment);
}

#[tokio::test]
async fn outage_at_start_delays_apply() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "start-outage").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;

    let offline = harness.scheduler_on(harness.database.clone(), CLOSED_PORT_URL);
    assert_eq!(offline.run_once().await.unwrap(), 1);
    let waiting = harness.grant(&grant.id).await;
    assert_eq!(waiting.status(), GrantStatus::Scheduled);
    assert_eq!(waiting.attempts, 1);
    assert!(waiting.last_error.is_some());
    assert_eq!(waiting.due_at, NOW + 1);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    harness.clock.set(waiting.due_at);
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(active.status(), GrantStatus::Active);
    assert_eq!(active.attempts, 0);
    assert_eq!(active.last_error, None);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the grant was not applied once Keycloak came back"
    );
}

#[tokio::test]
async fn outage_until_end_fails_grant() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "long-outage").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 60, None, None)
        .await;

    let offline = harness.scheduler_on(harness.database.clone(), CLOSED_PORT_URL);
    assert_eq!(offline.run_once().await.unwrap(), 1);
    assert_eq!(
        harness.grant(&grant.id).await.status(),
        GrantStatus::Scheduled
    );

    harness.clock.set(grant.ends_at);
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let failed = harness.grant(&grant.id).await;
    assert_eq!(failed.status(), GrantStatus::Failed);
    let outcome = failed.outcome.unwrap_or_default();
    assert!(
        outcome.starts_with("not applied: the grant ended at")
            && outcome.contains("before Keycloak accepted it (last error:"),
        "{outcome}"
    );
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "a grant past its end was applied"
    );
    assert_eq!(
        harness.event(&grant.id, "grant_failed").await.transition(),
        "scheduled -> failed"
    );
}

#[tokio::test]
async fn dead_replica_revocation_is_finished() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "dead-revoke").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    assert_eq!(harness.scheduler().run_once().await.unwrap(), 1);
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    // A replica claimed the revocation at the end with a 60 s lease and died before
    // Keycloak saw its DELETE.
    harness
        .execute(
            "update access_grant set lease_owner = 'stint-dead-replica', lease_expires_at = $1 \
             where id = $2",
            &[&(grant.ends_at + 60).to_string(), &grant.id],
        )
        .await;

    let fresh = harness.scheduler();
    harness.clock.set(grant.ends_at + 30);
    assert_eq!(
        fresh.run_once().await.unwrap(),
        0,
        "a grant was taken from a replica whose lease had not expired"
    );
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );

    harness.clock.set(grant.ends_at + 60);
    assert_eq!(fresh.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.lease_owner, None);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the mapping stayed after the dead replica's revocation was taken over"
    );
    assert_eq!(
        harness.event(&grant.id, "grant_revoked").await.transition(),
        "active -> ended"
    );
}

/// Writes the row that a replica leaves when it dies after marking the grant `applying`:
/// role id stored, not preexisting, and its lease expiring 60 s after `NOW`.
async fn leave_interrupted_apply(harness: &Harness, fixture: &Fixture, grant_id: &str) {
    let role = fixture.realm.realm_role("prod-deployer").await;
    let role_id = role["id"].as_str().unwrap();
    harness
        .execute(
            "update access_grant set status = 'applying', role_id = $1, preexisting = 0, \
             lease_owner = 'stint-dead-replica', lease_expires_at = $2 where id = $3",
            &[role_id, &(NOW + 60).to_string(), grant_id],
        )
        .await;
}

#[tokio::test]
async fn interrupted_apply_past_end_is_removed() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "dead-apply-late").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    leave_interrupted_apply(&harness, &fixture, &grant.id).await;
    // The dead replica's POST reached Keycloak.
    fixture
        .realm
        .map_realm_role(&user.id, "prod-deployer")
        .await;

    harness.clock.set(grant.ends_at + 10);
    let fresh = harness.scheduler();
    assert_eq!(fresh.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the mapping of an interrupted apply stayed past the grant's end"
    );
    let revoked = harness.event(&grant.id, "grant_revoked").await;
    assert_eq!(revoked.transition(), "applying -> ended");
    assert!(revoked.comment.contains(REMOVED), "{}", revoked.comment);
}

#[tokio::test]
async fn interrupted_apply_is_finished() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "dead-apply").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    leave_interrupted_apply(&harness, &fixture, &grant.id).await;

    let fresh = harness.scheduler();
    harness.clock.set(NOW + 30);
    assert_eq!(fresh.run_once().await.unwrap(), 0);

    harness.clock.set(NOW + 60);
    assert_eq!(fresh.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(active.status(), GrantStatus::Active);
    assert_eq!(active.applied_at, Some(NOW + 60));
    assert!(
        fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the interrupted apply was not finished"
    );
    let applied = harness.event(&grant.id, "grant_applied").await;
    assert_eq!(applied.transition(), "applying -> active");

    harness.clock.set(grant.ends_at);
    assert_eq!(fresh.run_once().await.unwrap(), 1);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await
    );
}

/// Asserts that `scheduler` leaves a grant in a final status alone from now on.
async fn assert_no_more_work(harness: &Harness, scheduler: &Scheduler) {
    harness.clock.set(harness.clock.now() + 3600);
    assert_eq!(
        scheduler.run_once().await.unwrap(),
        0,
        "a grant in a final status was claimed again"
    );
    assert_eq!(scheduler.next_due().await.unwrap(), None);
}

#[tokio::test]
async fn deleted_role_fails_active_grant() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("deleted").await;
    let user = fixture.user("deleted-role").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert!(fixture.realm.holds_realm_role(&user.id, &role).await);

    fixture.delete_realm_role(&role).await;
    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let failed = harness.grant(&grant.id).await;
    assert_eq!(failed.status(), GrantStatus::Failed);
    let reason = format!(
        "ended as failed: realm role {role} was deleted in Keycloak, which removed its mappings"
    );
    assert_eq!(failed.outcome.as_deref(), Some(reason.as_str()));
    assert_eq!(failed.lease_owner, None);
    let event = harness.event(&grant.id, "grant_failed").await;
    assert_eq!(event.transition(), "active -> failed");
    assert_eq!(event.comment, reason);
    assert!(!fixture.realm.holds_realm_role(&user.id, &role).await);
    assert_no_more_work(&harness, &scheduler).await;
}

#[tokio::test]
async fn deleted_role_fails_scheduled_grant() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("deleted-early").await;
    let user = fixture.user("deleted-role-early").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, Some(NOW + 60), None)
        .await;
    fixture.delete_realm_role(&role).await;

    harness.clock.set(NOW + 60);
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let failed = harness.grant(&grant.id).await;
    assert_eq!(failed.status(), GrantStatus::Failed);
    assert_eq!(
        failed.outcome.as_deref(),
        Some(format!("not applied: realm role {role} no longer exists in Keycloak").as_str())
    );
    assert_eq!(
        harness.event(&grant.id, "grant_failed").await.transition(),
        "scheduled -> failed"
    );
    assert_no_more_work(&harness, &scheduler).await;
}

#[tokio::test]
async fn deleted_user_fails_active_grant() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("user-gone").await;
    let user = fixture.user("deleted-user").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert!(fixture.realm.holds_realm_role(&user.id, &role).await);

    fixture.delete_user(&user).await;
    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let failed = harness.grant(&grant.id).await;
    assert_eq!(failed.status(), GrantStatus::Failed);
    let outcome = failed.outcome.unwrap_or_default();
    assert!(
        outcome.starts_with("ended as failed: the user no longer exists in Keycloak (")
            && outcome.contains("404"),
        "{outcome}"
    );
    assert_eq!(
        harness.event(&grant.id, "grant_failed").await.transition(),
        "active -> failed"
    );
    assert_no_more_work(&harness, &scheduler).await;
}

#[tokio::test]
async fn deleted_user_fails_scheduled_grant() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("user-gone-early").await;
    // `prod-deployer` checks the requester's groups at the start; the test role does not,
    // so its start reads the user's mappings first.
    let member = engineer(&fixture, "deleted-engineer").await;
    let user = fixture.user("deleted-user-early").await;
    let catalog = format!(
        "{}{}",
        demo_catalog_text(),
        realm_role_entry("temporary", &role, false)
    );
    let harness = Harness::open(&url, &catalog).await;
    let audience_grant = harness
        .approved_grant(&member, "prod-deployer", 600, Some(NOW + 60), None)
        .await;
    let plain_grant = harness
        .approved_grant(&user, "temporary", 600, Some(NOW + 60), None)
        .await;
    fixture.delete_user(&member).await;
    fixture.delete_user(&user).await;

    harness.clock.set(NOW + 60);
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 2);
    for grant in [&audience_grant, &plain_grant] {
        let failed = harness.grant(&grant.id).await;
        assert_eq!(failed.status(), GrantStatus::Failed, "{}", grant.role_key);
        assert_eq!(
            failed.outcome.as_deref(),
            Some("not applied: the user no longer exists in Keycloak"),
            "{}",
            grant.role_key
        );
    }
    assert_no_more_work(&harness, &scheduler).await;
}

#[tokio::test]
async fn early_end_revokes_at_once() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "early-end").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 3600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);

    let stranger = Actor {
        subject: "someone-else".into(),
        username: "someone".into(),
    };
    let refused = grants::end_early(&harness.database, &grant.id, &stranger, NOW + 100).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::GrantAction(GrantActionError::NotYours))
        ),
        "{refused:?}"
    );

    harness.clock.set(NOW + 100);
    let status = grants::end_early(&harness.database, &grant.id, &holder(&user), NOW + 100)
        .await
        .unwrap();
    assert_eq!(status, GrantStatus::Active);
    let shortened = harness.grant(&grant.id).await;
    assert_eq!(shortened.ends_at, NOW + 100);
    assert_eq!(shortened.due_at, NOW + 100);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&grant.id).await.status(), GrantStatus::Ended);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "the mapping stayed after the holder ended the grant"
    );
    let ended_early = harness.event(&grant.id, "grant_ended_early").await;
    assert_eq!(ended_early.transition(), "active -> active");
}

#[tokio::test]
async fn early_end_cancels_future_grant() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "cancel").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let grant = harness
        .approved_grant(&user, "prod-deployer", 3600, Some(NOW + 600), None)
        .await;
    let status = grants::end_early(&harness.database, &grant.id, &holder(&user), NOW + 1)
        .await
        .unwrap();
    assert_eq!(status, GrantStatus::Cancelled);

    harness.clock.set(NOW + 600);
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 0);
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "a cancelled grant was applied"
    );
}

#[tokio::test]
async fn group_mapping_keeps_role_effective() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("via-group").await;
    let group = fixture.group("holders").await;
    fixture.map_role_to_group(&group, &role).await;
    let user = fixture.user("group-member").await;
    fixture.join_group_id(&user, &group).await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let scheduler = harness.scheduler();

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(
        active.preexisting, 0,
        "a group's mapping counted as a direct one"
    );
    assert!(fixture.realm.holds_realm_role(&user.id, &role).await);

    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended);
    assert_eq!(ended.still_effective, 1);
    let outcome = ended.outcome.unwrap_or_default();
    assert!(
        outcome.contains("still effective through a group or a composite role"),
        "{outcome}"
    );
    assert!(!fixture.realm.holds_realm_role(&user.id, &role).await);
    assert!(
        fixture
            .realm
            .effective_realm_roles(&user.id)
            .await
            .contains(&role),
        "the group no longer gives the role"
    );
    harness.event(&grant.id, "grant_still_effective").await;
    let attention = grants::list_needing_attention(&harness.database, 10)
        .await
        .unwrap();
    assert!(attention.iter().any(|listed| listed.id == grant.id));
}

#[tokio::test]
async fn special_role_name_applied_and_revoked() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    // Each of these characters needs percent-encoding in a path segment, and `;` would
    // otherwise start a matrix parameter.
    let role = fixture.realm_role("a/b c+d;e=f%41").await;
    let user = fixture.user("special-name").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let scheduler = harness.scheduler();

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(
        active.status(),
        GrantStatus::Active,
        "{:?}",
        active.outcome.or(active.last_error)
    );
    assert!(fixture.realm.holds_realm_role(&user.id, &role).await);

    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&grant.id).await.status(), GrantStatus::Ended);
    assert!(!fixture.realm.holds_realm_role(&user.id, &role).await);
}

#[tokio::test]
async fn renamed_role_revoked_by_id() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("rename").await;
    let user = fixture.user("renamed-role").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);

    let renamed = format!("{role}-renamed");
    fixture.realm.rename_realm_role(&role, &renamed).await;
    assert!(fixture.realm.holds_realm_role(&user.id, &renamed).await);

    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(
        ended.status(),
        GrantStatus::Ended,
        "{:?}",
        ended.outcome.or(ended.last_error)
    );
    assert_eq!(
        ended.outcome.as_deref(),
        Some("ended; the mapping was removed")
    );
    assert!(
        !fixture.realm.holds_realm_role(&user.id, &renamed).await,
        "the mapping of the renamed role stayed"
    );
}

#[tokio::test]
async fn revoked_service_token_is_renewed() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("token").await;
    let user = fixture.user("token-renewal").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let scheduler = harness.scheduler();
    // The start caches the service account's token in the scheduler's client.
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let old_token = service_account_token(&url).await;

    // Keycloak compares `notBefore` with the token's `iat` in whole seconds: revoke only
    // tokens from earlier seconds, so that clients of tests running at the same time get
    // a valid token when they fetch a new one.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let revoke_before = time::OffsetDateTime::now_utc().unix_timestamp();
    fixture
        .realm
        .set_client_not_before("stint-portal", revoke_before)
        .await;
    let rejected = reqwest::Client::new()
        .get(format!("{url}/admin/realms/stint/roles/db-admin"))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        rejected.status(),
        reqwest::StatusCode::UNAUTHORIZED,
        "Keycloak still accepts a token issued before notBefore"
    );

    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let ended = harness.grant(&grant.id).await;
    assert_eq!(ended.status(), GrantStatus::Ended, "{:?}", ended.last_error);
    assert!(!fixture.realm.holds_realm_role(&user.id, &role).await);
}

/// Fetches a service-account token of `stint-portal` with the client-credentials grant.
async fn service_account_token(url: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{url}/realms/stint/protocol/openid-connect/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "stint-portal"),
            ("client_secret", "stint-dev-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body: serde_json::Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn back_to_back_grants_keep_mapping() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("back-to-back").await;
    // Both grants are due at the same second. The database decides the order in which one
    // claim returns them, and the mapping must stay whichever is worked first, so the case
    // runs three times.
    for round in 0..3 {
        let user = fixture.user(&format!("back-to-back-{round}")).await;
        let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
        let first = harness
            .approved_grant(&user, "temporary", 600, None, None)
            .await;
        let second = harness
            .approved_grant(&user, "temporary", 600, Some(first.ends_at), None)
            .await;
        assert_eq!(second.starts_at, first.ends_at);
        let scheduler = harness.scheduler();
        assert_eq!(scheduler.run_once().await.unwrap(), 1);

        harness.clock.set(first.ends_at);
        assert_eq!(scheduler.run_once().await.unwrap(), 2);
        assert_eq!(harness.grant(&first.id).await.status(), GrantStatus::Ended);
        let follower = harness.grant(&second.id).await;
        assert_eq!(follower.status(), GrantStatus::Active);
        assert_eq!(
            follower.preexisting, 0,
            "round {round}: the first grant's mapping was taken for one held before"
        );
        assert!(
            fixture.realm.holds_realm_role(&user.id, &role).await,
            "round {round}: the mapping was removed between two back-to-back grants"
        );

        harness.clock.set(second.ends_at);
        assert_eq!(scheduler.run_once().await.unwrap(), 1);
        assert!(
            !fixture.realm.holds_realm_role(&user.id, &role).await,
            "round {round}: the mapping stayed after the second grant"
        );
    }
}

#[tokio::test]
async fn refused_successor_releases_mapping() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "refused-successor").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let first = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    let second = harness
        .approved_grant(&user, "prod-deployer", 600, Some(first.ends_at), None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);

    // The user left the requesters' group, so the second grant is refused at its start,
    // which is the first grant's end.
    fixture.leave_group(&user, "/engineering").await;
    harness.clock.set(first.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 2);
    assert_eq!(harness.grant(&first.id).await.status(), GrantStatus::Ended);
    assert_eq!(
        harness.grant(&second.id).await.status(),
        GrantStatus::Refused
    );
    assert_no_more_work(&harness, &scheduler).await;
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "both grants are over, but prod-deployer is still mapped: the first grant's end \
         left the mapping to the second, which was refused"
    );
}

#[tokio::test]
async fn cancelled_successor_releases_mapping() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let user = engineer(&fixture, "cancelled-successor").await;
    let harness = Harness::open(&url, &demo_catalog_text()).await;
    let first = harness
        .approved_grant(&user, "prod-deployer", 600, None, None)
        .await;
    let second = harness
        .approved_grant(&user, "prod-deployer", 600, Some(first.ends_at), None)
        .await;
    let scheduler = harness.scheduler();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    // A failed attempt put the second grant's next try 10 s after its start, as a retry
    // back-off does, so it has not started when the first grant ends.
    harness
        .execute(
            "update access_grant set attempts = 1, last_error = 'Keycloak returned 503', \
             due_at = $1 where id = $2",
            &[&(first.ends_at + 10).to_string(), &second.id],
        )
        .await;
    harness.clock.set(first.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&first.id).await.status(), GrantStatus::Ended);

    let status = grants::end_early(
        &harness.database,
        &second.id,
        &holder(&user),
        first.ends_at + 5,
    )
    .await
    .unwrap();
    assert_eq!(status, GrantStatus::Cancelled);
    harness.clock.set(first.ends_at + 10);
    scheduler.run_once().await.unwrap();
    assert_no_more_work(&harness, &scheduler).await;
    assert!(
        !fixture
            .realm
            .holds_realm_role(&user.id, "prod-deployer")
            .await,
        "both grants are over, but prod-deployer is still mapped: the first grant's end \
         left the mapping to the second, which its holder cancelled before it started"
    );
}

#[tokio::test]
async fn missing_permission_retried_until_given() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("permission").await;
    let user = fixture.user("permission").await;
    // Everything the portal needs except manage-users, which role-mapping writes need.
    let client_id = fixture
        .service_client("no-manage", &["view-users", "view-realm", "query-groups"])
        .await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;
    let admin = app::server::keycloak::KeycloakAdmin::new(
        server::state::http_client().unwrap(),
        &url,
        "stint",
        &client_id,
        TEST_CLIENT_SECRET,
    );
    let scheduler = harness.scheduler_with(admin);

    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let waiting = harness.grant(&grant.id).await;
    // The row's status after a failed write is checked in lost_apply_answer_still_revoked.
    assert!(waiting.status().is_open(), "{}", waiting.status);
    assert_ne!(waiting.status(), GrantStatus::Active);
    assert_eq!(waiting.attempts, 1);
    let error = waiting.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("configuration error: "), "{error}");
    assert!(error.contains("403"), "{error}");
    assert!(error.contains("manage-users"), "{error}");
    assert!(!fixture.realm.holds_realm_role(&user.id, &role).await);

    fixture
        .grant_realm_management(&client_id, &["manage-users"])
        .await;
    harness.clock.set(waiting.due_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(
        active.status(),
        GrantStatus::Active,
        "{:?}",
        active.last_error
    );
    assert_eq!(active.last_error, None);
    assert!(
        fixture.realm.holds_realm_role(&user.id, &role).await,
        "the grant was not applied once the service account had manage-users"
    );
}

#[tokio::test]
async fn lost_apply_answer_still_revoked() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("lost-answer").await;
    let user = fixture.user("lost-answer").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    let grant = harness
        .approved_grant(&user, "temporary", 600, None, None)
        .await;

    let proxy = crate::proxy::lossy_proxy(&url, 1).await;
    let through_proxy = harness.scheduler_on(harness.database.clone(), &proxy);
    assert_eq!(through_proxy.run_once().await.unwrap(), 1);
    let waiting = harness.grant(&grant.id).await;
    assert_eq!(waiting.attempts, 1);
    let error = waiting.last_error.clone().unwrap_or_default();
    assert!(error.contains("504"), "{error}");
    assert!(
        fixture.realm.holds_realm_role(&user.id, &role).await,
        "Keycloak did not do the write whose answer the proxy dropped"
    );

    let scheduler = harness.scheduler();
    harness.clock.set(waiting.due_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let active = harness.grant(&grant.id).await;
    assert_eq!(active.status(), GrantStatus::Active);
    harness.clock.set(grant.ends_at);
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    assert_eq!(harness.grant(&grant.id).await.status(), GrantStatus::Ended);
    assert!(
        !fixture.realm.holds_realm_role(&user.id, &role).await,
        "the grant's own mapping stayed after its end: the failed write left the grant \
         `{}` instead of `applying`, so the retry ran the start again and took the mapping \
         for one the user held before (preexisting = {})",
        waiting.status,
        active.preexisting
    );
    assert_eq!(active.preexisting, 0);
    assert_eq!(waiting.status(), GrantStatus::Applying);
}

#[tokio::test]
async fn forbidden_error_names_client() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let client_id = fixture.service_client("no-roles", &[]).await;
    let admin = app::server::keycloak::KeycloakAdmin::new(
        server::state::http_client().unwrap(),
        &url,
        "stint",
        &client_id,
        TEST_CLIENT_SECRET,
    );
    let error = admin
        .find_role(&app::server::catalog::KeycloakRole::Realm(
            "prod-deployer".into(),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("403"), "{error}");
    assert!(error.contains("view-realm"), "{error}");
    // The portal's client is `keycloak.client_id`, which need not be stint-portal.
    assert!(
        error.contains(&client_id),
        "the message names a client other than the one whose service account was \
         rejected: {error}"
    );
}

/// Runs `replicas` at the same clock until a round claims nothing, and returns how many
/// grants each one claimed in total.
async fn run_replicas(replicas: &[Arc<Scheduler>]) -> Vec<usize> {
    let mut claimed = vec![0; replicas.len()];
    for _round in 0..50 {
        let mut tasks = Vec::new();
        for replica in replicas {
            let replica = replica.clone();
            tasks.push(tokio::spawn(async move { replica.run_once().await }));
        }
        let mut round = 0;
        for (index, task) in tasks.into_iter().enumerate() {
            let count = task.await.unwrap().unwrap();
            claimed[index] += count;
            round += count;
        }
        if round == 0 {
            return claimed;
        }
    }
    panic!("the replicas still claimed grants after 50 rounds: {claimed:?}");
}

/// Works 20 grants due at one instant with two replicas that have their own database
/// pools and Keycloak clients, and checks that each grant is applied once and revoked once.
async fn two_replicas_share_grants(harness: Harness, fixture: &Fixture, role: &str) {
    const GRANTS: usize = 20;
    let mut users = Vec::new();
    let mut grant_ids = Vec::new();
    for index in 0..GRANTS {
        let user = fixture.user(&format!("replica-{index}")).await;
        let grant = harness
            .approved_grant(&user, "temporary", 600, None, None)
            .await;
        users.push(user);
        grant_ids.push(grant.id);
    }
    // With one Keycloak call in flight, a replica keeps at most 8 claimed grants that it
    // has not worked yet, so neither can take all 20.
    let one_slot = SchedulerSettings {
        concurrency: 1,
        claimed_per_slot: 8,
        ..settings()
    };
    let second_pool = harness.second_pool().await;
    let replicas = [
        Arc::new(harness.replica(
            harness.database.clone(),
            &harness.keycloak_url,
            one_slot.clone(),
        )),
        Arc::new(harness.replica(second_pool, &harness.keycloak_url, one_slot)),
    ];
    // Each pool opens its first connection now, so that neither replica's first claim
    // waits for a connection while the other claims.
    for replica in &replicas {
        replica.next_due().await.unwrap();
    }

    let claimed = run_replicas(&replicas).await;
    assert_eq!(
        claimed.iter().sum::<usize>(),
        GRANTS,
        "claims per replica: {claimed:?}"
    );
    assert!(claimed.iter().all(|count| *count > 0), "{claimed:?}");
    let applied = harness.count_events("grant_applied").await;
    for id in &grant_ids {
        assert_eq!(applied.get(id), Some(&1), "grant_applied events of {id}");
        assert_eq!(harness.grant(id).await.status(), GrantStatus::Active);
    }
    for user in &users {
        assert!(
            fixture.realm.holds_realm_role(&user.id, role).await,
            "{} has no mapping",
            user.username
        );
    }

    harness.clock.set(NOW + 600);
    let claimed = run_replicas(&replicas).await;
    assert_eq!(
        claimed.iter().sum::<usize>(),
        GRANTS,
        "claims per replica: {claimed:?}"
    );
    let revoked = harness.count_events("grant_revoked").await;
    for id in &grant_ids {
        assert_eq!(revoked.get(id), Some(&1), "grant_revoked events of {id}");
        assert_eq!(harness.grant(id).await.status(), GrantStatus::Ended);
    }
    for user in &users {
        assert!(
            !fixture.realm.holds_realm_role(&user.id, role).await,
            "{} kept the mapping",
            user.username
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_apply_once() {
    let Some(url) = crate::keycloak_url() else {
        return;
    };
    let fixture = Fixture::new(&url);
    let role = fixture.realm_role("replicas").await;
    let harness = Harness::open(&url, &realm_role_entry("temporary", &role, false)).await;
    two_replicas_share_grants(harness, &fixture, &role).await;
}
