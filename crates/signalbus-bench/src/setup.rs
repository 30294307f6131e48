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
