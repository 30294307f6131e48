//! `relay`: the always-on sender on PostgreSQL (its wake-up is what is measured).
//!
//! In one run:
//! * `latency`: writers commit one signal per transaction at `--rate` (auto-flush off, plain
//!   INSERTs as any language's writer) while one relay runs; commit-to-acknowledgement
//!   latency per message (from the commit's return to the broker's confirm of the batch that
//!   carried it), and the relay's CPU per message (the process' CPU minus that of the same
//!   writers running alone just before);
//! * `backlog`: `--backlog` pending signals drained by `flushmany`, then by a relay, on the
//!   same table and bus (`ratio_vs_flushmany`);
//! * `memory` (with `--memory-signals N`): the process' resident memory while a relay drains
//!   N pending signals.

use crate::flushmany::FillDb;
use crate::setup;
use crate::stats::{Latencies, emit, round2};
use signalbus::{
    BatchOutcome, BoxPublisher, Ident, Message, PublishError, Publisher, Selection, SignalBus,
    SignalType,
};
use sqlx::{PgPool, Postgres};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// postgres://... The table `bench_relay` there is dropped and created again.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// `memory`, or a bus URL (e.g. amqp://127.0.0.1:5672/%2f?exchange=...).
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Signals per second the writers commit (one per transaction).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of each latency phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Pending signals of the backlog comparison (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Pending signals drained while memory is sampled (0: skip it).
    #[arg(long, default_value_t = 0)]
    memory_signals: usize,
    /// Where published messages go: exchange / subject / topic.
    #[arg(long, default_value = "bench")]
    destination: String,
    /// Instead of the other phases: writers at `--rate` and one relay for this many seconds,
    /// with a sample of the table's size, dead tuples and vacuums every `--sample-every`
    /// seconds (bloat under steady load).
    #[arg(long, default_value_t = 0)]
    steady_seconds: u64,
    /// Seconds between two samples of `--steady-seconds`.
    #[arg(long, default_value_t = 60)]
    sample_every: u64,
    /// The relays run with WAL capture (`wal`; the server needs wal_level = logical) or
    /// look in the table (`table`).
    #[arg(long, default_value = "table")]
    capture: setup::Capture,
    /// The relays send in order (`relay --ordered`).
    #[arg(long)]
    ordered: bool,
    /// The writers give their signals ordering keys, one of this many (0: none).
    #[arg(long, default_value_t = 0)]
    keys: u32,
    /// Relays of the latency phase, in this process (as that many relay processes would run
    /// on one database: bursts of disjoint ranges in flight at once).
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// Signals per burst of the table's type (0: the library's default): smaller bursts,
    /// smaller publish calls.
    #[arg(long, default_value_t = 0)]
    burst: usize,
}

const TABLE: &str = "bench_relay";

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = setup::postgres_only(
        &args.database_url,
        12,
        "the relay benchmark (it measures the LISTEN/NOTIFY wake-up)",
    )
    .await?;
    let table = Ident::new(TABLE)?;
    let (inner, _) = setup::publisher(&args.bus).await?;
    let timed = Timed::new(inner);
    let mut ty = SignalType::new(TABLE).autoflush(false);
    if args.burst > 0 {
        ty = ty.burst(args.burst);
    }
    let bus = SignalBus::builder(pool.clone())
        .publisher(timed.clone())
        .register_type(ty)
        .autoflush(false)
        .build()?;
    Postgres::reset(&pool, &table).await?;

    if args.steady_seconds > 0 {
        return steady(&args, &pool, &bus, &timed).await;
    }
    latency(&args, &pool, &bus, &timed).await?;
    if args.backlog > 0 {
        backlog(&args, &pool, &table, &bus).await?;
    }
    if args.memory_signals > 0 {
        memory(&args, &pool, &table, &bus).await?;
    }
    Ok(())
}

