//! The harness' view of each bus' database: preparing it, and reading what it committed and
//! what its signal tables still hold.

use crate::check::Committed;
use crate::roles::writer;
use crate::signals::{Bus, Poison, TABLES};
use crate::workload::Workload;
use crate::world::World;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

type Failure = Box<dyn std::error::Error>;

/// The bus' database: the business table, the signal tables, the planted poison.
pub async fn prepare(world: &World, bus: Bus, poison: u32) -> Result<(), Failure> {
    let admin = sqlx::PgPool::connect(&world.pg.url(world.pg.port, "postgres")).await?;
    // The name is one of the harness' own (chaos_amqp, ...): no user input reaches it.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        bus.database()
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    let pool = sqlx::PgPool::connect(&world.direct_db_url(bus)).await?;
    sqlx::raw_sql(writer::BUSINESS_DDL).execute(&pool).await?;
    let bus_handle = signalbus::SignalBus::builder(pool.clone())
        .publisher(signalbus::connect_bus("memory:").await?)
        .register::<crate::signals::Event>()
        .register::<crate::signals::Keyed>()
        .register::<Poison>()
        .autoflush(false)
        .build()?;
    bus_handle.migrate().await?;
    let mut tx = bus_handle.begin().await?;
    let (destination, route) = bus.poison_route();
    for n in 0..poison {
        tx.send(&Poison {
            destination: destination.to_owned(),
            route: route.to_owned(),
            n,
        })
        .await?;
    }
    tx.commit().await?;
    bus_handle.close(Duration::from_secs(1)).await;
    pool.close().await;
    Ok(())
}

/// Counts of the signal tables: (rows that must be gone, parked poison, poison not parked).
async fn table_counts(pool: &sqlx::PgPool) -> Result<(i64, i64, i64), sqlx::Error> {
    let mut left = 0;
    for table in &TABLES[..2] {
        // The table names are the harness' own constants.
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(pool)
                .await?;
        left += n;
    }
    let (parked, unparked): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE parked_at IS NOT NULL), count(*) FILTER (WHERE parked_at IS NULL) FROM chaos_poison",
    )
    .fetch_one(pool)
    .await?;
    Ok((left, parked, unparked))
}

/// Whether `bus` is drained: the tables hold only the parked poison, and the consumer
/// recorded every committed signal.
pub async fn drained(world: &World, bus: Bus, w: &Workload, poison: u32) -> Result<bool, Failure> {
    let c = committed(world, bus, w).await?;
    if c.left > 0 || c.parked != i64::from(poison) {
        return Ok(false);
    }
    let seen: HashSet<(i64, u32)> = crate::roles::consumer::read_all(&w.records)
        .iter()
        .map(|d| (d.tx, d.i))
        .collect();
    Ok(c.signals.keys().all(|k| seen.contains(k)))
}

pub async fn committed(world: &World, bus: Bus, w: &Workload) -> Result<Committed, Failure> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&world.direct_db_url(bus))
        .await?;
    let rows: Vec<(i64, i32, Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT id, n, key, seq FROM chaos_tx")
            .fetch_all(&pool)
            .await?;
    let (left, parked, unparked) = table_counts(&pool).await?;
    pool.close().await;
    let mut signals = HashMap::new();
    for (id, n, key, seq) in &rows {
        for i in 0..u32::try_from(*n).unwrap_or(0) {
            let keyed = match (key, seq) {
                (Some(k), Some(s)) => Some((k.clone(), s + i64::from(i))),
                _ => None,
            };
            signals.insert((*id, i), keyed);
        }
    }
    let rolled_back = std::fs::read_to_string(&w.rolled_back)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    Ok(Committed {
        signals,
        transactions: rows.len(),
        rolled_back,
        left: left + unparked,
        parked,
    })
}
