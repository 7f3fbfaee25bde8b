//! Ended grants are stored by one writer per pass, in shared transactions, so that a burst
//! of ends costs a few commits instead of one per grant.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{lease_token, LaneRest, Scheduler};
use crate::server::audit::chain::{append_audits, AuditRecord};
use crate::server::grants::store::{Grant, GrantStatus};
use crate::server::requests::store::StoreError;
use crate::with_pool;

/// A grant whose end was worked out, waiting to be stored by the pass's writer.
pub(super) struct Ending {
    grant: Grant,
    outcome: String,
    /// Keycloak's responses, or `None` when nothing was written.
    answer: Option<String>,
    /// When the mapping was removed: the time by which issued access tokens expire.
    tokens_expire_by: Option<i64>,
    now: i64,
    /// Told once the grant is stored, when the lane has another grant that must see it.
    stored: Option<oneshot::Sender<Result<bool, StoreError>>>,
}

impl Ending {
    /// Logs the outcome and tells the waiting lane, if any.
    fn reply(self, result: Result<bool, StoreError>) {
        match &result {
            Ok(true) => log_ended(&self),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, grant_id = %self.grant.id, request_id = %self.grant.request_id, "an ended grant could not be stored; the lease expiry hands it out again");
            }
        }
        if let Some(stored) = self.stored {
            let _ = stored.send(result);
        }
    }
}

fn log_ended(ending: &Ending) {
    let grant = &ending.grant;
    let removed = ending.tokens_expire_by.is_some();
    tracing::info!(grant_id = %grant.id, request_id = %grant.request_id, role = %grant.role_key, subject = %grant.subject, removed, lag_seconds = ending.now - grant.ends_at, "grant ended");
}

/// Ended grants stored in one transaction at most. A burst of ends becomes a few commits
/// instead of one per grant.
const ENDINGS_PER_TRANSACTION: usize = 8192;
/// Ended grants per statement of that transaction. The audit insert binds 11 values a row,
/// which keeps a statement far below SQLite's limit of 32,766 bound values.
const ENDINGS_PER_STATEMENT: usize = 512;
/// Maximum wait for more ended grants before a group is stored. The pass's lease keeper
/// keeps the leases of the grants that wait here.
const ENDINGS_GATHER: Duration = Duration::from_secs(1);

