//! Connecting to the database named by URL, with a bench table, on any backend.

use signalbus::{BoxPublisher, PublisherExt, publisher::MemoryPublisher};

/// The bus chosen by `--bus`: `memory` keeps messages in memory (and counts them).
pub async fn publisher(url: &str) -> signalbus::Result<(BoxPublisher, Option<MemoryPublisher>)> {
    if url == "memory" || url == "memory:" {
        let memory = MemoryPublisher::new();
        return Ok((memory.clone().boxed(), Some(memory)));
    }
    Ok((signalbus::connect_bus(url).await?, None))
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

pub fn kind(url: &str) -> Result<Kind, String> {
    match url.split(':').next() {
        Some("postgres" | "postgresql") => Ok(Kind::Postgres),
        Some("mysql" | "mariadb") => Ok(Kind::MySql),
        Some("sqlite") => Ok(Kind::Sqlite),
        _ => Err(format!(
            "unsupported database URL `{}`: use postgres://, mysql:// or sqlite:",
            signalbus::redact::redact_url(url)
        )),
    }
}

/// A pool of `size` connections to a PostgreSQL or MySQL URL.
pub async fn pool<DB: sqlx::Database>(url: &str, size: u32) -> Result<sqlx::Pool<DB>, sqlx::Error> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(size)
        .connect(url)
        .await
}

/// A pool on a SQLite file: WAL, normal sync, a long busy timeout for many writers.
pub async fn sqlite_pool(url: &str, size: u32) -> Result<sqlx::SqlitePool, sqlx::Error> {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    let options = options
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(60));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(size)
        .connect_with(options)
        .await
}

/// A pool on the PostgreSQL database of `url`, for benchmarks that run only there (`what`
/// says which, and why, in the error otherwise).
pub async fn postgres_only(
    url: &str,
    size: u32,
    what: &str,
) -> Result<sqlx::PgPool, Box<dyn std::error::Error>> {
    if kind(url)? != Kind::Postgres {
        return Err(format!("{what} runs on PostgreSQL").into());
    }
    Ok(pool(url, size).await?)
}
