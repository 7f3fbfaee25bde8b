//! Request storage and its audit log, on SQLite and on PostgreSQL.

use app::server::grants::store::GrantTarget;
use app::server::requests::rules::{Decision, DecisionError, RequestStatus};
use app::server::requests::store::{self, Actor, NewRequest, StoreError};
use server::db::Database;

use crate::support;

const NOW: i64 = 1_800_000_000;

fn actor(name: &str) -> Actor {
    Actor {
        subject: format!("{name}-sub"),
        username: name.to_owned(),
    }
}

fn new_request(approvals_required: u32) -> NewRequest {
    NewRequest {
        requester: actor("alice"),
        role_key: "db-admin".into(),
        duration_seconds: 3600,
        starts_at: None,
        justification: "restore the orders table".into(),
        ticket: Some("OPS-1".into()),
        approvals_required,
        approval_deadline: NOW + 600,
        auto_approved: false,
        target: target(),
        extends_grant_id: None,
    }
}

fn target() -> GrantTarget {
    GrantTarget {
        client_id: None,
        role_name: "db-admin".into(),
        end_sessions: false,
    }
}

async fn sqlite() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("stint.db").display());
    let database = Database::connect(&url, &url).await.unwrap();
    database.migrate(&url).await.unwrap();
    (dir, database)
}

async fn actions(database: &Database, id: &str) -> Vec<(String, Option<String>, Option<String>)> {
    store::audit_trail(database, id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| (event.action, event.from_status, event.to_status))
        .collect()
}

fn step(action: &str, from: Option<&str>, to: &str) -> (String, Option<String>, Option<String>) {
    (
        action.to_owned(),
        from.map(str::to_owned),
        Some(to.to_owned()),
    )
}

async fn two_approvals_flow(database: &Database) {
    let id = store::create(database, &new_request(2), NOW).await.unwrap();
    let bob = actor("bob");
    let carol = actor("carol");

    let own = store::decide(
        database,
        &id,
        &actor("alice"),
        true,
        Decision::Approve,
        "",
        &target(),
        NOW,
    )
    .await;
    assert!(
        matches!(own, Err(StoreError::Decision(DecisionError::OwnRequest))),
        "{own:?}"
    );

    let first = store::decide(
        database,
        &id,
        &bob,
        true,
        Decision::Approve,
        "ok",
        &target(),
        NOW + 1,
    )
    .await;
    assert_eq!(first.unwrap(), RequestStatus::Pending);
    let twice = store::decide(
        database,
        &id,
        &bob,
        true,
        Decision::Approve,
        "",
        &target(),
        NOW + 2,
    )
    .await;
    assert!(
        matches!(
            twice,
            Err(StoreError::Decision(DecisionError::AlreadyApproved))
        ),
        "{twice:?}"
    );
    let second = store::decide(
        database,
        &id,
        &carol,
        true,
        Decision::Approve,
        "fine",
        &target(),
        NOW + 3,
    )
    .await;
    assert_eq!(second.unwrap(), RequestStatus::Approved);
    assert_eq!(
        store::status(database, &id).await.unwrap(),
        RequestStatus::Approved
    );

    let late = store::decide(
        database,
        &id,
        &actor("dave"),
        true,
        Decision::Deny,
        "",
        &target(),
        NOW + 4,
    )
    .await;
    assert!(
        matches!(
            late,
            Err(StoreError::Decision(DecisionError::AlreadyDecided(
                RequestStatus::Approved
            )))
        ),
        "{late:?}"
    );
    assert_eq!(
        actions(database, &id).await,
        vec![
            step("request_created", None, "pending"),
            step("request_approved", Some("pending"), "pending"),
            step("request_approved", Some("pending"), "approved"),
            step("grant_scheduled", Some("scheduled"), "scheduled"),
        ]
    );
}

async fn duplicate_and_expiry(database: &Database) {
    let id = store::create(database, &new_request(1), NOW).await.unwrap();
    let again = store::create(database, &new_request(1), NOW).await;
    assert!(
        matches!(again, Err(StoreError::DuplicatePending(ref role)) if role == "db-admin"),
        "{again:?}"
    );

    assert_eq!(store::expire_due(database, NOW + 599).await.unwrap(), 0);
    assert_eq!(store::expire_due(database, NOW + 600).await.unwrap(), 1);
    assert_eq!(
        store::status(database, &id).await.unwrap(),
        RequestStatus::Expired
    );
    let approve = store::decide(
        database,
        &id,
        &actor("bob"),
        true,
        Decision::Approve,
        "",
        &target(),
        NOW + 601,
    )
    .await;
    assert!(matches!(
        approve,
        Err(StoreError::Decision(DecisionError::AlreadyDecided(
            RequestStatus::Expired
        )))
    ));
    assert_eq!(
        actions(database, &id).await.last().unwrap(),
        &step("request_expired", Some("pending"), "expired")
    );

    // Once the first request is no longer pending, a new one for the same role is allowed.
    let next = store::create(database, &new_request(1), NOW + 700)
        .await
        .unwrap();
    store::cancel(database, &next, &actor("alice"), NOW + 701)
        .await
        .unwrap();
    let not_yours = store::cancel(database, &next, &actor("bob"), NOW + 702).await;
    assert!(
        matches!(not_yours, Err(StoreError::Cancel(_))),
        "{not_yours:?}"
    );
    assert_eq!(
        store::status(database, &next).await.unwrap(),
        RequestStatus::Cancelled
    );
}

