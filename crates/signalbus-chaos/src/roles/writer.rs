//! A writer: business transactions at a steady rate, each with a row in `chaos_tx` and one to
//! three signals — [`Event`]s (auto-flushed by the commit) or [`Keyed`] signals of one of the
//! writer's keys (left to the relays) — and one in ten rolled back on purpose. In fleet mode
//! (`--tenants-file`) each transaction goes to one of the tenants' databases at random, keys
//! being per tenant.

use super::{bus_for, now_ms};
use crate::database::on_db;
use crate::db::{Db, HarnessDb};
use crate::signals::{Bus, Event, Keyed};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct WriterArgs {
    #[arg(long, value_enum)]
    pub bus: Bus,
    #[arg(long)]
    pub id: u32,
    #[arg(long)]
    pub db_url: String,
    #[arg(long)]
    pub bus_url: String,
    /// Transactions per second.
    #[arg(long, default_value_t = 25)]
    pub rate: u32,
    /// Keys of this writer's keyed signals.
    #[arg(long, default_value_t = 8)]
    pub keys: u32,
    /// Where the ids of rolled-back transactions are appended.
    #[arg(long)]
    pub rolled_back: std::path::PathBuf,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub failpoint: Option<String>,
    /// The database is reached through a pooler in transaction mode (PgBouncer).
    #[arg(long)]
    pub transaction_pooler: bool,
    /// Fleet mode: write to every database listed in this file (one URL a line; read again
    /// every second, as new tenants are added); `--db-url` then only says the database type.
    #[arg(long)]
    pub tenants_file: Option<std::path::PathBuf>,
}

pub async fn run(args: WriterArgs) {
    super::arm(args.failpoint.as_deref());
    on_db!(super::db_of(&args.db_url), run_on(&args));
}

async fn run_on<D: HarnessDb>(args: &WriterArgs) {
    let mut tenants = Vec::new();
    let mut listed_at = std::time::Instant::now();
    match &args.tenants_file {
        Some(list) => {
            while tenants.is_empty() {
                add_tenants(&mut tenants, list, args).await;
                if tenants.is_empty() {
                    tracing::warn!(list = %list.display(), "no tenant listed yet");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        None => tenants.push(
            bus_for::<D>(
                &args.db_url,
                &args.bus_url,
                true,
                args.transaction_pooler,
                super::POOL,
            )
            .await,
        ),
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut rolled_back = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.rolled_back)
        .expect("the rolled-back log");
    let period = Duration::from_secs(1) / args.rate.max(1);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(crate::terminated());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => {
                // What the auto-flush holds goes out before the process ends.
                let closing = tenants.iter().map(|bus| bus.close(Duration::from_secs(5)));
                futures_util::future::join_all(closing).await;
                return;
            }
        }
        if let Some(list) = &args.tenants_file
            && listed_at.elapsed() >= LIST_EVERY
        {
            add_tenants(&mut tenants, list, args).await;
            listed_at = std::time::Instant::now();
        }
        let keyed = rng.random_bool(0.5);
        let n: u32 = rng.random_range(1..=3);
        // Outside fleet mode the one database, and no draw (a seed's workload stays as it was).
        let t = match tenants.len() {
            1 => 0,
            len => rng.random_range(0..len),
        };
        let key = keyed.then(|| {
            let k = rng.random_range(0..args.keys);
            match args.tenants_file {
                Some(_) => format!("t{t}-w{}-k{k}", args.id),
                None => format!("w{}-k{k}", args.id),
            }
        });
        let rollback = rng.random_bool(0.1);
        match transaction(&tenants[t], args.bus, args.id, key, n, rollback).await {
            Ok(Some(id)) => {
                let _ = writeln!(rolled_back, "{id}");
            }
            Ok(None) => {}
            // The database or the proxy in front of it is down: try again at the next tick.
            Err(e) => tracing::debug!(error = %e, "transaction failed"),
        }
    }
}

/// How often a writer in fleet mode reads its list of tenants again.
const LIST_EVERY: Duration = Duration::from_secs(1);

/// Open a bus on each database the list has beyond those open (tenants are only ever added,
/// at the end of the list: a tenant's number is its place).
async fn add_tenants<D: HarnessDb>(
    tenants: &mut Vec<signalbus::SignalBus<D>>,
    list: &std::path::Path,
    args: &WriterArgs,
) {
    for url in super::read_list(list)
        .unwrap_or_default()
        .iter()
        .skip(tenants.len())
    {
        tenants.push(
            bus_for::<D>(
                url,
                &args.bus_url,
                true,
                args.transaction_pooler,
                super::FLEET_POOL,
            )
            .await,
        );
    }
}

/// One business transaction; the id of the row when it was rolled back on purpose.
async fn transaction<D: HarnessDb>(
    bus: &signalbus::SignalBus<D>,
    which: Bus,
    writer: u32,
    key: Option<String>,
    n: u32,
    rollback: bool,
) -> Result<Option<i64>, signalbus::Error> {
    let mut tx = bus.begin().await?;
    let (id, seq) = D::insert_tx(
        &mut *tx,
        i32::try_from(writer).unwrap_or(i32::MAX),
        i32::try_from(n).unwrap_or(3),
        key.as_deref(),
    )
    .await?;
    for i in 0..n {
        let at_ms = now_ms();
        match (&key, seq) {
            (Some(key), Some(seq)) => {
                tx.send(&Keyed {
                    destination: which.keyed_destination().to_owned(),
                    key: key.clone(),
                    seq: seq + i64::from(i),
                    tx: id,
                    i,
                    at_ms,
                })
                .await?;
            }
            _ => {
                let (destination, route) = which.event_route();
                tx.send(&Event {
                    destination: destination.to_owned(),
                    route: route.to_owned(),
                    tx: id,
                    i,
                    at_ms,
                })
                .await?;
            }
        }
    }
    if rollback {
        tx.rollback().await?;
        return Ok(Some(id));
    }
    // The delivery is not awaited: what the auto-flush cannot send, the relays will.
    drop(tx.commit().await?);
    Ok(None)
}
