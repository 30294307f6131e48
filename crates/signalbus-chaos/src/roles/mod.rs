//! The processes the harness runs and kills: writers, relays and consumers. Each is this
//! binary with a subcommand, so a SIGKILL takes exactly one of them.

pub mod consumer;
mod queues;
mod receiver;
pub mod relay;
pub mod writer;

use crate::db::{Db, HarnessDb};
use crate::signals::{Event, Keyed, Poison};
use signalbus::SignalBus;
use signalbus::storage::DatabaseKind;
use std::time::Duration;

/// The bus' own publish limit; the broker clients' timeouts (4 s, [`crate::signals::Bus::url`])
/// stay below it, and the lease outlives it.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(6);
/// Short, so that the rows of a killed flusher come back quickly (more duplicates, faster
/// recovery).
pub const LEASE: Duration = Duration::from_secs(8);

/// A bus on the writer's or relay's database with the three signal types (through a pooler in
/// transaction mode with `transaction_pooler`), with a pool of `pool` connections. A database
/// or a broker that is down at start is waited for: a process restarted during a fault must
/// come up anyway.
pub async fn bus_for<D: HarnessDb>(
    db_url: &str,
    bus_url: &str,
    autoflush: bool,
    transaction_pooler: bool,
    pool: u32,
) -> SignalBus<D> {
    loop {
        match connect::<D>(db_url, bus_url, autoflush, transaction_pooler, pool).await {
            Ok(bus) => return bus,
            Err(e) => {
                tracing::warn!(error = %e, "database or bus not reachable yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Connections of a writer's or relay's pool on its database.
pub const POOL: u32 = 8;
/// The same in fleet mode, for each of a process' databases (the CLI's default): the
/// server's connections are shared by every tenant's pools, listeners and idle locks.
pub const FLEET_POOL: u32 = 2;

/// The bus of [`bus_for`], tried once, with a pool of `pool` connections.
pub async fn connect<D: HarnessDb>(
    db_url: &str,
    bus_url: &str,
    autoflush: bool,
    transaction_pooler: bool,
    pool: u32,
) -> signalbus::Result<SignalBus<D>> {
    let pool = crate::database::pool::<D>(db_url, pool).await?;
    let publisher = signalbus::connect_bus(bus_url).await?;
    SignalBus::builder(pool)
        .publisher(publisher)
        .register::<Event>()
        .register::<Keyed>()
        .register::<Poison>()
        .publish_timeout(PUBLISH_TIMEOUT)
        .lease(LEASE)
        .autoflush(autoflush)
        .transaction_pooler(transaction_pooler)
        .build()
}

/// The databases listed in a fleet's list file (`--tenants-file`), one URL a line (the
/// harness replaces it whole, by a rename); `None` when it cannot be read.
pub fn read_list(path: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// The database type of `url`, for a role's generic run.
pub fn db_of(url: &str) -> Db {
    match DatabaseKind::of(url).expect("a database URL of the harness") {
        DatabaseKind::Postgres => Db::Postgres,
        DatabaseKind::MySql => Db::Mysql,
        DatabaseKind::Sqlite => Db::Sqlite,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Arm the fail point `spec` (`name=actions`, as the `fail` crate reads them) for this process.
pub fn arm(spec: Option<&str>) {
    if let Some(spec) = spec {
        let (name, actions) = spec.split_once('=').expect("--failpoint name=actions");
        fail::cfg(name, actions).expect("a valid fail point configuration");
    }
}