async fn audit_log_is_append_only(database: &Database) {
    let id = store::create(database, &new_request(1), NOW).await.unwrap();
    let update = server::with_pool!(database, |pool| {
        sqlx::query("update audit_event set comment = 'edited' where request_id = $1")
            .bind(&id)
            .execute(pool)
            .await
            .map(drop)
    });
    assert!(update.is_err(), "an audit event was updated");
    let delete = server::with_pool!(database, |pool| {
        sqlx::query("delete from audit_event where request_id = $1")
            .bind(&id)
            .execute(pool)
            .await
            .map(drop)
    });
    assert!(delete.is_err(), "an audit event was deleted");
    assert_eq!(actions(database, &id).await.len(), 1);
}

async fn failed_decision_writes_nothing(database: &Database) {
    let id = store::create(database, &new_request(1), NOW).await.unwrap();
    let former = store::decide(
        database,
        &id,
        &actor("bob"),
        false,
        Decision::Approve,
        "",
        &target(),
        NOW,
    )
    .await;
    assert!(matches!(
        former,
        Err(StoreError::Decision(DecisionError::NotApprover))
    ));
    assert_eq!(
        actions(database, &id).await.len(),
        1,
        "a rejected decision left an audit event"
    );
    assert_eq!(
        store::status(database, &id).await.unwrap(),
        RequestStatus::Pending
    );
}

async fn flagged_request_is_listed(database: &Database) {
    let id = store::create(database, &new_request(1), NOW).await.unwrap();
    assert!(store::list_flagged(database).await.unwrap().is_empty());
    store::flag_for_admin(database, &id, "no approver left", NOW + 1)
        .await
        .unwrap();
    let flagged = store::list_flagged(database).await.unwrap();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0].0.id, id);
    assert_eq!(flagged[0].1, "no approver left");
    assert_eq!(
        actions(database, &id).await.last().unwrap(),
        &step("request_flagged_for_admin", Some("pending"), "pending")
    );
    store::cancel(database, &id, &actor("alice"), NOW + 2)
        .await
        .unwrap();
    assert!(
        store::list_flagged(database).await.unwrap().is_empty(),
        "only pending requests are listed"
    );
}

#[tokio::test]
async fn sqlite_flagged_request() {
    let (_dir, database) = sqlite().await;
    flagged_request_is_listed(&database).await;
}

#[tokio::test]
async fn postgres_flagged_request() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    flagged_request_is_listed(&database).await;
}

#[tokio::test]
async fn sqlite_two_approvals() {
    let (_dir, database) = sqlite().await;
    two_approvals_flow(&database).await;
}

#[tokio::test]
async fn sqlite_duplicate_and_expiry() {
    let (_dir, database) = sqlite().await;
    duplicate_and_expiry(&database).await;
}

#[tokio::test]
async fn sqlite_audit_append_only() {
    let (_dir, database) = sqlite().await;
    audit_log_is_append_only(&database).await;
}

#[tokio::test]
async fn sqlite_rejected_decision_atomic() {
    let (_dir, database) = sqlite().await;
    failed_decision_writes_nothing(&database).await;
}

#[tokio::test]
async fn postgres_two_approvals() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    two_approvals_flow(&database).await;
}

#[tokio::test]
async fn postgres_duplicate_and_expiry() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    duplicate_and_expiry(&database).await;
}

#[tokio::test]
async fn postgres_audit_append_only() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    audit_log_is_append_only(&database).await;
}

#[tokio::test]
async fn postgres_rejected_decision_atomic() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    failed_decision_writes_nothing(&database).await;
}

