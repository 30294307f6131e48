//! `autoflush`: transactions per second and commit latency, business row alone vs business
//! row + one signal with auto-flush (commit waits for delivery, as the original does).

use crate::setup;
use crate::stats::{Latencies, emit, round2};
use serde::Serialize;
use signalbus::{Backend, Signal, SignalBus};
use sqlx::{MySql, Pool, Postgres, Sqlite};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// postgres://..., mysql://... or sqlite:PATH. The tables `bench_orders` and
    /// `bench_signal` there are dropped and created again.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// `memory`, or a bus URL.
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Concurrent tasks, each running one transaction after the other.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each configuration runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Auto-flush rounds that may run at once (the bus' `flush_workers`).
    #[arg(long, default_value_t = 2)]
    flush_workers: usize,
    /// Make every publish call take this much longer (a slow broker): with a flush that holds
    /// no lock while it publishes, writers do not wait for it.
    #[arg(long, default_value_t = 0)]
    publish_delay_ms: u64,
    /// PostgreSQL: drop the relay's wake-up trigger after `migrate`, to measure what the
    /// notification costs each commit.
    #[arg(long)]
    no_wake_trigger: bool,
    /// Run a relay (in this process) while the "auto-flush off" writers write: what waking it
    /// costs them.
    #[arg(long)]
    relay: bool,
    /// With `--relay` on PostgreSQL: `wal` runs it with WAL capture (no trigger notifies; the
    /// server needs wal_level = logical).
    #[arg(long, default_value = "table")]
    capture: setup::Capture,
    /// With `--relay`: an ordered relay (its 4 tasks of the type; the writers' signals have no
    /// ordering key).
    #[arg(long)]
    ordered: bool,
}

/// A publisher that takes `delay` longer per call.
struct Slow {
    inner: signalbus::BoxPublisher,
    delay: Duration,
}

impl signalbus::Publisher for Slow {
    async fn publish(
        &self,
        batch: &[signalbus::Message],
    ) -> Result<signalbus::BatchOutcome, signalbus::PublishError> {
        // tokio's timer rounds even a zero sleep up to its next millisecond tick.
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.publish(batch).await
    }
}

#[derive(Serialize, Signal)]
#[signal(
    name = "bench_signal",
    table = "bench_signal",
    destination = "bench",
    routing_key = "order.placed"
)]
struct BenchSignal {
    order_id: i64,
    amount: i64,
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool_size = u32::try_from(args.concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(4)
        .min(90);
    let (url, settings) = (&args.database_url, setup::pool_settings(pool_size));
    signalbus::with_database!(url, |DB| {
        let pool = signalbus::storage::open_pool::<DB>(url, &settings).await?;
        bench::<DB>(pool, &args).await
    })?
}

async fn bench<DB: BenchDb>(pool: Pool<DB>, args: &Args) -> Result<(), Box<dyn std::error::Error>>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    DB::reset(&pool).await?;
    let (publisher, memory) = setup::publisher(&args.bus).await?;
    let publisher = Slow {
        inner: publisher,
        delay: Duration::from_millis(args.publish_delay_ms),
    };
    let bus = SignalBus::builder(pool.clone())
        .publisher(publisher)
        .register::<BenchSignal>()
        .build()?;
    bus.migrate().await?;
    if args.no_wake_trigger && DB::NAME == "PostgreSQL" {
        sqlx::raw_sql("DROP TRIGGER IF EXISTS signalbus_notify ON bench_signal")
            .execute(&pool)
            .await?;
    }
    let next_id = Arc::new(AtomicI64::new(1));
    let duration = Duration::from_secs_f64(args.seconds);

