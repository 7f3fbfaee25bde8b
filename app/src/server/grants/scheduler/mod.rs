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

mod effective;
mod endings;
mod outcome;
mod steps;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, Mutex, MutexGuard, Notify, OnceCell, Semaphore};

use endings::Ending;

use super::mappings::{Failure, RoleMappings};
use super::store::{Grant, GrantStatus, GRANT_COLUMNS};
use crate::server::catalog::CatalogHandle;
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
    /// Claimed grants that a replica keeps, not yet worked, per Keycloak call in flight.
    /// Enough keeps every slot busy through a burst while the next claim runs. A limit
    /// leaves the rest of a burst to the other replicas, and a replica that dies strands at
    /// most `concurrency × claimed_per_slot` grants until their leases expire.
    pub claimed_per_slot: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            concurrency: 16,
            max_backoff: Duration::from_secs(300),
            poll: Duration::from_secs(1),
            claimed_per_slot: 64,
        }
    }
}

pub struct Scheduler {
    database: Database,
    mappings: Arc<dyn RoleMappings>,
    catalog: CatalogHandle,
    /// This replica's name. Each claim writes it with a claim number into the lease
    /// columns, so a grant claimed again after its lease expired is distinguished from the
    /// same replica's older claim of it.
    owner: String,
    /// Claims made so far, for the claim numbers.
    claims_made: AtomicU64,
    settings: SchedulerSettings,
    clock: Clock,
    wake: Arc<Notify>,
    /// The realm's access-token lifespan, read once.
    lifespan: Mutex<Option<i64>>,
    /// Set on shutdown: a pass claims nothing more.
    stopping: AtomicBool,
    /// One permit per Keycloak call in flight, `settings.concurrency` in all.
    keycloak_slots: Semaphore,
    /// Taken around each of the scheduler's writes to SQLite, which allows one writer at a
    /// time: waiting here is cheaper than SQLite's busy handler, which sleeps in steps of up
    /// to 100 ms while the lock may already be free.
    sqlite_writes: Mutex<()>,
}

/// The roles read from Keycloak during one pass of [`Scheduler::run_once`], so that a
/// burst of grants of one role reads it once, just before the pass writes it.
#[derive(Default)]
struct RoleMemo {
    roles: Mutex<HashMap<String, Arc<OnceCell<Option<RoleRef>>>>>,
}

/// A claimed grant, with the other grant of its lane that kept the mapping at claim time.
#[derive(sqlx::FromRow)]
struct Claimed {
    #[sqlx(flatten)]
    grant: Grant,
    holder_id: Option<String>,
    holder_ends_at: Option<i64>,
}

/// The lane's other holder as a revocation has it before it starts.
#[derive(Clone, Debug)]
enum HolderSnapshot {
    /// Nothing: read it from the database.
    Unknown,
    /// Read by the claim; the lane has been this replica's since, so no grant of it was
    /// applied in between.
    Claimed(Option<(String, i64)>),
}

/// Whether more grants of the lane follow the one being worked. They read what it stored,
/// so its end must be stored before they start; the last grant of a lane does not wait.
#[derive(Clone, Copy, Debug)]
enum LaneRest {
    Empty,
    More,
}

