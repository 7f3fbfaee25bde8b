//! Storage of access requests. Every state change and its audit event are written in one
//! transaction, so the log never misses a change and never records one that was rolled back.

use crate::server::audit::chain::{append_audit, AuditRecord};
use crate::server::db::Database;
use crate::server::grants::store::{insert_grant, GrantSource, GrantTarget};
use crate::server::requests::rules::{self, Decision, DecisionError, RequestFacts, RequestStatus};
use crate::with_pool;

/// The person performing an action, with the ids Keycloak gives them.
#[derive(Clone, Debug)]
pub struct Actor {
    pub subject: String,
    pub username: String,
}

/// A validated request, ready to be stored.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub requester: Actor,
    pub role_key: String,
    pub duration_seconds: i64,
    pub starts_at: Option<i64>,
    pub justification: String,
    pub ticket: Option<String>,
    pub approvals_required: u32,
    pub approval_deadline: i64,
    /// The requester belongs to the role's auto-approve audience: the request is stored as
    /// approved, with its own audit event.
    pub auto_approved: bool,
    /// The Keycloak role the grant will map once the request is approved.
    pub target: GrantTarget,
    /// The requester's open grant that this request extends.
    pub extends_grant_id: Option<String>,
}

/// A stored request, as lists read it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredRequest {
    pub id: String,
    pub requester_subject: String,
    pub requester_username: String,
    pub role_key: String,
    pub duration_seconds: i64,
    pub starts_at: Option<i64>,
    pub justification: String,
    pub ticket: Option<String>,
    pub status: String,
    pub approvals_required: i64,
    pub approval_deadline: i64,
    pub created_at: i64,
    pub approvals: i64,
    /// Why the request needs an administrator, when it does.
    pub needs_admin_reason: Option<String>,
    pub extends_grant_id: Option<String>,
}

const SELECT_REQUESTS: &str = "select r.id, r.requester_subject, r.requester_username, r.role_key, \
    r.duration_seconds, r.starts_at, r.justification, r.ticket, r.status, r.approvals_required, \
    r.approval_deadline, r.created_at, r.needs_admin_reason, r.extends_grant_id, \
    (select count(*) from approval a where a.request_id = r.id and a.decision = 'approve') as approvals \
    from access_request r";

/// Orders requests created in the same second by their `request_created` audit event, the
/// first event of each request, whose id grows with every append.
const CREATION_ORDER: &str = "(select min(e.id) from audit_event e where e.request_id = r.id)";

/// Returns the requests of `subject`, newest first.
pub async fn list_for_requester(
    database: &Database,
    subject: &str,
) -> Result<Vec<StoredRequest>, StoreError> {
    let sql = format!(
        "{SELECT_REQUESTS} where r.requester_subject = $1 \
         order by r.created_at desc, {CREATION_ORDER} desc"
    );
    let rows = with_pool!(database, |pool| {
        sqlx::query_as::<_, StoredRequest>(&sql)
            .bind(subject)
            .fetch_all(pool)
            .await
    })?;
    Ok(rows)
}

/// Returns every pending request, oldest first.
pub async fn list_pending(database: &Database) -> Result<Vec<StoredRequest>, StoreError> {
    let sql = format!(
        "{SELECT_REQUESTS} where r.status = 'pending' order by r.created_at, {CREATION_ORDER}"
    );
    let rows = with_pool!(database, |pool| {
        sqlx::query_as::<_, StoredRequest>(&sql)
            .fetch_all(pool)
            .await
    })?;
    Ok(rows)
}

/// Returns request `id`.
pub async fn find(database: &Database, id: &str) -> Result<StoredRequest, StoreError> {
    let sql = format!("{SELECT_REQUESTS} where r.id = $1");
    let row = with_pool!(database, |pool| {
        sqlx::query_as::<_, StoredRequest>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await
    })?;
    row.ok_or_else(|| StoreError::NotFound(id.to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "you already have a pending request for role `{0}`: wait for its decision or cancel it"
    )]
    DuplicatePending(String),
    #[error("request {0} not found")]
    NotFound(String),
    #[error(
        "you already hold `{role_key}` until {} (grant {grant_id}): ask to extend that grant instead",
        crate::server::format_time(*until)
    )]
    OverlappingGrant {
        role_key: String,
        grant_id: String,
        until: i64,
    },
    #[error("grant {0} cannot be extended: it is not your active grant of this role")]
    NotExtendable(String),
    #[error(transparent)]
    GrantAction(#[from] crate::server::grants::store::GrantActionError),
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error(transparent)]
    Cancel(#[from] rules::CancelError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: i64,
    pub occurred_at: i64,
    pub actor_subject: Option<String>,
    pub actor_username: Option<String>,
    pub request_id: Option<String>,
    pub action: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub comment: String,
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.is_unique_violation())
}

