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
