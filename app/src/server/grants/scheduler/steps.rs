//! The scheduler's steps on one grant: the start (eligibility, the role held before, the
//! mapping added) and the end (the mapping removed unless the user held it before or another
//! grant still keeps it).

use tokio::sync::mpsc;

use super::endings::Ending;
use super::{lease_token, HolderSnapshot, LaneRest, RoleMemo, Scheduler, Step};
use crate::server::catalog::{current, KeycloakRole};
use crate::server::format_time;
use crate::server::grants::mappings::Failure;
use crate::server::grants::store::{grant_audit, Grant, GrantEvent, GrantStatus};
use crate::server::keycloak::RoleRef;
use crate::server::requests::store::StoreError;
use crate::with_pool;

impl Scheduler {
    pub(super) fn keycloak_role(grant: &Grant) -> KeycloakRole {
        match &grant.client_id {
            Some(client) => KeycloakRole::Client(client.clone(), grant.role_name.clone()),
            None => KeycloakRole::Realm(grant.role_name.clone()),
        }
    }

    /// Looks the role up by its stored id (the name may have changed), or by name before
    /// the first write. `Ok(None)`: the role no longer exists.
    pub(super) async fn resolve_role(&self, grant: &Grant) -> Result<Option<RoleRef>, Failure> {
        match &grant.role_id {
            Some(id) => self.keycloak(self.mappings.role_by_id(id)).await,
            None => {
                self.keycloak(self.mappings.find_role(&Self::keycloak_role(grant)))
                    .await
            }
        }
    }

    /// [`Self::resolve_role`], read from Keycloak once per pass and role. A failed read is
    /// not kept, so the next grant of the role reads again.
    pub(super) async fn pass_role(
        &self,
        roles: &RoleMemo,
        grant: &Grant,
    ) -> Result<Option<RoleRef>, Failure> {
        let key = match &grant.role_id {
            Some(id) => format!("id {id}"),
            None => format!("name {}", Self::keycloak_role(grant)),
        };
        let cell = roles.roles.lock().await.entry(key).or_default().clone();
        cell.get_or_try_init(|| self.resolve_role(grant))
            .await
            .cloned()
    }

