//! Fleet mode: one process relaying from many databases (a database per tenant or per shard)
//! whose list changes while it runs.
//!
//! A [`Fleet`] keeps one [`Relay`] per database it is given, each started by a function of
//! yours from the database's URL. [`Fleet::update`] hands it the whole list (from a
//! configuration file, a catalog database, a directory...): databases new to the list are
//! started at once, those no longer on it are shut down cleanly (the bursts in flight finish),
//! the others are left alone. A database that cannot be reached, at the start or later, is
//! never fatal and never slows the others: its start is tried again with a backoff (1 s,
//! doubling up to a minute), and [`Fleet::status`] and [`Fleet::readiness`] say why it is
//! down.
//!
//! ```no_run
//! # async fn demo() -> signalbus_core::Result<()> {
//! use signalbus_core::fleet::{Fleet, ReadyPolicy};
//! use signalbus_core::relay::BurstShare;
//! use signalbus_core::{SignalBus, SignalType};
//! use std::time::Duration;
//!
//! // Bursts of every tenant take turns: a tenant with a backlog never delays the others'
//! // new signals by more than a burst each.
//! let share = BurstShare::new(4);
//! let fleet = Fleet::builder(move |url: String| {
//!     let share = share.clone();
//!     async move {
//!         let pool = sqlx::PgPool::connect(&url).await?;
//!         let bus = SignalBus::builder(pool)
//!             .name(signalbus_core::redact::redact_url(&url))
//!             .register_type(SignalType::new("order_placed"))
//!             .build()?;
//!         bus.relay().share(share).start().await
//!     }
//! })
//! .build();
//! fleet.update(["postgres://db-1/shop".to_owned(), "postgres://db-2/shop".to_owned()]);
//! // ... later, from the catalog:
//! fleet.update(["postgres://db-2/shop".to_owned(), "postgres://db-3/shop".to_owned()]);
//! let ready = fleet.readiness(ReadyPolicy::All).await;
//! println!("ready: {}", ready.ready);
//! fleet.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

use crate::engine::relay::{Readiness, ReadinessCheck, Relay, failure_wait_between};
use crate::redact::redact_url;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Starts the relay of one database from its URL; a failure is kept as its text (with its
/// causes).
type Starter = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::result::Result<Relay, String>> + Send>>
        + Send
        + Sync,
>;

/// `error` and its causes, on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        // Some errors repeat their source's text in their own.
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}

/// Builds a [`Fleet`]; from [`Fleet::builder`].
pub struct FleetBuilder {
    start: Starter,
    retry_min: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
    start_timeout: Duration,
    checks_at_once: usize,
}

impl std::fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl FleetBuilder {
    /// After a failed start, wait `min` before the next, doubling up to `max` (default 1 s
    /// and 60 s, with jitter).
    pub fn retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_min);
        self
    }

    /// How long a database removed from the list may take to finish its bursts in flight
    /// (default 10 s); see [`Relay::shutdown`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long one start may take before it counts as failed (default 60 s): a database that
    /// takes connections and never answers must not keep its relay from ever starting.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How many readiness checks [`Fleet::readiness`] runs at once (default 256: each waits
    /// at most 2 s, so that a probe over hundreds of databases that do not answer still gets
    /// its answer within a few seconds).
    pub fn checks_at_once(mut self, n: usize) -> Self {
        self.checks_at_once = n.max(1);
        self
    }

    /// The fleet, empty: give it its databases with [`Fleet::update`]. Its tasks run on the
    /// current tokio runtime.
    pub fn build(self) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                settings: Arc::new(Settings {
                    start: self.start,
                    retry_min: self.retry_min,
                    retry_max: self.retry_max,
                    shutdown_timeout: self.shutdown_timeout,
                    start_timeout: self.start_timeout,
                }),
                checks_at_once: self.checks_at_once,
                members: Mutex::new(BTreeMap::new()),
                leaving: Mutex::new(JoinSet::new()),
            }),
        }
    }
}

/// Relays over a changing set of databases; see the [module](self) documentation. Cheap to
/// clone: clones share the fleet.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("databases", &self.len())
            .finish()
    }
}

struct Inner {
    /// What the members' tasks need (not the fleet itself: dropping the last handle of the
    /// fleet drops the members' stop senders, which stops them).
    settings: Arc<Settings>,
    checks_at_once: usize,
    /// The databases on the list, by URL.
    members: Mutex<BTreeMap<String, Member>>,
    /// Members removed from the list, finishing their bursts.
    leaving: Mutex<JoinSet<bool>>,
}

