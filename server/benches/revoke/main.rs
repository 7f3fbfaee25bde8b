//! Revocation benchmark. It measures how fast the grant scheduler removes role mappings in
//! a real Keycloak when many grants end at once, and compares that with plain loops of the
//! same DELETE calls. It also measures how late a single grant's mapping goes when the
//! grant ends alone.
//!
//! It needs the dev Keycloak (dev/keycloak.sh) on 127.0.0.1:`BENCH_KEYCLOAK_PORT`; run it
//! with bench/revoke.sh, which starts one. bench/README.md describes the phases and the
//! figures. Environment: `BENCH_KEYCLOAK_PORT` (8193), `BENCH_GRANTS` (2000),
//! `BENCH_LONE_GRANTS` (50), `BENCH_CONCURRENCY` (16, the scheduler's Keycloak calls in
//! flight), `BENCH_ROUNDS` (5), `BENCH_WITHOUT_KEYCLOAK` (1 runs only the phase without
//! Keycloak), `RUST_LOG` (warn).

mod mappings;
mod portal;
mod realm;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::server::grants::mappings::RoleMappings;
use app::server::keycloak::{KeycloakAdmin, RoleRef};
use reqwest::Method;

use mappings::{CallStats, ImmediateKeycloak, Recorder};
use portal::{Portal, RunningScheduler};
use realm::{MasterAdmin, Role, ServiceAccount};

pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

const ROLE_NAME: &str = "bench-role";
const CLIENT_ID: &str = "stint-portal";
const CLIENT_SECRET: &str = "stint-dev-secret";

/// Baseline loops: DELETE calls in flight at once.
const BASELINE_IN_FLIGHT: [usize; 3] = [1, 4, 16];

/// Requests in flight while users are created and deleted, and while mappings are re-added
/// between baseline runs.
const SETUP_IN_FLIGHT: usize = 8;

/// Seconds between two lone grants' ends, so that each is worked alone.
const LONE_SPACING: i64 = 1;

/// How long the mass revocation may take before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Targets: the drain takes at most 1.1 times the best plain loop, and a grant's lag from
/// its end to its removal is at most 1 s at the 99th percentile.
const DRAIN_TARGET_RATIO: f64 = 1.1;
const LAG_TARGET_SECONDS: f64 = 1.0;

struct Settings {
    keycloak_url: String,
    grants: usize,
    lone_grants: usize,
    concurrency: usize,
    /// Rounds of the mass revocation and the plain loops.
    rounds: usize,
    /// Run only the phase with a Keycloak that returns at once.
    without_keycloak: bool,
    /// Process id of Keycloak's JVM, to report its CPU time; bench/revoke.sh finds it.
    keycloak_pid: Option<String>,
}

impl Settings {
    fn from_env() -> Result<Self, BenchError> {
        let port: u16 = env_number("BENCH_KEYCLOAK_PORT", 8193)?;
        let settings = Self {
            keycloak_url: format!("http://127.0.0.1:{port}"),
            grants: env_number("BENCH_GRANTS", 2000)?,
            lone_grants: env_number("BENCH_LONE_GRANTS", 50)?,
            concurrency: env_number("BENCH_CONCURRENCY", 16)?,
            rounds: env_number("BENCH_ROUNDS", 5)?,
            without_keycloak: env_number("BENCH_WITHOUT_KEYCLOAK", 0_u8)? == 1,
            keycloak_pid: std::env::var("BENCH_KEYCLOAK_PID")
                .ok()
                .filter(|pid| !pid.is_empty()),
        };
        if settings.grants == 0 || settings.concurrency == 0 || settings.rounds == 0 {
            return Err(
                "BENCH_GRANTS, BENCH_CONCURRENCY and BENCH_ROUNDS must be at least 1".into(),
            );
        }
        if settings.lone_grants > settings.grants {
            return Err("BENCH_LONE_GRANTS must not exceed BENCH_GRANTS".into());
        }
        Ok(settings)
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BenchError> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("invalid {name} `{text}`: expected a whole number").into()),
        Err(_) => Ok(default),
    }
}

/// Returns the wall-clock time in Unix seconds with sub-second precision.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// Returns the whole Unix second `lead` seconds after the next full second.
fn second_after(lead: i64) -> i64 {
    unix_now().ceil() as i64 + lead
}

