//! Exports of the audit history as CSV or as JSON lines, streamed row by row from the
//! database into any writer, so memory stays flat whatever the size of the log.
//!
//! Each row is one audit event with the facts of its request and grant. Times are RFC 3339
//! in UTC. The last line carries the head of the hash chain at the time of the export, so a
//! later export (or `stint audit verify`) can show that the log before it is unchanged.

use futures::TryStreamExt;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::server::db::Database;
use crate::with_pool;

/// The file formats of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    /// One JSON object per line.
    Json,
}

impl ExportFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "csv" => Some(Self::Csv),
            "json" | "jsonl" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/x-ndjson",
        }
    }
}

/// The events that an export or the history page covers. Every field narrows the set; an
/// empty filter covers the whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
    /// Requester's username, exactly.
    pub user: Option<String>,
    pub role: Option<String>,
    /// Username of an approver who approved or denied the request.
    pub approver: Option<String>,
    /// Status of the grant (or of the request, when it has no grant).
    pub status: Option<String>,
    /// Ticket reference, exactly.
    pub ticket: Option<String>,
}

impl HistoryFilter {
    fn narrows_requests(&self) -> bool {
        self.user.is_some()
            || self.role.is_some()
            || self.approver.is_some()
            || self.status.is_some()
            || self.ticket.is_some()
    }
}

/// The columns of an export, in order.
pub const COLUMNS: [&str; 16] = [
    "event_id",
    "occurred_at",
    "action",
    "actor_username",
    "actor_subject",
    "request_id",
    "grant_id",
    "requester_username",
    "requester_subject",
    "role_key",
    "ticket",
    "from_status",
    "to_status",
    "comment",
    "prev_hash",
    "hash",
];

/// One exported event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ExportRow {
    pub event_id: i64,
    #[serde(skip)]
    pub occurred_unix: i64,
    #[sqlx(skip)]
    pub occurred_at: String,
    pub action: String,
    pub actor_username: Option<String>,
    pub actor_subject: Option<String>,
    pub request_id: Option<String>,
    pub grant_id: Option<String>,
    pub requester_username: Option<String>,
    pub requester_subject: Option<String>,
    pub role_key: Option<String>,
    pub ticket: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub comment: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// Formats Unix seconds as RFC 3339 in UTC, such as `2026-12-04T17:30:00Z`.
pub fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| seconds.to_string())
}

/// A `where` clause built condition by condition, with numbered placeholders.
#[derive(Default)]
pub(crate) struct WhereClause {
    conditions: Vec<String>,
    values: Vec<FilterValue>,
}

impl WhereClause {
    /// Adds `condition`, whose `?` becomes the next placeholder, bound to `value`.
    pub(crate) fn bind(&mut self, condition: &str, value: FilterValue) {
        self.values.push(value);
        let placeholder = format!("${}", self.values.len());
        self.conditions.push(condition.replace('?', &placeholder));
    }

    /// Adds a condition without a value.
    pub(crate) fn add(&mut self, condition: &str) {
        self.conditions.push(condition.to_owned());
    }

    /// Returns the clause, empty or starting with ` where`, and the values to bind in order.
    pub(crate) fn finish(self) -> (String, Vec<FilterValue>) {
        if self.conditions.is_empty() {
            return (String::new(), self.values);
        }
        (
            format!(" where {}", self.conditions.join(" and ")),
            self.values,
        )
    }
}

/// The condition that an approver named by the bound value decided the request `r`.
pub(crate) const DECIDED_BY: &str =
    "exists (select 1 from approval a where a.request_id = r.id and a.approver_username = ?)";

/// Builds the `where` clause of `filter` with numbered placeholders, and its values.
pub(crate) fn where_clause(filter: &HistoryFilter) -> (String, Vec<FilterValue>) {
    let mut clause = WhereClause::default();
    let mut push = |condition: &str, value: FilterValue| clause.bind(condition, value);
    if let Some(from) = filter.from {
        push("e.occurred_at >= ?", FilterValue::Int(from));
    }
    if let Some(to) = filter.to {
        push("e.occurred_at < ?", FilterValue::Int(to));
    }
    if let Some(user) = &filter.user {
        push("r.requester_username = ?", FilterValue::Text(user.clone()));
    }
    if let Some(role) = &filter.role {
        push("r.role_key = ?", FilterValue::Text(role.clone()));
    }
    if let Some(ticket) = &filter.ticket {
        push("r.ticket = ?", FilterValue::Text(ticket.clone()));
    }
    if let Some(status) = &filter.status {
        push(
            "coalesce(g.status, r.status) = ?",
            FilterValue::Text(status.clone()),
        );
    }
    if let Some(approver) = &filter.approver {
        push(DECIDED_BY, FilterValue::Text(approver.clone()));
    }
    if filter.narrows_requests() {
        clause.add("r.id is not null");
    }
    clause.finish()
}

/// A value bound to a filter placeholder.
#[derive(Clone, Debug)]
pub(crate) enum FilterValue {
    Int(i64),
    Text(String),
}

/// Binds `values` to `query` in order.
macro_rules! bind_filter {
    ($query:expr, $values:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                $crate::server::audit::export::FilterValue::Int(number) => query.bind(*number),
                $crate::server::audit::export::FilterValue::Text(text) => query.bind(text.clone()),
            };
        }
        query
    }};
}
pub(crate) use bind_filter;

/// The size and chain head of a finished export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub rows: u64,
    /// Id and hash of the newest event when the export started.
    pub chain_head: Option<(i64, String)>,
}

/// Errors of an export: reading the database or writing the output.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the audit log failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("writing the export failed: {0}")]
    Write(#[from] std::io::Error),
}

