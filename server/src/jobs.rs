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

/// Compares the grants with Keycloak's mappings every `scheduler.reconcile_interval`. The
/// first run waits one interval, so a start-up does not race the scheduler's catch-up.
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
