//! The writes that close a step: a final status, a retry with back-off, and the lease
//! renewed before a Keycloak write or given back.

use super::{backoff, lease_token, Scheduler};
use crate::server::grants::mappings::Failure;
use crate::server::grants::store::{grant_audit, Grant, GrantEvent, GrantStatus};
use crate::server::requests::store::StoreError;
use crate::with_pool;

impl Scheduler {
    /// Moves the grant to final status `to` with `reason` and an audit event.
    pub(super) async fn finish(
        &self,
        grant: &Grant,
        to: GrantStatus,
        action: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let turn = self.write_turn().await;
        let done = with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "update access_grant set status = $1, outcome = $2, lease_owner = null, \
                     lease_expires_at = null, updated_at = $3 where id = $4 and lease_owner = $5 \
                     and status in ('scheduled', 'applying', 'active', 'revoking')",
                )
                .bind(to.as_str())
                .bind(reason)
                .bind(now)
                .bind(&grant.id)
                .bind(lease_token(grant))
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    return Ok::<bool, StoreError>(false);
                }
                let event = GrantEvent {
                    actor: None,
                    action,
                    from: grant.status(),
                    to,
                    comment: reason,
                };
                grant_audit!(
                    tx,
                    &self.database,
                    now,
                    &grant.request_id,
                    &grant.id,
                    &event
                )?;
                tx.commit().await?;
                Ok(true)
            }
            .await
        })?;
        drop(turn);
        if done {
            tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, status = to.as_str(), %reason, "grant stopped");
        }
        Ok(())
    }

    /// Records a failed attempt and sets the next one after an exponential back-off with
    /// jitter. A failing revocation is retried for as long as it takes.
    pub(super) async fn retry(
        &self,
        grant: &Grant,
        failure: &Failure,
        now: i64,
    ) -> Result<(), StoreError> {
        let attempts = grant.attempts + 1;
        let delay = backoff(attempts, self.settings.max_backoff);
        let next = now + delay;
        let revoking = matches!(grant.status(), GrantStatus::Active | GrantStatus::Revoking)
            || (grant.status() == GrantStatus::Applying && now >= grant.ends_at);
        let message = failure.message();
        match failure {
            Failure::Configuration(_) => {
                tracing::error!(grant_id = %grant.id, request_id = %grant.request_id, attempts, retry_in_seconds = delay, error = %message, "Keycloak rejected the service account with 403; assign it the missing realm-management role")
            }
            _ => {
                tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, attempts, retry_in_seconds = delay, error = %message, "grant step failed; retrying")
            }
        }
        let _turn = self.write_turn().await;
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set \
                 status = case when $1 = 1 then 'revoking' else status end, \
                 attempts = $2, last_error = $3, due_at = $4, \
                 lease_owner = null, lease_expires_at = null, updated_at = $5 \
                 where id = $6 and lease_owner = $7 \
                 and status in ('scheduled', 'applying', 'active', 'revoking')",
            )
            .bind(i64::from(revoking))
            .bind(attempts)
            .bind(&message)
            .bind(next)
            .bind(now)
            .bind(&grant.id)
            .bind(lease_token(grant))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Extends this replica's lease on `grant` just before a Keycloak write, so the write
    /// cannot overlap another replica's step. Returns the new expiry, or `None` when the
    /// lease is gone (it expired and another replica may hold the grant, or the grant
    /// reached a final status); the caller then skips the write.
    pub(super) async fn renew_lease(&self, grant: &Grant) -> Result<Option<i64>, StoreError> {
        let now = self.now();
        let lease = self.settings.lease.as_secs().max(1) as i64;
        // No other replica takes the grant before the expiry that the claim wrote, and the
        // keeper only moves it later: while half the lease is left, there is nothing to do.
        if let Some(until) = grant
            .lease_expires_at
            .filter(|until| (until - now) * 2 >= lease)
        {
            return Ok(Some(until));
        }
        let until = now + lease;
        let _turn = self.write_turn().await;
        let renewed = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set lease_expires_at = $1 where id = $2 and lease_owner = $3 \
                 and lease_expires_at > $4 and status in ('scheduled', 'applying', 'active', 'revoking')",
            )
            .bind(until)
            .bind(&grant.id)
            .bind(lease_token(grant))
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if renewed == 0 {
            tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, "the grant's lease was lost; this replica skips its step");
            return Ok(None);
        }
        Ok(Some(until))
    }

    /// Gives the lease back without a change, with the next due time.
    pub(super) async fn release(&self, grant: &Grant, due_at: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set due_at = $1, lease_owner = null, lease_expires_at = null \
                 where id = $2 and lease_owner = $3",
            )
            .bind(due_at)
            .bind(&grant.id)
            .bind(lease_token(grant))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}