/// Stores a new pending request and its `request_created` audit event; returns its id.
pub async fn create(
    database: &Database,
    request: &NewRequest,
    now: i64,
) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let status = if request.auto_approved {
        RequestStatus::Approved
    } else {
        RequestStatus::Pending
    };
    let result: Result<(), StoreError> = with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin_with(database.begin_for_write()).await?;
            match &request.extends_grant_id {
                Some(parent) => {
                    let row: Option<(String, String, String)> = sqlx::query_as(
                        "select subject, role_key, status from access_grant where id = $1",
                    )
                    .bind(parent)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let extendable = row.is_some_and(|(subject, role_key, status)| {
                        subject == request.requester.subject
                            && role_key == request.role_key
                            && matches!(status.as_str(), "applying" | "active")
                    });
                    if !extendable {
                        return Err(StoreError::NotExtendable(parent.clone()));
                    }
                }
                None => {
                    let starts_at = request.starts_at.unwrap_or(now).max(now);
                    let overlap: Option<(String, i64)> = sqlx::query_as(
                        "select id, ends_at from access_grant where subject = $1 and role_key = $2 \
                         and status in ('scheduled', 'applying', 'active', 'revoking') \
                         and starts_at < $3 and ends_at > $4 order by ends_at desc limit 1",
                    )
                    .bind(&request.requester.subject)
                    .bind(&request.role_key)
                    .bind(starts_at + request.duration_seconds)
                    .bind(starts_at)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((grant_id, until)) = overlap {
                        return Err(StoreError::OverlappingGrant {
                            role_key: request.role_key.clone(),
                            grant_id,
                            until,
                        });
                    }
                }
            }
            sqlx::query(
                "insert into access_request (id, requester_subject, requester_username, role_key, \
                 duration_seconds, starts_at, justification, ticket, status, approvals_required, \
                 approval_deadline, created_at, updated_at, extends_grant_id) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
            )
            .bind(&id)
            .bind(&request.requester.subject)
            .bind(&request.requester.username)
            .bind(&request.role_key)
            .bind(request.duration_seconds)
            .bind(request.starts_at)
            .bind(&request.justification)
            .bind(&request.ticket)
            .bind(status.as_str())
            .bind(i64::from(request.approvals_required))
            .bind(request.approval_deadline)
            .bind(now)
            .bind(&request.extends_grant_id)
            .execute(&mut *tx)
            .await?;
            let action = if request.extends_grant_id.is_some() {
                "extension_requested"
            } else {
                "request_created"
            };
            append_audit!(
                tx,
                database,
                &AuditRecord {
                    occurred_at: now,
                    actor_subject: Some(request.requester.subject.as_str()),
                    actor_username: Some(request.requester.username.as_str()),
                    request_id: Some(id.as_str()),
                    action,
                    from_status: None,
                    to_status: Some(RequestStatus::Pending.as_str()),
                    comment: &request.justification,
                    ..AuditRecord::default()
                }
            )?;
            if request.auto_approved {
                append_audit!(
                    tx,
                    database,
                    &AuditRecord {
                        occurred_at: now,
                        actor_subject: None,
                        actor_username: None,
                        request_id: Some(id.as_str()),
                        action: "request_auto_approved",
                        from_status: Some(RequestStatus::Pending.as_str()),
                        to_status: Some(RequestStatus::Approved.as_str()),
                        comment: "the requester is in the role's auto-approve audience",
                        ..AuditRecord::default()
                    }
                )?;
                let source = GrantSource {
                    request_id: &id,
                    subject: &request.requester.subject,
                    username: &request.requester.username,
                    role_key: &request.role_key,
                    duration_seconds: request.duration_seconds,
                    starts_at: request.starts_at,
                    extends_grant_id: request.extends_grant_id.as_deref(),
                };
                insert_grant!(tx, database, &source, &request.target, now)?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await
    });
    match result {
        Ok(()) => Ok(id),
        Err(StoreError::Database(error)) if is_unique_violation(&error) => {
            Err(StoreError::DuplicatePending(request.role_key.clone()))
        }
        Err(error) => Err(error),
    }
}

