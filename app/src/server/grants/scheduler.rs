//! The grant scheduler: adds a grant's Keycloak mapping at its start and removes it at its
//! end.
//!
//! Work is claimed from the database with a lease, so several replicas can share one
//! database and a replica that dies leaves its work to the others once the lease expires.
//! Grants of one user and role form a lane: the claim never hands out a grant whose lane
//! another lease holds, and a replica works the grants of one lane one after another.
//!
//! Every step can be repeated. Before adding a mapping the scheduler records whether the
//! user already had it. So a restart after a crash reads that record, not the mapping it
//! may have added itself. Adding and removing are idempotent in Keycloak, so a step cut
//! short is finished by doing it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Mutex, Notify};

use super::mappings::{Failure, RoleMappings};
use super::store::{grant_audit, Grant, GrantEvent, GrantStatus, GRANT_COLUMNS};
use crate::server::catalog::{current, CatalogHandle, KeycloakRole};
use crate::server::db::Database;
use crate::server::format_time;
use crate::server::keycloak::RoleRef;
use crate::server::requests::store::StoreError;
use crate::with_pool;

/// Returns the current time in Unix seconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Tuning of the scheduler. The defaults suit one Keycloak and a few replicas.
#[derive(Clone, Debug)]
pub struct SchedulerSettings {
    /// How long a claimed grant stays with this replica before another may take it.
    pub lease: Duration,
    /// Keycloak calls in flight at once (Keycloak's worker pool is the limit that matters).
    pub concurrency: usize,
    /// Maximum wait between two attempts of a failing step.
    pub max_backoff: Duration,
    /// Maximum sleep when nothing is due, so that grants made by other replicas are found.
    pub poll: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            concurrency: 16,
            max_backoff: Duration::from_secs(300),
            poll: Duration::from_secs(1),
        }
    }
}

pub struct Scheduler {
    database: Database,
    mappings: Arc<dyn RoleMappings>,
    catalog: CatalogHandle,
    /// This replica's name in the lease columns.
    owner: String,
    settings: SchedulerSettings,
    clock: Clock,
    wake: Arc<Notify>,
    /// The realm's access-token lifespan, read once.
    lifespan: Mutex<Option<i64>>,
}

/// The result of one step of a grant.
enum Step {
    /// The grant moved on, or another replica owns it now.
    Done,
    /// The step failed and is tried again later.
    Retry(Failure),
}

impl Scheduler {
    pub fn new(
        database: Database,
        mappings: Arc<dyn RoleMappings>,
        catalog: CatalogHandle,
        settings: SchedulerSettings,
        clock: Clock,
    ) -> Self {
        Self {
            database,
            mappings,
            catalog,
            owner: format!("stint-{}", uuid::Uuid::new_v4()),
            settings,
            clock,
            wake: Arc::new(Notify::new()),
            lifespan: Mutex::new(None),
        }
    }

