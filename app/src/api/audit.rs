//! Server functions of the auditor pages: the grant history with its chart, and one
//! grant's timeline. Auditors and admins may call them.

use leptos::prelude::*;

use crate::auth::AccessError;
use crate::model::request::{AuditHistoryView, GrantTimelineView};

/// The filter fields as the history form sends them, all text.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    pub user: String,
    pub role: String,
    pub approver: String,
    pub status: String,
    /// `YYYY-MM-DD`, UTC, inclusive.
    pub from: String,
    /// `YYYY-MM-DD`, UTC, inclusive.
    pub to: String,
    pub ticket: String,
}

#[cfg(feature = "ssr")]
mod server_side {
    use super::HistoryQuery;
    use crate::auth::AccessError;
    use crate::model::request::AuditGrantView;
    use crate::model::user::{CurrentUser, Persona};
    use crate::server::audit::export::HistoryFilter;
    use crate::server::audit::history::{self, HistoryGrant};
    use crate::server::db::Database;
    use crate::server::format_time;

    /// Returns the caller when they are an auditor or an admin.
    pub fn require_auditor() -> Result<CurrentUser, AccessError> {
        match crate::auth::require(Persona::Auditor) {
            Ok(user) => Ok(user),
            Err(AccessError::Forbidden(_)) => crate::auth::require(Persona::Admin)
                .map_err(|_| AccessError::Forbidden(Persona::Auditor)),
            Err(error) => Err(error),
        }
    }

    fn optional(text: &str) -> Option<String> {
        Some(text.trim().to_owned()).filter(|text| !text.is_empty())
    }

    /// Turns the form's text into a filter; a date that cannot be read is named.
    pub fn filter(query: &HistoryQuery) -> Result<HistoryFilter, String> {
        use crate::server::audit::export::parse_day;
        let from = match optional(&query.from) {
            Some(day) => Some(parse_day(&day).map_err(|error| format!("from: {error}"))?),
            None => None,
        };
        // A day given as `to` includes that day; an RFC 3339 instant is the end itself.
        let to = match optional(&query.to) {
            Some(day) => {
                let at = parse_day(&day).map_err(|error| format!("to: {error}"))?;
                Some(if day.contains('T') { at } else { at + 86_400 })
            }
            None => None,
        };
        if let (Some(from), Some(to)) = (from, to) {
            if to <= from {
                return Err(format!(
                    "to `{}` is before from `{}`: swap the dates",
                    query.to.trim(),
                    query.from.trim()
                ));
            }
        }
        let status = optional(&query.status);
        if let Some(status) = &status {
            check_status(status)?;
        }
        Ok(HistoryFilter {
            from,
            to,
            user: optional(&query.user),
            role: optional(&query.role),
            approver: optional(&query.approver),
            status,
            ticket: optional(&query.ticket),
        })
    }

    /// Checks that `status` is a request or grant status, which the filter compares with the
    /// grant's status, or the request's when it has no grant.
    fn check_status(status: &str) -> Result<(), String> {
        use crate::server::grants::store::GrantStatus;
        use crate::server::requests::rules::RequestStatus;
        if RequestStatus::parse(status).is_some() || GrantStatus::parse(status).is_some() {
            return Ok(());
        }
        let mut known: Vec<&str> = RequestStatus::ALL
            .iter()
            .map(|status| status.as_str())
            .chain(GrantStatus::ALL.iter().map(|status| status.as_str()))
            .collect();
        known.sort_unstable();
        known.dedup();
        Err(format!(
            "status `{status}` is not a request or grant status: use one of {}",
            known.join(", ")
        ))
    }

    pub async fn grant_view(
        database: &Database,
        grant: HistoryGrant,
    ) -> Result<AuditGrantView, sqlx::Error> {
        let decisions = history::deciders(database, &grant.request_id)
            .await?
            .into_iter()
            .map(|(who, decision)| match decision.as_str() {
                "approve" => format!("{who} approved"),
                _ => format!("{who} denied"),
            })
            .collect();
        let time = |at: Option<i64>| at.map(format_time).unwrap_or_default();
        Ok(AuditGrantView {
            id: grant.grant_id,
            request_id: grant.request_id,
            username: grant.username,
            role_key: grant.role_key,
            status: grant.status,
            starts: format_time(grant.starts_at),
            ends: format_time(grant.ends_at),
            applied: time(grant.applied_at),
            revoked: time(grant.revoked_at),
            ticket: grant.ticket.unwrap_or_default(),
            justification: grant.justification,
            outcome: grant.outcome.unwrap_or_default(),
            decisions,
        })
    }

