//! Reconciliation: compares the active grants with the mappings Keycloak holds for every
//! catalog role.
//!
//! - An active grant whose mapping is missing (removed by hand in Keycloak, say) gets it
//!   back, under the grant's lease so the scheduler cannot be revoking it at that moment.
//! - A direct mapping of a catalog role that no open grant explains is standing access. It
//!   is reported, and removed when the catalog marks the role `jit_only`.
//!
//! Each new finding is an audit event and a row that the admin status page lists until the
//! next run no longer finds it.
//!
//! A restore or a removal is stored as a pending write before it goes to Keycloak, and the
//! transaction that records its outcome deletes it. When a replica dies in between, a later
//! run reads the mapping and records what the write did.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::mappings::RoleMappings;
use super::scheduler::CLAIM_LOCK;
use super::store::{grant_audit, Grant, GrantEvent, GrantStatus, GRANT_COLUMNS};
use crate::server::audit::chain::{append_audit, AuditRecord};
use crate::server::catalog::{current, CatalogHandle, CatalogRole};
use crate::server::db::Database;
use crate::server::keycloak::RoleRef;
use crate::server::requests::store::StoreError;
use crate::with_pool;

/// How long the status page lists a restore or a removal, in seconds (7 days). Standing
/// access is listed for as long as runs find it.
const ACTION_FINDING_SECONDS: i64 = 7 * 24 * 3600;

/// The time of a run as its leases need it: the `now` that the run was given plus the
/// time elapsed since, so that a lease taken late in a long run still lasts its length.
struct RunClock {
    at_start: i64,
    started: std::time::Instant,
}

impl RunClock {
    fn new(at_start: i64) -> Self {
        Self {
            at_start,
            started: std::time::Instant::now(),
        }
    }

    fn now(&self) -> i64 {
        self.at_start + self.started.elapsed().as_secs() as i64
    }
}

/// A finding as the status page lists it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Finding {
    pub id: i64,
    pub subject: String,
    pub username: String,
    pub role_key: String,
    pub kind: String,
    pub detail: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// Counts of one reconciliation run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub roles_checked: usize,
    pub restored: usize,
    pub standing: usize,
    pub removed: usize,
    /// Roles that could not be read, with the error.
    pub errors: Vec<String>,
}

/// A reconciliation write to Keycloak that was stored and whose outcome is not recorded yet.
#[derive(Debug, sqlx::FromRow)]
struct PendingWrite {
    subject: String,
    role_key: String,
    /// `restore` or `remove`.
    kind: String,
    username: String,
    grant_id: Option<String>,
}

/// A finding that [`Reconciler::record`] stores.
struct NewFinding<'a> {
    subject: &'a str,
    username: &'a str,
    role_key: &'a str,
    kind: &'a str,
    detail: &'a str,
    now: i64,
}

pub struct Reconciler {
    database: Database,
    mappings: Arc<dyn RoleMappings>,
    catalog: CatalogHandle,
    /// The scheduler's lease owner name, so a restore holds the grant like a step does.
    owner: String,
    lease_seconds: i64,
}

impl Reconciler {
    pub fn new(
        database: Database,
        mappings: Arc<dyn RoleMappings>,
        catalog: CatalogHandle,
        owner: String,
        lease_seconds: i64,
    ) -> Self {
        Self {
            database,
            mappings,
            catalog,
            owner,
            lease_seconds,
        }
    }

