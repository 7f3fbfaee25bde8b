//! Storage of grants: created in the transaction that approves their request, claimed by
//! one scheduler replica at a time through a lease, and moved through their states with an
//! audit event in the same transaction as each change.

use crate::server::db::Database;
use crate::server::requests::store::{Actor, StoreError};
use crate::with_pool;

/// Status of a grant. `Ended`, `Refused`, `Failed` and `Cancelled` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantStatus {
    /// Waits for its start time.
    Scheduled,
    /// The portal decided whether the user held the role before and is adding the mapping.
    Applying,
    /// Keycloak has the mapping; the grant waits for its end.
    Active,
    /// The end passed and removing the mapping failed at least once; it is retried.
    Revoking,
    Ended,
    /// Not applied, because the requester was no longer eligible at the start.
    Refused,
    /// Stopped for good: the user or role no longer exists, or the window passed.
    Failed,
    /// Ended by its holder before it started.
    Cancelled,
}

impl GrantStatus {
    pub const ALL: [Self; 8] = [
        Self::Scheduled,
        Self::Applying,
        Self::Active,
        Self::Revoking,
        Self::Ended,
        Self::Refused,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Applying => "applying",
            Self::Active => "active",
            Self::Revoking => "revoking",
            Self::Ended => "ended",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Returns whether the scheduler still has work on a grant in this status.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Scheduled | Self::Applying | Self::Active | Self::Revoking
        )
    }
}

/// The Keycloak role a grant maps, as the catalog names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantTarget {
    /// The `clientId` of a client role; `None` for a realm role.
    pub client_id: Option<String>,
    pub role_name: String,
    pub end_sessions: bool,
}

/// A stored grant.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Grant {
    pub id: String,
    pub request_id: String,
    pub subject: String,
    pub username: String,
    pub role_key: String,
    pub client_id: Option<String>,
    pub role_name: String,
    pub role_id: Option<String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub status: String,
    pub preexisting: i64,
    pub end_sessions: i64,
    pub applied_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub still_effective: i64,
    pub tokens_expire_by: Option<i64>,
    pub due_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub outcome: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}

impl Grant {
    pub fn status(&self) -> GrantStatus {
        GrantStatus::parse(&self.status).unwrap_or(GrantStatus::Failed)
    }
}

pub(crate) const GRANT_COLUMNS: &str = "id, request_id, subject, username, role_key, client_id, \
    role_name, role_id, starts_at, ends_at, status, preexisting, end_sessions, \
    applied_at, revoked_at, still_effective, tokens_expire_by, due_at, attempts, last_error, \
    outcome, lease_owner, lease_expires_at";

/// Open statuses as an SQL list.
pub(crate) const OPEN: &str = "('scheduled', 'applying', 'active', 'revoking')";

/// One audit event about a grant.
pub struct GrantEvent<'a> {
    pub actor: Option<&'a Actor>,
    pub action: &'a str,
    pub from: GrantStatus,
    pub to: GrantStatus,
    pub comment: &'a str,
}

/// Appends `event` about a grant to the audit log inside the transaction `tx` of
/// `database`.
macro_rules! grant_audit {
    ($tx:expr, $database:expr, $now:expr, $request_id:expr, $grant_id:expr, $event:expr) => {{
        let event: &$crate::server::grants::store::GrantEvent = $event;
        let record = $crate::server::audit::chain::AuditRecord {
            occurred_at: $now,
            actor_subject: event.actor.map(|actor| actor.subject.as_str()),
            actor_username: event.actor.map(|actor| actor.username.as_str()),
            request_id: Some($request_id),
            grant_id: Some($grant_id),
            action: event.action,
            from_status: Some(event.from.as_str()),
            to_status: Some(event.to.as_str()),
            comment: event.comment,
        };
        $crate::server::audit::chain::append_audit!($tx, $database, &record)
    }};
}
pub(crate) use grant_audit;