    /// Resolves the grant's role, or ends the grant as failed with `missing(role)` as the
    /// reason when Keycloak no longer has it. `Err` carries the step to return.
    pub(super) async fn role_or_stop(
        &self,
        grant: &Grant,
        roles: &RoleMemo,
        now: i64,
        missing: fn(&KeycloakRole) -> String,
    ) -> Result<Result<RoleRef, Step>, StoreError> {
        match self.pass_role(roles, grant).await {
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
    pub(super) async fn start(
        &self,
        grant: &Grant,
        roles: &RoleMemo,
        now: i64,
    ) -> Result<Step, StoreError> {
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
            match self
                .keycloak(self.mappings.memberships(&grant.subject))
                .await
            {
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
        let role_ref = match self.role_or_stop(grant, roles, now, not_applied).await? {
            Ok(role_ref) => role_ref,
            Err(step) => return Ok(step),
        };
        let present = match self
            .keycloak(self.mappings.has_direct_mapping(&grant.subject, &role_ref))
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
        let turn = self.write_turn().await;
        let updated = with_pool!(&self.database, |pool| {
            sqlx::query(
                "update access_grant set status = 'applying', preexisting = $1, role_id = $2, \
                 updated_at = $3 where id = $4 and lease_owner = $5 and status = 'scheduled' \
                 and lease_expires_at > $6",
            )
            .bind(i64::from(preexisting))
            .bind(&role_ref.id)
            .bind(now)
            .bind(&grant.id)
            .bind(lease_token(grant))
            // An expired lease may have let the reconciliation remove the standing mapping
            // that `present` saw, so `preexisting` would be wrong.
            .bind(self.now())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        drop(turn);
        if updated == 0 {
            return Ok(Step::Done);
        }
        let mut applying = grant.clone();
        applying.preexisting = i64::from(preexisting);
        applying.role_id = Some(role_ref.id.clone());
        applying.status = GrantStatus::Applying.as_str().into();
        self.apply(&applying, Some(role_ref), roles, now).await
    }

    /// Returns whether another open grant of the lane, applied by the portal, explains the
    /// mapping.
    pub(super) async fn lane_owns_mapping(&self, grant: &Grant) -> Result<bool, StoreError> {
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
    pub(super) async fn apply(
        &self,
        grant: &Grant,
        role_ref: Option<RoleRef>,
        roles: &RoleMemo,
        now: i64,
    ) -> Result<Step, StoreError> {
        let answer = if grant.preexisting != 0 {
            "no write: the user held the role directly before the grant, and keeps it after"
                .to_owned()
        } else {
            let role_ref = match role_ref {
                Some(role_ref) => role_ref,
                None => match self.role_or_stop(grant, roles, now, not_applied).await? {
                    Ok(role_ref) => role_ref,
                    Err(step) => return Ok(step),
                },
            };
            let slot = match self.keycloak_slot().await {
                Ok(slot) => slot,
                Err(failure) => return Ok(Step::Retry(failure)),
            };
            if self.renew_lease(grant).await?.is_none() {
                return Ok(Step::Done);
            }
            // The grant may have ended while it waited for the slot: its revocation then
            // removes whatever an interrupted apply left.
            if self.now() >= grant.ends_at {
                drop(slot);
                self.release(grant, grant.ends_at).await?;
                return Ok(Step::Done);
            }
            let added = self.mappings.add_mapping(&grant.subject, &role_ref).await;
            drop(slot);
            match added {
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
        let turn = self.write_turn().await;
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
                .bind(lease_token(grant))
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
        drop(turn);
        if applied {
            tracing::info!(grant_id = %grant.id, request_id = %grant.request_id, role = %grant.role_key, subject = %grant.subject, preexisting = grant.preexisting != 0, "grant applied");
        }
        Ok(Step::Done)
    }

    /// Returns another grant of the lane that keeps the mapping now. A grant that has not
    /// been applied does not count, because it may yet be refused or cancelled, and then
    /// nothing would remove the mapping. The lane works due starts before due ends, so a successor that
    /// starts when this grant ends is applied first and keeps the mapping.
    pub(super) async fn other_holder(
        &self,
        grant: &Grant,
        now: i64,
    ) -> Result<Option<(String, i64)>, StoreError> {
        let sql = "select id, ends_at from access_grant where subject = $1 and role_key = $2 \
             and id <> $3 and ends_at > $4 and status in ('applying', 'active') \
             order by ends_at desc limit 1";
        let holder = with_pool!(&self.database, |pool| {
            sqlx::query_as::<_, (String, i64)>(sql)
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
    /// another grant still keeps it. The effective roles are read later, by
    /// [`Self::check_effective_roles`], so that a burst of ends is one DELETE per grant.
    pub(super) async fn revoke(
        &self,
        grant: &Grant,
        holder: HolderSnapshot,
        rest: LaneRest,
        roles: &RoleMemo,
        endings: &mpsc::Sender<Ending>,
        now: i64,
    ) -> Result<Step, StoreError> {
        if grant.preexisting != 0 {
            let outcome = "ended; the mapping stays, because the user held the role directly \
                           before the grant";
            self.revoked(endings, rest, grant, outcome.to_owned(), None, now)
                .await?;
            return Ok(Step::Done);
        }
        let holder = match holder {
            // A holder seen by the claim whose end has passed since is read again.
            HolderSnapshot::Claimed(Some((_, ends_at))) if ends_at <= now => {
                self.other_holder(grant, now).await?
            }
            HolderSnapshot::Claimed(holder) => holder,
            HolderSnapshot::Unknown => self.other_holder(grant, now).await?,
        };
        if let Some((holder_id, holder_ends_at)) = holder {
            let outcome = format!(
                "ended; the mapping stays for grant {holder_id} until {}",
                format_time(holder_ends_at)
            );
            self.revoked(endings, rest, grant, outcome, None, now)
                .await?;
            return Ok(Step::Done);
        }
        let role_ref = match self.role_or_stop(grant, roles, now, deleted_at_end).await? {
            Ok(role_ref) => role_ref,
            Err(step) => return Ok(step),
        };
        let slot = match self.keycloak_slot().await {
            Ok(slot) => slot,
            Err(failure) => return Ok(Step::Retry(failure)),
        };
        if self.renew_lease(grant).await?.is_none() {
            return Ok(Step::Done);
        }
        let removed = self
            .mappings
            .remove_mapping(&grant.subject, &role_ref)
            .await;
        drop(slot);
        let mut answer = match removed {
            Ok(answer) => answer.0,
            Err(Failure::Gone(reason)) => {
                // The role was read at the start of the pass; read it again to tell a
                // deleted role from a deleted user.
                let reason = match self.resolve_role(grant).await {
                    Ok(None) => deleted_at_end(&Self::keycloak_role(grant)),
                    _ => {
                        format!("ended as failed: the user no longer exists in Keycloak ({reason})")
                    }
                };
                self.finish(grant, GrantStatus::Failed, "grant_failed", &reason, now)
                    .await?;
                return Ok(Step::Done);
            }
            Err(failure) => return Ok(Step::Retry(failure)),
        };
        if grant.end_sessions != 0 {
            match self
                .keycloak(self.mappings.logout_user(&grant.subject))
                .await
            {
                Ok(logout) => {
                    answer.push_str("; ");
                    answer.push_str(&logout.0);
                }
                Err(Failure::Gone(_)) => {}
                Err(failure) => return Ok(Step::Retry(failure)),
            }
        }
        let lifespan = self.lifespan().await;
        let outcome = "ended; the mapping was removed".to_owned();
        let removal = Some((answer, now + lifespan));
        self.revoked(endings, rest, grant, outcome, removal, now)
            .await?;
        Ok(Step::Done)
    }

    pub(super) async fn lifespan(&self) -> i64 {
        let mut cached = self.lifespan.lock().await;
        if let Some(seconds) = *cached {
            return seconds;
        }
        match self.keycloak(self.mappings.access_token_lifespan()).await {
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
}

fn not_applied(role: &KeycloakRole) -> String {
    format!("not applied: {role} no longer exists in Keycloak")
}

fn deleted_at_end(role: &KeycloakRole) -> String {
    format!("ended as failed: {role} was deleted in Keycloak, which removed its mappings")
}