/// How a member starts, retries and stops.
struct Settings {
    start: Starter,
    retry_min: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
    start_timeout: Duration,
}

/// One database of the fleet: the task that starts (and restarts) its relay.
struct Member {
    name: String,
    state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<bool>,
}

/// Where a database of the fleet stands.
#[derive(Clone)]
enum State {
    Starting {
        attempts: u32,
        last_error: Option<String>,
    },
    Relaying {
        since: SystemTime,
        check: ReadinessCheck,
    },
    Retrying {
        attempts: u32,
        since: SystemTime,
        last_error: String,
        next_attempt: SystemTime,
    },
}

/// What [`Fleet::update`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// Databases (their names, credentials left out) started now.
    pub added: Vec<String>,
    /// Databases let go now (their bursts in flight finish first).
    pub removed: Vec<String>,
    /// How many were on the list before and stay on it.
    pub kept: usize,
}

/// What a database of the fleet is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseState {
    /// Its relay is being started (the first attempt, or again after a failure).
    Starting,
    /// Its relay runs (whose own readiness says whether the database answers now).
    Relaying,
    /// Its relay could not start; the next attempt is at `next_attempt`.
    Retrying {
        /// When the next attempt begins.
        next_attempt: SystemTime,
    },
}

/// One database of a fleet, as [`Fleet::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatabaseStatus {
    /// The database's URL with its password left out (the relay's bus name).
    pub name: String,
    /// What it is doing.
    pub state: DatabaseState,
    /// Failed starts in a row (0 once its relay runs).
    pub failed_starts: u32,
    /// Why the last start failed, while it is not relaying.
    pub last_error: Option<String>,
    /// Since when it relays, or since when it fails to start.
    pub since: Option<SystemTime>,
}

impl DatabaseStatus {
    /// Whether its relay runs.
    pub fn is_up(&self) -> bool {
        self.state == DatabaseState::Relaying
    }
}

/// When a fleet as a whole counts as ready (a `/readyz` that a load balancer or an
/// orchestrator reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadyPolicy {
    /// Every database and the bus answer (the default: one database down is worth a look).
    #[default]
    All,
    /// At least one database answers (a fleet that keeps serving while tenants come and go).
    Any,
    /// At least this percentage (0 to 100) of the databases answer.
    AtLeastPercent(u8),
}

impl std::str::FromStr for ReadyPolicy {
    type Err = String;

    /// `all`, `any`, or a percentage such as `90%`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "all" => Ok(ReadyPolicy::All),
            "any" => Ok(ReadyPolicy::Any),
            other => other
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u8>().ok())
                .filter(|n| *n <= 100)
                .map(ReadyPolicy::AtLeastPercent)
                .ok_or_else(|| {
                    format!(
                        "`{other}`: a ready policy is `all`, `any` or a percentage such as `90%`"
                    )
                }),
        }
    }
}

impl ReadyPolicy {
    /// Whether `up` of `total` databases are enough.
    pub fn holds(self, up: usize, total: usize) -> bool {
        match self {
            ReadyPolicy::All => up == total,
            ReadyPolicy::Any => up > 0 || total == 0,
            ReadyPolicy::AtLeastPercent(p) => up * 100 >= total * usize::from(p),
        }
    }
}

/// The fleet's readiness: each database's, and the policy's verdict.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetReadiness {
    /// Whether the policy holds.
    pub ready: bool,
    /// Databases whose relay runs and whose database and bus answer.
    pub up: usize,
    /// Each database: its relay's readiness, or why its relay does not run.
    pub databases: Vec<(String, std::result::Result<Readiness, String>)>,
}

impl Fleet {
    /// A fleet whose relays `start` starts, each from its database's URL (see the
    /// [module](self) documentation). Its error (your own type, or [`crate::Error`]) is
    /// reported with its causes by [`Fleet::status`] and in the log.
    pub fn builder<F, Fut, E>(start: F) -> FleetBuilder
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Relay, E>> + Send + 'static,
        E: std::error::Error + Send + 'static,
    {
        let start = Arc::new(start);
        FleetBuilder {
            start: Arc::new(move |url| {
                let started = start(url);
                Box::pin(async move { started.await.map_err(|e| with_causes(&e)) })
            }),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            checks_at_once: 256,
        }
    }