/// The commit instants of the messages written, and the latencies of those acknowledged.
#[derive(Clone)]
struct Timed {
    inner: BoxPublisher,
    commits: Arc<Mutex<HashMap<String, Instant>>>,
    latencies: Arc<Mutex<Latencies>>,
    /// Messages the broker stored, and how many of them were new (duplicates: the
    /// difference).
    stored: Arc<Mutex<(usize, std::collections::HashSet<String>)>>,
    /// Each publish call's duration (the broker's part of the latency), and the messages
    /// it carried.
    calls: Arc<Mutex<(Latencies, usize)>>,
}

impl Timed {
    fn new(inner: BoxPublisher) -> Self {
        Timed {
            inner,
            commits: Arc::default(),
            latencies: Arc::default(),
            stored: Arc::default(),
            calls: Arc::default(),
        }
    }
}

impl Publisher for Timed {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let started = Instant::now();
        let outcome = self.inner.publish(batch).await?;
        let acked = Instant::now();
        {
            let mut calls = self.calls.lock().unwrap();
            calls.0.push(acked - started);
            calls.1 += batch.len();
        }
        let mut commits = self.commits.lock().unwrap();
        let mut latencies = self.latencies.lock().unwrap();
        let mut stored = self.stored.lock().unwrap();
        for (i, message) in batch.iter().enumerate() {
            if outcome.is_refused(i) {
                continue;
            }
            stored.0 += 1;
            stored.1.insert(message.id.clone());
            if let Some(committed) = commits.remove(&message.id) {
                latencies.push(acked.saturating_duration_since(committed));
            }
        }
        Ok(outcome)
    }
}

/// CPU seconds this process used so far (user + system).
fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// CPU seconds the process `pid` (`self`: this one) used so far, when it runs on this
/// machine (the WAL sender of a server on loopback); 0 otherwise.
pub(crate) fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3; utime and
    // stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    rss_kib("self") / 1024.0
}

/// Resident memory of the process `pid` (`self`: this one), in KiB.
pub(crate) fn rss_kib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Commit one signal per transaction at `rate` for `seconds`; returns how many committed (a
/// writer that fails, say because it waited longer than the pool's acquire timeout, panics
/// and is not counted).
async fn write_at_rate(args: &Args, pool: &PgPool, timed: &Timed) -> usize {
    write_for(args, pool, timed, Duration::from_secs(args.seconds)).await
}

/// [`write_at_rate`] for `length`.
async fn write_for(args: &Args, pool: &PgPool, timed: &Timed, length: Duration) -> usize {
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + length;
    let mut writers = tokio::task::JoinSet::new();
    let (mut n, mut committed) = (0usize, 0usize);
    let sql = format!(
        "INSERT INTO {TABLE} (message_id, topic, body, ordering_key) VALUES ($1, $2, 'x', $3)"
    );
    while Instant::now() < until {
        ticks.tick().await;
        let (pool, timed, sql) = (pool.clone(), timed.clone(), sql.clone());
        let destination = args.destination.clone();
        let key = (args.keys > 0).then(|| format!("k{}", n % args.keys as usize));
        writers.spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&id)
                .bind(&destination)
                .bind(key)
                .execute(&mut *tx)
                .await
                .unwrap();
            // Recorded before the commit (a relay may be faster than this task's return),
            // then moved to the commit's return when the message is still unsent.
            timed
                .commits
                .lock()
                .unwrap()
                .insert(id.clone(), Instant::now());
            tx.commit().await.unwrap();
            if let Some(at) = timed.commits.lock().unwrap().get_mut(&id) {
                *at = Instant::now();
            }
        });
        n += 1;
        while let Some(done) = writers.try_join_next() {
            committed += usize::from(done.is_ok());
        }
    }
    while let Some(done) = writers.join_next().await {
        committed += usize::from(done.is_ok());
    }
    committed
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {TABLE}")))
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

