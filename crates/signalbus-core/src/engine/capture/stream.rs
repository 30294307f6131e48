//! The capturing task: hold the slot, stream committed inserts, send them in commit order,
//! confirm what is settled; reconnect, stand by, or fall back to table mode.

use super::decode::{Change, Columns, Relations, decode};
use super::server_waits::{SERVER_WAITS, unless_server_waits};
use super::slot::{self, Problem, Stream};
use super::{CaptureState, WalCapture};

use crate::engine::context::Shared;
use crate::engine::own_conn::OwnConn;
use crate::engine::relay::failure_wait;

use crate::engine::wake::stopped_within;
use crate::error::Result;
use crate::registry::TypeIdx;
use futures_util::FutureExt as _;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::Postgres;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything the task is given.
pub(super) struct Setup {
    pub shared: Arc<Shared<Postgres>>,
    pub wal: WalCapture,
    pub slot: String,
    pub types: Vec<TypeIdx>,
    pub ordered: Vec<bool>,
    pub state: watch::Sender<CaptureState>,
    pub stop: watch::Receiver<bool>,
}

/// How one attempt at streaming ended.
enum Ended {
    Stopped,
    /// Another relay holds the slot.
    Busy,
    Retry(String),
    Fatal(String),
}

impl From<Problem> for Ended {
    fn from(p: Problem) -> Self {
        match p {
            Problem::Fatal(why) => Ended::Fatal(why),
            Problem::Retry(why) => Ended::Retry(why),
        }
    }
}

/// How long attempts may fail one after the other before capture gives way to table mode
/// (ordered types wait while it tries).
const GIVE_UP: Duration = Duration::from_secs(60);

/// How often a standby asks for the slot.
const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// How soon held keys are looked at again after none of their rows could move (doubling
/// up to `scan_every` while nothing moves).
const HELD_RETRY: Duration = Duration::from_millis(200);

/// Run until the relay stops, or capture falls back to table mode.
pub(super) async fn run(mut setup: Setup) {
    let bus = setup.shared.name().to_owned();
    let labels = [("bus", bus.clone()), ("slot", setup.slot.clone())];
    let streaming = metrics::gauge!("signalbus_capture_streaming", &labels);
    let mut streamer = Streamer::new(&setup);
    let (mut known, mut failures, mut standby) = (false, 0u32, false);
    // Since when attempts fail one after the other (ordered types wait meanwhile).
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        if *setup.stop.borrow() {
            return;
        }
        let ended = attempt(&mut setup, &mut streamer, &mut known, &mut failures).await;
        streaming.set(0.0);
        let wait = match ended {
            Ended::Stopped => return,
            Ended::Fatal(why) => {
                tracing::error!(bus = %bus, slot = %setup.slot, "WAL capture cannot work; sending from the tables instead: {why}");
                setup.state.send_replace(CaptureState::TableMode(why));
                return;
            }
            Ended::Busy => {
                if !standby {
                    tracing::info!(bus = %bus, slot = %setup.slot, "another relay streams from the slot; standing by to take over");
                }
                standby = true;
                failing_since = None;
                setup.state.send_replace(CaptureState::Standby);
                STANDBY_RETRY
            }
            Ended::Retry(why) => {
                if failures == 0 {
                    failing_since = Some(tokio::time::Instant::now());
                }
                if failing_since.is_some_and(|since| since.elapsed() > GIVE_UP) {
                    let why = format!(
                        "cannot stream for {GIVE_UP:?} ({why}); restart the relay to try again"
                    );
                    tracing::error!(bus = %bus, slot = %setup.slot, "WAL capture cannot work; sending from the tables instead: {why}");
                    setup.state.send_replace(CaptureState::TableMode(why));
                    return;
                }
                failures += 1;
                let wait = failure_wait(failures);
                tracing::warn!(bus = %bus, slot = %setup.slot, error = %why, retry_in = ?wait, "WAL capture: cannot stream; trying again (unordered types are scanned meanwhile, ordered ones wait)");
                setup.state.send_replace(CaptureState::Starting);
                wait
            }
        };
        if stopped_within(&mut setup.stop, wait).await {
            return;
        }
    }
}