    let mut results = Vec::new();
    for mode in [
        Mode::BusinessOnly,
        Mode::SignalWait,
        Mode::SignalAsync,
        Mode::SignalInsertOnly,
    ] {
        bus.set_autoflush(mode != Mode::SignalInsertOnly);
        let relay = if args.relay && mode == Mode::SignalInsertOnly {
            Some(setup::relay(&bus, &args.database_url, args.capture, args.ordered).await?)
        } else {
            None
        };
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            let (bus, next_id) = (bus.clone(), next_id.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Latencies::default();
                let mut deliveries = tokio::task::JoinSet::new();
                let mut undelivered = 0usize;
                while Instant::now() < deadline {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let t0 = Instant::now();
                    let mut tx = bus.begin().await?;
                    DB::insert_business(&mut tx, id).await?;
                    let signal = BenchSignal {
                        order_id: id,
                        amount: id % 1000,
                    };
                    match mode {
                        Mode::BusinessOnly => drop(tx.commit().await?),
                        Mode::SignalWait => {
                            tx.send(&signal).await?;
                            undelivered += tx.commit_and_wait().await?.pending;
                        }
                        Mode::SignalAsync | Mode::SignalInsertOnly => {
                            tx.send(&signal).await?;
                            let delivery = tx.commit().await?;
                            let committed = Instant::now();
                            deliveries.spawn(async move {
                                (delivery.await.pending, committed.elapsed())
                            });
                        }
                    }
                    latencies.push(t0.elapsed());
                }
                let mut delivery_latencies = Latencies::default();
                while let Some(done) = deliveries.join_next().await {
                    let (pending, latency) = done.expect("delivery task");
                    undelivered += pending;
                    delivery_latencies.push(latency);
                }
                Ok::<_, signalbus::Error>((latencies, delivery_latencies, undelivered))
            }));
        }
        let mut latencies = Latencies::default();
        let mut delivery = Latencies::default();
        let mut undelivered = 0;
        for task in tasks {
            let (l, d, u) = task.await??;
            latencies.extend(l);
            delivery.extend(d);
            undelivered += u;
        }
        // Until the last signal was delivered, not just committed.
        let secs = started.elapsed().as_secs_f64();
        let tx_per_s = latencies.len() as f64 / secs;
        results.push(tx_per_s);
        let (delivered_p50, delivered_p99) = match mode {
            Mode::BusinessOnly => (None, None),
            Mode::SignalWait => (
                Some(latencies.percentile_ms(50.0)),
                Some(latencies.percentile_ms(99.0)),
            ),
            Mode::SignalAsync => (
                Some(delivery.percentile_ms(50.0)),
                Some(delivery.percentile_ms(99.0)),
            ),
            Mode::SignalInsertOnly => (None, None),
        };
        if let Some(relay) = relay {
            relay.shutdown(Duration::from_secs(30)).await;
        }
        if mode == Mode::SignalInsertOnly {
            bus.set_autoflush(true);
            bus.flush_many(&signalbus::Selection::all()).await?; // the backlog, untimed
        }
        emit(serde_json::json!({
            "bench": "autoflush",
            "database": DB::NAME,
            "bus": signalbus::redact::redact_url(&args.bus),
            "concurrency": args.concurrency,
            "flush_workers": args.flush_workers,
            "publish_delay_ms": args.publish_delay_ms,
            "wake_trigger": DB::NAME == "PostgreSQL" && !args.no_wake_trigger,
            "relay": args.relay && mode == Mode::SignalInsertOnly,
            "capture": args.capture,
            "ordered": args.relay && args.ordered,
            "mode": mode.label(),
            "transactions": latencies.len(),
            "seconds": round2(secs),
            "tx_per_s": round2(tx_per_s),
            "commit_p50_ms": round2(latencies.percentile_ms(50.0)),
            "commit_p99_ms": round2(latencies.percentile_ms(99.0)),
            "commit_to_delivered_p50_ms": delivered_p50.map(round2),
            "commit_to_delivered_p99_ms": delivered_p99.map(round2),
            "left_pending": if mode == Mode::SignalInsertOnly { 0 } else { undelivered },
        }));
    }
    if let Some(memory) = memory {
        emit(serde_json::json!({
            "bench": "autoflush",
            "database": DB::NAME,
            "concurrency": args.concurrency,
            "wake_trigger": DB::NAME == "PostgreSQL" && !args.no_wake_trigger,
            "ratio_commit_and_wait_vs_business": round2(results[1] / results[0]),
            "ratio_commit_then_deliver_vs_business": round2(results[2] / results[0]),
            "ratio_write_alone_vs_business": round2(results[3] / results[0]),
            "messages_delivered": memory.len(),
            "publish_calls": memory.batches(),
        }));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The business row alone.
    BusinessOnly,
    /// Business row + signal; `commit_and_wait` (returns once delivered, as the original).
    SignalWait,
    /// Business row + signal; `commit` returns when durable, delivery awaited aside. The run
    /// lasts until the last signal is delivered.
    SignalAsync,
    /// Business row + signal with auto-flush off: the cost of writing the signal alone (the
    /// backlog is flushed afterwards, untimed).
    SignalInsertOnly,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::BusinessOnly => "business only",
            Mode::SignalWait => "business+signal, commit_and_wait",
            Mode::SignalAsync => "business+signal, commit then delivery",
            Mode::SignalInsertOnly => "business+signal, auto-flush off (write cost alone)",
        }
    }
}

/// The business table of the benchmark, per database.
trait BenchDb: Backend {
    fn reset(pool: &Pool<Self>) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn insert_business(
        conn: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = Result<(), signalbus::Error>> + Send;
}

const DROP: &str = "DROP TABLE IF EXISTS bench_orders, bench_signal";

impl BenchDb for Postgres {
    async fn reset(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::query(DROP).execute(pool).await?;
        sqlx::query("CREATE TABLE bench_orders (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL)")
            .execute(pool)
            .await?;
        Ok(())
    }
    async fn insert_business(conn: &mut Self::Connection, id: i64) -> Result<(), signalbus::Error> {
        sqlx::query("INSERT INTO bench_orders (id, amount) VALUES ($1, $2)")
            .bind(id)
            .bind(id % 1000)
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl BenchDb for MySql {
    async fn reset(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::query(DROP).execute(pool).await?;
        sqlx::query("CREATE TABLE bench_orders (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL) ENGINE=InnoDB").execute(pool).await?;
        Ok(())
    }
    async fn insert_business(conn: &mut Self::Connection, id: i64) -> Result<(), signalbus::Error> {
        sqlx::query("INSERT INTO bench_orders (id, amount) VALUES (?, ?)")
            .bind(id)
            .bind(id % 1000)
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl BenchDb for Sqlite {
    async fn reset(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::query("DROP TABLE IF EXISTS bench_orders")
            .execute(pool)
            .await?;
        sqlx::query("DROP TABLE IF EXISTS bench_signal")
            .execute(pool)
            .await?;
        sqlx::query("CREATE TABLE bench_orders (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)")
            .execute(pool)
            .await?;
        Ok(())
    }
    async fn insert_business(conn: &mut Self::Connection, id: i64) -> Result<(), signalbus::Error> {
        sqlx::query("INSERT INTO bench_orders (id, amount) VALUES (?, ?)")
            .bind(id)
            .bind(id % 1000)
            .execute(conn)
            .await?;
        Ok(())
    }
}
