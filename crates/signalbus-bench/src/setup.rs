//! Connecting to the database named by URL, with a bench table, on any backend.

use signalbus::storage::{DatabaseKind, PoolSettings};
use signalbus::{BoxPublisher, PublisherExt, publisher::MemoryPublisher};
use std::time::Duration;

/// The bus chosen by `--bus`: `memory` keeps messages in memory (and counts them).
pub async fn publisher(url: &str) -> signalbus::Result<(BoxPublisher, Option<MemoryPublisher>)> {
    if url == "memory" || url == "memory:" {
        let memory = MemoryPublisher::new();
        return Ok((memory.clone().boxed(), Some(memory)));
    }
    Ok((signalbus::connect_bus(url).await?, None))
}

/// A pool of `size` connections on the database a URL names (`signalbus::storage::open_pool`);
/// on SQLite a file created when missing, WAL, normal sync, a long busy timeout for many
/// writers.
pub fn pool_settings(size: u32) -> PoolSettings {
    PoolSettings::new()
        .max_connections(size)
        .create_sqlite_file(true)
        .sqlite_wal(true)
        .busy_timeout(Duration::from_secs(60))
}

/// A pool of `size` connections to a PostgreSQL URL.
pub async fn pool<DB: sqlx::Database>(url: &str, size: u32) -> Result<sqlx::Pool<DB>, sqlx::Error> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(size)
        .connect(url)
        .await
}

/// A pool on the PostgreSQL database of `url`, for benchmarks that run only there (`what`
/// says which, and why, in the error otherwise).
pub async fn postgres_only(
    url: &str,
    size: u32,
    what: &str,
) -> Result<sqlx::PgPool, Box<dyn std::error::Error>> {
    if DatabaseKind::of(url)? != DatabaseKind::Postgres {
        return Err(format!("{what} runs on PostgreSQL").into());
    }
    Ok(pool(url, size).await?)
}

/// Where a benchmark's relay learns of new signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// From the table (woken by notifications on PostgreSQL).
    Table,
    /// From PostgreSQL's write-ahead log (wal_level = logical).
    Wal,
}

/// Start a relay of `bus` (on the database at `url`); with WAL capture, once it streams
/// (an error if it falls back to the table: that would measure the wrong thing).
pub async fn relay<DB: signalbus::Backend>(
    bus: &signalbus::SignalBus<DB>,
    url: &str,
    capture: Capture,
    ordered: bool,
) -> Result<signalbus::Relay, Box<dyn std::error::Error>> {
    let builder = bus.relay().ordered(ordered);
    if capture == Capture::Table {
        return Ok(builder.start().await?);
    }
    // A slot left by an earlier phase would make this relay first decode the WAL of every
    // phase since: each measurement starts from a slot made now.
    let admin = sqlx::PgPool::connect(url).await?;
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = 'signalbus_bench' AND NOT active",
    )
    .execute(&admin)
    .await?;
    sqlx::query("DROP PUBLICATION IF EXISTS signalbus_bench")
        .execute(&admin)
        .await?;
    admin.close().await;
    let relay = builder
        .capture_wal(signalbus::WalCapture::from_url(url)?.slot("signalbus_bench"))
        .start()
        .await?;
    let started = std::time::Instant::now();
    loop {
        match relay.capture() {
            Some(signalbus::CaptureState::Streaming) => return Ok(relay),
            Some(signalbus::CaptureState::TableMode(why)) => {
                return Err(format!("WAL capture cannot work: {why}").into());
            }
            _ if started.elapsed() > Duration::from_secs(60) => {
                return Err("WAL capture did not start streaming within 60 s".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