/// Prepare the slot, take it, catch up from the tables, then stream until something ends it.
async fn attempt(
    setup: &mut Setup,
    streamer: &mut Streamer,
    known: &mut bool,
    failures: &mut u32,
) -> Ended {
    let shared = setup.shared.clone();
    let tables: Vec<slot::Table> = setup
        .types
        .iter()
        .map(|&i| {
            let t = &shared.registry().get(i).table;
            (t.schema().map(str::to_owned), t.name().to_owned())
        })
        .collect();
    if let Err(p) = slot::prepare(shared.pool(), &setup.slot, &tables, *known).await {
        return p.into();
    }
    let wal = &setup.wal;
    let config = ReplicationConfig::new(
        wal.host.clone(),
        wal.user.clone(),
        wal.password.clone(),
        wal.database.clone(),
        setup.slot.clone(),
        setup.slot.clone(),
    )
    .with_port(wal.port)
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(5))
    .with_max_message_size(64 << 20)
    .with_application_name(format!("signalbus relay {}", shared.name()));
    let mut repl = match ReplicationClient::connect(config).await {
        Ok(repl) => repl,
        Err(e) => return stream_error(&shared, &setup.slot, *known, &e).await,
    };
    match tokio::time::timeout(slot::START_TIMEOUT, repl.wait_started()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return stream_error(&shared, &setup.slot, *known, &e).await,
        Err(_) => {
            return Ended::Retry(format!(
                "the server did not start streaming within {:?}",
                slot::START_TIMEOUT
            ));
        }
    }
    // The slot is ours: no other relay streams it now.
    *known = true;
    streamer.reset();
    // What the tables hold now goes first, key by key (the unordered lanes scan for the
    // rest).
    let (server, probe) = (repl.metrics(), setup.wal.probe_options());
    match unless_server_waits(&probe, &server, streamer.seed(&shared, &setup.types)).await {
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(2), repl.shutdown()).await;
            return Ended::Retry(SERVER_WAITS.into());
        }
        Some(Ok(None)) => {}
        Some(Ok(Some(why))) => {
            let _ = repl.shutdown().await;
            return Ended::Fatal(why);
        }
        Some(Err(e)) => {
            let _ = repl.shutdown().await;
            return Ended::Retry(format!(
                "cannot read the signals already in the tables: {e}"
            ));
        }
    }
    *failures = 0;
    setup.state.send_replace(CaptureState::Streaming);
    let labels = [
        ("bus", shared.name().to_owned()),
        ("slot", setup.slot.clone()),
    ];
    metrics::gauge!("signalbus_capture_streaming", &labels).set(1.0);
    tracing::info!(bus = %shared.name(), slot = %setup.slot, "WAL capture: streaming");
    let ended = streamer.stream(&shared, setup, &mut repl).await;
    // A relay standing by or waiting to try again keeps no connection (and one from before
    // a server restarted is not trusted).
    streamer.conn.close().await;
    // The stream closes first: a server that shuts down waits for it, and freeing the ranges
    // may wait for the pool. Ranges not freed end with their lease.
    let _ = tokio::time::timeout(Duration::from_secs(2), repl.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), streamer.free_ranges(&shared)).await;
    ended
}

/// What a failed replication connection means: stand by, retry, or (with the reason the
/// slot's state gives) fall back.
async fn stream_error(
    shared: &Shared<Postgres>,
    slot: &str,
    known: bool,
    e: &pgwire_replication::PgWireError,
) -> Ended {
    match slot::classify(e) {
        Stream::Busy => Ended::Busy,
        Stream::Transient => Ended::Retry(e.to_string()),
        Stream::Fatal => match slot::explain(shared.pool(), slot, known).await {
            Some(why) => Ended::Fatal(why),
            None => Ended::Fatal(format!("the server refused to stream: {e}")),
        },
    }
}

/// A row the stream brought.
pub(super) struct Row {
    pub idx: TypeIdx,
    pub id: i64,
    pub key: Option<String>,
}