    pub fn query_string(query: &HistoryQuery) -> String {
        let pairs = [
            ("user", &query.user),
            ("role", &query.role),
            ("approver", &query.approver),
            ("status", &query.status),
            ("from", &query.from),
            ("to", &query.to),
            ("ticket", &query.ticket),
        ];
        pairs
            .iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(key, value)| format!("{key}={}", crate::url::encode_query_value(value.trim())))
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(feature = "ssr")]
pub use server_side::{filter as history_filter, require_auditor};

/// Most grants the history page lists at once.
pub const HISTORY_LIMIT: i64 = 200;

/// Returns the grants of the filter, newest first, the chart of grants active per day over
/// the range (the last 30 days when none is given), and the last form post's outcome.
#[server(endpoint = "audit_history")]
pub async fn audit_history(query: HistoryQuery) -> Result<AuditHistoryView, AccessError> {
    use crate::api::requests::{database, internal, now, take_flash};
    use crate::model::request::DayCount;
    use crate::server::audit::history;
    server_side::require_auditor()?;
    let database = database()?;
    let flash = take_flash().await;
    let filter = match server_side::filter(&query) {
        Ok(filter) => filter,
        Err(error) => {
            return Ok(AuditHistoryView {
                filter_error: Some(error),
                flash,
                ..AuditHistoryView::default()
            })
        }
    };
    let fail = |error: sqlx::Error| internal(&error.to_string());
    let mut rows = history::list_grants(&database, &filter, HISTORY_LIMIT + 1)
        .await
        .map_err(fail)?;
    let truncated = rows.len() as i64 > HISTORY_LIMIT;
    rows.truncate(HISTORY_LIMIT as usize);
    let mut grants = Vec::with_capacity(rows.len());
    for row in rows {
        grants.push(
            server_side::grant_view(&database, row)
                .await
                .map_err(fail)?,
        );
    }
    let now = now();
    let to = filter.to.unwrap_or(now);
    let from = filter
        .from
        .unwrap_or(to - 30 * 86_400)
        .max(to - history::MAX_CHART_DAYS * 86_400);
    let chart = history::active_per_day(&database, &filter, from, to, now)
        .await
        .map_err(fail)?
        .into_iter()
        .map(|(day, count)| DayCount {
            day: crate::server::audit::export::rfc3339(day)[..10].to_owned(),
            count,
        })
        .collect();
    Ok(AuditHistoryView {
        grants,
        truncated,
        chart,
        query: server_side::query_string(&query),
        filter_error: None,
        flash,
    })
}

/// Returns grant `id` with every audit event of its request and of the grant, oldest first.
#[server(endpoint = "grant_timeline")]
pub async fn grant_timeline(id: String) -> Result<Option<GrantTimelineView>, AccessError> {
    use crate::api::requests::{database, internal, timestamp};
    use crate::model::request::EventView;
    use crate::server::audit::history;
    server_side::require_auditor()?;
    let database = database()?;
    let fail = |error: sqlx::Error| internal(&error.to_string());
    let Some(grant) = history::find_grant(&database, &id).await.map_err(fail)? else {
        return Ok(None);
    };
    let events = crate::server::requests::store::audit_trail(&database, &grant.request_id)
        .await
        .map_err(|error| internal(&error.to_string()))?
        .into_iter()
        .map(|event| EventView {
            at: timestamp(event.occurred_at),
            actor: event.actor_username.unwrap_or_else(|| "Stint".into()),
            action: event.action.replace('_', " "),
            comment: event.comment,
        })
        .collect();
    let grant = server_side::grant_view(&database, grant)
        .await
        .map_err(fail)?;
    Ok(Some(GrantTimelineView { grant, events }))
}
