//! `ordered`: per-key ordered flushing against unordered `flushmany`, same backlog, same run
//! (PostgreSQL). For P = 1, 2, 4, … "processes" (buses with pools of their own, draining at
//! once as separate processes would), a backlog of `--signals` rows over `--keys` ordering
//! keys is drained by `flushmany` and then, refilled, by `flushordered`.

use crate::flushmany::FillDb;
use crate::setup;
use crate::stats::{emit, round2};
use signalbus::{Ident, Selection, SignalBus, SignalType};
use sqlx::{PgPool, Postgres};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// postgres://... The table `bench_ordered` there is dropped and created again.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// `memory`, or a bus URL.
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Pending signals per run.
    #[arg(long, default_value_t = 100_000)]
    signals: usize,
    /// Ordering keys the signals are spread over (round robin).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Most processes: runs 1, 2, 4, … up to this.
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Signals per burst.
    #[arg(long, default_value_t = signalbus::DEFAULT_BURST)]
    burst: usize,
}

const TABLE: &str = "bench_ordered";

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let admin = setup::postgres_only(&args.database_url, 4, "the ordered benchmark").await?;
    let table = Ident::new(TABLE)?;
    Postgres::reset(&admin, &table).await?;
    let mut buses = Vec::new();
    for _ in 0..args.processes.max(1) {
        let (publisher, _) = setup::publisher(&args.bus).await?;
        let bus = SignalBus::builder(setup::pool(&args.database_url, 4).await?)
            .publisher(publisher)
            .register_type(SignalType::new(TABLE).autoflush(false).burst(args.burst))
            .autoflush(false)
            .build()?;
        bus.migrate().await?;
        buses.push(bus);
    }
    let mut processes = 1;
    while processes <= buses.len() {
        let many = drain(&admin, &table, &args, &buses[..processes], false).await?;
        let ordered = drain(&admin, &table, &args, &buses[..processes], true).await?;
        #[allow(clippy::cast_precision_loss)]
        let rate = |secs: f64| round2(args.signals as f64 / secs);
        emit(serde_json::json!({
            "bench": "ordered",
            "database": "PostgreSQL",
            "bus": signalbus::redact::redact_url(&args.bus),
            "signals": args.signals,
            "keys": args.keys,
            "processes": processes,
            "burst": args.burst,
            "flushmany_msgs_per_s": rate(many),
            "ordered_msgs_per_s": rate(ordered),
            "ratio_ordered_vs_flushmany": round2(many / ordered),
        }));
        processes *= 2;
    }
    Ok(())
}

/// Fill the backlog (keyed), drain it with every bus at once; seconds taken.
async fn drain(
    admin: &PgPool,
    table: &Ident,
    args: &Args,
    buses: &[SignalBus<Postgres>],
    ordered: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    Postgres::fill(admin, table, args.signals).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {TABLE} SET ordering_key = 'k' || (id % {})",
        args.keys.max(1)
    )))
    .execute(admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {TABLE}")))
        .execute(admin)
        .await?;
    let started = Instant::now();
    // One future per bus, polled together (the flush futures are not `Send`-general enough
    // for `tokio::spawn`); they wait on the database and the bus, not the CPU.
    let drains = buses.iter().map(|bus| async move {
        let all = Selection::all();
        let mut sent = 0;
        loop {
            let n = if ordered {
                bus.flush_ordered(&all).await?
            } else {
                bus.flush_many(&all).await?
            };
            if n == 0 {
                return Ok::<_, signalbus::Error>(sent);
            }
            sent += n;
        }
    });
    let mut sent = 0;
    for done in futures_util::future::join_all(drains).await {
        sent += done?;
    }
    let secs = started.elapsed().as_secs_f64();
    if sent < args.signals {
        return Err(format!("sent {sent} of {}", args.signals).into());
    }
    Ok(secs)
}
