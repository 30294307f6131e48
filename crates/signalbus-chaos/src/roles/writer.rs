//! A writer: business transactions at a steady rate, each with a row in `chaos_tx` and one to
//! three signals — [`Event`]s (auto-flushed by the commit) or [`Keyed`] signals of one of the
//! writer's keys (left to the relays) — and one in ten rolled back on purpose.

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
}

pub async fn run(args: WriterArgs) {
    super::arm(args.failpoint.as_deref());
    on_db!(super::db_of(&args.db_url), run_on(&args));
}

async fn run_on<D: HarnessDb>(args: &WriterArgs) {
    let bus = bus_for::<D>(&args.db_url, &args.bus_url, true, args.transaction_pooler).await;
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
                bus.close(Duration::from_secs(5)).await;
                return;
            }
        }
        let keyed = rng.random_bool(0.5);
        let n: u32 = rng.random_range(1..=3);
        let key = keyed.then(|| format!("w{}-k{}", args.id, rng.random_range(0..args.keys)));
        let rollback = rng.random_bool(0.1);
        match transaction(&bus, args.bus, args.id, key, n, rollback).await {
            Ok(Some(id)) => {
                let _ = writeln!(rolled_back, "{id}");
            }
            Ok(None) => {}
            // The database or the proxy in front of it is down: try again at the next tick.
            Err(e) => tracing::debug!(error = %e, "transaction failed"),
        }
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
