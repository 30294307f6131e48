//! The console's reads on a large table of parked signals (PostgreSQL): the overview, pages
//! of lists with each filter, counts (the dry run), failure groups, one signal's detail.
//! Measured twice on the same rows: right after the insert (no statistics yet: what an
//! operator gets during an incident) and after `ANALYZE`.

use crate::setup::postgres_only;
use crate::stats::{Latencies, emit, round2};
use signalbus::inspection::{SignalFilter, SignalState};
use signalbus::publisher::MemoryPublisher;
use signalbus::{SignalBus, SignalType};
use std::future::Future;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// PostgreSQL URL (a database of its own: the table `console_bench` is made anew).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Parked signals in the table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Runs of each read (the median and the slowest are reported).
    #[arg(long, default_value_t = 7)]
    repeat: usize,
}

const TABLE: &str = "console_bench";

/// `rows` parked signals: four kinds of errors (a route per routing key, a size per
/// message, an HTTP status per endpoint, a schema version), two tenants, 10,000 ordering
/// keys, created over the last `rows` milliseconds.
async fn fill(pool: &sqlx::PgPool, rows: u64) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {TABLE} (topic, routing_key, headers, body, created_at, attempts, \
         last_error, parked_at, ordering_key) \
         SELECT 'orders', 'order.placed.' || (i % 50), \
                CASE WHEN i % 2 = 0 THEN '{{\"tenant\":\"eu\"}}' ELSE '{{\"tenant\":\"us\"}}' END, \
                convert_to('{{\"order\":' || i || '}}', 'UTF8'), \
                now() - (i || ' milliseconds')::interval, 5, \
                CASE i % 4 WHEN 0 THEN 'no route for order.placed.' || (i % 50) \
                           WHEN 1 THEN 'message ' || (i % 5000) || ' too large' \
                           WHEN 2 THEN 'HTTP 503 from https://hooks.example/' || (i % 1000) \
                           ELSE 'consumer rejected: schema v' || (i % 3) END, \
                now() - (i || ' milliseconds')::interval, 'customer-' || (i % 10000) \
         FROM generate_series(1, {rows}) AS i"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

async fn measure<T, F, Fut>(
    repeat: usize,
    mut f: F,
) -> Result<(f64, f64, T), Box<dyn std::error::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = signalbus::Result<T>>,
{
    let mut times = Latencies::default();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed());
    }
    let median = times.percentile_ms(50.0);
    let max = times.percentile_ms(100.0);
    Ok((round2(median), round2(max), last.expect("at least one run")))
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = postgres_only(&args.database_url, 4, "the console benchmark").await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
        .execute(&pool)
        .await?;
    let bus = SignalBus::builder(pool.clone())
        .publisher(MemoryPublisher::new())
        .register_type(SignalType::new(TABLE).autoflush(false))
        .autoflush(false)
        .build()?;
    bus.migrate().await?;
    let started = Instant::now();
    fill(&pool, args.rows).await?;
    eprintln!(
        "signalbus-bench console: {} parked rows in {:.1} s",
        args.rows,
        started.elapsed().as_secs_f64()
    );
    for statistics in ["none", "analyzed"] {
        if statistics == "analyzed" {
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {TABLE}")))
                .execute(&pool)
                .await?;
        }
        let emit_one = |op: &str, (median, max): (f64, f64), found: usize| {
            emit(serde_json::json!({
                "bench": "console", "op": op, "rows": args.rows, "statistics": statistics,
                "ms_median": median, "ms_max": max, "found": found,
            }));
        };
        let (a, b, o) = measure(args.repeat, || bus.overview(TABLE)).await?;
        emit_one(
            "overview",
            (a, b),
            usize::try_from(o.stats.parked).unwrap_or(usize::MAX),
        );
        let groups = bus.failure_groups(TABLE, &SignalFilter::new()).await?;
        let lists: Vec<(&str, SignalFilter, Option<i64>)> = vec![
            ("list first page", SignalFilter::new(), None),
            ("list page at id 900000", SignalFilter::new(), Some(900_000)),
            (
                "list parked only",
                SignalFilter::new().state(SignalState::Parked),
                None,
            ),
            (
                "list error contains",
                SignalFilter::new().error_contains("hooks.example/77"),
                None,
            ),
            (
                "list header tenant=us",
                SignalFilter::new().header("tenant", "us"),
                None,
            ),
            (
                "list ordering key",
                SignalFilter::new().ordering_key("customer-42"),
                None,
            ),
            (
                "list older than 10 min",
                SignalFilter::new().older_than(std::time::Duration::from_secs(600)),
                None,
            ),
        ];
        let by_group: Vec<(String, SignalFilter)> = groups
            .iter()
            .map(|g| {
                (
                    format!("list group `{}`", g.fingerprint),
                    SignalFilter::new().group(g.id.clone()),
                )
            })
            .collect();
        for (op, filter, after) in &lists {
            let (a, b, page) =
                measure(args.repeat, || bus.list_signals(TABLE, filter, *after, 50)).await?;
            emit_one(op, (a, b), page.signals.len());
        }
        for (op, filter) in &by_group {
            let (a, b, page) =
                measure(args.repeat, || bus.list_signals(TABLE, filter, None, 50)).await?;
            emit_one(op, (a, b), page.signals.len());
        }
        for (op, filter) in [
            ("count all (dry run)", SignalFilter::new()),
            (
                "count error contains",
                SignalFilter::new().error_contains("hooks.example/77"),
            ),
            (
                "count ordering key",
                SignalFilter::new().ordering_key("customer-42"),
            ),
        ] {
            let (a, b, m) = measure(args.repeat, || bus.count_signals(TABLE, &filter)).await?;
            emit_one(op, (a, b), usize::try_from(m.signals).unwrap_or(usize::MAX));
        }
        if let Some((_, filter)) = by_group.first() {
            let (a, b, m) = measure(args.repeat, || bus.count_signals(TABLE, filter)).await?;
            emit_one(
                "count one group",
                (a, b),
                usize::try_from(m.signals).unwrap_or(usize::MAX),
            );
        }
        let everything = SignalFilter::new();
        let (a, b, g) = measure(args.repeat, || bus.failure_groups(TABLE, &everything)).await?;
        emit_one("failure groups", (a, b), g.len());
        let (a, b, d) = measure(args.repeat, || bus.signal_detail(TABLE, 500_000, 65_536)).await?;
        emit_one("detail", (a, b), usize::from(d.is_some()));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {TABLE}")))
        .execute(&pool)
        .await?;
    Ok(())
}
