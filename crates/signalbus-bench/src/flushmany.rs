//! `flushmany`: how fast explicit flushing drains a backlog.
//!
//! In one run, on the same database and the same table layout:
//! * `raw_delete_returning`: the ceiling, a plain `DELETE … RETURNING` burst loop (one
//!   transaction per burst, rows read back, nothing published);
//! * `flushmany` with 1, 2, 4… real OS processes (this binary re-executed with `--worker`)
//!   draining one backlog together;
//! * `flushordered` (one process: ordered flushers take turns anyway);
//! * `bus_ceiling`: synthetic batches of the same messages published through the bus alone,
//!   no database, so that broker runs can be compared.

use crate::setup;
use crate::stats::{emit, round2};
use signalbus::{Backend, Ident, Message, Publisher, Selection, SignalBus, SignalType};
use sqlx::{MySql, Pool, Postgres, Sqlite};
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(clap::Args)]
pub struct Args {
    /// postgres://..., mysql://... or sqlite:PATH. The tables `bench_flush` and `bench_raw`
    /// there are dropped and created again.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// `memory`, or a bus URL.
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Pending signals to drain in each configuration.
    #[arg(long, default_value_t = 100_000)]
    signals: usize,
    /// Most flushmany processes: runs 1, 2, 4, … up to this.
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Signals per burst (per database transaction and publish call).
    #[arg(long, default_value_t = signalbus::DEFAULT_BURST)]
    burst: usize,
    /// Runs of each configuration; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Internal: run as one flushmany worker process.
    #[arg(long, hide = true)]
    worker: bool,
}

const TABLE: &str = "bench_flush";
const RAW: &str = "bench_raw";

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, settings) = (&args.database_url, setup::pool_settings(4));
    signalbus::with_database!(url, |DB| {
        let pool = signalbus::storage::open_pool::<DB>(url, &settings).await?;
        bench::<DB>(pool, &args).await
    })?
}

fn signal_type(burst: usize) -> SignalType {
    SignalType::new(TABLE).autoflush(false).burst(burst)
}

async fn bus<DB: Backend>(
    pool: Pool<DB>,
    args: &Args,
) -> Result<SignalBus<DB>, Box<dyn std::error::Error>> {
    let (publisher, _) = setup::publisher(&args.bus).await?;
    Ok(SignalBus::builder(pool)
        .publisher(publisher)
        .register_type(signal_type(args.burst))
        .autoflush(false)
        .build()?)
}

async fn bench<DB: FillDb>(pool: Pool<DB>, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.worker {
        return worker(pool, args).await;
    }
    let bus = bus(pool.clone(), args).await?;
    let (table, raw) = (Ident::new(TABLE)?, Ident::new(RAW)?);
    let line = |mode: &str, processes: usize, secs: f64, ceiling: Option<f64>| {
        let rate = args.signals as f64 / secs;
        let mut v = serde_json::json!({
            "bench": "flushmany",
            "database": DB::NAME,
            "bus": signalbus::redact::redact_url(&args.bus),
            "mode": mode,
            "processes": processes,
            "signals": args.signals,
            "burst": args.burst,
            "rounds": args.rounds.max(1),
            "seconds": round2(secs),
            "msgs_per_s": round2(rate),
        });
        if let Some(ceiling) = ceiling {
            v["ratio_vs_raw"] = round2(rate / ceiling).into();
        }
        emit(v);
        rate
    };

    // Each configuration runs `rounds` times on a fresh backlog; the fastest round counts
    // (the machine is shared: the slower rounds measure the neighbours).
    let rounds = args.rounds.max(1);
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        DB::reset(&pool, &raw).await?;
        DB::fill(&pool, &raw, args.signals).await?;
        let started = Instant::now();
        let drained = DB::raw_drain(&pool, &raw, args.burst).await?;
        check(drained, args.signals, "raw")?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    DB::reset(&pool, &raw).await?;
    let ceiling = line("raw_delete_returning", 1, best, None);

    let mut processes = 1;
    while processes <= args.processes.max(1) {
        let mut best = f64::INFINITY;
        for _ in 0..rounds {
            DB::reset(&pool, &table).await?;
            DB::fill(&pool, &table, args.signals).await?;
            best = best.min(run_workers(args, processes).await?);
        }
        line("flushmany", processes, best, Some(ceiling));
        processes *= 2;
    }

    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        DB::reset(&pool, &table).await?;
        DB::fill(&pool, &table, args.signals).await?;
        let started = Instant::now();
        let sent = bus.flush_ordered(&Selection::all()).await?;
        check(sent, args.signals, "flushordered")?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    line("flushordered", 1, best, Some(ceiling));

    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        best = best.min(bus_ceiling(args).await?);
    }
    line("bus_ceiling", 1, best, Some(ceiling));
    Ok(())
}