/// Neutralises a CSV cell that a spreadsheet would run as a formula (starting with `=`,
/// `+`, `-`, `@`, a tab or a carriage return) by putting a `'` in front, then quotes it
/// when it contains a comma, a quote or a line break.
pub fn csv_cell(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn csv_line(cells: &[&str]) -> String {
    let mut line = cells
        .iter()
        .map(|cell| csv_cell(cell))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

fn csv_row(row: &ExportRow) -> String {
    let id = row.event_id.to_string();
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let cells = [
        id,
        row.occurred_at.clone(),
        row.action.clone(),
        text(&row.actor_username),
        text(&row.actor_subject),
        text(&row.request_id),
        text(&row.grant_id),
        text(&row.requester_username),
        text(&row.requester_subject),
        text(&row.role_key),
        text(&row.ticket),
        text(&row.from_status),
        text(&row.to_status),
        row.comment.clone(),
        text(&row.prev_hash),
        text(&row.hash),
    ];
    let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
    csv_line(&refs)
}

const EXPORT_SELECT: &str = "select e.id as event_id, e.occurred_at as occurred_unix, e.action, \
    e.actor_username, e.actor_subject, e.request_id, e.grant_id, \
    r.requester_username, r.requester_subject, r.role_key, r.ticket, \
    e.from_status, e.to_status, e.comment, e.prev_hash, e.hash \
    from audit_event e \
    left join access_request r on r.id = e.request_id \
    left join access_grant g on g.request_id = r.id";

/// Streams the events of `filter`, oldest first, to `out` in `format`, and returns what
/// was written. The chain head is read after the last row, so the trailer names an event
/// at or after the last one exported.
pub async fn write_export<W: AsyncWrite + Unpin + Send>(
    database: &Database,
    filter: &HistoryFilter,
    format: ExportFormat,
    out: &mut W,
) -> Result<ExportSummary, ExportError> {
    let (clause, values) = where_clause(filter);
    let sql = format!("{EXPORT_SELECT}{clause} order by e.id");
    if format == ExportFormat::Csv {
        out.write_all(csv_line(&COLUMNS).as_bytes()).await?;
    }
    let rows = with_pool!(database, |pool| {
        async {
            let query = bind_filter!(sqlx::query_as::<_, ExportRow>(&sql), &values);
            let mut stream = query.fetch(pool);
            let mut rows = 0_u64;
            while let Some(mut row) = stream.try_next().await? {
                row.occurred_at = rfc3339(row.occurred_unix);
                let line = match format {
                    ExportFormat::Csv => csv_row(&row),
                    ExportFormat::Json => {
                        let mut line = serde_json::to_string(&row)
                            .map_err(|error| std::io::Error::other(error.to_string()))?;
                        line.push('\n');
                        line
                    }
                };
                out.write_all(line.as_bytes()).await?;
                rows += 1;
            }
            Ok::<u64, ExportError>(rows)
        }
        .await
    })?;
    let chain_head = super::chain::head(database).await?;
    let (head_id, head_hash) = chain_head
        .clone()
        .map(|(id, hash)| (id.to_string(), hash))
        .unwrap_or_default();
    let trailer = match format {
        ExportFormat::Csv => {
            let mut cells = vec![""; COLUMNS.len()];
            cells[0] = head_id.as_str();
            cells[2] = "chain_head";
            cells[15] = head_hash.as_str();
            csv_line(&cells)
        }
        ExportFormat::Json => {
            let trailer = serde_json::json!({
                "chain_head": { "event_id": chain_head.as_ref().map(|(id, _)| *id), "hash": chain_head.as_ref().map(|(_, hash)| hash) },
                "rows": rows,
            });
            format!("{trailer}\n")
        }
    };
    out.write_all(trailer.as_bytes()).await?;
    out.flush().await?;
    Ok(ExportSummary { rows, chain_head })
}

/// Reads `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time into Unix seconds.
pub fn parse_day(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(at.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|day| day.midnight().assume_utc().unix_timestamp())
        .map_err(|_| format!("`{text}` is not a date: write it as YYYY-MM-DD (UTC)"))
}

/// Records that `actor` (none for the command line) exported `description`, as an audit
/// event of its own, before the export starts.
pub async fn record_export(
    database: &Database,
    actor: Option<(&str, &str)>,
    description: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    use super::chain::{append_audit, AuditRecord};
    let record = AuditRecord {
        occurred_at: now,
        actor_subject: actor.map(|(subject, _)| subject),
        actor_username: actor.map(|(_, username)| username),
        action: "audit_exported",
        comment: description,
        ..AuditRecord::default()
    };
    with_pool!(database, |pool| {
        async {
            let mut tx = pool.begin_with(database.begin_for_write()).await?;
            append_audit!(tx, database, &record)?;
            tx.commit().await
        }
        .await
    })
}

/// Describes `filter` and `format` in words for the export's audit event.
pub fn describe(filter: &HistoryFilter, format: ExportFormat) -> String {
    let mut parts = vec![format!("format {}", format.as_str())];
    parts.push(match (filter.from, filter.to) {
        (None, None) => "the whole log".to_owned(),
        (from, to) => format!(
            "from {} to {}",
            from.map(rfc3339).unwrap_or_else(|| "the start".into()),
            to.map(rfc3339).unwrap_or_else(|| "now".into())
        ),
    });
    let fields = [
        ("user", &filter.user),
        ("role", &filter.role),
        ("approver", &filter.approver),
        ("status", &filter.status),
        ("ticket", &filter.ticket),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            parts.push(format!("{name} {value}"));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::{csv_cell, rfc3339};

    #[test]
    fn formula_cells_are_neutralised() {
        for formula in ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx"] {
            let cell = csv_cell(formula);
            assert!(
                cell.starts_with("'") || cell.starts_with("\"'"),
                "{formula:?} gave {cell:?}"
            );
        }
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