    /// Serve exactly these databases from now on (duplicates count once): start the new
    /// ones, let go of those not listed. Returns at once; the starts and stops run on.
    pub fn update<I, S>(&self, urls: I) -> Change
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let wanted: std::collections::BTreeSet<String> = urls.into_iter().map(Into::into).collect();
        let mut change = Change::default();
        let mut members = self.inner.members.lock().expect("fleet lock");
        let gone: Vec<String> = members
            .keys()
            .filter(|url| !wanted.contains(*url))
            .cloned()
            .collect();
        for url in gone {
            if let Some(member) = members.remove(&url) {
                tracing::info!(bus = %member.name, "fleet: database removed from the list; letting it go");
                let _ = member.stop.send(true);
                change.removed.push(member.name);
                self.inner
                    .leaving
                    .lock()
                    .expect("fleet lock")
                    .spawn(async move { member.task.await.unwrap_or(false) });
            }
        }
        for url in wanted {
            if members.contains_key(&url) {
                change.kept += 1;
                continue;
            }
            let name = redact_url(&url);
            tracing::info!(bus = %name, "fleet: database added to the list; starting its relay");
            let state = Arc::new(Mutex::new(State::Starting {
                attempts: 0,
                last_error: None,
            }));
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(run_member(
                self.inner.settings.clone(),
                url.clone(),
                name.clone(),
                state.clone(),
                stopped,
            ));
            change.added.push(name.clone());
            members.insert(
                url,
                Member {
                    name,
                    state,
                    stop,
                    task,
                },
            );
        }
        // Reap the members that finished leaving.
        let mut leaving = self.inner.leaving.lock().expect("fleet lock");
        while leaving.try_join_next().is_some() {}
        change
    }

    /// How many databases are on the list.
    pub fn len(&self) -> usize {
        self.inner.members.lock().expect("fleet lock").len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the databases on the list (their buses' names), sorted.
    pub fn names(&self) -> Vec<String> {
        let members = self.inner.members.lock().expect("fleet lock");
        let mut names: Vec<String> = members.values().map(|m| m.name.clone()).collect();
        names.sort();
        names
    }

    /// Each database on the list, by name.
    pub fn status(&self) -> Vec<DatabaseStatus> {
        let members = self.inner.members.lock().expect("fleet lock");
        let mut all: Vec<DatabaseStatus> = members
            .values()
            .map(|m| status_of(&m.name, &m.state.lock().expect("fleet lock")))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Ask every relaying database and the bus whether they answer now (a few at a time), and
    /// whether `policy` holds.
    pub async fn readiness(&self, policy: ReadyPolicy) -> FleetReadiness {
        let probes: Vec<(String, std::result::Result<ReadinessCheck, String>)> = {
            let members = self.inner.members.lock().expect("fleet lock");
            members
                .values()
                .map(|m| {
                    let probe = match &*m.state.lock().expect("fleet lock") {
                        State::Relaying { check, .. } => Ok(check.clone()),
                        other => Err(match status_of(&m.name, other).last_error {
                            Some(e) => format!("not relaying: {e}"),
                            None => "not relaying yet: starting".to_owned(),
                        }),
                    };
                    (m.name.clone(), probe)
                })
                .collect()
        };
        let total = probes.len();
        // A few at a time: each takes a connection of its database and asks the bus.
        let turns = Arc::new(tokio::sync::Semaphore::new(self.inner.checks_at_once));
        let mut asked = JoinSet::new();
        for (name, probe) in probes {
            let turns = turns.clone();
            asked.spawn(async move {
                match probe {
                    Ok(check) => {
                        let _turn = turns.acquire_owned().await;
                        (name, Ok(check().await))
                    }
                    Err(why) => (name, Err(why)),
                }
            });
        }
        let mut databases = Vec::with_capacity(total);
        while let Some(answer) = asked.join_next().await {
            if let Ok(answer) = answer {
                databases.push(answer);
            }
        }
        databases.sort_by(|a, b| a.0.cmp(&b.0));
        let up = databases
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(Readiness::is_ready))
            .count();
        FleetReadiness {
            // A fleet with no database sends nothing: not ready, whatever the policy.
            ready: total > 0 && policy.holds(up, total),
            up,
            databases,
        }
    }

    /// Let every database go: each relay finishes its bursts in flight within the builder's
    /// [`FleetBuilder::shutdown_timeout`], and this waits at most `timeout` (plus a second)
    /// for all of them. Returns `true` when all finished in time (see [`Relay::shutdown`]).
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let members: Vec<Member> = {
            let mut members = self.inner.members.lock().expect("fleet lock");
            std::mem::take(&mut *members).into_values().collect()
        };
        let mut all = std::mem::take(&mut *self.inner.leaving.lock().expect("fleet lock"));
        for member in members {
            let _ = member.stop.send(true);
            all.spawn(async move { member.task.await.unwrap_or(false) });
        }
        // Each member's relay keeps to `shutdown_timeout`; this bounds the whole.
        let wait = async {
            let mut clean = true;
            while let Some(done) = all.join_next().await {
                clean &= done.unwrap_or(false);
            }
            clean
        };
        tokio::time::timeout(timeout + Duration::from_secs(1), wait)
            .await
            .unwrap_or(false)
    }
}

