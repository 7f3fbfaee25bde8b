//! The audit log's hash chain. Each event stores the hash of the event before it and a
//! hash of its own contents with that link, so an event edited, deleted or inserted by hand
//! breaks the chain at that point, and [`verify`] names it.
//!
//! Events are appended under a lock: SQLite's write lock, which every appending
//! transaction holds from its first write, and a transaction-scoped advisory lock on
//! PostgreSQL. So the chain never forks.

use sha2::{Digest, Sha256};

use crate::server::db::Database;
use crate::with_pool;

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Key of the PostgreSQL advisory lock that serialises appends across replicas.
pub const APPEND_LOCK: i64 = 7_274_682;

/// One event to append, before it has an id or a hash.
#[derive(Clone, Debug, Default)]
pub struct AuditRecord<'a> {
    pub occurred_at: i64,
    pub actor_subject: Option<&'a str>,
    pub actor_username: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub grant_id: Option<&'a str>,
    pub action: &'a str,
    pub from_status: Option<&'a str>,
    pub to_status: Option<&'a str>,
    pub comment: &'a str,
}

/// Encodes one field so that no two different field lists encode alike: `~` for none,
/// else the length in bytes, a colon and the text.
fn field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.extend_from_slice(b"~"),
        Some(text) => {
            out.extend_from_slice(text.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(text.as_bytes());
        }
    }
    out.push(b'|');
}

impl AuditRecord<'_> {
    /// Returns the hash of this event when it follows an event whose hash is `prev_hash`: SHA-256,
    /// in lower-case hex, of the link and every stored field.
    pub fn hash(&self, prev_hash: &str) -> String {
        let mut bytes = Vec::with_capacity(256 + self.comment.len());
        field(&mut bytes, Some(prev_hash));
        field(&mut bytes, Some(&self.occurred_at.to_string()));
        field(&mut bytes, self.actor_subject);
        field(&mut bytes, self.actor_username);
        field(&mut bytes, self.request_id);
        field(&mut bytes, self.grant_id);
        field(&mut bytes, Some(self.action));
        field(&mut bytes, self.from_status);
        field(&mut bytes, self.to_status);
        field(&mut bytes, Some(self.comment));
        let digest = Sha256::digest(&bytes);
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Appends `record` to the audit log inside transaction `tx` of `database`, linked to the
/// current head of the chain.
macro_rules! append_audit {
    ($tx:expr, $database:expr, $record:expr) => {{
        let record: &$crate::server::audit::chain::AuditRecord = $record;
        $crate::server::audit::chain::append_audits!($tx, $database, std::slice::from_ref(record))
    }};
}
pub(crate) use append_audit;

/// Appends `records`, in order, inside transaction `tx` of `database`: the chain's head is
/// read once and the events go in with one statement. Their ids follow the order of
/// `records`, which is the order of the links.
macro_rules! append_audits {
    ($tx:expr, $database:expr, $records:expr) => {{
        let records: &[$crate::server::audit::chain::AuditRecord] = $records;
        async {
            if records.is_empty() {
                return Ok::<(), sqlx::Error>(());
            }
            if matches!($database, $crate::server::db::Database::Postgres(_)) {
                sqlx::query("select pg_advisory_xact_lock($1)")
                    .bind($crate::server::audit::chain::APPEND_LOCK)
                    .execute(&mut *$tx)
                    .await?;
            }
            let head: Option<Option<String>> =
                sqlx::query_scalar("select hash from audit_event order by id desc limit 1")
                    .fetch_optional(&mut *$tx)
                    .await?;
            let mut prev_hash = head
                .flatten()
                .unwrap_or_else(|| $crate::server::audit::chain::GENESIS.to_owned());
            let mut links = Vec::with_capacity(records.len());
            for record in records {
                let hash = record.hash(&prev_hash);
                links.push((std::mem::replace(&mut prev_hash, hash.clone()), hash));
            }
            let mut insert = sqlx::QueryBuilder::new(
                "insert into audit_event (occurred_at, actor_subject, actor_username, request_id, \
                 grant_id, action, from_status, to_status, comment, prev_hash, hash) ",
            );
            insert.push_values(
                records.iter().zip(&links),
                |mut row, (record, (prev, hash))| {
                    row.push_bind(record.occurred_at)
                        .push_bind(record.actor_subject)
                        .push_bind(record.actor_username)
                        .push_bind(record.request_id)
                        .push_bind(record.grant_id)
                        .push_bind(record.action)
                        .push_bind(record.from_status)
                        .push_bind(record.to_status)
                        .push_bind(record.comment)
                        .push_bind(prev.as_str())
                        .push_bind(hash.as_str());
                },
            );
            insert.build().execute(&mut *$tx).await?;
            Ok(())
        }
        .await
    }};
}
pub(crate) use append_audits;

/// A stored event as the verification reads it.
#[derive(sqlx::FromRow)]
struct StoredEvent {
    id: i64,
    occurred_at: i64,
    actor_subject: Option<String>,
    actor_username: Option<String>,
    request_id: Option<String>,
    grant_id: Option<String>,
    action: String,
    from_status: Option<String>,
    to_status: Option<String>,
    comment: String,
    prev_hash: Option<String>,
    hash: Option<String>,
}

/// The first break in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub event_id: i64,
    pub reason: String,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events whose hash was checked.
    pub checked: u64,
    /// Events written before the chain existed, which carry no hash; they precede the
    /// chain and are not checked.
    pub unchained: u64,
    /// The id and hash of the last event checked.
    pub head: Option<(i64, String)>,
    pub first_break: Option<ChainBreak>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.first_break, &self.head) {
            (Some(broken), _) => write!(
                formatter,
                "the audit chain breaks at event {}: {} ({} events checked before it)",
                broken.event_id, broken.reason, self.checked
            ),
            (None, Some((id, hash))) => write!(
                formatter,
                "the audit chain is intact: {} events checked, head event {id} with hash {hash}",
                self.checked
            ),
            (None, None) => write!(formatter, "the audit log is empty"),
        }
    }
}