/// The state of one relay's stream.
pub(super) struct Streamer {
    /// Which selected type each table is: (schema if given, name).
    tables: Vec<(TypeIdx, Option<String>, String)>,
    ordered: HashMap<TypeIdx, bool>,
    relations: Relations<Option<(TypeIdx, Columns)>>,
    pub(super) batch: Vec<Row>,
    /// The transactions (32-bit ids) whose rows are in the batch.
    pub(super) batch_xids: Vec<u32>,
    /// The transaction being read.
    xid: u32,
    /// Rows at most in one batch.
    limit: usize,
    in_txn: bool,
    /// The end of the last transaction seen, and of the last before the open one.
    last_commit: Lsn,
    before_txn: Lsn,
    /// Commit time (µs since 2000) of the oldest transaction not confirmed yet.
    unconfirmed_since: Option<i64>,
    /// Ordered types: keys whose later rows wait in the table, with the rows known to wait.
    pub(super) held: HashMap<TypeIdx, super::held::Held>,
    /// A type whose held rows passed [`super::held::MOST_HELD`].
    pub(super) overflow: Option<TypeIdx>,
    /// Rows were held since the held rows were last looked at: look again soon.
    pub(super) newly_held: bool,
    /// Per type, the token of its claim slot.
    pub(super) slots: HashMap<TypeIdx, crate::engine::bursts::ClaimSlot>,
    /// A connection of the relay's own, kept while it streams: the stream's statements never
    /// queue behind the application's writers for a pooled one (at 5,000 writes/s on a pool
    /// of 12 they did, three times a batch and for the slot's lag every scan, and the stream
    /// fell seconds behind).
    pub(super) conn: OwnConn<Postgres>,
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Streamer {
    fn new(setup: &Setup) -> Self {
        let registry = setup.shared.registry();
        Streamer {
            tables: setup
                .types
                .iter()
                .map(|&i| {
                    let t = &registry.get(i).table;
                    (i, t.schema().map(str::to_owned), t.name().to_owned())
                })
                .collect(),
            ordered: setup
                .types
                .iter()
                .copied()
                .zip(setup.ordered.iter().copied())
                .collect(),
            relations: Relations::new(),
            batch: Vec::new(),
            batch_xids: Vec::new(),
            xid: 0,
            limit: setup
                .types
                .iter()
                .map(|&i| registry.get(i).ty.burst_size())
                .max()
                .unwrap_or(100),
            in_txn: false,
            last_commit: Lsn(0),
            before_txn: Lsn(0),
            unconfirmed_since: None,
            held: HashMap::new(),
            overflow: None,
            newly_held: false,
            slots: HashMap::new(),
            conn: OwnConn::new("the WAL capture"),
        }
    }

    /// A new connection: Relation messages come again; nothing is half-read.
    fn reset(&mut self) {
        self.relations.clear();
        self.batch.clear();
        self.batch_xids.clear();
        self.in_txn = false;
        self.unconfirmed_since = None;
        // Positions of the stream before: the new one may start earlier (what the server
        // confirmed), and nothing of it is settled yet.
        self.last_commit = Lsn(0);
        self.before_txn = Lsn(0);
        // Held rows are read again from the tables (`seed`); an overflow seen before is not
        // theirs.
        self.overflow = None;
    }

    pub(super) fn is_ordered(&self, idx: TypeIdx) -> bool {
        self.ordered.get(&idx).copied().unwrap_or(false)
    }

    /// Read events, send them batch by batch, confirm; between batches, the held keys' rows
    /// (at once while they move, else every [`HELD_RETRY`]) and the gauges (every
    /// `scan_every`).
    async fn stream(
        &mut self,
        shared: &Shared<Postgres>,
        setup: &mut Setup,
        repl: &mut ReplicationClient,
    ) -> Ended {
        let scan_every = setup.wal.scan_every;
        let mut next_scan = tokio::time::Instant::now() + scan_every;
        let mut next_held = tokio::time::Instant::now();
        let mut held_wait = HELD_RETRY;
        let labels = [
            ("bus", shared.name().to_owned()),
            ("slot", setup.slot.clone()),
        ];
        let lag_seconds = metrics::gauge!("signalbus_capture_lag_seconds", &labels);
        let lag_bytes = metrics::gauge!("signalbus_capture_lag_bytes", &labels);
        // Work between reads of the stream gives way when the server waits on the relay.
        let (server, probe) = (repl.metrics(), setup.wal.probe_options());
        loop {
            let now = tokio::time::Instant::now();
            if std::mem::take(&mut self.newly_held) {
                // New rows wait: the backoff of the old ones is not theirs.
                held_wait = HELD_RETRY;
                next_held = next_held.min(now + HELD_RETRY);
            }
            if self.holds_any() && now >= next_held {
                next_held = match unless_server_waits(&probe, &server, self.drain_held(shared))
                    .await
                {
                    None => return Ended::Retry(SERVER_WAITS.into()),
                    Some(Ok(true)) => {
                        held_wait = HELD_RETRY;
                        now
                    }
                    Some(Ok(false)) => {
                        // Nothing moved: look again later and later, up to `scan_every`.
                        let wait = held_wait;
                        held_wait = (held_wait * 2).min(scan_every.max(HELD_RETRY));
                        now + wait
                    }
                    // The database failed: close the stream (see the batch's case below).
                    Some(Err(e @ crate::Error::Database(_))) => {
                        return Ended::Retry(format!(
                            "the database failed while the held keys' signals were sent; the \
                             stream is opened again: {e}"
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(bus = %shared.name(), error = %e, "WAL capture: cannot send the held keys' signals; trying again");
                        now + scan_every
                    }
                };
            }
            if now >= next_scan {
                next_scan = now + scan_every;
                let bytes =
                    unless_server_waits(&probe, &server, self.lag(shared, &setup.slot)).await;
                if let Some(Ok(Some(bytes))) = bytes {
                    #[allow(clippy::cast_precision_loss)] // far below 2^52
                    lag_bytes.set(bytes as f64);
                }
                lag_seconds.set(self.lag_seconds());
            }
            let tick = if self.holds_any() {
                next_scan.min(next_held)
            } else {
                next_scan
            };
            let event = tokio::select! {
                biased;
                _ = setup.stop.changed() => return Ended::Stopped,
                event = repl.recv() => event,
                _ = tokio::time::sleep_until(tick) => continue,
            };
            let mut event = match event {
                Ok(Some(event)) => event,
                Ok(None) => return Ended::Retry("the server ended the stream".into()),
                Err(e) => return stream_error(shared, &setup.slot, true, &e).await,
            };
            // Take whatever else is already here, up to a batch (and a bound on events that
            // bring no row: other tables' changes, empty transactions).
            let mut taken = 0;
            loop {
                if let Err(why) = self.on_event(event, repl) {
                    return Ended::Fatal(why);
                }
                taken += 1;
                if self.batch.len() >= self.limit || taken >= 4 * self.limit {
                    break;
                }
                // Unconstrained: tokio's cooperative budget would end a run of ready
                // receives after 128 (about 40 signals, three events each) and cap every
                // batch there, whatever the backlog.
                match tokio::task::unconstrained(repl.recv()).now_or_never() {
                    Some(Ok(Some(next))) => event = next,
                    Some(Ok(None)) => return Ended::Retry("the server ended the stream".into()),
                    Some(Err(e)) => return stream_error(shared, &setup.slot, true, &e).await,
                    None => break,
                }
            }
            if self.batch.is_empty() {
                continue;
            }
            // Send, the retries after a failure of the bus included: the server may wait
            // on the relay meanwhile.
            match unless_server_waits(&probe, &server, self.send_batch(shared, &mut setup.stop))
                .await
            {
                None => return Ended::Retry(SERVER_WAITS.into()),
                Some(Err(ended)) => return ended,
                Some(Ok(())) => {}
            }
            self.batch.clear();
            self.batch_xids.clear();
            let upto = if self.in_txn {
                self.before_txn
            } else {
                self.unconfirmed_since = None;
                self.last_commit
            };
            repl.update_applied_lsn(upto);
            lag_seconds.set(self.lag_seconds());
            if let Some(idx) = self.overflow.take() {
                return Ended::Fatal(super::held::too_many(&shared.registry().get(idx).name));
            }
        }
    }

    /// Send the batch; a failure of the bus keeps it and tries again after a pause. The
    /// database failing (down, restarting) closes the stream, which is opened again later
    /// from what is confirmed: held open, it would keep a server that shuts down from ever
    /// finishing (its walsender waits until the client confirms the end of the WAL, and this
    /// relay confirms only what is settled — nothing, while the database refuses it).
    async fn send_batch(
        &mut self,
        shared: &Shared<Postgres>,
        stop: &mut watch::Receiver<bool>,
    ) -> std::result::Result<(), Ended> {
        let mut failures = 0u32;
        loop {
            match self.flush(shared).await {
                Ok(()) => return Ok(()),
                Err(e @ crate::Error::Database(_)) => {
                    return Err(Ended::Retry(format!(
                        "the database failed while a batch was sent; the stream is opened \
                         again: {e}"
                    )));
                }
                Err(e) => {
                    failures += 1;
                    let wait = failure_wait(failures);
                    tracing::warn!(bus = %shared.name(), error = %e, failures, retry_in = ?wait, "WAL capture: cannot send; the signals stay pending, trying again");
                    if stopped_within(stop, wait).await {
                        return Err(Ended::Stopped);
                    }
                }
            }
        }
    }

    fn lag_seconds(&self) -> f64 {
        self.unconfirmed_since.map_or(0.0, |since| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            #[allow(clippy::cast_precision_loss)] // a lag in µs, far below 2^52
            let lag = (now - PG_EPOCH_MICROS - since).max(0) as f64;
            lag / 1e6
        })
    }

    /// Take in one event; an error is a stream that cannot be read (a bug to report).
    fn on_event(
        &mut self,
        event: ReplicationEvent,
        repl: &ReplicationClient,
    ) -> std::result::Result<(), String> {
        match event {
            ReplicationEvent::Begin { xid, .. } => {
                self.xid = xid;
                self.in_txn = true;
                self.before_txn = self.last_commit;
            }
            ReplicationEvent::XLogData { data, .. } => {
                let malformed = |m: super::decode::Malformed| {
                    format!(
                        "the WAL stream has a message signalbus cannot read ({}); please report it",
                        m.0
                    )
                };
                match decode(&data).map_err(malformed)? {
                    Change::Relation(rel) => {
                        let idx = self.tables.iter().find_map(|(i, schema, name)| {
                            (*name == rel.name && schema.as_ref().is_none_or(|s| *s == rel.schema))
                                .then_some(*i)
                        });
                        let known = idx.and_then(|i| Columns::of(&rel).map(|c| (i, c)));
                        self.relations.insert(rel.oid, known);
                    }
                    Change::Insert { relid, values } => match self.relations.get(&relid) {
                        Some(Some((idx, columns))) => {
                            let (id, key) = columns.read(&values).map_err(malformed)?;
                            self.batch.push(Row {
                                idx: *idx,
                                id,
                                key,
                            });
                            if self.batch_xids.last() != Some(&self.xid) {
                                self.batch_xids.push(self.xid);
                            }
                        }
                        Some(None) => {}
                        None => return Err("the WAL stream sent a row of a table it had not described; please report it".into()),
                    },
                    Change::Other => {}
                }
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.in_txn = false;
                self.last_commit = end_lsn;
                self.unconfirmed_since.get_or_insert(commit_time_micros);
            }
            // Everything committed below the server's position was sent before this; with
            // nothing open or unsent, the slot may move there (also while the signal tables
            // are idle, so the server can recycle its WAL).
            ReplicationEvent::KeepAlive { wal_end, .. }
                if !self.in_txn && self.batch.is_empty() && wal_end > self.last_commit =>
            {
                self.last_commit = wal_end;
                self.unconfirmed_since = None;
                repl.update_applied_lsn(wal_end);
            }
            _ => {}
        }
        Ok(())
    }

    /// How many bytes of WAL the slot keeps on the server.
    async fn lag(&mut self, shared: &Shared<Postgres>, slot: &str) -> Result<Option<i64>> {
        let mut conn = self.conn.checkout(shared).await?;
        let bytes: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(&mut conn)
        .await?;
        self.conn.checkin(conn);
        Ok(bytes.flatten())
    }
}