    /// Runs one comparison at time `now`.
    pub async fn run(&self, now: i64) -> Result<Summary, StoreError> {
        let clock = RunClock::new(now);
        let catalog = current(&self.catalog);
        let mut summary = Summary::default();
        let mut seen: HashSet<(String, String, &'static str)> = HashSet::new();
        self.finish_interrupted(&catalog, &clock, &mut summary, &mut seen)
            .await?;
        for role in &catalog.roles {
            let role_ref = match self.mappings.find_role(&role.role).await {
                Ok(Some(role_ref)) => role_ref,
                Ok(None) => {
                    summary.errors.push(format!(
                        "{}: {} does not exist in Keycloak",
                        role.key, role.role
                    ));
                    continue;
                }
                Err(failure) => {
                    summary
                        .errors
                        .push(format!("{}: {}", role.key, failure.message()));
                    continue;
                }
            };
            let holders = match self.mappings.role_holders(&role_ref).await {
                Ok(holders) => holders,
                Err(failure) => {
                    summary
                        .errors
                        .push(format!("{}: {}", role.key, failure.message()));
                    continue;
                }
            };
            summary.roles_checked += 1;
            let holder_ids: HashMap<&str, &str> = holders
                .iter()
                .map(|(id, username)| (id.as_str(), username.as_str()))
                .collect();
            let open = self.open_grants(&role.key).await?;
            let explained: HashSet<&str> =
                open.iter().map(|grant| grant.subject.as_str()).collect();

            for grant in &open {
                // A grant of a role held before is restored too: the direct mapping it relied
                // on was removed, and the grant still gives the role until its end.
                let applied = grant.status() == GrantStatus::Active && grant.ends_at > now;
                if applied
                    && !holder_ids.contains_key(grant.subject.as_str())
                    && self.restore(grant, role, &role_ref, &clock).await?
                {
                    summary.restored += 1;
                    seen.insert((grant.subject.clone(), role.key.clone(), "restored"));
                }
            }
            for (subject, username) in &holders {
                if explained.contains(subject.as_str()) {
                    continue;
                }
                if role.jit_only {
                    // The lane lease keeps every grant of this user and role from starting
                    // while the mapping goes, so that none records it as held before.
                    if !self.lease_lane(subject, &role.key, &clock).await? {
                        continue;
                    }
                    let removal = self
                        .remove_standing(subject, username, role, &role_ref, &clock)
                        .await;
                    self.release_lane(subject, &role.key).await?;
                    match removal? {
                        Ok(true) => {
                            seen.insert((subject.clone(), role.key.clone(), "removed"));
                            summary.removed += 1;
                        }
                        Ok(false) => {}
                        Err(error) => summary.errors.push(error),
                    }
                    continue;
                }
                // Read again: a grant may have started since the list was taken.
                if self.has_open_grant(subject, &role.key).await? {
                    continue;
                }
                // And the mapping itself: a grant may have ended and removed it meanwhile.
                match self.mappings.has_direct_mapping(subject, &role_ref).await {
                    Ok(Some(true)) => {}
                    Ok(_) => continue,
                    Err(failure) => {
                        summary.errors.push(format!(
                            "{}: reading the mapping of {username} failed: {}",
                            role.key,
                            failure.message()
                        ));
                        continue;
                    }
                }
                let detail = format!("{username} holds {} directly without a grant", role.role);
                let finding = NewFinding {
                    subject,
                    username,
                    role_key: &role.key,
                    kind: "standing_access",
                    detail: &detail,
                    now,
                };
                self.record(&finding, None, false).await?;
                seen.insert((subject.clone(), role.key.clone(), "standing_access"));
                summary.standing += 1;
            }
        }
        self.resolve_unseen(&seen, &summary, now).await?;
        Ok(summary)
    }

    /// Removes the standing mapping of `subject` to JIT-only `role`, with the lane leased.
    /// Returns `Ok(true)` when it was removed, `Ok(false)` when the mapping had gone
    /// meanwhile, and `Err` with a summary line when Keycloak failed.
    async fn remove_standing(
        &self,
        subject: &str,
        username: &str,
        role: &CatalogRole,
        role_ref: &RoleRef,
        clock: &RunClock,
    ) -> Result<Result<bool, String>, StoreError> {
        // A grant may have ended and removed the mapping since the holders were listed.
        match self.mappings.has_direct_mapping(subject, role_ref).await {
            Ok(Some(true)) => {}
            Ok(_) => return Ok(Ok(false)),
            Err(failure) => {
                return Ok(Err(format!(
                    "{}: reading the mapping of {username} failed: {}",
                    role.key,
                    failure.message()
                )))
            }
        }
        // The read may have taken most of the lease: extend it, or leave the lane alone.
        if !self.extend_lane(subject, &role.key, clock).await? {
            return Ok(Ok(false));
        }
        let write = PendingWrite {
            subject: subject.to_owned(),
            role_key: role.key.clone(),
            kind: "remove".into(),
            username: username.to_owned(),
            grant_id: None,
        };
        if !self.store_pending(&write, clock).await? {
            return Ok(Ok(false));
        }
        match self.mappings.remove_mapping(subject, role_ref).await {
            Ok(answer) => {
                let detail = format!(
                    "{} held {} without a grant; removed because the role is JIT-only. Keycloak: {}",
                    username, role.role, answer.0
                );
                let finding = NewFinding {
                    subject,
                    username,
                    role_key: &role.key,
                    kind: "removed",
                    detail: &detail,
                    now: clock.now(),
                };
                self.record(&finding, None, true).await?;
                Ok(Ok(true))
            }
            Err(failure) => {
                let error = format!(
                    "{}: removing the standing mapping of {username} failed: {}",
                    role.key,
                    failure.message()
                );
                tracing::warn!(role = %role.key, %subject, error = %failure.message(), "removing a standing mapping failed");
                // A timed-out DELETE may still have removed the mapping, so read it.
                match self.settle(&write, role, role_ref, clock).await? {
                    Ok(Some(_)) => Ok(Ok(true)),
                    Ok(None) | Err(_) => Ok(Err(error)),
                }
            }
        }
    }

    /// Stores `write` as pending under this reconciliation's name, before it goes to
    /// Keycloak. Returns false, and stores nothing, when a write of the lane is pending.
    async fn store_pending(
        &self,
        write: &PendingWrite,
        clock: &RunClock,
    ) -> Result<bool, StoreError> {
        let now = clock.now();
        let stored = with_pool!(&self.database, |pool| {
            sqlx::query(
                "insert into reconcile_action (subject, role_key, kind, username, grant_id, \
                 owner, expires_at, started_at) values ($1, $2, $3, $4, $5, $6, $7, $8) \
                 on conflict (subject, role_key) do nothing",
            )
            .bind(&write.subject)
            .bind(&write.role_key)
            .bind(&write.kind)
            .bind(&write.username)
            .bind(&write.grant_id)
            .bind(&self.owner)
            .bind(now + self.lease_seconds)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if stored == 0 {
            tracing::warn!(subject = %write.subject, role = %write.role_key, "another reconciliation write of this lane is pending; leaving the lane to the next run");
        }
        Ok(stored > 0)
    }

    /// Takes over the pending writes whose replica stopped before recording them, and
    /// records what each did by reading the mapping in Keycloak.
    async fn finish_interrupted(
        &self,
        catalog: &crate::server::catalog::Catalog,
        clock: &RunClock,
        summary: &mut Summary,
        seen: &mut HashSet<(String, String, &'static str)>,
    ) -> Result<(), StoreError> {
        let now = clock.now();
        let stale: Vec<PendingWrite> = with_pool!(&self.database, |pool| {
            sqlx::query_as(
                "select subject, role_key, kind, username, grant_id from reconcile_action \
                 where expires_at <= $1 order by started_at",
            )
            .bind(now)
            .fetch_all(pool)
            .await
        })?;
        for write in stale {
            // The update checks the expiry again, so only one replica takes each write over.
            let claimed = with_pool!(&self.database, |pool| {
                sqlx::query(
                    "update reconcile_action set owner = $1, expires_at = $2 \
                     where subject = $3 and role_key = $4 and expires_at <= $5",
                )
                .bind(&self.owner)
                .bind(now + self.lease_seconds)
                .bind(&write.subject)
                .bind(&write.role_key)
                .bind(now)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
            })?;
            if claimed == 0 {
                continue;
            }
            tracing::warn!(subject = %write.subject, role = %write.role_key, kind = %write.kind, grant_id = write.grant_id.as_deref().unwrap_or(""), "finishing a reconciliation write whose replica stopped before recording it");
            let Some(role) = catalog.find(&write.role_key) else {
                tracing::warn!(subject = %write.subject, role = %write.role_key, "the role of an interrupted reconciliation write is no longer in the catalog; dropping the write");
                self.drop_pending(&write).await?;
                continue;
            };
            let role_ref = match self.mappings.find_role(&role.role).await {
                Ok(Some(role_ref)) => role_ref,
                Ok(None) => {
                    summary.errors.push(format!(
                        "{}: {} does not exist in Keycloak",
                        role.key, role.role
                    ));
                    self.drop_pending(&write).await?;
                    continue;
                }
                Err(failure) => {
                    summary
                        .errors
                        .push(format!("{}: {}", role.key, failure.message()));
                    self.release_pending(&write, now).await?;
                    continue;
                }
            };
            match self.settle(&write, role, &role_ref, clock).await? {
                Ok(Some(kind)) => {
                    seen.insert((write.subject.clone(), write.role_key.clone(), kind));
                    match kind {
                        "restored" => summary.restored += 1,
                        _ => summary.removed += 1,
                    }
                }
                Ok(None) => {}
                Err(error) => summary.errors.push(error),
            }
        }
        Ok(())
    }

    /// Reads the mapping that pending `write` changed, after its response was lost, and
    /// records the write when Keycloak shows its effect. Returns the finding kind recorded,
    /// `None` when the write had no effect (the pending row is deleted), and `Err` with a
    /// summary line when the read failed (the row stays for the next run).
    async fn settle(
        &self,
        write: &PendingWrite,
        role: &CatalogRole,
        role_ref: &RoleRef,
        clock: &RunClock,
    ) -> Result<Result<Option<&'static str>, String>, StoreError> {
        let mapped = match self
            .mappings
            .has_direct_mapping(&write.subject, role_ref)
            .await
        {
            Ok(Some(mapped)) => mapped,
            // The user was deleted, so it has no mappings and there is no write to record.
            Ok(None) => {
                tracing::warn!(subject = %write.subject, role = %write.role_key, "user not found for a pending reconciliation write; dropping the write");
                self.drop_pending(write).await?;
                return Ok(Ok(None));
            }
            Err(failure) => {
                tracing::warn!(subject = %write.subject, role = %write.role_key, error = %failure.message(), "reading a mapping after a reconciliation write failed; the next run reads it again");
                self.release_pending(write, clock.now()).await?;
                return Ok(Err(format!(
                    "{}: reading the mapping of {} failed: {}",
                    write.role_key,
                    write.username,
                    failure.message()
                )));
            }
        };
        let now = clock.now();
        match (write.kind.as_str(), &write.grant_id) {
            ("restore", Some(grant_id)) if mapped => {
                let Some(grant) = self.active_grant(grant_id, now).await? else {
                    self.drop_pending(write).await?;
                    return Ok(Ok(None));
                };
                let comment = "the mapping was missing in Keycloak and was added again. \
                     Keycloak's response to the write was lost; a read afterwards found the mapping";
                let detail = format!("grant {}: {comment}", grant.id);
                let finding = NewFinding {
                    subject: &write.subject,
                    username: &write.username,
                    role_key: &write.role_key,
                    kind: "restored",
                    detail: &detail,
                    now,
                };
                self.record(&finding, Some((&grant, comment)), true).await?;
                Ok(Ok(Some("restored")))
            }
            ("remove", _) if !mapped => {
                let detail = format!(
                    "{} held {} without a grant; removed because the role is JIT-only. \
                     Keycloak's response to the removal was lost; a read afterwards found no mapping",
                    write.username, role.role
                );
                let finding = NewFinding {
                    subject: &write.subject,
                    username: &write.username,
                    role_key: &write.role_key,
                    kind: "removed",
                    detail: &detail,
                    now,
                };
                self.record(&finding, None, true).await?;
                Ok(Ok(Some("removed")))
            }
            _ => {
                self.drop_pending(write).await?;
                Ok(Ok(None))
            }
        }
    }

    /// Deletes this reconciliation's pending row of `write`.
    async fn drop_pending(&self, write: &PendingWrite) -> Result<(), StoreError> {
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "delete from reconcile_action where subject = $1 and role_key = $2 and owner = $3",
            )
            .bind(&write.subject)
            .bind(&write.role_key)
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Lets the pending row of `write` expire at `now`, so the next run reads it at once.
    async fn release_pending(&self, write: &PendingWrite, now: i64) -> Result<(), StoreError> {
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "update reconcile_action set expires_at = $1 \
                 where subject = $2 and role_key = $3 and owner = $4",
            )
            .bind(now)
            .bind(&write.subject)
            .bind(&write.role_key)
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Returns grant `id` when it is active and has not ended at `now`.
    async fn active_grant(&self, id: &str, now: i64) -> Result<Option<Grant>, StoreError> {
        let sql = format!(
            "select {GRANT_COLUMNS} from access_grant where id = $1 and status = 'active' \
             and ends_at > $2"
        );
        let grant = with_pool!(&self.database, |pool| {
            sqlx::query_as::<_, Grant>(&sql)
                .bind(id)
                .bind(now)
                .fetch_optional(pool)
                .await
        })?;
        Ok(grant)
    }

    /// Leases the lane of `subject` and `role_key`. Returns false, and leases nothing, when
    /// a grant of the lane is open (it explains the mapping) or leased by a scheduler that
    /// may be starting it, or when another replica's reconciliation holds the lane.
    async fn lease_lane(
        &self,
        subject: &str,
        role_key: &str,
        clock: &RunClock,
    ) -> Result<bool, StoreError> {
        let now = clock.now();
        let leased = with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin_with(self.database.begin_for_write()).await?;
                if matches!(self.database, Database::Postgres(_)) {
                    sqlx::query("select pg_advisory_xact_lock($1)")
                        .bind(CLAIM_LOCK)
                        .execute(&mut *tx)
                        .await?;
                }
                let busy: Option<String> = sqlx::query_scalar(
                    "select id from access_grant where subject = $1 and role_key = $2 \
                     and (status in ('applying', 'active', 'revoking') or lease_expires_at > $3) \
                     limit 1",
                )
                .bind(subject)
                .bind(role_key)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if busy.is_some() {
                    return Ok::<bool, sqlx::Error>(false);
                }
                let inserted = sqlx::query(
                    "insert into lane_lease (subject, role_key, owner, expires_at, created_at) \
                     values ($1, $2, $3, $4, $5) on conflict (subject, role_key) do update \
                     set owner = excluded.owner, expires_at = excluded.expires_at, \
                     created_at = excluded.created_at where lane_lease.expires_at <= $5",
                )
                .bind(subject)
                .bind(role_key)
                .bind(&self.owner)
                .bind(now + self.lease_seconds)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(inserted > 0)
            }
            .await
        })?;
        Ok(leased)
    }