/// The request facts a new grant needs.
pub struct GrantSource<'a> {
    pub request_id: &'a str,
    pub subject: &'a str,
    pub username: &'a str,
    pub role_key: &'a str,
    pub duration_seconds: i64,
    pub starts_at: Option<i64>,
    pub extends_grant_id: Option<&'a str>,
}

/// Inserts the grant of an approved request inside the approving transaction `tx`, and its
/// `grant_scheduled` audit event. Fails with [`StoreError::OverlappingGrant`] when the user
/// already has an overlapping grant of the role that this one does not extend.
///
/// A grant starts at the requested time, or at `now` when that time has passed or none was
/// given. An extension starts at `now` and ends `duration` after the grant it extends, so
/// the two overlap and the mapping stays until the later one ends.
macro_rules! insert_grant {
    ($tx:expr, $database:expr, $source:expr, $target:expr, $now:expr) => {{
        let source: &$crate::server::grants::store::GrantSource = $source;
        let target: &$crate::server::grants::store::GrantTarget = $target;
        let now: i64 = $now;
        async {
            let mut starts_at = source.starts_at.unwrap_or(now).max(now);
            let mut ends_at = starts_at + source.duration_seconds;
            if let Some(parent_id) = source.extends_grant_id {
                let parent: Option<(String, i64)> =
                    sqlx::query_as("select status, ends_at from access_grant where id = $1")
                        .bind(parent_id)
                        .fetch_optional(&mut *$tx)
                        .await?;
                if let Some((status, parent_end)) = parent {
                    let open = $crate::server::grants::store::GrantStatus::parse(&status).is_some_and($crate::server::grants::store::GrantStatus::is_open);
                    if open && parent_end > now {
                        starts_at = now;
                        ends_at = parent_end + source.duration_seconds;
                    }
                }
            }
            let overlap: Option<(String, i64)> = sqlx::query_as(&format!(
                "select id, ends_at from access_grant where subject = $1 and role_key = $2 \
                 and status in {} and starts_at < $3 and ends_at > $4 \
                 and id <> coalesce($5, '') order by ends_at desc limit 1",
                $crate::server::grants::store::OPEN
            ))
            .bind(source.subject)
            .bind(source.role_key)
            .bind(ends_at)
            .bind(starts_at)
            .bind(source.extends_grant_id)
            .fetch_optional(&mut *$tx)
            .await?;
            if let Some((grant_id, until)) = overlap {
                return Err($crate::server::requests::store::StoreError::OverlappingGrant {
                    role_key: source.role_key.to_owned(),
                    grant_id,
                    until,
                });
            }
            let id = uuid::Uuid::new_v4().to_string();
            sqlx::query(
                "insert into access_grant (id, request_id, subject, username, role_key, client_id, \
                 role_name, starts_at, ends_at, status, end_sessions, due_at, created_at, updated_at) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'scheduled', $10, $8, $11, $11)",
            )
            .bind(&id)
            .bind(source.request_id)
            .bind(source.subject)
            .bind(source.username)
            .bind(source.role_key)
            .bind(&target.client_id)
            .bind(&target.role_name)
            .bind(starts_at)
            .bind(ends_at)
            .bind(i64::from(target.end_sessions))
            .bind(now)
            .execute(&mut *$tx)
            .await?;
            let span = format!(
                "from {} to {}",
                $crate::server::audit::export::rfc3339(starts_at),
                $crate::server::audit::export::rfc3339(ends_at)
            );
            let comment = match source.extends_grant_id {
                Some(parent) => format!("extends grant {parent}; {span}"),
                None => span,
            };
            let event = $crate::server::grants::store::GrantEvent {
                actor: None,
                action: "grant_scheduled",
                from: $crate::server::grants::store::GrantStatus::Scheduled,
                to: $crate::server::grants::store::GrantStatus::Scheduled,
                comment: &comment,
            };
            $crate::server::grants::store::grant_audit!($tx, $database, now, source.request_id, &id, &event)?;
            Ok::<String, $crate::server::requests::store::StoreError>(id)
        }
        .await
    }};
}
pub(crate) use insert_grant;

