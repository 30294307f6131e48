//! The relay: an always-on sender of pending signals.
//!
//! A relay drains the selected signal types continuously, each in a *lane* of its own: claim
//! a burst, publish it, settle it (as [`SignalBus::flush_many`](crate::SignalBus::flush_many) does, or
//! [`SignalBus::flush_ordered`](crate::SignalBus::flush_ordered) in ordered mode), again at once while there is more, and
//! otherwise wait until it is woken:
//!
//! * **PostgreSQL**: `migrate` installs a statement-level trigger on each signal table that
//!   notifies the channel `signalbus` (one notification per inserting transaction and table,
//!   whoever writes the rows, in any language); the relay listens on a connection of its own
//!   and wakes the lane of the notified table at once. A poll every `poll_max` catches
//!   retries whose backoff ended and anything missed while the listening connection was
//!   down (it reconnects by itself).
//! * **MySQL/MariaDB, SQLite**: an adaptive poll: after an empty round the lane waits
//!   `poll_min`, doubling up to `poll_max` while nothing comes, and back to `poll_min` as
//!   soon as a round finds rows. A signal waits at most `poll_max` plus one burst.
//!
//! Several relays (processes or tasks) may run against one database: bursts are claimed with
//! a lease, so they split the rows and never send one twice in the normal case; when a relay
//! dies holding a burst, its rows come back when the lease expires. A failure of the
//! database or the bus never stops a relay: the lane waits (100 ms, doubling up to 10 s) and
//! tries again; refused messages are retried and parked as the type's
//! [`RetryPolicy`](crate::RetryPolicy) says.
//!
//! ```no_run
//! # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>) -> signalbus_core::Result<()> {
//! use std::time::Duration;
//! // In a service: send its typed signals that auto-flush left pending, until shutdown.
//! let relay = bus.relay().start().await?;
//! // ... serve requests; on shutdown:
//! let clean = relay.shutdown(Duration::from_secs(10)).await;
//! # let _ = clean; Ok(()) }
//! ```
//!
//! The gauges it keeps are listed in [`crate::metrics`].

use super::bursts::{ClaimSlot, Pick, claimed_burst};
use super::context::{Engine, Shared};
use super::ordered::{LaneHold, Siblings, ordered_burst};
use super::own_conn::{Conns, OwnConn};
pub use super::turns::BurstShare;
use super::turns::Turns;
use super::wake::{self, IdleGate, Wakers, stopped_within};
use crate::error::{Error, Result};
use crate::publisher::{Backoff, Publisher};
use crate::registry::{Selection, TypeIdx};
use crate::storage::Backend;
use sqlx::Connection as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Longest wait after consecutive failures.
const MAX_FAILURE_WAIT: Duration = Duration::from_secs(10);

/// The wait after `failures` failures in a row: 100 ms, doubling up to 10 s (with jitter).
pub(crate) fn failure_wait(failures: u32) -> Duration {
    failure_wait_between(failures, Duration::from_millis(100), MAX_FAILURE_WAIT)
}

/// The wait after `failures` failures in a row: `base`, doubling up to `max` (with jitter).
pub(crate) fn failure_wait_between(failures: u32, base: Duration, max: Duration) -> Duration {
    Backoff {
        max_attempts: u32::MAX,
        base,
        max,
        wait_before_first_retry: true,
    }
    .delay(failures.max(1))
}

/// Builds and starts a [`Relay`]; from [`SignalBus::relay`](crate::SignalBus::relay).
#[derive(Debug)]
pub struct RelayBuilder<DB: Backend> {
    engine: Engine<DB>,
    selection: Selection,
    ordered: bool,
    poll_min: Duration,
    poll_max: Duration,
    stats_interval: Duration,
    ordered_lanes: usize,
    share: Option<BurstShare>,
    #[cfg(feature = "wal")]
    capture: Option<super::capture::WalCapture>,
}

