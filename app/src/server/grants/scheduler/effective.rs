//! After a revocation, the user's effective roles are read outside the burst of removals. A
//! role that is still effective through a group or a composite role marks the grant.

use std::sync::atomic::Ordering;

use futures::StreamExt;

use super::{RoleMemo, Scheduler};
use crate::server::grants::mappings::Failure;
use crate::server::grants::store::{grant_audit, Grant, GrantEvent, GrantStatus, GRANT_COLUMNS};
use crate::server::requests::store::StoreError;
use crate::with_pool;

/// Ended grants whose effective roles are read in one batch, per Keycloak call in flight.
/// Between batches the checks give way to due grants, so a slow Keycloak holds up claims
/// for one batch at most.
const EFFECTIVE_CHECKS_PER_SLOT: usize = 4;
/// Seconds before reading the effective roles again after a failed read.
const EFFECTIVE_CHECK_RETRY: i64 = 60;

impl Scheduler {
    /// Reads the effective roles of the users whose mapping a revocation removed. A role
    /// still effective through a group or a composite role marks the grant, which admins
    /// then see, with an audit event. A read that fails is tried again later. Returns early,
    /// leaving the rest for the next pass, when a grant is due for a step.
    pub(super) async fn check_effective_roles(
        &self,
        roles: &RoleMemo,
    ) -> Result<usize, StoreError> {
        let sql = format!(
            "select {GRANT_COLUMNS} from access_grant where effective_check_pending = 1 \
             and due_at <= $1 order by due_at, id limit $2"
        );
        let slots = self.settings.concurrency.max(1);
        let batch = slots * EFFECTIVE_CHECKS_PER_SLOT;
        let mut checked = 0;
        while !self.stopping.load(Ordering::SeqCst) {
            let now = self.now();
            if self.has_claimable_work(now).await? {
                return Ok(checked);
            }
            let pending: Vec<Grant> = with_pool!(&self.database, |pool| {
                sqlx::query_as(&sql)
                    .bind(now)
                    .bind(batch as i64)
                    .fetch_all(pool)
                    .await
            })?;
            let full = pending.len() == batch;
            if pending.is_empty() {
                return Ok(checked);
            }
            let answers: Vec<(Grant, Result<bool, Failure>)> = futures::stream::iter(pending)
                .map(|grant| async move {
                    let answer = match self.pass_role(roles, &grant).await {
                        // A deleted role is effective for nobody.
                        Ok(None) | Err(Failure::Gone(_)) => Ok(false),
                        Ok(Some(role)) => {
                            match self
                                .keycloak(self.mappings.has_effective_role(&grant.subject, &role))
                                .await
                            {
                                Ok(effective) => Ok(effective == Some(true)),
                                Err(Failure::Gone(_)) => Ok(false),
                                Err(failure) => Err(failure),
                            }
                        }
                        Err(failure) => Err(failure),
                    };
                    (grant, answer)
                })
                .buffer_unordered(slots)
                .collect()
                .await;
            let failed = self.store_effective_checks(&answers, now).await?;
            checked += answers.len() - failed;
            if failed > 0 || !full {
                return Ok(checked);
            }
        }
        Ok(checked)
    }

    /// Returns whether a grant is due for a step and no lease holds it.
    async fn has_claimable_work(&self, now: i64) -> Result<bool, StoreError> {
        let due: Option<String> = with_pool!(&self.database, |pool| {
            sqlx::query_scalar(
                "select id from access_grant \
                 where status in ('scheduled', 'applying', 'active', 'revoking') \
                 and due_at <= $1 and (lease_expires_at is null or lease_expires_at <= $1) \
                 limit 1",
            )
            .bind(now)
            .fetch_optional(pool)
            .await
        })?;
        Ok(due.is_some())
    }

    /// Stores the answers of [`Self::check_effective_roles`] in one transaction. Returns
    /// how many reads failed.
    pub(super) async fn store_effective_checks(
        &self,
        answers: &[(Grant, Result<bool, Failure>)],
        now: i64,
    ) -> Result<usize, StoreError> {
        const STILL_EFFECTIVE: &str =
            "the role is still effective through a group or a composite role";
        let mut failed = 0;
        let _turn = self.write_turn().await;
        let marked = with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let mut marked = Vec::new();
                for (grant, answer) in answers {
                    let effective = match answer {
                        Ok(effective) => *effective,
                        Err(failure) => {
                            failed += 1;
                            tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, retry_in_seconds = EFFECTIVE_CHECK_RETRY, error = %failure.message(), "could not read the effective roles after a revocation; retrying");
                            sqlx::query(
                                "update access_grant set due_at = $1 \
                                 where id = $2 and effective_check_pending = 1",
                            )
                            .bind(now + EFFECTIVE_CHECK_RETRY)
                            .bind(&grant.id)
                            .execute(&mut *tx)
                            .await?;
                            continue;
                        }
                    };
                    // Another open grant of the lane may have mapped the role again since the
                    // revocation: that mapping explains the role, not a group or a composite.
                    let effective = effective && {
                        let other: Option<String> = sqlx::query_scalar(
                            "select id from access_grant where subject = $1 and role_key = $2 \
                             and id <> $3 and status in ('applying', 'active', 'revoking') limit 1",
                        )
                        .bind(&grant.subject)
                        .bind(&grant.role_key)
                        .bind(&grant.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        other.is_none()
                    };
                    let updated = sqlx::query(
                        "update access_grant set effective_check_pending = 0, still_effective = $1, \
                         outcome = case when $1 = 1 then outcome || $2 else outcome end, \
                         updated_at = $3 where id = $4 and effective_check_pending = 1",
                    )
                    .bind(i64::from(effective))
                    .bind(format!(", but {STILL_EFFECTIVE}"))
                    .bind(now)
                    .bind(&grant.id)
                    .execute(&mut *tx)
                    .await?;
                    if effective && updated.rows_affected() > 0 {
                        let event = GrantEvent {
                            actor: None,
                            action: "grant_still_effective",
                            from: GrantStatus::Ended,
                            to: GrantStatus::Ended,
                            comment: STILL_EFFECTIVE,
                        };
                        grant_audit!(tx, &self.database, now, &grant.request_id, &grant.id, &event)?;
                        marked.push(grant);
                    }
                }
                tx.commit().await?;
                Ok::<Vec<&Grant>, StoreError>(marked)
            }
            .await
        })?;
        for grant in marked {
            tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, role = %grant.role_key, subject = %grant.subject, "the grant ended, but its role is still effective through a group or a composite role");
        }
        Ok(failed)
    }
}