impl Scheduler {
    /// Hands the ended grant to the pass's writer and waits until it is stored. When the
    /// mapping was removed, `removal` carries Keycloak's responses and the time by which
    /// issued tokens expire.
    pub(super) async fn revoked(
        &self,
        endings: &mpsc::Sender<Ending>,
        lane: LaneRest,
        grant: &Grant,
        outcome: String,
        removal: Option<(String, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (answer, tokens_expire_by) = match removal {
            Some((answer, expiry)) => (Some(answer), Some(expiry)),
            None => (None, None),
        };
        let (stored, reply) = match lane {
            LaneRest::Empty => (None, None),
            LaneRest::More => {
                let (stored, reply) = oneshot::channel();
                (Some(stored), Some(reply))
            }
        };
        let ending = Ending {
            grant: grant.clone(),
            outcome,
            answer,
            tokens_expire_by,
            now,
            stored,
        };
        match endings.send(ending).await {
            Ok(()) => {
                if let Some(reply) = reply {
                    match reply.await {
                        Ok(result) => {
                            result?;
                        }
                        Err(_) => {
                            tracing::error!(grant_id = %grant.id, "the writer of ended grants stopped before storing this one; the lease expiry hands it out again");
                        }
                    }
                }
            }
            // The writer is gone: store this one alone.
            Err(mpsc::error::SendError(ending)) => {
                let stored = self
                    .store_ending_group(std::slice::from_ref(&ending))
                    .await?;
                if stored.first().copied().unwrap_or(false) {
                    log_ended(&ending);
                }
            }
        }
        Ok(())
    }

    /// Stores the ended grants the lanes send, each group that has queued up in one
    /// transaction. If a group's transaction fails, its grants are stored one by one, so
    /// that one bad row does not hold back the others.
    pub(super) async fn store_endings(&self, mut endings: mpsc::Receiver<Ending>) {
        let mut group = Vec::with_capacity(ENDINGS_PER_STATEMENT);
        while endings.recv_many(&mut group, ENDINGS_PER_TRANSACTION).await > 0 {
            // Until the pass has worked its last claimed grant, which closes the channel, more
            // ends are about to arrive: gather them, so that a burst is stored once its
            // removals are done and its writes neither compete with them for the CPU nor
            // hold up the claims that keep them going.
            let gather = tokio::time::sleep(ENDINGS_GATHER);
            tokio::pin!(gather);
            // A lane that waits for its ending to be stored holds up its next grant: store
            // at once then.
            while group.len() < ENDINGS_PER_TRANSACTION
                && group.iter().all(|ending| ending.stored.is_none())
            {
                let room = ENDINGS_PER_TRANSACTION - group.len();
                tokio::select! {
                    () = &mut gather => break,
                    received = endings.recv_many(&mut group, room) => if received == 0 { break },
                }
            }
            match self.store_ending_group(&group).await {
                Ok(stored) => {
                    for (ending, stored) in group.drain(..).zip(stored) {
                        ending.reply(Ok(stored));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, grants = group.len(), "storing ended grants in one transaction failed; storing them one at a time");
                    for ending in group.drain(..) {
                        let result = self
                            .store_ending_group(std::slice::from_ref(&ending))
                            .await
                            .map(|stored| stored.first().copied().unwrap_or(false));
                        ending.reply(result);
                    }
                }
            }
        }
    }

    /// Marks each grant of `group` ended with its outcome and audit event, in one
    /// transaction of two statements per [`ENDINGS_PER_STATEMENT`] grants. Returns, for each, whether it was still this
    /// replica's to end.
    pub(super) async fn store_ending_group(
        &self,
        group: &[Ending],
    ) -> Result<Vec<bool>, StoreError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        let comments: Vec<String> = group
            .iter()
            .map(|ending| {
                format!(
                    "{}. Keycloak: {}",
                    ending.outcome,
                    ending.answer.as_deref().unwrap_or("no write")
                )
            })
            .collect();
        let _turn = self.write_turn().await;
        with_pool!(&self.database, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let mut stored = Vec::with_capacity(group.len());
                for (chunk, comments) in group
                    .chunks(ENDINGS_PER_STATEMENT)
                    .zip(comments.chunks(ENDINGS_PER_STATEMENT))
                {
                    // The values list names its columns column1, column2, … on both engines.
                    let mut update = sqlx::QueryBuilder::new(
                        "update access_grant set status = 'ended', revoked_at = v.column2, \
                         outcome = v.column3, still_effective = 0, tokens_expire_by = v.column4, \
                         effective_check_pending = v.column5, due_at = v.column2, attempts = 0, \
                         last_error = null, lease_owner = null, lease_expires_at = null, \
                         updated_at = v.column2 from (",
                    );
                    update.push_values(chunk, |mut row, ending| {
                        row.push_bind(ending.grant.id.as_str())
                            .push_bind(ending.now)
                            .push_bind(ending.outcome.as_str())
                            .push_bind(ending.tokens_expire_by)
                            .push_bind(i64::from(ending.tokens_expire_by.is_some()))
                            .push_bind(lease_token(&ending.grant));
                    });
                    update.push(
                        ") as v where access_grant.id = v.column1 \
                         and access_grant.lease_owner = v.column6 \
                         and access_grant.status in ('applying', 'active', 'revoking') \
                         returning access_grant.id",
                    );
                    let ended: Vec<String> =
                        update.build_query_scalar().fetch_all(&mut *tx).await?;
                    // A grant ends once: should one appear twice, only its first ending counts.
                    let mut ended: std::collections::HashSet<&str> =
                        ended.iter().map(String::as_str).collect();
                    let chunk_stored: Vec<bool> = chunk
                        .iter()
                        .map(|ending| ended.remove(ending.grant.id.as_str()))
                        .collect();
                    let records: Vec<AuditRecord> = chunk
                        .iter()
                        .zip(comments)
                        .zip(&chunk_stored)
                        .filter(|(_, stored)| **stored)
                        .map(|((ending, comment), _)| AuditRecord {
                            occurred_at: ending.now,
                            actor_subject: None,
                            actor_username: None,
                            request_id: Some(ending.grant.request_id.as_str()),
                            grant_id: Some(ending.grant.id.as_str()),
                            action: "grant_revoked",
                            from_status: Some(ending.grant.status().as_str()),
                            to_status: Some(GrantStatus::Ended.as_str()),
                            comment,
                        })
                        .collect();
                    append_audits!(tx, &self.database, &records)?;
                    stored.extend(chunk_stored);
                }
                tx.commit().await?;
                Ok::<Vec<bool>, StoreError>(stored)
            }
            .await
        })
    }
}