impl<DB: Backend> RelayBuilder<DB> {
    /// A relay of `engine`'s signal types, with the defaults.
    pub(crate) fn new(engine: Engine<DB>) -> Self {
        RelayBuilder {
            engine,
            selection: Selection::all(),
            ordered: false,
            poll_min: Duration::from_millis(10),
            poll_max: Duration::from_secs(1),
            stats_interval: Duration::from_secs(5),
            ordered_lanes: 4,
            share: None,
            #[cfg(feature = "wal")]
            capture: None,
        }
    }

    /// Relay only these signal types.
    pub fn select(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Send in order, as [`SignalBus::flush_ordered`](crate::SignalBus::flush_ordered) does (default: off, as
    /// [`SignalBus::flush_many`](crate::SignalBus::flush_many)).
    pub fn ordered(mut self, on: bool) -> Self {
        self.ordered = on;
        self
    }

    /// In ordered mode, how many bursts of one signal type this relay sends at once
    /// (default 4, from 1 to 64): each takes other ordering keys, never two signals of one
    /// key at the same time (see [`SignalBus::flush_ordered`](crate::SignalBus::flush_ordered)). Signals without a key are one
    /// sequence: one burst of them at a time.
    pub fn ordered_lanes(mut self, n: usize) -> Self {
        self.ordered_lanes = n;
        self
    }

    /// Take turns for bursts with the other relays that hold `share` (see [`BurstShare`]);
    /// default: none, every lane sends as soon as it finds signals.
    pub fn share(mut self, share: BurstShare) -> Self {
        self.share = Some(share);
        self
    }

    /// The poll: after an empty round wait `min`, doubling up to `max` (default 10 ms and
    /// 1 s). On PostgreSQL, while notifications arrive, the lanes wait `max` between polls.
    pub fn poll(mut self, min: Duration, max: Duration) -> Self {
        self.poll_min = min;
        self.poll_max = max;
        self
    }

    /// Learn of new signals from PostgreSQL's write-ahead log instead of the tables (see
    /// [`crate::capture`]): the table mode stays the fallback, and [`RelayBuilder::start`]
    /// fails on another database.
    ///
    /// ```no_run
    /// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Postgres>) -> signalbus_core::Result<()> {
    /// use signalbus_core::capture::WalCapture;
    /// let wal = WalCapture::from_url("postgres://relay:secret@db.internal/shop")?.slot("shop_relay");
    /// let relay = bus.relay().ordered(true).capture_wal(wal).start().await?;
    /// # let _ = relay; Ok(()) }
    /// ```
    #[cfg(feature = "wal")]
    pub fn capture_wal(mut self, wal: super::capture::WalCapture) -> Self {
        self.capture = Some(wal);
        self
    }

    /// How often the pending, backing-off and parked gauges are refreshed (default 5 s).
    pub fn stats_interval(mut self, every: Duration) -> Self {
        self.stats_interval = every;
        self
    }

    /// Check the settings and the tables, then start the lanes (tasks on the current tokio
    /// runtime). Fails when a selected name is unknown, a setting cannot work, or a table
    /// cannot be read (missing: run `migrate`; or the database is down).
    pub async fn start(self) -> Result<Relay> {
        let bad = |what: &str| Err(Error::Config(format!("relay: {what}")));
        if self.poll_min.is_zero() || self.poll_min > self.poll_max {
            return bad("the poll needs 0 < min <= max");
        }
        if !(1..=64).contains(&self.ordered_lanes) {
            return bad("ordered_lanes must be from 1 to 64");
        }
        if self.stats_interval.is_zero() {
            return bad("stats_interval must be longer than zero");
        }
        let shared = self.engine.shared().clone();
        let types = shared.registry().select(&self.selection)?;
        if types.is_empty() {
            return bad("no signal types selected");
        }
        #[cfg(feature = "wal")]
        if let Some(wal) = &self.capture {
            wal.validate()?;
        }
        // Every table must be there, migrated: a relay that starts must be able to work.
        super::operator::pending(&shared, &self.selection).await?;
        super::operator::check_migrated(&shared, &self.selection).await?;
        // Every counter exists from the start, at 0: an alert on a rate or an increase sees
        // the first refusal (a series born at its first value shows no increase) and a type
        // whose every signal is refused (no `sent` series to divide by).
        for &i in &types {
            let labels = [
                ("bus", shared.name().to_owned()),
                ("signal", shared.registry().get(i).name.to_string()),
            ];
            for name in [
                "signalbus_signals_sent_total",
                "signalbus_signals_refused_total",
                "signalbus_signals_retried_total",
                "signalbus_signals_parked_total",
                "signalbus_signals_deferred_total",
            ] {
                metrics::counter!(name, &labels).increment(0);
            }
        }
        metrics::counter!("signalbus_publish_failures_total", "bus" => shared.name().to_owned())
            .increment(0);
        // In order: every type when the relay is ordered, else the types that say so.
        let ordered = |i: TypeIdx| self.ordered || shared.registry().get(i).ty.is_ordered();
        // An ordered type's tasks share what lanes they hold (see `Siblings`).
        let lanes: Vec<(TypeIdx, Arc<Notify>, Option<Arc<Siblings>>)> = types
            .iter()
            .flat_map(|&i| {
                let (per_type, siblings) = if ordered(i) {
                    (self.ordered_lanes, Some(Siblings::new()))
                } else {
                    (1, None)
                };
                (0..per_type).map(move |_| (i, Arc::new(Notify::new()), siblings.clone()))
            })
            .collect();
        let wakers = Arc::new(Wakers {
            lanes: lanes
                .iter()
                .map(|(i, n, _)| (shared.registry().get(*i).table.name().to_owned(), n.clone()))
                .collect(),
            listening: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let name = shared.name().to_owned();
        // Behind a pooler in transaction mode, a LISTEN would be lost with its session: poll.
        if !shared.config().transaction_pooler {
            tasks.spawn(wake::listen::<DB>(
                shared.pool().clone(),
                name.clone(),
                wakers.clone(),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(gauges(
            shared.clone(),
            types.clone(),
            types.iter().map(|&i| ordered(i)).collect(),
            self.stats_interval,
            stop_rx.clone(),
        ));
        let lane_tasks = lanes.len();
        let failing: Arc<Vec<std::sync::Mutex<Option<String>>>> = Arc::new(
            (0..lane_tasks)
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
        );
        let gate = IdleGate::start(&shared, &types, &mut tasks);
        #[cfg(feature = "wal")]
        let (capture, capture_scan) = match self.capture {
            Some(wal) => {
                let scan = wal.scan_interval();
                let (state, watching) = watch::channel(super::capture::CaptureState::Starting);
                let run = super::capture::start(
                    wal,
                    super::capture::Capture {
                        shared: shared.clone(),
                        types: types.clone(),
                        ordered: types.iter().map(|&i| ordered(i)).collect(),
                        state,
                        stop: stop_rx.clone(),
                    },
                )?;
                tasks.spawn(run);
                (Some(watching), scan)
            }
            None => (None, self.poll_max),
        };
        for (slot, (idx, notify, siblings)) in lanes.into_iter().enumerate() {
            tasks.spawn(lane(
                shared.clone(),
                Lane {
                    idx,
                    failing: failing.clone(),
                    slot,
                    ordered: ordered(idx),
                    poll_min: self.poll_min,
                    poll_max: self.poll_max,
                    notify,
                    siblings,
                    wakers: wakers.clone(),
                    gate: gate.clone(),
                    share: self.share.clone(),
                    #[cfg(feature = "wal")]
                    capture: capture.clone(),
                    #[cfg(feature = "wal")]
                    capture_scan,
                },
                stop_rx.clone(),
            ));
        }
        let names: Vec<&str> = types
            .iter()
            .map(|&i| &*shared.registry().get(i).name)
            .collect();
        tracing::info!(bus = %name, database = DB::NAME, signals = ?names, ordered = self.ordered, "relay started");
        let check_shared = shared.clone();
        let check: Check = Arc::new(move || {
            let shared = check_shared.clone();
            let failing = failing.clone();
            Box::pin(async move { readiness(&shared, &failing).await })
        });
        Ok(Relay {
            name,
            lanes: lane_tasks,
            stop: stop_tx,
            tasks,
            check,
            #[cfg(feature = "wal")]
            capture,
        })
    }
}

/// A readiness check of a relay, to call from an HTTP handler ([`Relay::readiness_check`]).
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;
type Check = ReadinessCheck;

/// A running relay ([`SignalBus::relay`](crate::SignalBus::relay)): its lanes run until [`Relay::shutdown`] (or until
/// it is dropped, which stops them at once: rows of a burst in flight stay claimed until
/// their lease expires, then are sent again).
///
/// Stopping lanes at once (a drop, or a shutdown past its deadline) cancels the database
/// queries they have in flight. On MySQL/MariaDB, sqlx may then return a connection to the
/// pool that waits for an answer that never comes (seen in this project's tests, where such
/// a connection hung the next transaction on it): give a relay you may drop a pool of its
/// own there, or let [`Relay::shutdown`] finish the bursts in time.
pub struct Relay {
    name: String,
    lanes: usize,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    check: Check,
    #[cfg(feature = "wal")]
    capture: Option<watch::Receiver<super::capture::CaptureState>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("bus", &self.name)
            .field("lanes", &self.lanes)
            .finish()
    }
}

/// Whether a relay can work: its database and its bus answer.
///
/// ```no_run
/// # async fn demo(relay: signalbus_core::Relay) {
/// let readiness = relay.ready().await; // e.g. from a /readyz handler
/// if !readiness.is_ready() {
///     eprintln!("not ready: database {:?}, broker {:?}", readiness.database, readiness.broker);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Readiness {
    /// The bus' name.
    pub bus: String,
    /// The database answered, or why not.
    pub database: std::result::Result<(), String>,
    /// The message bus answered, or why not.
    pub broker: std::result::Result<(), String>,
}

impl Readiness {
    /// Both answered.
    pub fn is_ready(&self) -> bool {
        self.database.is_ok() && self.broker.is_ok()
    }
}

/// How long a readiness check waits for each answer: an answer (503) within a probe's
/// usual timeout, also when the database or the broker is frozen.
const CHECK_LIMIT: Duration = Duration::from_secs(2);

/// The database answers a ping, and no lane's last burst failed on it: a database that takes
/// connections but refuses every write (read-only, a missing privilege, a broken table) is
/// not ready, with the reason the bursts fail.
async fn readiness<DB: Backend>(
    shared: &Shared<DB>,
    failing: &[std::sync::Mutex<Option<String>>],
) -> Readiness {
    let database = async {
        let mut conn = shared.pool().acquire().await.map_err(|e| e.to_string())?;
        conn.ping().await.map_err(|e| e.to_string())
    };
    let (database, broker) = tokio::join!(
        tokio::time::timeout(CHECK_LIMIT, database),
        tokio::time::timeout(CHECK_LIMIT, shared.publisher().check()),
    );
    let failure = failing
        .iter()
        .find_map(|slot| slot.lock().ok().and_then(|f| f.clone()));
    let database = database
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_LIMIT:?}")))
        .and_then(|()| match failure {
            Some(why) => Err(format!("answers, but the relay's bursts fail: {why}")),
            None => Ok(()),
        });
    Readiness {
        bus: shared.name().to_owned(),
        database,
        broker: match broker {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {CHECK_LIMIT:?}")),
        },
    }
}

impl Relay {
    /// The name of the relay's bus.
    pub fn bus(&self) -> &str {
        &self.name
    }

    /// Ask the database and the bus whether they answer now (for a readiness probe).
    pub async fn ready(&self) -> Readiness {
        (self.check)().await
    }

    /// What its WAL capture is doing (`None`: the relay does not capture).
    #[cfg(feature = "wal")]
    pub fn capture(&self) -> Option<super::capture::CaptureState> {
        self.capture.as_ref().map(|state| state.borrow().clone())
    }

    /// A function that checks readiness, to hand to an HTTP server.
    pub fn readiness_check(&self) -> ReadinessCheck {
        self.check.clone()
    }

    /// Stop: every lane finishes the burst it is sending (publish and settle) and ends; waits
    /// at most `timeout` for them. Returns `true` when all finished in time; `false` when some
    /// were still sending and were abandoned (their rows stay claimed until the lease
    /// expires, then go out again: nothing is lost, a duplicate is possible).
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        let clean = tokio::time::timeout(timeout, all).await.is_ok();
        if !clean {
            tracing::warn!(bus = %self.name, ?timeout, "relay: a burst was still in flight at the shutdown deadline; abandoned (its rows come back when their lease expires)");
            self.tasks.abort_all();
        }
        clean
    }
}

/// What a lane is.
struct Lane {
    idx: TypeIdx,
    /// Why the lanes' last bursts failed on the database, one slot per lane (readiness).
    failing: Arc<Vec<std::sync::Mutex<Option<String>>>>,
    slot: usize,
    ordered: bool,
    poll_min: Duration,
    poll_max: Duration,
    notify: Arc<Notify>,
    /// The lanes the other tasks of an ordered type hold.
    siblings: Option<Arc<Siblings>>,
    wakers: Arc<Wakers>,
    /// The relay's idle locks (PostgreSQL): while no lane of a table is idle, its writers do
    /// not notify.
    gate: Option<Arc<IdleGate>>,
    /// Turns shared with other relays, taken for each burst.
    share: Option<BurstShare>,
    /// What the relay's WAL capture is doing: while it captures, an ordered lane rests and
    /// an unordered one only scans every `capture_scan` for what the stream does not bring.
    #[cfg(feature = "wal")]
    capture: Option<watch::Receiver<super::capture::CaptureState>>,
    #[cfg(feature = "wal")]
    capture_scan: Duration,
}

impl Lane {
    /// Tell the gate this lane is busy again, if it had said it was idle.
    fn busy(&self, registered: &mut bool) {
        if std::mem::take(registered)
            && let Some(gate) = &self.gate
        {
            gate.busy(self.idx);
        }
    }

    fn set_failing(&self, why: Option<String>) {
        if let Some(slot) = self.failing.get(self.slot)
            && let Ok(mut failing) = slot.lock()
        {
            *failing = why;
        }
    }
}

/// Drain one signal type until `stop` fires.
async fn lane<DB: Backend>(
    shared: Arc<Shared<DB>>,
    #[allow(unused_mut)] mut lane: Lane,
    mut stop: watch::Receiver<bool>,
) {
    let reg = shared.registry().get(lane.idx);
    let mut idle = lane.poll_min;
    // The pause of a lane that waits for its siblings (see below), apart from `idle`: a
    // lane that then goes idle looks again soon, as after any burst.
    let mut sibling_pause = lane.poll_min;
    let mut failures = 0u32;
    // When the earliest backoff of a row this lane saw refused ends: a retry goes out then,
    // not at the next poll.
    let mut retry_due: Option<tokio::time::Instant> = None;
    // Bursts take turns with the other relays of the share, once they have claimed rows (a
    // lane that cannot reach its database holds no turn meanwhile).
    let turns = lane.share.clone().map(|share| Turns {
        share,
        stop: stop.clone(),
    });
    let mut hold = LaneHold::taking_turns(turns.clone());
    if let Some(siblings) = &lane.siblings {
        hold = hold.with_siblings(siblings.clone());
    }
    let slot = ClaimSlot::taking_turns(turns);
    // Whether this lane told the gate it is idle, and whether a notification will then wake
    // it (else it polls, as on databases without notifications).
    let (mut registered, mut covered) = (false, false);
    // Beside WAL capture: the last id given before the last scan (see `CapturedScan`).
    #[cfg(feature = "wal")]
    let mut scanned_up_to: Option<i64> = None;
    // A lane that finds signals keeps a connection of its own for its bursts (see
    // `own_conn`; database servers only), until it has found none for as long as the pool
    // keeps an idle connection (10 minutes by default; a fleet's pools: 60 s); meanwhile its
    // polls take pooled ones.
    let mut own = OwnConn::new("the relay");
    let keep_for = shared
        .pool()
        .options()
        .get_idle_timeout()
        .unwrap_or(Duration::from_secs(600));
    let mut found_at: Option<tokio::time::Instant> = None;
    while !*stop.borrow() {
        let mut conns = match found_at {
            Some(at) if DB::DIALECT.own_connections && at.elapsed() < keep_for => {
                Conns::Own(&mut own)
            }
            _ => {
                own.close().await;
                Conns::Pool
            }
        };
        #[cfg(feature = "wal")]
        if let Some(capture) = &mut lane.capture
            // Marks the state seen: the wait below ends on the next change only.
            && capture.borrow_and_update().capturing()
        {
            let scan = CapturedScan {
                idx: lane.idx,
                ordered: lane.ordered,
                every: lane.capture_scan,
                slot: &slot,
            };
            match scan
                .run(&shared, &mut conns, &mut scanned_up_to, capture, &mut stop)
                .await
            {
                Scan::Again { found: true } => found_at = Some(tokio::time::Instant::now()),
                Scan::Again { found: false } => {}
                Scan::Stop => break,
                // A capture that ended without a word (a panic): table mode from now on.
                Scan::Gone => lane.capture = None,
            }
            continue;
        }
        let round = tokio::time::Instant::now();
        let burst = if lane.ordered {
            ordered_burst(&shared, lane.idx, false, &mut hold).await
        } else {
            claimed_burst(&shared, lane.idx, Pick::Next(&slot), &mut conns).await
        };
        // Siblings hold these lanes with rows (bits): wait for one to be given back, and for
        // at least the pause.
        let (mut for_siblings, mut pause) = (0, Duration::ZERO);
        let wait = match burst {
            Ok(Some(settled)) => {
                found_at = Some(tokio::time::Instant::now());
                lane.busy(&mut registered);
                lane.set_failing(None);
                if let Some(delay) = settled.next_retry {
                    let due = tokio::time::Instant::now() + delay;
                    retry_due = Some(retry_due.map_or(due, |d| d.min(due)));
                }
                if failures > 0 {
                    tracing::info!(bus = %shared.name(), signal = %reg.name, "relay: sending again");
                }
                failures = 0;
                idle = lane.poll_min;
                sibling_pause = lane.poll_min;
                // More may be waiting (a refused key is held now, the others go on).
                continue;
            }
            Ok(None) if hold.skipped_for_siblings() != 0 => {
                // Not idle (the writers need not notify): siblings send the lanes with rows,
                // and this lane looks again when one is given back (or at a notification, or
                // at the poll).
                lane.busy(&mut registered);
                failures = 0;
                lane.set_failing(None);
                for_siblings = hold.skipped_for_siblings();
                // Doubling while it finds nothing: tasks that only looked at lanes (and
                // held them meanwhile) would wake each other back and forth.
                pause = sibling_pause;
                sibling_pause = (sibling_pause * 2).min(lane.poll_max);
                idle = lane.poll_min;
                lane.poll_max
            }
            Ok(None) => {
                failures = 0;
                lane.set_failing(None);
                if let Some(gate) = &lane.gate
                    && !registered
                    && lane.wakers.is_listening()
                {
                    // Idle: the writers notify from now on. Those that skipped it have
                    // committed once the lock is taken: one more look finds their rows.
                    covered = gate.idle(lane.idx).await;
                    registered = true;
                    continue;
                }
                // Notified lanes wait for the next notification (the poll is only a fallback)
                // — except ordered ones: a row just committed may still be held back by the
                // gap-safe watermark (an older transaction still running: another writer's,
                // another lane's claim), and no notification comes when that one ends, so
                // an ordered lane looks again soon after a wake-up, backing off to the poll.
                let notified = lane.wakers.is_listening() && (lane.gate.is_none() || covered);
                let wait = if notified && !lane.ordered {
                    lane.poll_max
                } else {
                    idle
                };
                idle = (idle * 2).min(lane.poll_max);
                wait
            }
            Err(e) => {
                lane.busy(&mut registered);
                failures += 1;
                // The bus' failures show in its own readiness check; the database's here (a
                // publish failure means the database steps before it worked).
                if matches!(e, Error::Publish(_)) {
                    lane.set_failing(None);
                } else {
                    lane.set_failing(Some(e.to_string()));
                }
                let wait = failure_wait(failures);
                tracing::warn!(bus = %shared.name(), signal = %reg.name, error = %e, failures, retry_in = ?wait, "relay: cannot send; the signals stay pending, trying again");
                wait
            }
        };
        // A retry that was due when this round began was taken by it; one due later bounds
        // the wait (and is kept when a wake-up comes first).
        retry_due = retry_due.filter(|&due| due > round);
        let now = tokio::time::Instant::now();
        let until = retry_due.map_or(now + wait, |due| due.min(now + wait));
        let sibling_gave_back = async {
            match &lane.siblings {
                Some(siblings) if for_siblings != 0 => {
                    tokio::join!(
                        siblings.wait_for_any(for_siblings),
                        tokio::time::sleep(pause)
                    );
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = lane.notify.notified() => (idle, sibling_pause) = (lane.poll_min, lane.poll_min),
            () = sibling_gave_back => {}
            _ = stop.changed() => break,
        }
        // Awake: busy until it finds nothing again (writers stop notifying meanwhile).
        lane.busy(&mut registered);
    }
    if !lane.ordered {
        // On the lane's own connection where it has one: at shutdown the pool may be busy.
        let mut conns = if own.is_open() {
            Conns::Own(&mut own)
        } else {
            Conns::Pool
        };
        slot.free_with(&shared, lane.idx, &mut conns).await;
    }
    own.close().await;
}

/// Refresh the gauges of the selected types every `every`, until `stop` fires.
async fn gauges<DB: Backend>(
    shared: Arc<Shared<DB>>,
    types: Vec<TypeIdx>,
    ordered: Vec<bool>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for (&idx, &ordered) in types.iter().zip(&ordered) {
            let reg = shared.registry().get(idx);
            let stats = async {
                let mut conn = shared.pool().acquire().await?;
                let stats = reg.sql.pending_stats::<DB>(&mut conn).await?;
                // What the gap-safe watermark holds back (an ordered relay on PostgreSQL):
                // rows pending behind a transaction left open somewhere on the server.
                let held = if ordered {
                    Some(reg.sql.holdback::<DB>(&mut conn).await?)
                } else {
                    None
                };
                Ok::<_, crate::error::Error>((stats, held))
            };
            match stats.await {
                Ok((stats, held)) => {
                    if let Some(held) = held {
                        let labels = [
                            ("bus", shared.name().to_owned()),
                            ("signal", reg.name.to_string()),
                        ];
                        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
                        metrics::gauge!("signalbus_ordered_held_back", &labels)
                            .set(held.rows as f64);
                        metrics::gauge!("signalbus_ordered_holder_age_seconds", &labels).set(
                            held.holder_age
                                .filter(|_| held.rows > 0)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        );
                    }
                    let labels = [
                        ("bus", shared.name().to_owned()),
                        ("signal", reg.name.to_string()),
                    ];
                    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
                    {
                        metrics::gauge!("signalbus_pending", &labels).set(stats.count as f64);
                        metrics::gauge!("signalbus_backing_off", &labels)
                            .set(stats.backing_off as f64);
                        metrics::gauge!("signalbus_parked", &labels).set(stats.parked as f64);
                    }
                    metrics::gauge!("signalbus_oldest_pending_seconds", &labels)
                        .set(stats.oldest_age.unwrap_or_default().as_secs_f64());
                }
                Err(e) => {
                    tracing::debug!(bus = %shared.name(), signal = %reg.name, error = %e, "relay: cannot count pending signals");
                }
            }
        }
        if stopped_within(&mut stop, every).await {
            return;
        }
    }
}

/// A lane's round while WAL capture works: an ordered lane rests (the capturing task alone
/// sends ordered types, so that nothing races the stream on a key); an unordered lane takes
/// what the stream does not bring, a burst every `every` (again at once after a full
/// burst).
#[cfg(feature = "wal")]
struct CapturedScan<'a> {
    idx: TypeIdx,
    ordered: bool,
    every: Duration,
    slot: &'a ClaimSlot,
}

#[cfg(feature = "wal")]
impl CapturedScan<'_> {
    /// One round. A scan takes rows with ids up to the last one given before the scan
    /// before it (`up_to`, which it moves on): rows from before the slot, leases an
    /// auto-flush gave up, retries. Newer rows are the stream's: a scan that claimed them
    /// made the stream find them taken and wait for the scan's burst (seconds, when that
    /// burst waited for a pooled connection), and its range must not cover them either.
    async fn run<DB: Backend>(
        &self,
        shared: &Shared<DB>,
        conns: &mut Conns<'_, DB>,
        up_to: &mut Option<i64>,
        capture: &mut watch::Receiver<super::capture::CaptureState>,
        stop: &mut watch::Receiver<bool>,
    ) -> Scan {
        let (idx, slot) = (self.idx, self.slot);
        let mut found = false;
        if !self.ordered {
            let reg = shared.registry().get(idx);
            let last = match conns.take(shared).await {
                Ok(mut conn) => {
                    let last = reg.sql.last_id::<DB>(&mut conn).await;
                    conns.give(conn, &last);
                    last
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &last {
                tracing::warn!(bus = %shared.name(), signal = %reg.name, error = %e, "relay: cannot read the table's last id beside WAL capture; this scan takes the next rows, new ones included");
            }
            let scanned = match (*up_to, &last) {
                (Some(id), Ok(_)) => claimed_burst(shared, idx, Pick::UpTo(slot, id), conns).await,
                // The first round: the rows up to `last` go in the next.
                (None, Ok(_)) => Ok(None),
                // No id to go by: every row, rather than none (retries and older rows must
                // go).
                (_, Err(_)) => claimed_burst(shared, idx, Pick::Next(slot), conns).await,
            };
            // The burst's range would keep rows committed late inside it from the stream
            // until the next scan: free it now.
            if matches!(scanned, Ok(Some(_))) {
                slot.free_with(shared, idx, conns).await;
            }
            let count = scanned
                .as_ref()
                .map_or(0, |s| s.as_ref().map_or(0, super::settle::Settled::count));
            found = count > 0;
            let full = count >= reg.ty.burst_size();
            if let Err(e) = &scanned {
                tracing::warn!(bus = %shared.name(), signal = %reg.name, error = %e, "relay: the table scan beside WAL capture failed; trying again");
            }
            // After a full burst the next one goes on at once, below the same id.
            if full {
                return Scan::Again { found: true };
            }
            if let Ok(last) = last {
                *up_to = Some(last);
            }
        }
        let wait = if self.ordered {
            Duration::MAX
        } else {
            self.every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => Scan::Again { found },
            changed = capture.changed() => match changed {
                Ok(()) => Scan::Again { found },
                Err(_) if *stop.borrow() => Scan::Stop,
                Err(_) => Scan::Gone,
            },
            _ = stop.changed() => Scan::Stop,
        }
    }
}

/// What a lane does after a round beside WAL capture.
#[cfg(feature = "wal")]
enum Scan {
    /// Another round; `found`: this one sent signals.
    Again {
        found: bool,
    },
    Stop,
    /// The capturing task is gone.
    Gone,
}