    /// Extends this reconciliation's lease of the lane of `subject` and `role_key` before a
    /// Keycloak write. Returns false when the lease has expired or another holds it.
    async fn extend_lane(
        &self,
        subject: &str,
        role_key: &str,
        clock: &RunClock,
    ) -> Result<bool, StoreError> {
        let now = clock.now();
        let extended = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update lane_lease set expires_at = $1 where subject = $2 and role_key = $3 \
                 and owner = $4 and expires_at > $5",
            )
            .bind(now + self.lease_seconds)
            .bind(subject)
            .bind(role_key)
            .bind(&self.owner)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if extended == 0 {
            tracing::warn!(%subject, role = %role_key, "the lane lease expired before a standing mapping was removed; leaving it to the next run");
        }
        Ok(extended > 0)
    }

    async fn release_lane(&self, subject: &str, role_key: &str) -> Result<(), StoreError> {
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "delete from lane_lease where subject = $1 and role_key = $2 and owner = $3",
            )
            .bind(subject)
            .bind(role_key)
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    async fn open_grants(&self, role_key: &str) -> Result<Vec<Grant>, StoreError> {
        let sql = format!(
            "select {GRANT_COLUMNS} from access_grant where role_key = $1 \
             and status in ('applying', 'active', 'revoking')"
        );
        let grants = with_pool!(&self.database, |pool| {
            sqlx::query_as::<_, Grant>(&sql)
                .bind(role_key)
                .fetch_all(pool)
                .await
        })?;
        Ok(grants)
    }

    async fn has_open_grant(&self, subject: &str, role_key: &str) -> Result<bool, StoreError> {
        let found: Option<String> = with_pool!(&self.database, |pool| {
            sqlx::query_scalar(
                "select id from access_grant where subject = $1 and role_key = $2 \
                 and status in ('applying', 'active', 'revoking') limit 1",
            )
            .bind(subject)
            .bind(role_key)
            .fetch_optional(pool)
            .await
        })?;
        Ok(found.is_some())
    }

    /// Puts back the missing mapping of active grant `grant`, holding its lease meanwhile.
    /// Returns whether it was restored.
    async fn restore(
        &self,
        grant: &Grant,
        role: &CatalogRole,
        role_ref: &RoleRef,
        clock: &RunClock,
    ) -> Result<bool, StoreError> {
        let now = clock.now();
        let leased = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set lease_owner = $1, lease_expires_at = $2 \
                 where id = $3 and status = 'active' and ends_at > $4 \
                 and (lease_expires_at is null or lease_expires_at <= $4)",
            )
            .bind(&self.owner)
            .bind(now + self.lease_seconds)
            .bind(&grant.id)
            .bind(now + 1)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if leased == 0 {
            return Ok(false);
        }
        let write = PendingWrite {
            subject: grant.subject.clone(),
            role_key: grant.role_key.clone(),
            kind: "restore".into(),
            username: grant.username.clone(),
            grant_id: Some(grant.id.clone()),
        };
        let outcome = match self
            .mappings
            .has_direct_mapping(&grant.subject, role_ref)
            .await
        {
            Ok(Some(true)) => None,
            // The read may have taken most of the lease, and the grant may have ended.
            Ok(_) if !self.extend_grant_lease(grant, clock).await? => None,
            Ok(_) if !self.store_pending(&write, clock).await? => None,
            Ok(_) => Some(self.mappings.add_mapping(&grant.subject, role_ref).await),
            Err(failure) => {
                tracing::warn!(grant_id = %grant.id, error = %failure.message(), "reading a mapping before a restore failed; the next run tries again");
                None
            }
        };
        let restored = match outcome {
            None => false,
            Some(Ok(answer)) => {
                let comment = format!(
                    "the mapping was missing in Keycloak and was added again. Keycloak: {}",
                    answer.0
                );
                let detail = format!("grant {}: {comment}", grant.id);
                let finding = NewFinding {
                    subject: &grant.subject,
                    username: &grant.username,
                    role_key: &grant.role_key,
                    kind: "restored",
                    detail: &detail,
                    now: clock.now(),
                };
                self.record(&finding, Some((grant, &comment)), true).await?;
                tracing::warn!(grant_id = %grant.id, request_id = %grant.request_id, "restored a missing mapping of an active grant");
                true
            }
            Some(Err(failure)) => {
                tracing::warn!(grant_id = %grant.id, error = %failure.message(), "restoring a missing mapping failed");
                // A timed-out POST may still have added the mapping, so read it.
                matches!(
                    self.settle(&write, role, role_ref, clock).await?,
                    Ok(Some(_))
                )
            }
        };
        with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set lease_owner = null, lease_expires_at = null \
                 where id = $1 and lease_owner = $2",
            )
            .bind(&grant.id)
            .bind(&self.owner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(restored)
    }

    /// Extends this reconciliation's lease of active grant `grant` before a Keycloak write.
    /// Returns false when the lease has expired or the grant has ended.
    async fn extend_grant_lease(
        &self,
        grant: &Grant,
        clock: &RunClock,
    ) -> Result<bool, StoreError> {
        let now = clock.now();
        let extended = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set lease_expires_at = $1 where id = $2 and lease_owner = $3 \
                 and lease_expires_at > $4 and status = 'active' and ends_at > $4",
            )
            .bind(now + self.lease_seconds)
            .bind(&grant.id)
            .bind(&self.owner)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(extended > 0)
    }

    /// Stores `finding`: a new one gets a row and an audit event, a known one a new
    /// `last_seen`. In the same transaction it writes the audit event of the restored grant
    /// in `restored` (with its comment) and, when `ends_write` is set, deletes the pending
    /// write of the lane.
    async fn record(
        &self,
        finding: &NewFinding<'_>,
        restored: Option<(&Grant, &str)>,
        ends_write: bool,
    ) -> Result<(), StoreError> {
        let NewFinding {
            subject,
            username,
            role_key,
            kind,
            detail,
            now,
        } = *finding;
        with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin_with(self.database.begin_for_write()).await?;
                if let Some((grant, comment)) = restored {
                    let comment = if grant.preexisting != 0 {
                        // The portal added the mapping, so the grants of the lane remove it at
                        // their end instead of leaving it as the user's own.
                        sqlx::query(
                            "update access_grant set preexisting = 0 where subject = $1 \
                             and role_key = $2 and preexisting = 1 \
                             and status in ('applying', 'active', 'revoking')",
                        )
                        .bind(&grant.subject)
                        .bind(&grant.role_key)
                        .execute(&mut *tx)
                        .await?;
                        format!(
                            "{comment}. The user held the role directly before the grant, and that \
                             mapping was removed, so the grant now removes the mapping at its end"
                        )
                    } else {
                        comment.to_owned()
                    };
                    let event = GrantEvent {
                        actor: None,
                        action: "grant_mapping_restored",
                        from: GrantStatus::Active,
                        to: GrantStatus::Active,
                        comment: &comment,
                    };
                    grant_audit!(tx, &self.database, now, &grant.request_id, &grant.id, &event)?;
                }
                if ends_write {
                    sqlx::query(
                        "delete from reconcile_action where subject = $1 and role_key = $2 \
                         and owner = $3",
                    )
                    .bind(subject)
                    .bind(role_key)
                    .bind(&self.owner)
                    .execute(&mut *tx)
                    .await?;
                }
                let known = sqlx::query(
                    "update reconcile_finding set last_seen = $1, detail = $2 \
                     where subject = $3 and role_key = $4 and kind = $5 and resolved_at is null",
                )
                .bind(now)
                .bind(detail)
                .bind(subject)
                .bind(role_key)
                .bind(kind)
                .execute(&mut *tx)
                .await?;
                // Two replicas may find the same standing access at once. The partial unique
                // index keeps one open row, and only the replica that inserted it writes the
                // event. A restore or a removal is an action of one replica, and each one
                // gets its event.
                let inserted = if known.rows_affected() == 0 {
                    sqlx::query(
                        "insert into reconcile_finding (subject, username, role_key, kind, detail, \
                         first_seen, last_seen) values ($1, $2, $3, $4, $5, $6, $6) \
                         on conflict (subject, role_key, kind) where resolved_at is null do nothing",
                    )
                    .bind(subject)
                    .bind(username)
                    .bind(role_key)
                    .bind(kind)
                    .bind(detail)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                } else {
                    0
                };
                if inserted > 0 || kind != "standing_access" {
                    let action = match kind {
                        "removed" => "standing_access_removed",
                        "restored" => "drift_mapping_restored",
                        _ => "standing_access_found",
                    };
                    let comment = format!("{role_key} / {subject}: {detail}");
                    let record = AuditRecord {
                        occurred_at: now,
                        action,
                        comment: &comment,
                        // A restore names its grant, so filtered exports of the requester or
                        // the role include it.
                        request_id: restored.map(|(grant, _)| grant.request_id.as_str()),
                        grant_id: restored.map(|(grant, _)| grant.id.as_str()),
                        ..AuditRecord::default()
                    };
                    append_audit!(tx, &self.database, &record)?;
                    tracing::warn!(role = %role_key, %subject, kind, %detail, "reconciliation finding");
                }
                tx.commit().await
            }
            .await
        })?;
        Ok(())
    }

    /// Closes the open standing-access findings that this run did not see again, and the
    /// restores and removals older than [`ACTION_FINDING_SECONDS`]. Roles that could not be
    /// read keep their standing-access findings open.
    async fn resolve_unseen(
        &self,
        seen: &HashSet<(String, String, &'static str)>,
        summary: &Summary,
        now: i64,
    ) -> Result<(), StoreError> {
        let open = list_findings(&self.database, 1000).await?;
        for finding in open {
            if finding.kind != "standing_access" {
                if finding.last_seen <= now - ACTION_FINDING_SECONDS {
                    self.resolve(finding.id, now).await?;
                }
                continue;
            }
            if summary
                .errors
                .iter()
                .any(|error| error.starts_with(&format!("{}:", finding.role_key)))
            {
                continue;
            }
            let kind: &str = &finding.kind;
            let key = (finding.subject.clone(), finding.role_key.clone());
            let again = seen.iter().any(|(subject, role_key, seen_kind)| {
                (subject, role_key) == (&key.0, &key.1) && *seen_kind == kind
            });
            if !again {
                self.resolve(finding.id, now).await?;
            }
        }
        Ok(())
    }

    async fn resolve(&self, finding_id: i64, now: i64) -> Result<(), StoreError> {
        with_pool!(&self.database, |pool| {
            sqlx::query("update reconcile_finding set resolved_at = $1 where id = $2")
                .bind(now)
                .bind(finding_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Takes the reconciliation run of this interval for this replica. Returns false when
    /// another replica started one less than `interval_seconds` ago, so replicas on one
    /// database take turns instead of each running it every interval.
    pub async fn take_turn(&self, now: i64, interval_seconds: i64) -> Result<bool, StoreError> {
        // One second of slack, because a replica's ticks can land a second early or late.
        let due_before = now - interval_seconds + 1;
        let started = with_pool!(&self.database, |pool| {
            sqlx::query(
                "insert into job_run (name, owner, started_at) values ('reconcile', $1, $2) \
                 on conflict (name) do update set owner = excluded.owner, \
                 started_at = excluded.started_at where job_run.started_at <= $3",
            )
            .bind(&self.owner)
            .bind(now)
            .bind(due_before)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(started > 0)
    }
}

/// Returns the open findings, newest first.
pub async fn list_findings(database: &Database, limit: i64) -> Result<Vec<Finding>, StoreError> {
    let findings = with_pool!(database, |pool| {
        sqlx::query_as::<_, Finding>(
            "select id, subject, username, role_key, kind, detail, first_seen, last_seen \
             from reconcile_finding where resolved_at is null order by last_seen desc, id desc \
             limit $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await
    })?;
    Ok(findings)
}
