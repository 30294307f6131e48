//! Reaching a database and building a bus over it from the configuration: shared by every
//! command of the binary and by the relays of a fleet.

use crate::config::Config;
use crate::error::CliError;
use signalbus::redact::redact_url;
use signalbus::storage::{DatabaseKind, PoolSettings, open_pool};
use signalbus::{Backend, BoxPublisher, SignalBus};
use std::time::Duration;

/// How long the first connection to a database may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a command reaches its databases and what its buses are.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Connections at most per database (the pool's size).
    pub max_connections: u32,
    /// Connections a pool keeps idle at most this long (the relay of an idle database
    /// keeps one warm by its polls; the others close).
    pub idle_timeout: Option<Duration>,
    /// Open the pool without connecting (commands that need no database).
    pub lazy: bool,
    /// Create a missing SQLite file (`migrate`).
    pub create_sqlite_file: bool,
    /// Seconds the bus may take to confirm one burst.
    pub publish_timeout: Duration,
    /// How long a claim keeps other flushers away (default: the library's).
    pub lease: Option<Duration>,
    /// The databases are reached through a pooler in transaction mode (PgBouncer).
    pub transaction_pooler: bool,
}

impl Connect {
    /// A pool on the database `url` names (`DB`). On a server, one connection first, alone:
    /// the pool would retry a refused connection until its acquire timeout and then report
    /// only that it timed out, not why.
    pub async fn pool<DB: Backend>(&self, url: &str) -> Result<sqlx::Pool<DB>, CliError> {
        // SQLite has no server to ask, and `migrate` may create its file.
        if !self.lazy && !matches!(DatabaseKind::of(url), Ok(DatabaseKind::Sqlite)) {
            first_connection::<DB>(url).await?;
        }
        let mut settings = PoolSettings::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .lazy(self.lazy)
            .create_sqlite_file(self.create_sqlite_file)
            .busy_timeout(Duration::from_secs(30));
        if let Some(idle) = self.idle_timeout {
            settings = settings.idle_timeout(idle);
        }
        open_pool::<DB>(url, &settings).await.map_err(|e| match e {
            sqlx::Error::Configuration(_) => {
                CliError::caused(format!("bad database URL `{}`", redact_url(url)), e)
            }
            e => cannot_connect(url, e),
        })
    }

    /// A bus over `pool` with the configuration's signal types, named after its database.
    pub fn bus<DB: Backend>(
        &self,
        pool: sqlx::Pool<DB>,
        config: &Config,
        publisher: BoxPublisher,
        url: &str,
    ) -> Result<SignalBus<DB>, CliError> {
        let mut builder = SignalBus::builder(pool)
            .name(redact_url(url))
            .publisher(publisher)
            .publish_timeout(self.publish_timeout)
            .transaction_pooler(self.transaction_pooler)
            .autoflush(false);
        if let Some(lease) = self.lease {
            builder = builder.lease(lease);
        }
        for ty in config.signal_types() {
            builder = builder.register_type(ty);
        }
        builder.build().map_err(|e| {
            CliError::caused(
                "the configuration declares invalid signal types or settings",
                e,
            )
        })
    }
}

fn cannot_connect(url: &str, e: sqlx::Error) -> CliError {
    CliError::caused(
        format!("cannot connect to the database at `{}`", redact_url(url)),
        e,
    )
}

/// Open and close one connection to `url`: its error, if any, is the database's (connection
/// refused, authentication failed, no such database), at once.
async fn first_connection<DB: sqlx::Database>(url: &str) -> Result<(), CliError> {
    use sqlx::Connection as _;
    match tokio::time::timeout(CONNECT_TIMEOUT, DB::Connection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(cannot_connect(url, e)),
        Err(_) => Err(CliError::msg(format!(
            "cannot connect to the database at `{}`: no answer within {} s",
            redact_url(url),
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}