fn check(got: usize, want: usize, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: drained {got} rows, expected {want}"))
    }
}

/// Start `n` worker processes, let them connect, then time them draining the table.
async fn run_workers(args: &Args, n: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = tokio::process::Command::new(&exe)
            .args(["--runtime", crate::stats::runtime()])
            .args(["flushmany", "--worker", "--bus", &args.bus])
            .args(["--burst", &args.burst.to_string()])
            .env("DATABASE_URL", &args.database_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        if lines.next_line().await?.as_deref() != Some("READY") {
            return Err("a worker did not start".into());
        }
        children.push((child, lines));
    }
    let started = Instant::now();
    for (child, _) in &mut children {
        child
            .stdin
            .as_mut()
            .ok_or("no stdin")?
            .write_all(b"GO\n")
            .await?;
    }
    let mut sent = 0;
    for (mut child, mut lines) in children {
        let line = lines.next_line().await?.ok_or("a worker died")?;
        sent += line.trim().parse::<usize>()?;
        child.wait().await?;
    }
    let secs = started.elapsed().as_secs_f64();
    check(sent, args.signals, "flushmany")?;
    Ok(secs)
}

/// One worker: connect, say READY, wait for GO, flushmany, print how many it sent.
async fn worker<DB: Backend>(
    pool: Pool<DB>,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let bus = bus(pool, args).await?;
    // Open the pool's connection before the clock starts.
    drop(bus.pool().acquire().await?);
    println!("READY");
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;
    let sent = bus.flush_many(&Selection::all()).await?;
    println!("{sent}");
    Ok(())
}

/// The same messages in bursts, published straight to the bus.
async fn bus_ceiling(args: &Args) -> Result<f64, Box<dyn std::error::Error>> {
    let (publisher, _) = setup::publisher(&args.bus).await?;
    let signal: Arc<str> = Arc::from(TABLE);
    let started = Instant::now();
    let mut n = 0;
    while n < args.signals {
        let batch: Vec<Message> = (n..(n + args.burst).min(args.signals))
            .map(|i| Message {
                id: format!("00000000-0000-0000-0000-{i:012}"),
                signal: signal.clone(),
                destination: "bench".into(),
                routing_key: Some("order.placed".into()),
                headers: Default::default(),
                body: body(i).into_bytes(),
                content_type: Some("application/json".into()),
            })
            .collect();
        publisher.publish(&batch).await?;
        n += batch.len();
    }
    Ok(started.elapsed().as_secs_f64())
}

fn body(i: usize) -> String {
    format!("{{\"order_id\":{i},\"amount\":{}}}", i % 1000)
}

