//! Background jobs. Each runs on an interval until shutdown and logs every failure.

use std::time::Duration;

use app::server::db::Database;
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
