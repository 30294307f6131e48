//! The harness' view of each bus' database: preparing it, and reading what it committed and
//! what its signal tables still hold.

use crate::check::Committed;
use crate::db::{Db, HarnessDb, TxRow};
use crate::signals::{Body, Bus, Poison};
use crate::workload::Workload;
use crate::world::World;
use signalbus::storage::{PoolSettings, open_pool};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

type Failure = Box<dyn std::error::Error>;

/// Run the generic `$f::<DB>(args…)` for the world's database type.
macro_rules! on_db {
    ($db:expr, $f:ident($($arg:expr),*)) => {
        match $db {
            Db::Postgres => $f::<sqlx::Postgres>($($arg),*).await,
            Db::Mysql => $f::<sqlx::MySql>($($arg),*).await,
            Db::Sqlite => $f::<sqlx::Sqlite>($($arg),*).await,
        }
    };
}
pub(crate) use on_db;

/// A small pool on `url` (creating an SQLite file that does not exist yet).
pub async fn pool<D: HarnessDb>(url: &str, max: u32) -> Result<sqlx::Pool<D>, sqlx::Error> {
    let settings = PoolSettings::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .create_sqlite_file(true)
        .busy_timeout(Duration::from_secs(10));
    open_pool::<D>(url, &settings).await
}

/// The bus' databases (one, or in fleet mode one per tenant), each with the business table
/// and the signal tables; the poison planted in the first; a fleet's lists written.
pub async fn prepare(world: &World, bus: Bus, poison: u32) -> Result<(), Failure> {
    for t in 0..world.tenants(bus) {
        prepare_tenant(world, bus, t, if t == 0 { poison } else { 0 }).await?;
    }
    if let Some(fleet) = &world.fleet {
        fleet.write_lists(world, bus, None)?;
    }
    Ok(())
}

/// Business ids of one tenant: tenant `t`'s start at `t` times this.
const TENANT_IDS: i64 = 1_000_000_000_000;

/// Create the database of `bus`' tenant `t` (the bus' only one outside fleet mode) and its
/// tables, and plant `poison` poison signals in it.
pub async fn prepare_tenant(world: &World, bus: Bus, t: u32, poison: u32) -> Result<(), Failure> {
    let name = bus.tenant_database(t);
    if let Some(admin) = world.db.admin_url() {
        // The name is one of the harness' own (chaos_amqp, ...): no user input reaches it.
        let create = format!("CREATE DATABASE {name}");
        match world.db.kind() {
            Db::Postgres => {
                let admin = pool::<sqlx::Postgres>(&admin, 1).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                    .execute(&admin)
                    .await?;
                admin.close().await;
            }
            _ => {
                let admin = pool::<sqlx::MySql>(&admin, 1).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                    .execute(&admin)
                    .await?;
                admin.close().await;
            }
        }
    }
    let url = world.db.url(&name, false);
    let first_id = i64::from(t) * TENANT_IDS;
    on_db!(world.db.kind(), prepare_on(&url, bus, poison, first_id))
}

async fn prepare_on<D: HarnessDb>(
    url: &str,
    bus: Bus,
    poison: u32,
    first_id: i64,
) -> Result<(), Failure> {
    let pool = pool::<D>(url, 2).await?;
    D::create_business_table(&pool).await?;
    if first_id > 0 {
        D::start_ids_at(&pool, first_id).await?;
    }
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
/// The statements are the harness' own constants.
async fn table_counts<D: HarnessDb>(pool: &sqlx::Pool<D>) -> Result<(i64, i64, i64), sqlx::Error> {
    let left = D::count(pool, "SELECT count(*) FROM chaos_event").await?
        + D::count(pool, "SELECT count(*) FROM chaos_keyed").await?;
    let parked = D::count(
        pool,
        "SELECT count(*) FROM chaos_poison WHERE parked_at IS NOT NULL",
    )
    .await?;
    let unparked = D::count(
        pool,
        "SELECT count(*) FROM chaos_poison WHERE parked_at IS NULL",
    )
    .await?;
    Ok((left, parked, unparked))
}

/// Whether `bus` is drained: the tables hold only the parked poison, and the consumer
/// recorded every committed signal.
pub async fn drained(world: &World, bus: Bus, w: &Workload, poison: u32) -> Result<bool, Failure> {
    let c = committed(world, bus, w, false).await?;
    if c.left > 0 || c.parked != i64::from(poison) {
        return Ok(false);
    }
    let seen: HashSet<(i64, u32)> = crate::roles::consumer::read_all(&w.records)
        .iter()
        .map(|d| (d.tx, d.i))
        .collect();
    Ok(c.signals.keys().all(|k| seen.contains(k)))
}

/// What `bus`' database committed; with `pending`, also which signals are still rows in its
/// tables (their bodies read and parsed: for the final check, not for every drain poll).
pub async fn committed(
    world: &World,
    bus: Bus,
    w: &Workload,
    pending: bool,
) -> Result<Committed, Failure> {
    let (mut rows, mut left, mut parked, mut unparked, mut bodies) =
        (Vec::new(), 0, 0, 0, Vec::new());
    // Every database of the bus (a fleet's tenants: their ids do not overlap).
    for url in world.direct_db_urls(bus) {
        let (r, (l, p, u), b) = on_db!(world.db.kind(), read_committed(&url, pending))?;
        rows.extend(r);
        (left, parked, unparked) = (left + l, parked + p, unparked + u);
        bodies.extend(b);
    }
    let pending = bodies
        .iter()
        .filter_map(|b| serde_json::from_slice::<Body>(b).ok())
        .map(|b| (b.tx, b.i))
        .collect();
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
        pending,
    })
}

/// The business rows, the signal tables' counts and the bodies of the rows still there.
async fn read_committed<D: HarnessDb>(
    url: &str,
    pending: bool,
) -> Result<(Vec<TxRow>, (i64, i64, i64), Vec<Vec<u8>>), sqlx::Error> {
    let pool = pool::<D>(url, 1).await?;
    let read = async {
        let rows = D::tx_rows(&pool).await?;
        let counts = table_counts(&pool).await?;
        let bodies = if pending {
            D::bodies(
                &pool,
                "SELECT body FROM chaos_event UNION ALL SELECT body FROM chaos_keyed",
            )
            .await?
        } else {
            Vec::new()
        };
        Ok((rows, counts, bodies))
    };
    let result = read.await;
    pool.close().await;
    result
}

/// With `--capture wal`: wait until `bus`' relays stream from the WAL — an active replication
/// slot for each relay group (the ordered one and the plain one) — or say why not after
/// `limit`. A relay that cannot capture goes on in table mode, and the run would then test
/// less than it says.
pub async fn wal_streaming(
    world: &World,
    bus: Bus,
    limit: std::time::Duration,
) -> Result<(), String> {
    use sqlx::Connection;
    let began = std::time::Instant::now();
    let mut active = 0;
    while began.elapsed() < limit {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&world.direct_db_url(bus)).await {
            active = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_replication_slots \
                 WHERE database = current_database() AND active",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
            if active >= 2 {
                return Ok(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(format!(
        "the {} relays do not stream from the WAL: {active} of 2 replication slots active \
         after {limit:?} (see the relays' logs)",
        bus.name()
    ))
}
