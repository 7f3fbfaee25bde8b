//! The grant history that auditors browse: grants with their requests, filtered, and the
//! number of grants active on each day of a range.

use futures::TryStreamExt;

use super::export::{bind_filter, FilterValue, HistoryFilter, WhereClause, DECIDED_BY};
use crate::server::db::Database;
use crate::with_pool;

/// Maximum number of days the daily chart covers.
pub const MAX_CHART_DAYS: i64 = 92;

const DAY: i64 = 86_400;

/// One grant with the facts of its request.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryGrant {
    pub grant_id: String,
    pub request_id: String,
    pub username: String,
    pub role_key: String,
    pub status: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub applied_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub ticket: Option<String>,
    pub justification: String,
    pub outcome: Option<String>,
}

/// Builds the `where` clause of a grant query: the grant's window overlaps the range, and
/// the request matches the other fields.
fn grant_clause(filter: &HistoryFilter) -> (String, Vec<FilterValue>) {
    let mut clause = WhereClause::default();
    let mut push = |condition: &str, value: FilterValue| clause.bind(condition, value);
    if let Some(from) = filter.from {
        push(
            "coalesce(g.revoked_at, g.ends_at) > ?",
            FilterValue::Int(from),
        );
    }
    if let Some(to) = filter.to {
        push("g.starts_at < ?", FilterValue::Int(to));
    }
    if let Some(user) = &filter.user {
        push("g.username = ?", FilterValue::Text(user.clone()));
    }
    if let Some(role) = &filter.role {
        push("g.role_key = ?", FilterValue::Text(role.clone()));
    }
    if let Some(ticket) = &filter.ticket {
        push("r.ticket = ?", FilterValue::Text(ticket.clone()));
    }
    if let Some(status) = &filter.status {
        push("g.status = ?", FilterValue::Text(status.clone()));
    }
    if let Some(approver) = &filter.approver {
        push(DECIDED_BY, FilterValue::Text(approver.clone()));
    }
    clause.finish()
}

/// Returns up to `limit` grants of `filter`, newest start first.
pub async fn list_grants(
    database: &Database,
    filter: &HistoryFilter,
    limit: i64,
) -> Result<Vec<HistoryGrant>, sqlx::Error> {
    let (clause, values) = grant_clause(filter);
    let sql = format!(
        "select g.id as grant_id, g.request_id, g.username, g.role_key, g.status, g.starts_at, \
         g.ends_at, g.applied_at, g.revoked_at, r.ticket, r.justification, g.outcome \
         from access_grant g join access_request r on r.id = g.request_id{clause} \
         order by g.starts_at desc, g.id limit {limit}"
    );
    with_pool!(database, |pool| {
        bind_filter!(sqlx::query_as::<_, HistoryGrant>(&sql), &values)
            .fetch_all(pool)
            .await
    })
}

/// Returns the grant `id` with its request, if it exists.
pub async fn find_grant(
    database: &Database,
    id: &str,
) -> Result<Option<HistoryGrant>, sqlx::Error> {
    let sql = "select g.id as grant_id, g.request_id, g.username, g.role_key, g.status, \
               g.starts_at, g.ends_at, g.applied_at, g.revoked_at, r.ticket, r.justification, \
               g.outcome from access_grant g join access_request r on r.id = g.request_id \
               where g.id = $1";
    with_pool!(database, |pool| {
        sqlx::query_as::<_, HistoryGrant>(sql)
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}

/// Returns the usernames of the approvers who decided request `request_id`, with their
/// decisions, in the order they decided.
pub async fn deciders(
    database: &Database,
    request_id: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    with_pool!(database, |pool| {
        sqlx::query_as(
            "select approver_username, decision from approval where request_id = $1 \
             order by decided_at, approver_username",
        )
        .bind(request_id)
        .fetch_all(pool)
        .await
    })
}

/// Counts the grants of `filter` that had the role on each UTC day from `from` to `to`, for
/// at most [`MAX_CHART_DAYS`] days. A grant counts on a day when the time from its
/// application to its revocation (or its end, or `now` while it lasts) overlaps that day.
/// Grants are read as a stream, so memory depends on the number of days only.
pub async fn active_per_day(
    database: &Database,
    filter: &HistoryFilter,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Vec<(i64, u32)>, sqlx::Error> {
    let first_day = from.div_euclid(DAY) * DAY;
    let days = ((to - first_day + DAY - 1) / DAY).clamp(1, MAX_CHART_DAYS);
    let mut counts = vec![0_u32; days as usize];
    let mut range = filter.clone();
    range.from = Some(first_day);
    range.to = Some(first_day + days * DAY);
    let (clause, values) = grant_clause(&range);
    let joiner = if clause.is_empty() { " where" } else { " and" };
    let sql = format!(
        "select g.applied_at, coalesce(g.revoked_at, case when g.status in \
         ('applying', 'active', 'revoking') then null else g.ends_at end) \
         from access_grant g join access_request r on r.id = g.request_id{clause}{joiner} \
         g.applied_at is not null"
    );
    with_pool!(database, |pool| {
        async {
            let query = bind_filter!(sqlx::query_as::<_, (i64, Option<i64>)>(&sql), &values);
            let mut stream = query.fetch(pool);
            while let Some((applied, until)) = stream.try_next().await? {
                let until = until.unwrap_or(now);
                for (index, count) in counts.iter_mut().enumerate() {
                    let day_start = first_day + index as i64 * DAY;
                    if applied < day_start + DAY && until > day_start {
                        *count += 1;
                    }
                }
            }
            Ok::<(), sqlx::Error>(())
        }
        .await
    })?;
    Ok(counts
        .into_iter()
        .enumerate()
        .map(|(index, count)| (first_day + index as i64 * DAY, count))
        .collect())
}