/// Returns grant `id`.
pub async fn find(database: &Database, id: &str) -> Result<Grant, StoreError> {
    let sql = format!("select {GRANT_COLUMNS} from access_grant where id = $1");
    let grant = with_pool!(database, |pool| {
        sqlx::query_as::<_, Grant>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await
    })?;
    grant.ok_or_else(|| StoreError::NotFound(id.to_owned()))
}

/// Returns the grant made from request `request_id`, if it was approved.
pub async fn for_request(
    database: &Database,
    request_id: &str,
) -> Result<Option<Grant>, StoreError> {
    let sql = format!("select {GRANT_COLUMNS} from access_grant where request_id = $1");
    let grant = with_pool!(database, |pool| {
        sqlx::query_as::<_, Grant>(&sql)
            .bind(request_id)
            .fetch_optional(pool)
            .await
    })?;
    Ok(grant)
}

/// Returns `subject`'s open grant of `role_key` that covers `now` or starts later, the one
/// ending last first.
pub async fn open_grant_of(
    database: &Database,
    subject: &str,
    role_key: &str,
) -> Result<Option<Grant>, StoreError> {
    let sql = format!(
        "select {GRANT_COLUMNS} from access_grant where subject = $1 and role_key = $2 \
         and status in {OPEN} order by ends_at desc limit 1"
    );
    let grant = with_pool!(database, |pool| {
        sqlx::query_as::<_, Grant>(&sql)
            .bind(subject)
            .bind(role_key)
            .fetch_optional(pool)
            .await
    })?;
    Ok(grant)
}

/// Returns the grants in `statuses`, ordered by their next due time.
pub async fn list_by_status(
    database: &Database,
    statuses: &[GrantStatus],
    limit: i64,
) -> Result<Vec<Grant>, StoreError> {
    let list: Vec<String> = statuses
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect();
    let sql = format!(
        "select {GRANT_COLUMNS} from access_grant where status in ({}) \
         order by due_at, id limit $1",
        list.join(", ")
    );
    let grants = with_pool!(database, |pool| {
        sqlx::query_as::<_, Grant>(&sql)
            .bind(limit)
            .fetch_all(pool)
            .await
    })?;
    Ok(grants)
}

/// Returns the grants that need an administrator, newest first. Those are the failed
/// grants, the ones retried after an error, and the ones still effective through a group
/// or composite role after the revocation.
pub async fn list_needing_attention(
    database: &Database,
    limit: i64,
) -> Result<Vec<Grant>, StoreError> {
    let sql = format!(
        "select {GRANT_COLUMNS} from access_grant where status = 'failed' or still_effective = 1 \
         or (status in {OPEN} and last_error is not null) order by updated_at desc, id limit $1"
    );
    let grants = with_pool!(database, |pool| {
        sqlx::query_as::<_, Grant>(&sql)
            .bind(limit)
            .fetch_all(pool)
            .await
    })?;
    Ok(grants)
}

/// A refused action of a grant's holder, with a message for the holder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantActionError {
    #[error("this grant is not yours")]
    NotYours,
    #[error("the grant has already {0}")]
    AlreadyFinal(&'static str),
}