async fn sleep_until_unix(at: f64) {
    let wait = at - unix_now();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

/// Runs `work` on every item with `in_flight` loops that each take the next item until
/// none is left, and returns the first error.
async fn in_parallel<T, F, Fut>(items: Vec<T>, in_flight: usize, work: F) -> Result<(), BenchError>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let (items, next, work) = (items.clone(), next.clone(), work.clone());
        loops.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(index) else {
                    return Ok::<(), BenchError>(());
                };
                work(item).await?;
            }
        });
    }
    let mut first_error = None;
    while let Some(result) = loops.join_next().await {
        if let Err(error) = result.map_err(BenchError::from).and_then(|done| done) {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Returns the nearest-rank percentile `p` (0 to 1) of `sorted`, which is in ascending order.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Lag distribution in seconds.
struct Lags {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Lags {
    fn of(mut lags: Vec<f64>) -> Self {
        lags.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&lags, 0.50),
            p99: percentile(&lags, 0.99),
            max: lags.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl std::fmt::Display for Lags {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "p50 {:.3} s, p99 {:.3} s, max {:.3} s",
            self.p50, self.p99, self.max
        )
    }
}

/// A throwaway Keycloak user.
#[derive(Clone)]
pub struct BenchUser {
    pub id: String,
    pub username: String,
}

/// The outcome of one mass revocation.
struct Drain {
    /// From the shared end to the last successful DELETE.
    last_removal: f64,
    /// From the shared end to the last grant stored as ended.
    all_ended: f64,
    /// From the shared end until every ended grant's effective roles were read.
    effective_read: f64,
    /// From the shared end to the first Admin API read that found no holder of the role,
    /// polled every [`HOLDER_POLL`]. `None` when the run has no Keycloak.
    keycloak_empty: Option<f64>,
    lags: Lags,
    calls: BTreeMap<&'static str, CallStats>,
    /// CPU time used from the shared end to the last removal.
    cpu: CpuUse,
}

/// Interval between the Admin API reads that look for a remaining holder during a drain.
const HOLDER_POLL: Duration = Duration::from_millis(100);

/// Sets the end of every active grant to one whole second, 3 to 4 s ahead, and waits until
/// the scheduler has removed every mapping and stored every grant as ended.
async fn drain(
    portal: &Portal,
    scheduler: &RunningScheduler,
    recorder: &Recorder,
    subjects: &[String],
    keycloak: Option<(Arc<MasterAdmin>, &str)>,
    keycloak_pid: Option<&str>,
) -> Result<Drain, BenchError> {
    recorder.reset();
    let end = second_after(3);
    let moved = portal.end_active_at(end).await?;
    if moved != subjects.len() as u64 {
        return Err(format!("{moved} active grants, expected {}", subjects.len()).into());
    }

    scheduler.wake();
    sleep_until_unix(end as f64).await;
    let meter = CpuMeter::start(keycloak_pid);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while recorder.removed_count() < subjects.len() {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} mappings removed after {} s",
                recorder.removed_count(),
                subjects.len(),
                DRAIN_TIMEOUT.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = meter.stop();
    // Reading the role's holders is expensive for Keycloak with thousands of them, so the
    // Admin API is asked only once the wrapper saw the last removal: the read confirms
    // the removals without slowing them down.
    let keycloak_empty = match keycloak {
        Some((admin, role)) => loop {
            if !admin.role_has_holder(role).await? {
                break Some(unix_now() - end as f64);
            }
            if Instant::now() > deadline {
                return Err("the Admin API still lists a holder after every removal".into());
            }
            tokio::time::sleep(HOLDER_POLL).await;
        },
        None => None,
    };
    while portal.open_count().await? > 0 {
        if Instant::now() > deadline {
            return Err("grants still open after every mapping was removed".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let all_ended = unix_now() - end as f64;
    // The scheduler reads each user's effective roles after the burst of removals; wait for
    // those reads too, so that they do not overlap the next phase.
    while portal.effective_checks_pending().await? > 0 {
        if Instant::now() > deadline {
            return Err("effective-role reads still pending after every grant ended".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let effective_read = unix_now() - end as f64;
    let still_effective = portal.still_effective_count().await?;
    if still_effective > 0 {
        return Err(format!(
            "{still_effective} grants marked still effective, but no group or composite role holds the bench role"
        )
        .into());
    }

    let removals = recorder.removals();
    let mut lags = Vec::with_capacity(subjects.len());
    for subject in subjects {
        let at = removals
            .get(subject)
            .ok_or_else(|| format!("no removal recorded for user {subject}"))?;
        lags.push(at - end as f64);
    }
    let last_removal = lags.iter().copied().fold(f64::MIN, f64::max);
    Ok(Drain {
        last_removal,
        all_ended,
        effective_read,
        keycloak_empty,
        cpu,
        lags: Lags::of(lags),
        calls: recorder.calls(),
    })
}

fn print_calls(calls: &BTreeMap<&'static str, CallStats>) {
    for (name, stats) in calls {
        println!(
            "        {name:<22} {:>6} calls, mean {:>7.2} ms",
            stats.count,
            stats.seconds * 1000.0 / stats.count.max(1) as f64
        );
    }
}

/// Returns the 1-minute load average from /proc/loadavg, which shows whether other work
/// shared the machine during the run.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Runs the scheduler against a Keycloak that returns at once, to measure what the
/// database and the scheduling cost per grant.
async fn scheduler_overhead(settings: &Settings) -> Result<Drain, BenchError> {
    let portal = Portal::new(ROLE_NAME).await?;
    let role = RoleRef {
        id: "bench-role-id".into(),
        name: ROLE_NAME.into(),
        client_uuid: None,
    };
    let recorder = Recorder::new(Arc::new(ImmediateKeycloak { role }));
    let users: Vec<BenchUser> = (0..settings.grants)
        .map(|index| BenchUser {
            id: format!("immediate-user-{index}"),
            username: format!("immediate-user-{index}"),
        })
        .collect();
    for user in &users {
        portal.approve(user).await?;
    }
    let scheduler = portal.start_scheduler(recorder.clone(), settings.concurrency);
    portal.wait_active(users.len(), DRAIN_TIMEOUT).await?;
    let subjects: Vec<String> = users.into_iter().map(|user| user.id).collect();
    let result = drain(&portal, &scheduler, &recorder, &subjects, None, None).await;
    scheduler.stop().await;
    portal.close().await;
    result
}

/// One plain DELETE loop: calls in flight, seconds for all of them, and CPU time used.
struct Baseline {
    in_flight: usize,
    seconds: f64,
    cpu: CpuUse,
}

/// CPU seconds used over a stretch of the run, by the benchmark process (which holds the
/// scheduler and the loops) and by Keycloak's JVM when its process id is known.
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    bench: f64,
    keycloak: Option<f64>,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(out, "CPU: benchmark process {:.2} s", self.bench)?;
        match self.keycloak {
            Some(seconds) => write!(out, ", Keycloak {seconds:.2} s"),
            None => write!(out, ", Keycloak not measured (BENCH_KEYCLOAK_PID unset)"),
        }
    }
}

/// Reads the CPU time of a process from `/proc/PID/stat` at the start and the end of a
/// stretch.
struct CpuMeter {
    keycloak_pid: Option<String>,
    bench: f64,
    keycloak: Option<f64>,
}

impl CpuMeter {
    fn start(keycloak_pid: Option<&str>) -> Self {
        Self {
            keycloak_pid: keycloak_pid.map(str::to_owned),
            bench: cpu_seconds("self").unwrap_or(0.0),
            keycloak: keycloak_pid.and_then(cpu_seconds),
        }
    }

    fn stop(&self) -> CpuUse {
        let keycloak = match (&self.keycloak_pid, self.keycloak) {
            (Some(pid), Some(before)) => cpu_seconds(pid).map(|after| after - before),
            _ => None,
        };
        CpuUse {
            bench: cpu_seconds("self").unwrap_or(0.0) - self.bench,
            keycloak,
        }
    }
}

/// User plus system time of process `pid` (or `self`), all threads, in seconds. The
/// fields count ticks of USER_HZ, which Linux fixes at 100 for `/proc`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// Adds the bench role to every user again with a plain POST loop and checks that each
/// holds it. Every removal run, the scheduler's and the plain loops', starts after this
/// step, so that each meets Keycloak in the same state. In two runs without it, the drain
/// (which then met the mappings of its own apply phase) took 30 and 49 % more of Keycloak's
/// CPU time per DELETE than the plain loops right after a re-adding. The cause inside
/// Keycloak was not found. The re-adding and each loop take the users in a random order
/// of their own, as unrelated to each other as the scheduler's order by grant id is.
async fn restore_mappings(
    account: &Arc<ServiceAccount>,
    admin: &MasterAdmin,
    role: &Role,
    users: &[BenchUser],
) -> Result<(), BenchError> {
    let (adder, added_role) = (account.clone(), role.clone());
    in_parallel(shuffled_ids(users), SETUP_IN_FLIGHT, move |id| {
        let (account, role, id) = (adder.clone(), added_role.clone(), id.clone());
        async move { account.write_mapping(Method::POST, &id, &role).await }
    })
    .await?;
    let holders = admin.role_holder_count(&role.name).await?;
    if holders != users.len() {
        return Err(format!(
            "{holders} holders after re-adding, expected {}",
            users.len()
        )
        .into());
    }
    Ok(())
}

/// Times one plain loop of DELETE calls with `in_flight` in flight, over the users in a
/// random order, and checks that no holder is left.
async fn plain_loop(
    settings: &Settings,
    account: &Arc<ServiceAccount>,
    admin: &MasterAdmin,
    role: &Role,
    users: &[BenchUser],
    in_flight: usize,
) -> Result<Baseline, BenchError> {
    let ids = shuffled_ids(users);
    let (remover, removed_role) = (account.clone(), role.clone());
    let started = Instant::now();
    let meter = CpuMeter::start(settings.keycloak_pid.as_deref());
    in_parallel(ids, in_flight, move |id| {
        let (account, role, id) = (remover.clone(), removed_role.clone(), id.clone());
        async move { account.write_mapping(Method::DELETE, &id, &role).await }
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = meter.stop();
    let holders = admin.role_holder_count(&role.name).await?;
    if holders != 0 {
        return Err(format!("{holders} holders left after the DELETE loop").into());
    }
    eprintln!(
        "baseline: {in_flight} in flight removed {count} mappings in {seconds:.2} s",
        count = users.len()
    );
    Ok(Baseline {
        in_flight,
        seconds,
        cpu,
    })
}

/// Ends `users`' grants one at a time, [`LONE_SPACING`] apart, and returns each grant's
/// lag from its end to its successful DELETE.
async fn lone_grants(
    portal: &Portal,
    scheduler: &RunningScheduler,
    recorder: &Recorder,
    admin: &MasterAdmin,
    users: &[BenchUser],
) -> Result<Lags, BenchError> {
    let mut grants = Vec::with_capacity(users.len());
    for user in users {
        grants.push(portal.approve(user).await?);
    }
    scheduler.wake();
    portal.wait_active(users.len(), DRAIN_TIMEOUT).await?;

    recorder.reset();
    let first_end = second_after(3);
    for (index, grant) in grants.iter().enumerate() {
        portal
            .end_grant_at(grant, first_end + index as i64 * LONE_SPACING)
            .await?;
    }

    scheduler.wake();
    let last_end = first_end + (users.len() as i64 - 1) * LONE_SPACING;
    let deadline = last_end as f64 + DRAIN_TIMEOUT.as_secs_f64();
    while recorder.removed_count() < users.len() {
        if unix_now() > deadline {
            return Err(format!(
                "only {} of {} lone grants revoked",
                recorder.removed_count(),
                users.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let removals = recorder.removals();
    let mut lags = Vec::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let end = first_end + index as i64 * LONE_SPACING;
        let at = removals
            .get(&user.id)
            .ok_or_else(|| format!("no removal recorded for user {}", user.username))?;
        lags.push(at - end as f64);
        if admin.has_realm_role(&user.id, ROLE_NAME).await? {
            return Err(format!("user {} still holds {ROLE_NAME}", user.username).into());
        }
    }
    Ok(Lags::of(lags))
}

/// Creates `count` users named after `run` with [`SETUP_IN_FLIGHT`] requests at once.
/// Returns the users created, sorted by name, also when a creation failed.
async fn create_users(
    admin: &Arc<MasterAdmin>,
    run: &str,
    count: usize,
) -> (Vec<BenchUser>, Result<(), BenchError>) {
    let created = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let names: Vec<String> = (0..count)
        .map(|index| format!("bench-{run}-{index:05}"))
        .collect();
    let (creator, list) = (admin.clone(), created.clone());
    let result = in_parallel(names, SETUP_IN_FLIGHT, move |username| {
        let (admin, list, username) = (creator.clone(), list.clone(), username.clone());
        async move {
            let id = admin.create_user(&username).await?;
            list.lock().unwrap().push(BenchUser { id, username });
            Ok(())
        }
    })
    .await;
    let mut users = std::mem::take(&mut *created.lock().unwrap());
    users.sort_by(|a, b| a.username.cmp(&b.username));
    (users, result)
}

async fn delete_users(admin: &Arc<MasterAdmin>, users: &[BenchUser]) -> Result<(), BenchError> {
    let ids: Vec<String> = users.iter().map(|user| user.id.clone()).collect();
    let deleter = admin.clone();
    in_parallel(ids, SETUP_IN_FLIGHT, move |id| {
        let (admin, id) = (deleter.clone(), id.clone());
        async move { admin.delete_user(&id).await }
    })
    .await
}

/// One round: the scheduler's mass revocation and the plain loops, each started from the
/// same Keycloak state.
struct Round {
    /// Seconds the scheduler took to apply this round's grants.
    apply_seconds: f64,
    drain: Drain,
    loops: Vec<Baseline>,
}

impl Round {
    /// Returns the fastest plain loop as (in flight, seconds).
    fn best_loop(&self) -> (usize, f64) {
        self.loops
            .iter()
            .map(|run| (run.in_flight, run.seconds))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::NAN))
    }

    /// Returns the drain's time as a multiple of the fastest plain loop.
    fn ratio(&self) -> f64 {
        self.drain.last_removal / self.best_loop().1
    }
}

/// Figures of the runs against Keycloak.
struct KeycloakFigures {
    rounds: Vec<Round>,
    lone: Lags,
}

/// One timed removal run of a round.
#[derive(Clone, Copy)]
enum RemovalRun {
    Scheduler,
    Loop(usize),
}

/// Returns the order of round `round`'s removal runs. The plain loops rotate by one place
/// each round, and the scheduler's drain moves from second to last place, so that it always
/// follows a plain loop. In the first place, the drain would meet the mappings as its own
/// apply phase left them, which the loops never do.
fn round_order(round: usize) -> Vec<RemovalRun> {
    let mut order: Vec<RemovalRun> = BASELINE_IN_FLIGHT.map(RemovalRun::Loop).to_vec();
    let loops = order.len();
    order.rotate_left(round % loops);
    order.insert(1 + round % loops, RemovalRun::Scheduler);
    order
}

/// Returns the ids of `users` in a new random order.
fn shuffled_ids(users: &[BenchUser]) -> Vec<String> {
    let mut ids: Vec<String> = users.iter().map(|user| user.id.clone()).collect();
    fastrand::shuffle(&mut ids);
    ids
}

/// Runs `settings.rounds` rounds. In each, the scheduler applies one new grant per user,
/// then the drain and the plain loops run in [`round_order`], each after
/// [`restore_mappings`]. Then the lone grants run.
async fn keycloak_phases(
    settings: &Settings,
    http: &reqwest::Client,
    admin: &Arc<MasterAdmin>,
    role: &Role,
    users: &[BenchUser],
) -> Result<KeycloakFigures, BenchError> {
    let portal = Portal::new(ROLE_NAME).await?;
    let keycloak = KeycloakAdmin::new(
        http.clone(),
        &settings.keycloak_url,
        "stint",
        CLIENT_ID,
        CLIENT_SECRET,
    );
    let recorder = Recorder::new(Arc::new(keycloak) as Arc<dyn RoleMappings>);
    let scheduler = portal.start_scheduler(recorder.clone(), settings.concurrency);
    let subjects: Vec<String> = users.iter().map(|user| user.id.clone()).collect();
    let figures = async {
        let mut rounds = Vec::with_capacity(settings.rounds);
        for round in 0..settings.rounds {
            let started = Instant::now();
            for user in users {
                portal.approve(user).await?;
            }
            eprintln!(
                "round {}: stored {} approved grants in {:.1} s",
                round + 1,
                users.len(),
                started.elapsed().as_secs_f64()
            );
            let started = Instant::now();
            scheduler.wake();
            portal.wait_active(users.len(), DRAIN_TIMEOUT).await?;
            let apply_seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "round {}: the scheduler applied {} grants in {apply_seconds:.1} s",
                round + 1,
                users.len()
            );

            // The token lives for the realm's access-token lifespan (300 s in the dev realm),
            // longer than a round.
            let account = Arc::new(
                ServiceAccount::sign_in(
                    http.clone(),
                    &settings.keycloak_url,
                    CLIENT_ID,
                    CLIENT_SECRET,
                )
                .await?,
            );
            let mut drain_figures = None;
            let mut loops = Vec::new();
            for run in round_order(round) {
                restore_mappings(&account, admin, role, users).await?;
                match run {
                    RemovalRun::Scheduler => {
                        let figures = drain(
                            &portal,
                            &scheduler,
                            &recorder,
                            &subjects,
                            Some((admin.clone(), &role.name)),
                            settings.keycloak_pid.as_deref(),
                        )
                        .await?;
                        let holders = admin.role_holder_count(&role.name).await?;
                        if holders != 0 {
                            return Err(format!(
                                "{holders} holders left after the scheduler's drain"
                            )
                            .into());
                        }
                        eprintln!(
                            "round {}: the scheduler removed {} mappings in {:.2} s",
                            round + 1,
                            users.len(),
                            figures.last_removal
                        );
                        drain_figures = Some(figures);
                    }
                    RemovalRun::Loop(in_flight) => {
                        loops.push(
                            plain_loop(settings, &account, admin, role, users, in_flight).await?,
                        );
                    }
                }
            }
            let drain = drain_figures.ok_or("the round had no scheduler run")?;
            loops.sort_by_key(|run| run.in_flight);
            rounds.push(Round {
                apply_seconds,
                drain,
                loops,
            });
        }
        let lone = lone_grants(
            &portal,
            &scheduler,
            &recorder,
            admin,
            &users[..settings.lone_grants],
        )
        .await?;
        Ok::<KeycloakFigures, BenchError>(KeycloakFigures { rounds, lone })
    }
    .await;
    scheduler.stop().await;
    portal.close().await;
    figures
}

/// Returns the median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let count = values.len();
    match count {
        0 => f64::NAN,
        _ if count % 2 == 1 => values[count / 2],
        _ => (values[count / 2 - 1] + values[count / 2]) / 2.0,
    }
}

fn print_report(
    settings: &Settings,
    overhead: &Drain,
    figures: &KeycloakFigures,
    load_at_start: &str,
) {
    let n = settings.grants;
    println!();
    println!(
        "revocation benchmark, {n} grants, scheduler concurrency {}, {} rounds, portal database {}",
        settings.concurrency,
        settings.rounds,
        portal::engine()
    );
    println!(
        "  1-minute load average: {load_at_start} at the start, {} at the end, on {} CPUs",
        load_average(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "  scheduler, Keycloak that returns at once: last removal {:.2} s, all ended {:.2} s, effective roles read {:.2} s after the shared end; benchmark process CPU {:.2} s until the last removal",
        overhead.last_removal, overhead.all_ended, overhead.effective_read, overhead.cpu.bench
    );

    for (index, round) in figures.rounds.iter().enumerate() {
        let drain = &round.drain;
        let (best_in_flight, best) = round.best_loop();
        println!("  round {}:", index + 1);
        println!(
            "    scheduler applied {n} grants in {:.1} s",
            round.apply_seconds
        );
        println!("    scheduler, {n} grants ending at one second:");
        println!(
            "      last mapping removed   {:.2} s after the end",
            drain.last_removal
        );
        if let Some(empty) = drain.keycloak_empty {
            println!(
                "      Admin API found no holder {empty:.2} s after the end (read once every removal returned, then every {} ms)",
                HOLDER_POLL.as_millis()
            );
        }
        println!(
            "      last grant stored ended {:.2} s after the end",
            drain.all_ended
        );
        println!(
            "      effective roles read   {:.2} s after the end, for every grant",
            drain.effective_read
        );
        println!("      per-grant lag          {}", drain.lags);
        println!("      {} until the last removal", drain.cpu);
        println!("      Keycloak calls during the drain:");
        print_calls(&drain.calls);
        for run in &round.loops {
            println!(
                "    plain DELETE loop, {:>2} in flight: {:.2} s, {}",
                run.in_flight, run.seconds, run.cpu
            );
        }
        println!(
            "    drain / fastest plain loop ({best:.2} s at {best_in_flight} in flight): {:.2}x",
            round.ratio()
        );
    }
    println!(
        "  lone grants ({}): lag {}",
        settings.lone_grants, figures.lone
    );

    // The limit is the plain loop whose median over the rounds is lowest. Medians, not the
    // fastest single run: the same loop varied by up to 1.5 times from run to run here, and
    // the fastest of several runs would set the bar by luck.
    let drains: Vec<f64> = figures
        .rounds
        .iter()
        .map(|round| round.drain.last_removal)
        .collect();
    let (limit_in_flight, limit) = BASELINE_IN_FLIGHT
        .iter()
        .map(|in_flight| {
            let runs: Vec<f64> = figures
                .rounds
                .iter()
                .flat_map(|round| &round.loops)
                .filter(|run| run.in_flight == *in_flight)
                .map(|run| run.seconds)
                .collect();
            (*in_flight, median(runs))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    let drain = median(drains.clone());
    let ratio = drain / limit;
    let p99s: Vec<f64> = figures
        .rounds
        .iter()
        .map(|round| round.drain.lags.p99)
        .collect();
    let p99 = median(p99s.clone());
    let list = |values: &[f64], unit: &str| {
        values
            .iter()
            .map(|value| format!("{value:.2}{unit}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("targets (medians over the rounds):");
    println!(
        "  drain within {DRAIN_TARGET_RATIO}x the limit: drain {drain:.2} s (rounds: {}), limit {limit:.2} s (plain loop at {limit_in_flight} in flight): {ratio:.2}x, {}",
        list(&drains, " s"),
        verdict(ratio <= DRAIN_TARGET_RATIO)
    );
    println!(
        "  per-grant lag p99 <= {LAG_TARGET_SECONDS} s, {n} grants at once: median {p99:.3} s (rounds: {}), {}",
        list(&p99s, " s"),
        verdict(p99 <= LAG_TARGET_SECONDS)
    );
    println!(
        "  per-grant lag p99 <= {LAG_TARGET_SECONDS} s, lone grants: {:.3} s, {}",
        figures.lone.p99,
        verdict(figures.lone.p99 <= LAG_TARGET_SECONDS)
    );
}

async fn run(settings: Settings) -> Result<(), BenchError> {
    let load_at_start = load_average();
    let overhead = scheduler_overhead(&settings).await?;
    eprintln!(
        "without Keycloak the scheduler ended {} grants in {:.2} s",
        settings.grants, overhead.all_ended
    );
    if settings.without_keycloak {
        println!(
            "scheduler, Keycloak that returns at once, {} grants, concurrency {}: last removal {:.2} s, all ended {:.2} s after the shared end, lag {}",
            settings.grants, settings.concurrency, overhead.last_removal, overhead.all_ended, overhead.lags
        );
        return Ok(());
    }

    let http = server::state::http_client()?;
    let admin = Arc::new(MasterAdmin::new(http.clone(), &settings.keycloak_url));
    let role = admin.create_role(ROLE_NAME).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started = Instant::now();
    let (users, created) = create_users(&admin, &run, settings.grants).await;
    let figures = match created {
        Ok(()) => {
            eprintln!(
                "created {} users in {:.1} s",
                users.len(),
                started.elapsed().as_secs_f64()
            );
            keycloak_phases(&settings, &http, &admin, &role, &users).await
        }
        Err(error) => Err(format!("creating the users failed: {error}").into()),
    };
    // The cleanup runs after a failed phase too, so a reused Keycloak keeps no bench users.
    let cleanup = async {
        delete_users(&admin, &users).await?;
        admin.delete_role(ROLE_NAME).await
    }
    .await;
    let figures = figures?;
    cleanup?;
    print_report(&settings, &overhead, &figures, &load_at_start);
    Ok(())
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = Settings::from_env().and_then(|settings| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(settings))
    });
    if let Err(error) = result {
        eprintln!("revocation benchmark failed: {error}");
        std::process::exit(1);
    }
}