/// Two approvers deciding one request at the same moment, and one approver submitting
/// twice at once: the decisions are serialised, so the request is approved once, with one
/// grant, and the repeated approval is refused.
async fn concurrent_decisions(database: &Database) {
    let id = store::create(database, &new_request(2), NOW).await.unwrap();
    let decide = |who: &'static str, id: String| async move {
        store::decide(
            database,
            &id,
            &actor(who),
            true,
            Decision::Approve,
            "",
            &target(),
            NOW + 1,
        )
        .await
    };
    let (bob, carol) = tokio::join!(decide("bob", id.clone()), decide("carol", id.clone()));
    let mut statuses = vec![bob.unwrap(), carol.unwrap()];
    statuses.sort_by_key(|status| status.as_str());
    assert_eq!(statuses, [RequestStatus::Approved, RequestStatus::Pending]);
    assert_eq!(
        store::status(database, &id).await.unwrap(),
        RequestStatus::Approved
    );
    let grants: i64 = server::with_pool!(database, |pool| {
        sqlx::query_scalar("select count(*) from access_grant where request_id = $1")
            .bind(&id)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(grants, 1);

    let other = NewRequest {
        requester: actor("dave"),
        ..new_request(2)
    };
    let id = store::create(database, &other, NOW).await.unwrap();
    let (first, second) = tokio::join!(decide("bob", id.clone()), decide("bob", id.clone()));
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|outcome| matches!(
            outcome,
            Err(StoreError::Decision(DecisionError::AlreadyApproved))
        )),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn sqlite_concurrent_decisions() {
    let (_dir, database) = sqlite().await;
    concurrent_decisions(&database).await;
}

#[tokio::test]
async fn postgres_concurrent_decisions() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    concurrent_decisions(&database).await;
}

/// Checks the hash chain: it is intact after a normal flow, and an event changed or
/// deleted by hand past the append-only triggers is named by the verification.
async fn audit_chain_detects_tampering(database: &Database) {
    use app::server::audit::chain;

    let id = store::create(database, &new_request(1), NOW).await.unwrap();
    store::decide(
        database,
        &id,
        &actor("bob"),
        true,
        Decision::Approve,
        "ok",
        &target(),
        NOW + 1,
    )
    .await
    .unwrap();
    let other = NewRequest {
        requester: actor("dave"),
        ..new_request(1)
    };
    let other = store::create(database, &other, NOW + 2).await.unwrap();
    store::cancel(database, &other, &actor("dave"), NOW + 3)
        .await
        .unwrap();

    let report = chain::verify(database).await.unwrap();
    assert_eq!(report.first_break, None, "{report}");
    assert_eq!(report.checked, 5);
    assert_eq!(report.head, chain::head(database).await.unwrap());

    let ids: Vec<i64> = server::with_pool!(database, |pool| {
        sqlx::query_scalar("select id from audit_event order by id")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    let drop_triggers = match database {
        Database::Sqlite(_) => vec![
            "drop trigger audit_event_no_update",
            "drop trigger audit_event_no_delete",
        ],
        Database::Postgres(_) => vec!["drop trigger audit_event_no_change on audit_event"],
    };
    for statement in drop_triggers {
        server::with_pool!(database, |pool| {
            sqlx::query(statement).execute(pool).await.unwrap();
        });
    }

    server::with_pool!(database, |pool| {
        sqlx::query("update audit_event set comment = 'looks fine' where id = $1")
            .bind(ids[1])
            .execute(pool)
            .await
            .unwrap();
    });
    let edited = chain::verify(database).await.unwrap();
    let broken = edited.first_break.expect("an edited event is detected");
    assert_eq!(broken.event_id, ids[1]);
    assert!(broken.reason.contains("was changed"), "{}", broken.reason);

    // Put the comment back, then delete a later event: the one after it is named.
    server::with_pool!(database, |pool| {
        sqlx::query("update audit_event set comment = 'ok' where id = $1")
            .bind(ids[1])
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("delete from audit_event where id = $1")
            .bind(ids[3])
            .execute(pool)
            .await
            .unwrap();
    });
    let deleted = chain::verify(database).await.unwrap();
    let broken = deleted.first_break.expect("a deleted event is detected");
    assert_eq!(broken.event_id, ids[4]);
    assert!(broken.reason.contains("deleted"), "{}", broken.reason);
}

#[tokio::test]
async fn sqlite_audit_chain() {
    let (_dir, database) = sqlite().await;
    audit_chain_detects_tampering(&database).await;
}

#[tokio::test]
async fn postgres_audit_chain() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    audit_chain_detects_tampering(&database).await;
}

async fn same_second_requests_keep_creation_order(database: &Database) {
    let mut created = Vec::new();
    for role in [
        "db-admin",
        "prod-deployer",
        "refunds",
        "support-viewer",
        "ops-lead",
    ] {
        let request = NewRequest {
            role_key: role.into(),
            ..new_request(1)
        };
        created.push(store::create(database, &request, NOW).await.unwrap());
    }

    let mine: Vec<String> = store::list_for_requester(database, "alice-sub")
        .await
        .unwrap()
        .into_iter()
        .map(|request| request.id)
        .collect();
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(mine, newest_first, "My requests lists the newest first");

    let queue: Vec<String> = store::list_pending(database)
        .await
        .unwrap()
        .into_iter()
        .map(|request| request.id)
        .collect();
    assert_eq!(queue, created, "the approval queue lists the oldest first");
}

#[tokio::test]
async fn sqlite_same_second_order() {
    let (_dir, database) = sqlite().await;
    same_second_requests_keep_creation_order(&database).await;
}

#[tokio::test]
async fn postgres_same_second_order() {
    let Some((database, _)) = support::postgres_database().await else {
        return;
    };
    same_second_requests_keep_creation_order(&database).await;
}