/// The PostgreSQL advisory lock that serialises claims and the reconciliation's lane
/// leases: both read other rows of a lane before they write, which row locks do not cover.
pub(crate) const CLAIM_LOCK: i64 = 7_274_681;
/// Wait before claiming again when a due grant could not be claimed because another
/// lease holds its lane, or while the pass still works grants.
const CLAIM_RETRY: Duration = Duration::from_millis(200);
/// Shortest sleep of an idle scheduler.
const MIN_IDLE: Duration = Duration::from_millis(20);

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
        let settings_concurrency = settings.concurrency.max(1);
        Self {
            database,
            mappings,
            catalog,
            owner: format!("stint-{}", uuid::Uuid::new_v4()),
            claims_made: AtomicU64::new(0),
            settings,
            clock,
            wake: Arc::new(Notify::new()),
            lifespan: Mutex::new(None),
            stopping: AtomicBool::new(false),
            keycloak_slots: Semaphore::new(settings_concurrency),
            sqlite_writes: Mutex::new(()),
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

    /// Claims due grants and works them until none is due, then reads the effective roles
    /// of the grants it ended. Returns how many grants were claimed.
    ///
    /// Claims, steps and writes overlap: a claimer keeps the lanes' queue full, each lane
    /// takes a Keycloak permit only for the call itself, and one writer stores ended grants
    /// in shared transactions. So `settings.concurrency` Keycloak calls stay in flight
    /// through a burst instead of waiting for the database or for the slowest lane of a
    /// batch. The replica keeps at most `settings.claimed_per_slot` claimed grants per
    /// Keycloak slot that are not yet worked, so other replicas claim the rest of a burst.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let slots = self.settings.concurrency.max(1);
        let (lanes_in, mut lanes_out) = mpsc::channel::<Vec<Claimed>>(slots * 4);
        let (endings_in, endings_out) = mpsc::channel::<Ending>(slots * 8);
        let roles = RoleMemo::default();
        let roles = &roles;

        // One permit per grant that this pass may hold claimed and not yet worked.
        let room_size = slots * self.settings.claimed_per_slot.max(1);
        let room = Semaphore::new(room_size);
        let room = &room;
        // The lease tokens of this pass's claims, which the keeper below extends.
        let tokens = std::sync::Mutex::new(Vec::<String>::new());
        let tokens = &tokens;
        let pass_done = Notify::new();
        let pass_done = &pass_done;
        // Notified whenever a lane has worked a grant.
        let grant_worked = Notify::new();
        let grant_worked = &grant_worked;
        let all_worked = || async move {
            while room.available_permits() < room_size {
                grant_worked.notified().await;
            }
        };

        let claims = async move {
            let mut claimed = 0;
            while !self.stopping.load(Ordering::SeqCst) {
                let free = match take_room(room, room_size / 2).await {
                    Some(free) => free,
                    None => return Ok::<usize, StoreError>(claimed),
                };
                let (token, grants) = match self.claim(self.now(), free).await {
                    Ok(claim) => claim,
                    Err(error) => {
                        room.add_permits(free);
                        return Err(error);
                    }
                };
                room.add_permits(free - grants.len());
                if grants.is_empty() {
                    if room.available_permits() == room_size {
                        return Ok(claimed);
                    }
                    // Grants that become due while the pass still works others are claimed
                    // within CLAIM_RETRY, not after its slowest lane.
                    tokio::select! {
                        () = all_worked() => {}
                        () = tokio::time::sleep(CLAIM_RETRY) => {}
                    }
                    continue;
                }
                if let Ok(mut tokens) = tokens.lock() {
                    tokens.push(token);
                }
                claimed += grants.len();
                for lane in into_lanes(grants) {
                    if lanes_in.send(lane).await.is_err() {
                        return Ok(claimed);
                    }
                }
            }
            Ok(claimed)
        };

        let work = async move {
            let endings = endings_in;
            let lanes = futures::stream::poll_fn(|context| lanes_out.poll_recv(context));
            // The room semaphore bounds the lanes in progress.
            lanes
                .for_each_concurrent(None, |lane| {
                    self.work_lane(lane, roles, &endings, room, grant_worked)
                })
                .await;
        };

        let pass = async {
            let (claimed, (), ()) = tokio::join!(claims, work, self.store_endings(endings_out));
            pass_done.notify_one();
            claimed
        };
        let (claimed, ()) = tokio::join!(pass, self.keep_leases(tokens, pass_done));
        let claimed = claimed?;
        self.check_effective_roles(roles).await?;
        Ok(claimed)
    }

    /// Extends the leases of the pass's claims every third of a lease until `pass_done`, so
    /// that grants waiting in the pass for a Keycloak slot or for the writer stay with this
    /// replica. A lease that has expired is not extended: another replica may hold it.
    async fn keep_leases(&self, tokens: &std::sync::Mutex<Vec<String>>, pass_done: &Notify) {
        let period = (self.settings.lease / 3).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = pass_done.notified() => return,
                () = tokio::time::sleep(period) => {}
            }
            let current: Vec<String> = match tokens.lock() {
                Ok(tokens) => tokens.clone(),
                Err(_) => continue,
            };
            let now = self.now();
            let until = now + self.settings.lease.as_secs().max(1) as i64;
            let _turn = self.write_turn().await;
            for token in &current {
                let extended = with_pool!(&self.database, |pool| {
                    sqlx::query(
                        "update access_grant set lease_expires_at = $1 \
                         where lease_owner = $2 and lease_expires_at > $3",
                    )
                    .bind(until)
                    .bind(token)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|done| done.rows_affected())
                });
                if let Err(error) = extended {
                    tracing::warn!(%error, lease_owner = %token, "extending the leases of a claim failed; they expire unless the next attempt succeeds");
                }
            }
        }
    }

    /// Works the grants of one lane in order. The first is worked from the claimed row; a
    /// later one is read again, because the step before it may have changed the lane.
    async fn work_lane(
        &self,
        lane: Vec<Claimed>,
        roles: &RoleMemo,
        endings: &mpsc::Sender<Ending>,
        room: &Semaphore,
        grant_worked: &Notify,
    ) {
        let count = lane.len();
        let token = lane
            .first()
            .and_then(|claimed| claimed.grant.lease_owner.clone())
            .unwrap_or_default();
        for (position, claimed) in lane.into_iter().enumerate() {
            let rest = if position + 1 < count {
                LaneRest::More
            } else {
                LaneRest::Empty
            };
            let grant_id = claimed.grant.id.clone();
            let grant = if position == 0 {
                let holder = claimed.holder_id.zip(claimed.holder_ends_at);
                Ok(Some((claimed.grant, HolderSnapshot::Claimed(holder))))
            } else {
                self.reload(&grant_id)
                    .await
                    .map(|grant| grant.map(|grant| (grant, HolderSnapshot::Unknown)))
            };
            let result = match grant {
                Ok(Some((grant, holder))) => {
                    self.work(grant, &token, holder, rest, roles, endings).await
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                tracing::error!(%error, grant_id = %grant_id, "a grant step could not be stored; the lease expiry hands it out again");
            }
            room.add_permits(1);
            grant_worked.notify_one();
        }
    }

    async fn reload(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let sql = format!("select {GRANT_COLUMNS} from access_grant where id = $1");
        let grant = with_pool!(&self.database, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
        })?;
        Ok(grant)
    }

    /// Makes one Keycloak call once a permit is free, so that at most
    /// `settings.concurrency` calls are in flight.
    async fn keycloak<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let _permit = self
            .keycloak_slots
            .acquire()
            .await
            .map_err(|_| Failure::Transient("the scheduler is shutting down".into()))?;
        call.await
    }

    /// Waits for a Keycloak permit and returns it. A write takes the permit first and
    /// checks its lease after, so the lease cannot run out while the write waits.
    async fn keycloak_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Failure> {
        self.keycloak_slots
            .acquire()
            .await
            .map_err(|_| Failure::Transient("the scheduler is shutting down".into()))
    }

    /// Waits for this replica's turn to write, on SQLite. PostgreSQL takes concurrent
    /// writers itself.
    async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        match self.database {
            Database::Sqlite(_) => Some(self.sqlite_writes.lock().await),
            Database::Postgres(_) => None,
        }
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
        // On shutdown, a pass in progress claims nothing more and ends once its claimed
        // grants are worked; the loop below then stops.
        let stop = async {
            shutdown.await;
            self.stopping.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        };
        let work = async {
            while !self.stopping.load(Ordering::SeqCst) {
                let pause = match self.run_once().await {
                    // A grant due now that the pass could not claim waits for its lane,
                    // which another replica's lease holds: sleep a little instead of
                    // claiming again at once.
                    Ok(0) => match self.next_due().await {
                        Ok(Some(due)) => {
                            let wait = due as f64 - unix_now_fractional();
                            let shortest = if wait <= 0.0 { CLAIM_RETRY } else { MIN_IDLE };
                            Duration::from_secs_f64(wait.clamp(
                                shortest.as_secs_f64(),
                                self.settings.poll.as_secs_f64().max(shortest.as_secs_f64()),
                            ))
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
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        };
        tokio::join!(stop, work);
        tracing::info!(owner = %self.owner, "grant scheduler stopped");
    }

    /// Leases up to `limit` due grants whose lane no other lease holds and no pending
    /// reconciliation removal blocks, under a new lease token, and returns the token with
    /// the grants.
    async fn claim(&self, now: i64, limit: usize) -> Result<(String, Vec<Claimed>), StoreError> {
        let number = self.claims_made.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}#{number}", self.owner);
        let lease_until = now + self.settings.lease.as_secs().max(1) as i64;
        let sql = format!(
            "update access_grant set lease_owner = $1, lease_expires_at = $2 where id in ( \
               select g.id from ( \
                 select id, subject, role_key, due_at from access_grant \
                 where status in ('scheduled', 'applying', 'active', 'revoking') \
                   and due_at <= $3 and (lease_expires_at is null or lease_expires_at <= $3) \
                 order by due_at, id limit $5) g \
               where not exists (select 1 from access_grant o where o.subject = g.subject \
                 and o.role_key = g.role_key and o.id <> g.id and o.lease_expires_at > $3) \
               and not exists (select 1 from lane_lease l where l.subject = g.subject \
                 and l.role_key = g.role_key and l.expires_at > $3) \
               and not exists (select 1 from reconcile_action a where a.subject = g.subject \
                 and a.role_key = g.role_key and a.kind = 'remove') \
               order by g.due_at, g.id limit $4) \
             returning {GRANT_COLUMNS}, \
               (select o.id from access_grant o where o.subject = access_grant.subject \
                 and o.role_key = access_grant.role_key and o.id <> access_grant.id \
                 and o.ends_at > $3 and o.status in ('applying', 'active') \
                 order by o.ends_at desc limit 1) as holder_id, \
               (select max(o.ends_at) from access_grant o where o.subject = access_grant.subject \
                 and o.role_key = access_grant.role_key and o.id <> access_grant.id \
                 and o.ends_at > $3 and o.status in ('applying', 'active')) as holder_ends_at"
        );
        let limit = limit as i64;
        // The lane check runs on the earliest due grants only, not on every due grant: a
        // burst of thousands costs a short sort per claim. Grants whose lane another lease
        // holds are skipped, so a claim can return fewer than `limit`; the rest wait for
        // the next claim.
        let candidates = limit * 4;
        let _turn = self.write_turn().await;
        let grants = match &self.database {
            Database::Sqlite(pool) => {
                // One statement: SQLite runs it under its write lock, so two replicas
                // cannot claim the same grant.
                sqlx::query_as::<_, Claimed>(&sql)
                    .bind(&token)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .bind(candidates)
                    .fetch_all(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                // The lane check reads other rows, which row locks alone do not protect:
                // claims are serialised by a transaction-scoped advisory lock instead.
                let mut tx = pool.begin().await?;
                sqlx::query("select pg_advisory_xact_lock($1)")
                    .bind(CLAIM_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let grants = sqlx::query_as::<_, Claimed>(&sql)
                    .bind(&token)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .bind(candidates)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                grants
            }
        };
        Ok((token, grants))
    }

    /// Works one claimed grant under lease token `token`.
    async fn work(
        &self,
        mut grant: Grant,
        token: &str,
        holder: HolderSnapshot,
        rest: LaneRest,
        roles: &RoleMemo,
        endings: &mpsc::Sender<Ending>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        if grant.lease_owner.as_deref() != Some(token) {
            tracing::info!(grant_id = %grant.id, "lease lost before the grant was worked; skipping");
            return Ok(());
        }
        // The claim's expiry is a lower bound: the keeper may have extended it since.
        if grant.lease_expires_at.is_none_or(|until| until <= now) {
            match self.renew_lease(&grant).await? {
                Some(until) => grant.lease_expires_at = Some(until),
                None => return Ok(()),
            }
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
            GrantStatus::Scheduled => self.start(&grant, roles, now).await?,
            // An interrupted apply past the grant's end may have added the mapping: remove it.
            GrantStatus::Applying if now >= grant.ends_at => {
                self.revoke(&grant, holder, rest, roles, endings, now)
                    .await?
            }
            GrantStatus::Applying => self.apply(&grant, None, roles, now).await?,
            GrantStatus::Active | GrantStatus::Revoking if now >= grant.ends_at => {
                self.revoke(&grant, holder, rest, roles, endings, now)
                    .await?
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
}

/// Returns the lease token that the claim of `grant` wrote. Every update of a claimed
/// grant matches it, so a claim that lost the grant changes nothing.
fn lease_token(grant: &Grant) -> &str {
    grant.lease_owner.as_deref().unwrap_or_default()
}

/// Waits until `room` has `at_least` free permits, then takes every free one and returns
/// how many it took. Claiming in batches of half the room keeps each claim's sort of the due
/// grants rare through a burst, while the other half keeps the Keycloak slots busy.
/// `None`: the semaphore was closed.
async fn take_room(room: &Semaphore, at_least: usize) -> Option<usize> {
    let at_least = at_least.max(1);
    room.acquire_many(u32::try_from(at_least).unwrap_or(u32::MAX))
        .await
        .ok()?
        .forget();
    let more = room.available_permits();
    match room.try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX)) {
        Ok(permits) => {
            let taken = permits.num_permits();
            permits.forget();
            Some(at_least + taken)
        }
        Err(_) => Some(at_least),
    }
}

/// Groups claimed grants into lanes (one user and role each), starts before ends: a grant
/// that begins as another ends takes the mapping over.
fn into_lanes(claimed: Vec<Claimed>) -> Vec<Vec<Claimed>> {
    let mut lanes: BTreeMap<(String, String), Vec<Claimed>> = BTreeMap::new();
    for one in claimed {
        lanes
            .entry((one.grant.subject.clone(), one.grant.role_key.clone()))
            .or_default()
            .push(one);
    }
    lanes
        .into_values()
        .map(|mut lane| {
            lane.sort_by_key(|one| {
                (
                    one.grant.status() != GrantStatus::Scheduled,
                    one.grant.due_at,
                )
            });
            lane
        })
        .collect()
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