    /// Returns the name this replica writes into the lease columns.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Returns a handle that makes the scheduler look for due work at once, for example
    /// after an approval or an early end.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn settings(&self) -> &SchedulerSettings {
        &self.settings
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Claims due grants and works them. Returns how many were claimed.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let batch = self.settings.concurrency.max(1) * 2;
        let claimed = self.claim(now, batch).await?;
        let count = claimed.len();
        let mut lanes: BTreeMap<(String, String), Vec<Grant>> = BTreeMap::new();
        for grant in claimed {
            lanes
                .entry((grant.subject.clone(), grant.role_key.clone()))
                .or_default()
                .push(grant);
        }
        for lane in lanes.values_mut() {
            // Starts first: a grant that begins as another ends takes the mapping over.
            lane.sort_by_key(|grant| (grant.status() != GrantStatus::Scheduled, grant.due_at));
        }
        futures::stream::iter(lanes.into_values())
            .for_each_concurrent(self.settings.concurrency.max(1), |lane| async move {
                for grant in lane {
                    let grant_id = grant.id.clone();
                    if let Err(error) = self.work(&grant_id).await {
                        tracing::error!(%error, grant_id = %grant_id, "a grant step could not be stored; the lease expiry hands it out again");
                    }
                }
            })
            .await;
        Ok(count)
    }

    /// Returns the earliest time at which a grant becomes due or a lease expires.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let sql =
            "select min(case when lease_expires_at is not null and lease_expires_at > due_at \
                   then lease_expires_at else due_at end) from access_grant \
                   where status in ('scheduled', 'applying', 'active', 'revoking')";
        let next: Option<i64> = with_pool!(&self.database, |pool| {
            sqlx::query_scalar(sql).fetch_one(pool).await
        })?;
        Ok(next)
    }

    /// Works due grants until `shutdown` resolves, sleeping until the next due time, a wake
    /// signal, or the poll interval, whichever comes first.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(owner = %self.owner, lease_seconds = self.settings.lease.as_secs(), concurrency = self.settings.concurrency, "grant scheduler started");
        tokio::pin!(shutdown);
        loop {
            let pause = match self.run_once().await {
                Ok(0) => match self.next_due().await {
                    Ok(Some(due)) => {
                        let wait = due as f64 - unix_now_fractional();
                        Duration::from_secs_f64(wait.clamp(0.0, self.settings.poll.as_secs_f64()))
                    }
                    Ok(None) => self.settings.poll,
                    Err(error) => {
                        tracing::warn!(%error, "reading the next due grant failed");
                        self.settings.poll
                    }
                },
                Ok(_) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(%error, "claiming due grants failed; retrying");
                    self.settings.poll
                }
            };
            if pause.is_zero() {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = tokio::task::yield_now() => continue,
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!(owner = %self.owner, "grant scheduler stopped");
    }

    /// Leases up to `limit` due grants whose lane no other lease holds.
    async fn claim(&self, now: i64, limit: usize) -> Result<Vec<Grant>, StoreError> {
        let lease_until = now + self.settings.lease.as_secs().max(1) as i64;
        let sql = format!(
            "update access_grant set lease_owner = $1, lease_expires_at = $2 where id in ( \
               select g.id from access_grant g \
               where g.status in ('scheduled', 'applying', 'active', 'revoking') \
                 and g.due_at <= $3 \
                 and (g.lease_expires_at is null or g.lease_expires_at <= $3) \
                 and not exists (select 1 from access_grant o where o.subject = g.subject \
                   and o.role_key = g.role_key and o.id <> g.id and o.lease_expires_at > $3) \
               order by g.due_at, g.id limit $4) \
             returning {GRANT_COLUMNS}"
        );
        let limit = limit as i64;
        let grants = match &self.database {
            Database::Sqlite(pool) => {
                // One statement: SQLite runs it under its write lock, so two replicas
                // cannot claim the same grant.
                sqlx::query_as::<_, Grant>(&sql)
                    .bind(&self.owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                // The lane check reads other rows, which row locks alone do not protect:
                // claims are serialised by a transaction-scoped advisory lock instead.
                let mut tx = pool.begin().await?;
                sqlx::query("select pg_advisory_xact_lock(7274681)")
                    .execute(&mut *tx)
                    .await?;
                let grants = sqlx::query_as::<_, Grant>(&sql)
                    .bind(&self.owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                grants
            }
        };
        Ok(grants)
    }

    /// Works one claimed grant, read again so that an earlier grant of its lane is seen.
    async fn work(&self, id: &str) -> Result<(), StoreError> {
        let now = self.now();
        let sql = format!("select {GRANT_COLUMNS} from access_grant where id = $1");
        let grant: Option<Grant> = with_pool!(&self.database, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
        })?;
        let Some(grant) = grant else { return Ok(()) };
        if grant.lease_owner.as_deref() != Some(self.owner.as_str())
            || grant.lease_expires_at.is_none_or(|until| until <= now)
        {
            tracing::info!(grant_id = %grant.id, "lease lost before the grant was worked; skipping");
            return Ok(());
        }
        let status = grant.status();
        let step = match status {
            GrantStatus::Scheduled if now >= grant.ends_at => {
                let reason = match &grant.last_error {
                    Some(error) => format!(
                        "not applied: the grant ended at {} before Keycloak accepted it (last error: {error})",
                        format_time(grant.ends_at)
                    ),
                    None => format!(
                        "not applied: the grant ended at {} before the portal ran",
                        format_time(grant.ends_at)
                    ),
                };
                self.finish(&grant, GrantStatus::Failed, "grant_failed", &reason, now)
                    .await?;
                Step::Done
            }
            GrantStatus::Scheduled => self.start(&grant, now).await?,
            // An interrupted apply past the grant's end may have added the mapping: remove it.
            GrantStatus::Applying if now >= grant.ends_at => self.revoke(&grant, now).await?,
            GrantStatus::Applying => self.apply(&grant, None, now).await?,
            GrantStatus::Active | GrantStatus::Revoking if now >= grant.ends_at => {
                self.revoke(&grant, now).await?
            }
            GrantStatus::Active | GrantStatus::Revoking => {
                self.release(&grant, grant.ends_at).await?;
                Step::Done
            }
            _ => {
                self.release(&grant, grant.due_at).await?;
                Step::Done
            }
        };
        if let Step::Retry(failure) = step {
            self.retry(&grant, &failure, now).await?;
        }
        Ok(())
    }

    fn keycloak_role(grant: &Grant) -> KeycloakRole {
        match &grant.client_id {
            Some(client) => KeycloakRole::Client(client.clone(), grant.role_name.clone()),
            None => KeycloakRole::Realm(grant.role_name.clone()),
        }
    }

    /// Looks the role up by its stored id (the name may have changed), or by name before
    /// the first write. `Ok(None)`: the role no longer exists.
    async fn resolve_role(&self, grant: &Grant) -> Result<Option<RoleRef>, Failure> {
        match &grant.role_id {
            Some(id) => self.mappings.role_by_id(id).await,
            None => self.mappings.find_role(&Self::keycloak_role(grant)).await,
        }
    }

    /// Resolves the grant's role, or ends the grant as failed with `missing(role)` as the
    /// reason when Keycloak no longer has it. `Err` carries the step to return.
    async fn role_or_stop(
        &self,
        grant: &Grant,
        now: i64,
        missing: fn(&KeycloakRole) -> String,
    ) -> Result<Result<RoleRef, Step>, StoreError> {
        match self.resolve_role(grant).await {
            Err(failure) => Ok(Err(Step::Retry(failure))),
            Ok(None) => {
                let reason = missing(&Self::keycloak_role(grant));
                self.finish(grant, GrantStatus::Failed, "grant_failed", &reason, now)
                    .await?;
                Ok(Err(Step::Done))
            }
            Ok(Some(role_ref)) => Ok(Ok(role_ref)),
        }
    }

    /// First step at the start time: check eligibility, record whether the user already
    /// held the role, then apply.
    async fn start(&self, grant: &Grant, now: i64) -> Result<Step, StoreError> {
        let catalog = current(&self.catalog);
        let Some(role) = catalog.find(&grant.role_key) else {
            let reason = format!(
                "refused at the start: `{}` is no longer in the catalog",
                grant.role_key
            );
            self.finish(grant, GrantStatus::Refused, "grant_refused", &reason, now)
                .await?;
            return Ok(Step::Done);
        };
        if let Some(audience) = &role.requesters {
            match self.mappings.memberships(&grant.subject).await {
                Err(failure) => return Ok(Step::Retry(failure)),
                Ok(None) => {
                    let reason = "not applied: the user no longer exists in Keycloak";
                    self.finish(grant, GrantStatus::Failed, "grant_failed", reason, now)
                        .await?;
                    return Ok(Step::Done);
                }
                Ok(Some((groups, realm_roles))) if !audience.contains(&groups, &realm_roles) => {
                    let reason = format!(
                        "refused at the start: {} is no longer in a group or role allowed to \
                         request `{}` ({})",
                        grant.username,
                        grant.role_key,
                        audience
                            .groups
                            .iter()
                            .chain(&audience.realm_roles)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    self.finish(grant, GrantStatus::Refused, "grant_refused", &reason, now)
                        .await?;
                    return Ok(Step::Done);
                }
                Ok(Some(_)) => {}
            }
        }
        let role_ref = match self.role_or_stop(grant, now, not_applied).await? {
            Ok(role_ref) => role_ref,
            Err(step) => return Ok(step),
        };
        let present = match self
            .mappings
            .has_direct_mapping(&grant.subject, &role_ref)
            .await
        {
            Err(failure) => return Ok(Step::Retry(failure)),
            Ok(None) => {
                let reason = "not applied: the user no longer exists in Keycloak";
                self.finish(grant, GrantStatus::Failed, "grant_failed", reason, now)
                    .await?;
                return Ok(Step::Done);
            }
            Ok(Some(present)) => present,
        };
        let preexisting = present && !self.lane_owns_mapping(grant).await?;
        let updated = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set status = 'applying', preexisting = $1, role_id = $2, \
                 updated_at = $3 where id = $4 and lease_owner = $5 and status = 'scheduled'",
            )
            .bind(i64::from(preexisting))
            .bind(&role_ref.id)
            .bind(now)
            .bind(&grant.id)
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if updated == 0 {
            return Ok(Step::Done);
        }
        let mut applying = grant.clone();
        applying.preexisting = i64::from(preexisting);
        applying.role_id = Some(role_ref.id.clone());
        applying.status = GrantStatus::Applying.as_str().into();
        self.apply(&applying, Some(role_ref), now).await
    }

    /// Returns whether another open grant of the lane, applied by the portal, explains the
    /// mapping.
    async fn lane_owns_mapping(&self, grant: &Grant) -> Result<bool, StoreError> {
        let owner: Option<String> = with_pool!(&self.database, |pool| {
            sqlx::query_scalar(
                "select id from access_grant where subject = $1 and role_key = $2 and id <> $3 \
                 and status in ('applying', 'active', 'revoking') and preexisting = 0 limit 1",
            )
            .bind(&grant.subject)
            .bind(&grant.role_key)
            .bind(&grant.id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(owner.is_some())
    }

    /// Adds the mapping (unless the user held it before) and marks the grant active.
    async fn apply(
        &self,
        grant: &Grant,
        role_ref: Option<RoleRef>,
        now: i64,
    ) -> Result<Step, StoreError> {
        let answer = if grant.preexisting != 0 {
            "no write: the user held the role directly before the grant, and keeps it after"
                .to_owned()
        } else {
            let role_ref = match role_ref {
                Some(role_ref) => role_ref,
                None => match self.role_or_stop(grant, now, not_applied).await? {
                    Ok(role_ref) => role_ref,
                    Err(step) => return Ok(step),
                },
            };
            if !self.renew_lease(grant).await? {
                return Ok(Step::Done);
            }
            match self.mappings.add_mapping(&grant.subject, &role_ref).await {
                Ok(answer) => answer.0,
                Err(Failure::Gone(reason)) => {
                    let reason = format!("not applied: Keycloak answered 404 ({reason})");
                    self.finish(grant, GrantStatus::Failed, "grant_failed", &reason, now)
                        .await?;
                    return Ok(Step::Done);
                }
                Err(failure) => return Ok(Step::Retry(failure)),
            }
        };
        let applied = with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "update access_grant set status = 'active', applied_at = $1, due_at = ends_at, \
                     attempts = 0, last_error = null, lease_owner = null, lease_expires_at = null, \
                     updated_at = $1 where id = $2 and lease_owner = $3 and status = 'applying'",
                )
                .bind(now)
                .bind(&grant.id)
                .bind(&self.owner)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    return Ok::<bool, StoreError>(false);
                }
                let event = GrantEvent {
                    actor: None,
                    action: "grant_applied",
                    from: grant.status(),
                    to: GrantStatus::Active,
                    comment: &answer,
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
        if applied {
            tracing::info!(grant_id = %grant.id, request_id = %grant.request_id, role = %grant.role_key, subject = %grant.subject, preexisting = grant.preexisting != 0, "grant applied");
        }
        Ok(Step::Done)
    }

    /// Returns another grant of the lane that keeps the mapping now. A grant that has not
    /// been applied does not count, because it may yet be refused or cancelled, and then
    /// nothing would remove the mapping. The lane works due starts before due ends, so a successor that
    /// starts when this grant ends is applied first and keeps the mapping.
    async fn other_holder(&self, grant: &Grant, now: i64) -> Result<Option<Grant>, StoreError> {
        let sql = format!(
            "select {GRANT_COLUMNS} from access_grant where subject = $1 and role_key = $2 \
             and id <> $3 and ends_at > $4 and status in ('applying', 'active') \
             order by ends_at desc limit 1"
        );
        let holder = with_pool!(&self.database, |pool| {
            sqlx::query_as::<_, Grant>(&sql)
                .bind(&grant.subject)
                .bind(&grant.role_key)
                .bind(&grant.id)
                .bind(now)
                .fetch_optional(pool)
                .await
        })?;
        Ok(holder)
    }

    /// Removes the mapping at the grant's end, unless the user had it before the grant or
    /// another grant still keeps it. Then reads whether the role is still effective.
    async fn revoke(&self, grant: &Grant, now: i64) -> Result<Step, StoreError> {
        if grant.preexisting != 0 {
            let outcome = "ended; the mapping stays, because the user held the role directly \
                           before the grant";
            self.revoked(grant, outcome, false, None, now).await?;
            return Ok(Step::Done);
        }
        if let Some(holder) = self.other_holder(grant, now).await? {
            let outcome = format!(
                "ended; the mapping stays for grant {} until {}",
                holder.id,
                format_time(holder.ends_at)
            );
            self.revoked(grant, &outcome, false, None, now).await?;
            return Ok(Step::Done);
        }
        let role_ref = match self.role_or_stop(grant, now, deleted_at_end).await? {
            Ok(role_ref) => role_ref,
            Err(step) => return Ok(step),
        };
        if !self.renew_lease(grant).await? {
            return Ok(Step::Done);
        }
        let answer = match self
            .mappings
            .remove_mapping(&grant.subject, &role_ref)
            .await
        {
            Ok(answer) => answer.0,
            Err(Failure::Gone(reason)) => {
                let reason =
                    format!("ended as failed: the user no longer exists in Keycloak ({reason})");
                self.finish(grant, GrantStatus::Failed, "grant_failed", &reason, now)
                    .await?;
                return Ok(Step::Done);
            }
            Err(failure) => return Ok(Step::Retry(failure)),
        };

        let mut outcome = "ended; the mapping was removed".to_owned();
        let mut still_effective = false;
        match self
            .mappings
            .has_effective_role(&grant.subject, &role_ref)
            .await
        {
            Ok(Some(true)) => {
                still_effective = true;
                outcome.push_str(
                    ", but the role is still effective through a group or a composite role",
                );
            }
            Ok(_) => {}
            Err(failure) => {
                tracing::warn!(grant_id = %grant.id, error = %failure.message(), "could not read the effective roles after a revocation");
                outcome.push_str("; the effective roles could not be read afterwards");
            }
        }

        let mut answers = answer;
        if grant.end_sessions != 0 {
            match self.mappings.logout_user(&grant.subject).await {
                Ok(logout) => {
                    answers.push_str("; ");
                    answers.push_str(&logout.0);
                }
                Err(Failure::Gone(_)) => {}
                Err(failure) => return Ok(Step::Retry(failure)),
            }
        }
        let lifespan = self.lifespan().await;
        self.revoked(
            grant,
            &outcome,
            still_effective,
            Some((answers, now + lifespan)),
            now,
        )
        .await?;
        Ok(Step::Done)
    }

    async fn lifespan(&self) -> i64 {
        let mut cached = self.lifespan.lock().await;
        if let Some(seconds) = *cached {
            return seconds;
        }
        match self.mappings.access_token_lifespan().await {
            Ok(seconds) => {
                *cached = Some(seconds);
                seconds
            }
            Err(failure) => {
                tracing::warn!(error = %failure.message(), "the realm's access-token lifespan could not be read; assuming 300 s");
                300
            }
        }
    }

    /// Marks the grant ended with its outcome. When the mapping was removed, `removal`
    /// carries Keycloak's response and the time by which issued tokens expire.
    async fn revoked(
        &self,
        grant: &Grant,
        outcome: &str,
        still_effective: bool,
        removal: Option<(String, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (answer, tokens_expire_by) = match removal {
            Some((answer, expiry)) => (answer, Some(expiry)),
            None => ("no write".to_owned(), None),
        };
        let comment = format!("{outcome}. Keycloak: {answer}");
        let done = with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let updated = sqlx::query(
                    "update access_grant set status = 'ended', revoked_at = $1, outcome = $2, \
                     still_effective = $3, tokens_expire_by = $4, attempts = 0, last_error = null, \
                     lease_owner = null, lease_expires_at = null, updated_at = $1 \
                     where id = $5 and lease_owner = $6 \
                     and status in ('applying', 'active', 'revoking')",
                )
                .bind(now)
                .bind(outcome)
                .bind(i64::from(still_effective))
                .bind(tokens_expire_by)
                .bind(&grant.id)
                .bind(&self.owner)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    return Ok::<bool, StoreError>(false);
                }
                let event = GrantEvent {
                    actor: None,
                    action: "grant_revoked",
                    from: grant.status(),
                    to: GrantStatus::Ended,
                    comment: &comment,
                };
                grant_audit!(
                    tx,
                    &self.database,
                    now,
                    &grant.request_id,
                    &grant.id,
                    &event
                )?;
                if still_effective {
                    let event = GrantEvent {
                        actor: None,
                        action: "grant_still_effective",
                        from: GrantStatus::Ended,
                        to: GrantStatus::Ended,
                        comment: "the role is still effective through a group or a composite role",
                    };
                    grant_audit!(
                        tx,
                        &self.database,
                        now,
                        &grant.request_id,
                        &grant.id,
                        &event
                    )?;
                }
                tx.commit().await?;
                Ok(true)
            }
            .await
        })?;
        if done {
            tracing::info!(grant_id = %grant.id, request_id = %grant.request_id, role = %grant.role_key, subject = %grant.subject, still_effective, lag_seconds = now - grant.ends_at, "grant ended");
        }
        Ok(())
    }

    /// Moves the grant to final status `to` with `reason` and an audit event.
    async fn finish(
        &self,
        grant: &Grant,
        to: GrantStatus,
        action: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
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
                .bind(&self.owner)
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
        if done {
            tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, status = to.as_str(), %reason, "grant stopped");
        }
        Ok(())
    }

    /// Records a failed attempt and sets the next one after an exponential back-off with
    /// jitter. A failing revocation is retried for as long as it takes.
    async fn retry(&self, grant: &Grant, failure: &Failure, now: i64) -> Result<(), StoreError> {
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
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Extends this replica's lease on `grant` just before a Keycloak write, so the write
    /// cannot overlap another replica's step. Returns false when the lease is gone (it
    /// expired and another replica may hold the grant, or the grant reached a final
    /// status); the caller then skips the write.
    async fn renew_lease(&self, grant: &Grant) -> Result<bool, StoreError> {
        let now = self.now();
        let until = now + self.settings.lease.as_secs().max(1) as i64;
        let renewed = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set lease_expires_at = $1 where id = $2 and lease_owner = $3 \
                 and lease_expires_at > $4 and status in ('scheduled', 'applying', 'active', 'revoking')",
            )
            .bind(until)
            .bind(&grant.id)
            .bind(&self.owner)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if renewed == 0 {
            tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, "lease lost before a Keycloak write; the write is skipped");
        }
        Ok(renewed > 0)
    }

    /// Gives the lease back without a change, with the next due time.
    async fn release(&self, grant: &Grant, due_at: i64) -> Result<(), StoreError> {
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set due_at = $1, lease_owner = null, lease_expires_at = null \
                 where id = $2 and lease_owner = $3",
            )
            .bind(due_at)
            .bind(&grant.id)
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}

fn not_applied(role: &KeycloakRole) -> String {
    format!("not applied: {role} no longer exists in Keycloak")
}

fn deleted_at_end(role: &KeycloakRole) -> String {
    format!("ended as failed: {role} was deleted in Keycloak, which removed its mappings")
}

/// Seconds before attempt `attempts + 1`: 2^(attempts-1) seconds, at most `max`, with a
/// random part of up to half so that replicas do not retry in step.
pub fn backoff(attempts: i64, max: Duration) -> i64 {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let full = 2_i64
        .saturating_pow(exponent)
        .min(max.as_secs().max(1) as i64);
    let jitter = fastrand::i64(0..=full / 2);
    (full - jitter).max(1)
}

fn unix_now_fractional() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let max = Duration::from_secs(300);
        for attempts in 1..40 {
            let delay = backoff(attempts, max);
            let full = 2_i64.pow((attempts - 1).min(20) as u32).min(300);
            assert!(
                delay >= (full + 1) / 2 && delay <= full.max(1),
                "attempt {attempts}: {delay}"
            );
        }
        assert!(backoff(30, max) <= 300);
    }
}