/// Records `decision` by `approver` on request `id` at `now`, with the rules applied to the
/// request as stored inside the same transaction. Returns the status afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    database: &Database,
    id: &str,
    approver: &Actor,
    approver_eligible: bool,
    decision: Decision,
    comment: &str,
    target: &GrantTarget,
    now: i64,
) -> Result<RequestStatus, StoreError> {
    // Two approvers deciding one request at the same instant are serialised by `BEGIN
    // IMMEDIATE` on SQLite and by `for update` on PostgreSQL. The later one reads the
    // earlier one's approval, so it is rejected or counted as a further approval.
    let row_lock = match database {
        Database::Sqlite(_) => "",
        Database::Postgres(_) => " for update",
    };
    let select = format!(
        "select requester_subject, status, approvals_required, approval_deadline, \
         requester_username, role_key, duration_seconds, starts_at, extends_grant_id \
         from access_request where id = $1{row_lock}"
    );
    with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin_with(database.begin_for_write()).await?;
            #[allow(clippy::type_complexity)]
            let row: Option<(String, String, i64, i64, String, String, i64, Option<i64>, Option<String>)> =
                sqlx::query_as(&select)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((
                requester_subject,
                status,
                approvals_required,
                approval_deadline,
                requester_username,
                role_key,
                duration_seconds,
                starts_at,
                extends_grant_id,
            )) = row
            else {
                return Err(StoreError::NotFound(id.to_owned()));
            };
            let grant_requester = requester_subject.clone();
            let approved_by: Vec<String> = sqlx::query_scalar(
                "select approver_subject from approval where request_id = $1 and decision = 'approve'",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let from = RequestStatus::parse(&status).unwrap_or(RequestStatus::Pending);
            let facts = RequestFacts {
                requester_subject,
                status: from,
                approvals_required: u32::try_from(approvals_required).unwrap_or(1),
                approved_by,
                approval_deadline,
            };
            let outcome = rules::decide(&facts, &approver.subject, approver_eligible, decision, now)?;

            sqlx::query(
                "insert into approval (request_id, approver_subject, approver_username, decision, \
                 comment, decided_at) values ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(&approver.subject)
            .bind(&approver.username)
            .bind(decision.as_str())
            .bind(comment)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if outcome.status != from {
                sqlx::query("update access_request set status = $1, updated_at = $2 where id = $3")
                    .bind(outcome.status.as_str())
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            let action = match decision {
                Decision::Approve => "request_approved",
                Decision::Deny => "request_denied",
            };
            append_audit!(
                tx,
                database,
                &AuditRecord {
                    occurred_at: now,
                    actor_subject: Some(approver.subject.as_str()),
                    actor_username: Some(approver.username.as_str()),
                    request_id: Some(id),
                    action,
                    from_status: Some(from.as_str()),
                    to_status: Some(outcome.status.as_str()),
                    comment,
                    ..AuditRecord::default()
                }
            )?;
            if outcome.status == RequestStatus::Approved && from != RequestStatus::Approved {
                let source = GrantSource {
                    request_id: id,
                    subject: &grant_requester,
                    username: &requester_username,
                    role_key: &role_key,
                    duration_seconds,
                    starts_at,
                    extends_grant_id: extends_grant_id.as_deref(),
                };
                insert_grant!(tx, database, &source, target, now)?;
            }
            tx.commit().await?;
            Ok(outcome.status)
        }
        .await
    })
}

/// Expires every pending request whose deadline passed by `now`, each with an audit event.
/// Returns how many expired.
pub async fn expire_due(database: &Database, now: i64) -> Result<u64, StoreError> {
    let expired = with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin().await?;
            let ids: Vec<String> = sqlx::query_scalar(
                "update access_request set status = 'expired', updated_at = $1 \
                 where status = 'pending' and approval_deadline <= $1 returning id",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for id in &ids {
                append_audit!(
                    tx,
                    database,
                    &AuditRecord {
                        occurred_at: now,
                        actor_subject: None,
                        actor_username: None,
                        request_id: Some(id.as_str()),
                        action: "request_expired",
                        from_status: Some(RequestStatus::Pending.as_str()),
                        to_status: Some(RequestStatus::Expired.as_str()),
                        comment: "",
                        ..AuditRecord::default()
                    }
                )?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(ids.len() as u64)
        }
        .await
    })?;
    Ok(expired)
}