/// Events read per query, so memory stays flat however long the log is.
const PAGE: i64 = 1000;

/// Walks the whole audit log in id order and reports the first event where the chain
/// breaks: a hash that does not match the event's contents (the event was changed), or a
/// link that does not name the previous event's hash (an event was deleted or inserted).
pub async fn verify(database: &Database) -> Result<VerifyReport, sqlx::Error> {
    let mut report = VerifyReport {
        checked: 0,
        unchained: 0,
        head: None,
        first_break: None,
    };
    let mut after = 0_i64;
    let mut previous: Option<String> = None;
    loop {
        let page: Vec<StoredEvent> = with_pool!(database, |pool| {
            sqlx::query_as(
                "select id, occurred_at, actor_subject, actor_username, request_id, grant_id, \
                 action, from_status, to_status, comment, prev_hash, hash \
                 from audit_event where id > $1 order by id limit $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(pool)
            .await
        })?;
        let Some(last) = page.last() else {
            return Ok(report);
        };
        after = last.id;
        for event in page {
            let (Some(prev_hash), Some(hash)) = (&event.prev_hash, &event.hash) else {
                if previous.is_none() {
                    report.unchained += 1;
                    continue;
                }
                report.first_break = Some(ChainBreak {
                    event_id: event.id,
                    reason: "the event has no hash, although events before it do".into(),
                });
                return Ok(report);
            };
            let expected_link = previous.as_deref().unwrap_or(GENESIS);
            // The first hashed event after unchained ones may link to any value: it starts
            // the chain.
            if (previous.is_some() || report.unchained == 0) && prev_hash != expected_link {
                report.first_break = Some(ChainBreak {
                    event_id: event.id,
                    reason: format!(
                        "its link {} does not match the previous event's hash {}: an event \
                         before it was deleted, inserted or changed",
                        short(prev_hash),
                        short(expected_link)
                    ),
                });
                return Ok(report);
            }
            let record = AuditRecord {
                occurred_at: event.occurred_at,
                actor_subject: event.actor_subject.as_deref(),
                actor_username: event.actor_username.as_deref(),
                request_id: event.request_id.as_deref(),
                grant_id: event.grant_id.as_deref(),
                action: &event.action,
                from_status: event.from_status.as_deref(),
                to_status: event.to_status.as_deref(),
                comment: &event.comment,
            };
            if record.hash(prev_hash) != *hash {
                report.first_break = Some(ChainBreak {
                    event_id: event.id,
                    reason: "its contents do not match its stored hash: the event was changed"
                        .into(),
                });
                return Ok(report);
            }
            report.checked += 1;
            report.head = Some((event.id, hash.clone()));
            previous = Some(hash.clone());
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Returns the id and hash of the newest event, the head that exports carry.
pub async fn head(database: &Database) -> Result<Option<(i64, String)>, sqlx::Error> {
    let head: Option<(i64, Option<String>)> = with_pool!(database, |pool| {
        sqlx::query_as("select id, hash from audit_event order by id desc limit 1")
            .fetch_optional(pool)
            .await
    })?;
    Ok(head.and_then(|(id, hash)| hash.map(|hash| (id, hash))))
}

#[cfg(test)]
mod tests {
    use super::{AuditRecord, GENESIS};

    #[test]
    fn hash_covers_every_field_and_the_link() {
        let record = AuditRecord {
            occurred_at: 1,
            action: "request_created",
            comment: "a",
            ..AuditRecord::default()
        };
        let base = record.hash(GENESIS);
        assert_eq!(base.len(), 64);
        assert_ne!(base, record.hash(&base), "the link is hashed");
        let changes = [
            AuditRecord {
                occurred_at: 2,
                ..record.clone()
            },
            AuditRecord {
                comment: "b",
                ..record.clone()
            },
            AuditRecord {
                actor_subject: Some(""),
                ..record.clone()
            },
            AuditRecord {
                request_id: Some("r"),
                ..record.clone()
            },
            AuditRecord {
                grant_id: Some("g"),
                ..record.clone()
            },
            AuditRecord {
                to_status: Some("x"),
                ..record.clone()
            },
        ];
        for changed in changes {
            assert_ne!(changed.hash(GENESIS), base, "{changed:?}");
        }
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let one = AuditRecord {
            actor_subject: Some("a|b"),
            actor_username: None,
            ..AuditRecord::default()
        };
        let two = AuditRecord {
            actor_subject: Some("a"),
            actor_username: Some("b"),
            ..AuditRecord::default()
        };
        assert_ne!(one.hash(GENESIS), two.hash(GENESIS));
    }
}