/// Ends grant `id` now on behalf of its holder. A grant that has not started is cancelled;
/// an applied one is due for revocation at once. Returns the status afterwards.
pub async fn end_early(
    database: &Database,
    id: &str,
    holder: &Actor,
    now: i64,
) -> Result<GrantStatus, StoreError> {
    let select = format!("select {GRANT_COLUMNS} from access_grant where id = $1");
    with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin_with(database.begin_for_write()).await?;
            let grant: Option<Grant> = sqlx::query_as(&select)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(grant) = grant else {
                return Err(StoreError::NotFound(id.to_owned()));
            };
            if grant.subject != holder.subject {
                return Err(StoreError::GrantAction(GrantActionError::NotYours));
            }
            let from = grant.status();
            let to = match from {
                GrantStatus::Scheduled => GrantStatus::Cancelled,
                GrantStatus::Applying | GrantStatus::Active => from,
                GrantStatus::Revoking | GrantStatus::Ended => {
                    return Err(StoreError::GrantAction(GrantActionError::AlreadyFinal(
                        "ended",
                    )))
                }
                _ => {
                    return Err(StoreError::GrantAction(GrantActionError::AlreadyFinal(
                        "stopped",
                    )))
                }
            };
            let changed = if to == GrantStatus::Cancelled {
                sqlx::query(
                    "update access_grant set status = 'cancelled', outcome = $1, \
                     updated_at = $2 where id = $3 and status = 'scheduled'",
                )
                .bind("ended by its holder before it started")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "update access_grant set ends_at = $1, due_at = $1, updated_at = $1 \
                     where id = $2 and ends_at > $1 and status in ('applying', 'active')",
                )
                .bind(now.max(grant.starts_at + 1))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if changed == 0 {
                // The end has passed already: the scheduler is revoking it.
                return Err(StoreError::GrantAction(GrantActionError::AlreadyFinal(
                    "ended",
                )));
            }
            let event = GrantEvent {
                actor: Some(holder),
                action: "grant_ended_early",
                from,
                to,
                comment: "",
            };
            grant_audit!(tx, database, now, &grant.request_id, id, &event)?;

            // Ending a grant ends its extensions too: the holder asked to lose the role.
            let others: Vec<(String, String, String)> = sqlx::query_as(
                "select id, request_id, status from access_grant where subject = $1 \
                 and role_key = $2 and id <> $3 and status in ('scheduled', 'applying', 'active') \
                 and ends_at > $4",
            )
            .bind(&grant.subject)
            .bind(&grant.role_key)
            .bind(id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for (other, request_id, status) in others {
                let from = GrantStatus::parse(&status).unwrap_or(GrantStatus::Active);
                let to = if from == GrantStatus::Scheduled {
                    sqlx::query(
                        "update access_grant set status = 'cancelled', outcome = $1, \
                         updated_at = $2 where id = $3",
                    )
                    .bind("ended by its holder before it started")
                    .bind(now)
                    .bind(&other)
                    .execute(&mut *tx)
                    .await?;
                    GrantStatus::Cancelled
                } else {
                    // A grant cannot end before it starts: one that began this second ends
                    // one second later.
                    sqlx::query(
                        "update access_grant set \
                         ends_at = case when starts_at + 1 > $1 then starts_at + 1 else $1 end, \
                         due_at = case when starts_at + 1 > $1 then starts_at + 1 else $1 end, \
                         updated_at = $1 where id = $2 and ends_at > $1",
                    )
                    .bind(now)
                    .bind(&other)
                    .execute(&mut *tx)
                    .await?;
                    from
                };
                let comment = format!("ended with grant {id}");
                let event = GrantEvent {
                    actor: Some(holder),
                    action: "grant_ended_early",
                    from,
                    to,
                    comment: &comment,
                };
                grant_audit!(tx, database, now, &request_id, &other, &event)?;
            }
            tx.commit().await?;
            Ok(to)
        }
        .await
    })
}

/// Returns the grants of `subject` keyed by request id.
pub async fn list_for_subject(
    database: &Database,
    subject: &str,
) -> Result<Vec<Grant>, StoreError> {
    let sql = format!(
        "select {GRANT_COLUMNS} from access_grant where subject = $1 order by starts_at desc, id"
    );
    let grants = with_pool!(database, |pool| {
        sqlx::query_as::<_, Grant>(&sql)
            .bind(subject)
            .fetch_all(pool)
            .await
    })?;
    Ok(grants)
}