/// Filling and raw-draining the bench tables, per database.
pub(crate) trait FillDb: Backend {
    /// Drop `table` and create it again with the table contract.
    fn reset(
        pool: &Pool<Self>,
        table: &Ident,
    ) -> impl Future<Output = signalbus::Result<()>> + Send;
    /// `n` pending rows, 1000 per multi-row INSERT, in one transaction.
    fn fill(
        pool: &Pool<Self>,
        table: &Ident,
        n: usize,
    ) -> impl Future<Output = signalbus::Result<()>> + Send;
    /// The raw ceiling: `DELETE … RETURNING` bursts, one transaction each, until empty.
    fn raw_drain(
        pool: &Pool<Self>,
        table: &Ident,
        burst: usize,
    ) -> impl Future<Output = signalbus::Result<usize>> + Send;
}

/// The columns a flush reads back.
type Row = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Vec<u8>,
    Option<String>,
);
const COLUMNS: &str = "id, message_id, topic, routing_key, headers, body, content_type";

macro_rules! fill_db {
    ($db:ty, $quote:expr, $placeholder:expr, $begin:expr, $delete:expr) => {
        impl FillDb for $db {
            async fn reset(pool: &Pool<Self>, table: &Ident) -> signalbus::Result<()> {
                let sql = format!("DROP TABLE IF EXISTS {}", table.quoted($quote));
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
                // The table contract as `migrate` creates it, through a bus that only migrates.
                SignalBus::builder(pool.clone())
                    .publisher(signalbus::publisher::MemoryPublisher::new())
                    .register_type(SignalType::new(table.to_string()).autoflush(false))
                    .autoflush(false)
                    .build()?
                    .migrate()
                    .await
            }

            async fn fill(pool: &Pool<Self>, table: &Ident, n: usize) -> signalbus::Result<()> {
                let placeholder: fn(usize) -> String = $placeholder;
                let mut tx = pool.begin().await?;
                let mut i = 0;
                while i < n {
                    let rows = (n - i).min(1000);
                    let values: Vec<String> = (0..rows)
                        .map(|r| {
                            format!(
                                "({}, 'bench', 'order.placed', {})",
                                placeholder(2 * r + 1),
                                placeholder(2 * r + 2)
                            )
                        })
                        .collect();
                    let sql = format!(
                        "INSERT INTO {} (message_id, topic, routing_key, body) VALUES {}",
                        table.quoted($quote),
                        values.join(", ")
                    );
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for r in i..i + rows {
                        query = query
                            .bind(format!("00000000-0000-0000-0000-{r:012}"))
                            .bind(body(r).into_bytes());
                    }
                    query.execute(&mut *tx).await?;
                    i += rows;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn raw_drain(
                pool: &Pool<Self>,
                table: &Ident,
                burst: usize,
            ) -> signalbus::Result<usize> {
                let delete: fn(&str) -> String = $delete;
                let sql = delete(&table.quoted($quote));
                let mut total = 0;
                loop {
                    let mut tx = pool.begin_with($begin).await?;
                    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(i64::try_from(burst).unwrap_or(i64::MAX))
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    if rows.is_empty() {
                        return Ok(total);
                    }
                    total += rows.len();
                }
            }
        }
    };
}

// `= ANY(ARRAY(…))`: primary-key lookups. (`IN (SELECT …)` is planned as a hash semi-join
// that scans the whole table per burst, which would understate the ceiling.)
fill_db!(Postgres, '"', |n| format!("${n}"), "BEGIN", |t| format!(
    "DELETE FROM {t} WHERE id = ANY(ARRAY(SELECT id FROM {t} ORDER BY id LIMIT $1 \
     FOR UPDATE SKIP LOCKED)) RETURNING {COLUMNS}"
));
// MariaDB syntax (MySQL 8 has no DELETE … RETURNING).
fill_db!(MySql, '`', |_| "?".into(), "BEGIN", |t| format!(
    "DELETE FROM {t} ORDER BY id LIMIT ? RETURNING {COLUMNS}"
));
fill_db!(Sqlite, '"', |_| "?".into(), "BEGIN IMMEDIATE", |t| format!(
    "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} ORDER BY id LIMIT ?) \
     RETURNING id, message_id, topic, routing_key, headers, CAST(body AS BLOB), content_type"
));