/// Cancels a pending request on behalf of its requester.
pub async fn cancel(
    database: &Database,
    id: &str,
    requester: &Actor,
    now: i64,
) -> Result<(), StoreError> {
    // Locked like `decide` locks it, so a cancel and an approval at the same moment cannot
    // both succeed.
    let row_lock = match database {
        Database::Sqlite(_) => "",
        Database::Postgres(_) => " for update",
    };
    let select = format!(
        "select requester_subject, status, approvals_required, approval_deadline \
         from access_request where id = $1{row_lock}"
    );
    with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin_with(database.begin_for_write()).await?;
            let row: Option<(String, String, i64, i64)> = sqlx::query_as(&select)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((requester_subject, status, _, approval_deadline)) = row else {
                return Err(StoreError::NotFound(id.to_owned()));
            };
            let facts = RequestFacts {
                requester_subject,
                status: RequestStatus::parse(&status).unwrap_or(RequestStatus::Pending),
                approvals_required: 1,
                approved_by: Vec::new(),
                approval_deadline,
            };
            rules::cancel(&facts, &requester.subject)?;
            let updated = sqlx::query(
                "update access_request set status = 'cancelled', updated_at = $1 \
                 where id = $2 and status = 'pending'",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::Cancel(rules::CancelError::NotPending(
                    RequestStatus::Approved,
                )));
            }
            append_audit!(
                tx,
                database,
                &AuditRecord {
                    occurred_at: now,
                    actor_subject: Some(requester.subject.as_str()),
                    actor_username: Some(requester.username.as_str()),
                    request_id: Some(id),
                    action: "request_cancelled",
                    from_status: Some(RequestStatus::Pending.as_str()),
                    to_status: Some(RequestStatus::Cancelled.as_str()),
                    comment: "",
                    ..AuditRecord::default()
                }
            )?;
            tx.commit().await?;
            Ok(())
        }
        .await
    })
}

/// Marks pending request `id` as needing an administrator, with `reason` and an audit event.
pub async fn flag_for_admin(
    database: &Database,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "update access_request set needs_admin_reason = $1, updated_at = $2 where id = $3",
            )
            .bind(reason)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            append_audit!(
                tx,
                database,
                &AuditRecord {
                    occurred_at: now,
                    actor_subject: None,
                    actor_username: None,
                    request_id: Some(id),
                    action: "request_flagged_for_admin",
                    from_status: Some(RequestStatus::Pending.as_str()),
                    to_status: Some(RequestStatus::Pending.as_str()),
                    comment: reason,
                    ..AuditRecord::default()
                }
            )?;
            tx.commit().await
        }
        .await
    })?;
    Ok(())
}

/// Returns the pending requests flagged for an administrator, oldest first, with reasons.
pub async fn list_flagged(database: &Database) -> Result<Vec<(StoredRequest, String)>, StoreError> {
    let sql = format!(
        "{SELECT_REQUESTS} where r.status = 'pending' and r.needs_admin_reason is not null \
         order by r.created_at, {CREATION_ORDER}"
    );
    let rows = with_pool!(database, |pool| {
        sqlx::query_as::<_, StoredRequest>(&sql)
            .fetch_all(pool)
            .await
    })?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let reason = row.needs_admin_reason.clone().unwrap_or_default();
            (row, reason)
        })
        .collect())
}

/// Returns the audit events of request `id`, oldest first.
pub async fn audit_trail(database: &Database, id: &str) -> Result<Vec<AuditEvent>, StoreError> {
    let events = with_pool!(database, |pool| {
        sqlx::query_as::<_, AuditEvent>(
            "select id, occurred_at, actor_subject, actor_username, request_id, action, from_status, \
             to_status, comment \
             from audit_event where request_id = $1 order by id",
        )
        .bind(id)
        .fetch_all(pool)
        .await
    })?;
    Ok(events)
}

/// Returns the stored status of request `id`.
pub async fn status(database: &Database, id: &str) -> Result<RequestStatus, StoreError> {
    let status: Option<String> = with_pool!(database, |pool| {
        sqlx::query_scalar("select status from access_request where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
    })?;
    status
        .as_deref()
        .and_then(RequestStatus::parse)
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))
}