async fn until_empty(pool: &PgPool) {
    while count(pool).await != 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn latency(
    args: &Args,
    pool: &PgPool,
    bus: &SignalBus<Postgres>,
    timed: &Timed,
) -> Result<(), Box<dyn std::error::Error>> {
    // The writers alone: their CPU, to subtract.
    let cpu = cpu_seconds();
    write_at_rate(args, pool, timed).await;
    let writers_cpu = cpu_seconds() - cpu;
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {TABLE}")))
        .execute(pool)
        .await?;
    timed.commits.lock().unwrap().clear();
    *timed.stored.lock().unwrap() = Default::default();

    let mut relays = Vec::new();
    for _ in 0..args.relays.max(1) {
        relays.push(setup::relay(bus, &args.database_url, args.capture, args.ordered).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    *timed.calls.lock().unwrap() = Default::default();
    // WAL capture: the server's WAL sender decodes for the relay; its CPU is reported too.
    let walsender: Option<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_replication WHERE application_name LIKE 'signalbus relay%'",
    )
    .fetch_optional(pool)
    .await?;
    let walsender = walsender.map(|pid| pid.to_string());
    let sender_cpu = walsender.as_deref().map(process_cpu_seconds);
    let cpu = cpu_seconds();
    let written = write_at_rate(args, pool, timed).await;
    until_empty(pool).await;
    let total_cpu = cpu_seconds() - cpu;
    let sender_cpu = walsender
        .as_deref()
        .zip(sender_cpu)
        .map(|(pid, before)| process_cpu_seconds(pid) - before);
    for relay in relays {
        relay.shutdown(Duration::from_secs(10)).await;
    }
    let mut latencies = std::mem::take(&mut *timed.latencies.lock().unwrap());
    let stored = std::mem::take(&mut *timed.stored.lock().unwrap());
    let (mut calls, carried) = std::mem::take(&mut *timed.calls.lock().unwrap());
    #[allow(clippy::cast_precision_loss)]
    let per_message_us = (total_cpu - writers_cpu).max(0.0) / written.max(1) as f64 * 1e6;
    #[allow(clippy::cast_precision_loss)]
    let per_call = carried as f64 / calls.len().max(1) as f64;
    emit(serde_json::json!({
        "bench": "relay",
        "mode": "latency",
        "capture": args.capture,
        "ordered": args.ordered,
        "keys": args.keys,
        "relays": args.relays.max(1),
        "burst": args.burst,
        "database": "PostgreSQL",
        "bus": signalbus::redact::redact_url(&args.bus),
        "rate": args.rate,
        "seconds": args.seconds,
        "signals": written,
        "acknowledged": latencies.len(),
        "stored": stored.0,
        "stored_distinct": stored.1.len(),
        "p50_ms": round2(latencies.percentile_ms(50.0)),
        "p99_ms": round2(latencies.percentile_ms(99.0)),
        "max_ms": round2(latencies.percentile_ms(100.0)),
        "publish_calls": calls.len(),
        "messages_per_call": round2(per_call),
        "publish_p50_ms": round2(calls.percentile_ms(50.0)),
        "publish_p99_ms": round2(calls.percentile_ms(99.0)),
        "relay_cpu_us_per_msg": round2(per_message_us),
        "walsender_cpu_us_per_msg": sender_cpu.map(|s| round2(s / written.max(1) as f64 * 1e6)),
        "writers_cpu_s": round2(writers_cpu),
        "total_cpu_s": round2(total_cpu),
    }));
    Ok(())
}

/// Writers and a relay for `--steady-seconds`; a sample of the table every `--sample-every`.
async fn steady(
    args: &Args,
    pool: &PgPool,
    bus: &SignalBus<Postgres>,
    timed: &Timed,
) -> Result<(), Box<dyn std::error::Error>> {
    let relay = setup::relay(bus, &args.database_url, args.capture, args.ordered).await?;
    let length = Duration::from_secs(args.steady_seconds);
    let started = Instant::now();
    let writers = write_for(args, pool, timed, length);
    let sampler = async {
        let every = Duration::from_secs(args.sample_every.max(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        while started.elapsed() < length {
            ticks.tick().await;
            let mut window = std::mem::take(&mut *timed.latencies.lock().unwrap());
            let table: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
                "SELECT n_live_tup, n_dead_tup, pg_table_size(relid), pg_indexes_size(relid), \
                 autovacuum_count, (SELECT COUNT(*) FROM bench_relay) \
                 FROM pg_stat_user_tables WHERE relname = 'bench_relay'",
            )
            .fetch_one(pool)
            .await?;
            emit(serde_json::json!({
                "bench": "relay",
                "mode": "steady",
                "capture": args.capture,
                "rate": args.rate,
                "at_s": started.elapsed().as_secs(),
                "pending": table.5,
                "n_live_tup": table.0,
                "n_dead_tup": table.1,
                "table_kib": table.2 / 1024,
                "indexes_kib": table.3 / 1024,
                "autovacuums": table.4,
                "acknowledged": window.len(),
                "p99_ms": round2(window.percentile_ms(99.0)),
            }));
        }
        Ok::<(), sqlx::Error>(())
    };
    let (_, sampled) = tokio::join!(writers, sampler);
    relay.shutdown(Duration::from_secs(10)).await;
    sampled?;
    Ok(())
}

async fn backlog(
    args: &Args,
    pool: &PgPool,
    table: &Ident,
    bus: &SignalBus<Postgres>,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = args.backlog;
    // Alternating, twice each; the faster run of each counts (the machine is shared).
    let (mut many, mut relayed) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..2 {
        Postgres::fill(pool, table, n).await?;
        let started = Instant::now();
        let sent = bus.flush_many(&Selection::all()).await?;
        many = many.min(started.elapsed().as_secs_f64());
        if sent != n {
            return Err(format!("flushmany sent {sent} of {n}").into());
        }
        Postgres::fill(pool, table, n).await?;
        let started = Instant::now();
        let relay = setup::relay(bus, &args.database_url, args.capture, args.ordered).await?;
        until_empty(pool).await;
        relayed = relayed.min(started.elapsed().as_secs_f64());
        relay.shutdown(Duration::from_secs(10)).await;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = |secs: f64| round2(n as f64 / secs);
    emit(serde_json::json!({
        "bench": "relay",
        "mode": "backlog",
        "database": "PostgreSQL",
        "bus": signalbus::redact::redact_url(&args.bus),
        "signals": n,
        "flushmany_msgs_per_s": rate(many),
        "relay_msgs_per_s": rate(relayed),
        "ratio_vs_flushmany": round2(many / relayed),
    }));
    Ok(())
}

async fn memory(
    args: &Args,
    pool: &PgPool,
    table: &Ident,
    bus: &SignalBus<Postgres>,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = args.memory_signals;
    Postgres::fill(pool, table, n).await?;
    let before = rss_mib();
    let started = Instant::now();
    let relay = setup::relay(bus, &args.database_url, args.capture, args.ordered).await?;
    let mut peak = before;
    let mut samples = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = rss_mib();
        peak = peak.max(rss);
        samples.push(rss);
        if count(pool).await == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    relay.shutdown(Duration::from_secs(10)).await;
    let quarter = samples.len() / 4;
    #[allow(clippy::cast_precision_loss)]
    let mean = |s: &[f64]| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        }
    };
    emit(serde_json::json!({
        "bench": "relay",
        "mode": "memory",
        "database": "PostgreSQL",
        "bus": signalbus::redact::redact_url(&args.bus),
        "signals": n,
        "seconds": round2(secs),
        "rss_before_mib": round2(before),
        "rss_peak_mib": round2(peak),
        "rss_first_quarter_mib": round2(mean(&samples[..quarter])),
        "rss_last_quarter_mib": round2(mean(&samples[samples.len() - quarter..])),
    }));
    Ok(())
}