fn status_of(name: &str, state: &State) -> DatabaseStatus {
    let (state, failed_starts, last_error, since) = match state {
        State::Starting {
            attempts,
            last_error,
        } => (DatabaseState::Starting, *attempts, last_error.clone(), None),
        State::Relaying { since, .. } => (DatabaseState::Relaying, 0, None, Some(*since)),
        State::Retrying {
            attempts,
            since,
            last_error,
            next_attempt,
        } => (
            DatabaseState::Retrying {
                next_attempt: *next_attempt,
            },
            *attempts,
            Some(last_error.clone()),
            Some(*since),
        ),
    };
    DatabaseStatus {
        name: name.to_owned(),
        state,
        failed_starts,
        last_error,
        since,
    }
}

fn set(state: &Mutex<State>, to: State) {
    if let Ok(mut state) = state.lock() {
        *state = to;
    }
}

/// Start `url`'s relay, again after each failure (with a backoff), until `stop` fires; then
/// shut it down. Returns whether the shutdown was clean.
async fn run_member(
    fleet: Arc<Settings>,
    url: String,
    name: String,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut failures = 0u32;
    let mut failing_since = None;
    let up = metrics::gauge!("signalbus_database_up", "bus" => name.clone());
    loop {
        // A task of its own: a start that panics is a failed start, tried again.
        let mut start = tokio::spawn(tokio::time::timeout(
            fleet.start_timeout,
            (fleet.start)(url.clone()),
        ));
        let started = tokio::select! {
            started = &mut start => match started {
                Ok(Ok(started)) => started,
                Ok(Err(_)) => Err(format!(
                    "the relay did not start within {:?} (the database takes connections but does not answer?)",
                    fleet.start_timeout
                )),
                Err(e) => Err(format!("the relay's start failed: {e}")),
            },
            _ = stop.wait_for(|s| *s) => {
                start.abort();
                return true;
            }
        };
        match started {
            Ok(relay) => {
                if failures > 0 {
                    tracing::info!(bus = %name, failed_starts = failures, "fleet: the database is back; relaying");
                }
                up.set(1.0);
                set(
                    &state,
                    State::Relaying {
                        since: SystemTime::now(),
                        check: relay.readiness_check(),
                    },
                );
                let _ = stop.wait_for(|s| *s).await;
                up.set(0.0);
                return relay.shutdown(fleet.shutdown_timeout).await;
            }
            Err(e) => {
                failures += 1;
                up.set(0.0);
                metrics::counter!("signalbus_database_start_failures_total", "bus" => name.clone())
                    .increment(1);
                let wait = failure_wait_between(failures, fleet.retry_min, fleet.retry_max);
                let since = *failing_since.get_or_insert_with(SystemTime::now);
                let error = e;
                tracing::warn!(bus = %name, error = %error, failed_starts = failures, retry_in = ?wait, "fleet: cannot start relaying from this database; its signals stay pending, trying again");
                set(
                    &state,
                    State::Retrying {
                        attempts: failures,
                        since,
                        last_error: error.clone(),
                        next_attempt: SystemTime::now() + wait,
                    },
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return true,
                }
                set(
                    &state,
                    State::Starting {
                        attempts: failures,
                        last_error: Some(error),
                    },
                );
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::publisher::MemoryPublisher;
    use crate::{SignalBus, SignalType};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A bus over a fresh in-memory SQLite database with one migrated type.
    async fn bus(name: &str) -> SignalBus<sqlx::Sqlite> {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let bus = SignalBus::builder(pool)
            .name(name)
            .publisher(MemoryPublisher::new())
            .register_type(SignalType::new("fleet_test"))
            .autoflush(false)
            .build()
            .unwrap();
        bus.migrate().await.unwrap();
        bus
    }

    async fn until(fleet: &Fleet, what: &str, holds: impl Fn(&[DatabaseStatus]) -> bool) {
        let started = std::time::Instant::now();
        while !holds(&fleet.status()) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                fleet.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_ready_policy_reads_and_holds() {
        assert_eq!("all".parse(), Ok(ReadyPolicy::All));
        assert_eq!("any".parse(), Ok(ReadyPolicy::Any));
        assert_eq!(" 90% ".parse(), Ok(ReadyPolicy::AtLeastPercent(90)));
        assert!("101%".parse::<ReadyPolicy>().is_err());
        assert!(
            "most"
                .parse::<ReadyPolicy>()
                .unwrap_err()
                .contains("`most`")
        );
        assert!(ReadyPolicy::All.holds(3, 3) && !ReadyPolicy::All.holds(2, 3));
        assert!(ReadyPolicy::Any.holds(1, 3) && !ReadyPolicy::Any.holds(0, 3));
        assert!(ReadyPolicy::Any.holds(0, 0), "an empty fleet is not down");
        assert!(ReadyPolicy::AtLeastPercent(90).holds(9, 10));
        assert!(!ReadyPolicy::AtLeastPercent(90).holds(8, 10));
    }

    #[tokio::test]
    async fn a_database_that_cannot_start_is_retried_and_the_others_run() {
        let failures = Arc::new(AtomicU32::new(0));
        let buses: Arc<Mutex<BTreeMap<String, SignalBus<sqlx::Sqlite>>>> = Arc::default();
        for name in ["a", "b", "c"] {
            let made = bus(name).await;
            buses.lock().unwrap().insert(name.into(), made);
        }
        let (seen, known) = (failures.clone(), buses.clone());
        let fleet = Fleet::builder(move |url: String| {
            let (seen, bus) = (seen.clone(), known.lock().unwrap().get(&url).cloned());
            async move {
                // `b` fails its first two starts, as a database down at the start would.
                if url == "b" && seen.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(crate::Error::Config("b is down".into()));
                }
                bus.expect("a known bus").relay().start().await
            }
        })
        .retry(Duration::from_millis(300), Duration::from_millis(300))
        .build();
        let change = fleet.update(["a", "b"]);
        assert_eq!(change.added, ["a", "b"]);
        until(&fleet, "both relaying", |s| {
            s.iter().all(DatabaseStatus::is_up)
        })
        .await;
        assert_eq!(
            failures.load(Ordering::SeqCst),
            3,
            "two failures, then a start"
        );
        let ready = fleet.readiness(ReadyPolicy::All).await;
        assert!(ready.ready && ready.up == 2, "{ready:?}");
        // c comes, a goes; b is left alone.
        let change = fleet.update(["b".to_owned(), "c".to_owned(), "c".to_owned()]);
        assert_eq!(
            (change.added, change.removed, change.kept),
            (vec!["c".to_owned()], vec!["a".to_owned()], 1)
        );
        until(&fleet, "c relaying", |s| {
            s.len() == 2 && s.iter().all(DatabaseStatus::is_up)
        })
        .await;
        assert_eq!(failures.load(Ordering::SeqCst), 3, "b was not restarted");
        assert!(fleet.shutdown(Duration::from_secs(5)).await);
        assert!(fleet.is_empty());
    }

    #[tokio::test]
    async fn a_start_that_never_answers_times_out_and_is_retried() {
        let fleet = Fleet::builder(|_: String| async {
            std::future::pending::<()>().await;
            Err::<Relay, crate::Error>(crate::Error::Config("unreachable".into()))
        })
        .start_timeout(Duration::from_millis(50))
        .retry(Duration::from_millis(10), Duration::from_millis(10))
        .build();
        fleet.update(["x"]);
        until(&fleet, "timed out twice", |s| s[0].failed_starts >= 2).await;
        assert!(
            fleet.status()[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("did not start within")
        );
        let ready = fleet.readiness(ReadyPolicy::All).await;
        assert!(!ready.ready);
        assert!(
            ready.databases[0]
                .1
                .as_ref()
                .unwrap_err()
                .contains("not relaying")
        );
        // Stopping waits for no start.
        assert!(fleet.shutdown(Duration::from_secs(1)).await);
    }
}
