//! Background jobs. Each runs on an interval until shutdown and logs every failure.

use std::time::Duration;

use std::sync::Arc;

use app::server::db::Database;
use app::server::grants::reconcile::Reconciler;
use app::server::requests::store;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// How often pending requests are checked against their approval deadline. A request past
/// its deadline cannot be approved even before this job marks it, because the decision
/// rules compare the deadline with the time of the decision.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Marks pending requests past their approval deadline as expired.
pub async fn expire_requests(database: Database, shutdown: CancellationToken) {
    tracing::info!(
        interval_seconds = EXPIRY_INTERVAL.as_secs(),
        "request expiry job started"
    );
    let mut interval = tokio::time::interval(EXPIRY_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {
                let now = OffsetDateTime::now_utc().unix_timestamp();
                match store::expire_due(&database, now).await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "expired pending requests past their deadline"),
                    Err(error) => tracing::warn!(%error, "expiring requests failed; retrying at the next interval"),
                }
            }
        }
    }
    tracing::info!("request expiry job stopped");
}

/// Compares the grants with Keycloak's mappings every `scheduler.reconcile_interval`, on
/// one replica per interval. The first run waits one interval, so a start-up does not race
/// the scheduler's catch-up.
pub async fn reconcile(state: crate::state::AppState, shutdown: CancellationToken) {
    let every = state.config.scheduler.reconcile_interval();
    if every.is_zero() || !state.config.scheduler.enabled {
        tracing::info!(
            "reconciliation is off (scheduler.reconcile_interval = 0s or the scheduler is off)"
        );
        return;
    }
    let reconciler = Reconciler::new(
        state.database.clone(),
        state.admin.clone() as Arc<dyn app::server::grants::mappings::RoleMappings>,
        state.catalog.clone(),
        state.scheduler.owner().to_owned(),
        state.config.scheduler.lease().as_secs() as i64,
    );
    tracing::info!(
        interval_seconds = every.as_secs(),
        "reconciliation job started"
    );
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {
                let now = OffsetDateTime::now_utc().unix_timestamp();
                match reconciler.take_turn(now, every.as_secs() as i64).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!("another replica ran the reconciliation in this interval");
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "taking the reconciliation's turn failed; retrying at the next interval");
                        continue;
                    }
                }
                match reconciler.run(now).await {
                    Ok(summary) => {
                        for error in &summary.errors {
                            tracing::warn!(%error, "reconciliation could not check a role");
                        }
                        tracing::info!(roles = summary.roles_checked, restored = summary.restored, standing = summary.standing, removed = summary.removed, "reconciliation finished");
                    }
                    Err(error) => tracing::warn!(%error, "reconciliation failed; retrying at the next interval"),
                }
            }
        }
    }
    tracing::info!("reconciliation job stopped");
}

/// Flags request `id` to admins when no one but the requester could approve it, so it does
/// not wait until it expires.
pub async fn flag_if_no_approver(
    state: &crate::state::AppState,
    id: &str,
    role: &app::server::catalog::CatalogRole,
    requester: &str,
    now: i64,
) {
    let mut approver_found = false;
    for group in &role.approvers.groups {
        match state.admin.group_has_other_member(group, requester).await {
            Ok(true) => approver_found = true,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, request_id = %id, group = %group, "could not count the approvers of a group; not flagging");
                return;
            }
        }
    }
    for realm_role in &role.approvers.realm_roles {
        match state
            .admin
            .realm_role_has_other_holder(realm_role, requester)
            .await
        {
            Ok(true) => approver_found = true,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, request_id = %id, role = %realm_role, "could not count the holders of an approver role; not flagging");
                return;
            }
        }
    }
    if approver_found {
        return;
    }
    let reason = format!(
        "no approver other than the requester is left for {} (approvers: {})",
        role.key,
        role.approvers
            .groups
            .iter()
            .chain(&role.approvers.realm_roles)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    match store::flag_for_admin(&state.database, id, &reason, now).await {
        Ok(()) => {
            tracing::warn!(security_event = "request_flagged", request_id = %id, %reason, "request flagged to admins")
        }
        Err(error) => {
            tracing::error!(%error, request_id = %id, "flagging a request to admins failed")
        }
    }
}

/// How often pending requests are checked for an approver who left since they were made.
const APPROVER_CHECK_INTERVAL: Duration = Duration::from_secs(600);

/// Flags pending requests whose approvers have all left, every ten minutes, so that a
/// request made while approvers existed does not wait until it expires once they are gone.
pub async fn recheck_approvers(state: crate::state::AppState, shutdown: CancellationToken) {
    tracing::info!(
        interval_seconds = APPROVER_CHECK_INTERVAL.as_secs(),
        "approver check job started"
    );
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + APPROVER_CHECK_INTERVAL,
        APPROVER_CHECK_INTERVAL,
    );
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {
                let pending = match store::list_pending(&state.database).await {
                    Ok(pending) => pending,
                    Err(error) => {
                        tracing::warn!(%error, "listing pending requests failed; retrying at the next interval");
                        continue;
                    }
                };
                let catalog = state.catalog();
                let now = OffsetDateTime::now_utc().unix_timestamp();
                for request in pending.iter().filter(|request| request.needs_admin_reason.is_none()) {
                    if let Some(role) = catalog.find(&request.role_key) {
                        flag_if_no_approver(&state, &request.id, role, &request.requester_subject, now).await;
                    }
                }
            }
        }
    }
    tracing::info!("approver check job stopped");
}
