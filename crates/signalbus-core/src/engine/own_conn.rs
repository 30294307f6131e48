//! A connection that a long-running sender keeps for itself: a relay lane while it finds
//! signals, WAL capture's stream. Taken from the pool once (with the pool's options and
//! connect hooks: search path, role) and then kept outside it, so that the sender never
//! queues for a connection behind the application's queries. At 5,000 writes/s on a pool of
//! 12 that the writers kept busy, bursts that took pooled connections waited seconds for
//! them.

use super::context::Shared;
use crate::error::{Error, Result};
use crate::storage::Backend;
use std::time::Duration;

/// How long opening the connection may take.
const OPEN_WITHIN: Duration = Duration::from_secs(30);

/// A connection of a sender's own, taken out while it is used ([`OwnConn::checkout`]) and
/// given back after ([`OwnConn::checkin`]). A use stopped half-way (the future dropped)
/// drops it, which closes it, and the server ends what it was running (within a second
/// where it checks the socket: PostgreSQL 14 and later, not behind a transaction pooler;
/// else when the statement ends); so does a failure of the database
/// ([`OwnConn::checkin_after`]). The next use opens another.
pub(crate) struct OwnConn<DB: Backend> {
    conn: Option<DB::Connection>,
    /// Whose connection it is, for the error when it cannot be opened in time.
    whose: &'static str,
}

impl<DB: Backend> OwnConn<DB> {
    /// None open yet: the first use opens it.
    pub fn new(whose: &'static str) -> Self {
        OwnConn { conn: None, whose }
    }

    /// Whether one is open now.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Close it, telling the server (the next use opens another).
    pub async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            use sqlx::Connection as _;
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        }
    }

    /// The connection, opened when there is none.
    pub async fn checkout(&mut self, shared: &Shared<DB>) -> Result<DB::Connection> {
        if let Some(conn) = self.conn.take() {
            return Ok(conn);
        }
        let open = async {
            let mut conn = shared.pool().acquire().await?.detach();
            // Every statement bounded, as the pool's flush transactions are, and the socket
            // checked while one runs; not behind a transaction pooler, where a session's
            // setting would stay on a server connection that others use next.
            if let Some(session) = DB::DIALECT.own_session
                && !shared.config().transaction_pooler
            {
                let session = sqlx::SqlSafeStr::into_sql_str(session);
                DB::execute_script(&mut conn, &session).await?;
            }
            Ok::<_, Error>(conn)
        };
        match tokio::time::timeout(OPEN_WITHIN, open).await {
            Ok(conn) => conn,
            Err(_) => Err(Error::Database(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{}'s connection did not open within {OPEN_WITHIN:?}",
                    self.whose
                ),
            )))),
        }
    }

    /// Keep it for the next use.
    pub fn checkin(&mut self, conn: DB::Connection) {
        self.conn = Some(conn);
    }

    /// Keep it after a step that gave `result`, unless the database failed: the connection
    /// may be broken then (a failure of the bus leaves it as it was).
    pub fn checkin_after<T>(&mut self, conn: DB::Connection, result: &Result<T>) {
        if !matches!(result, Err(Error::Database(_))) {
            self.checkin(conn);
        }
    }
}

/// Where a burst's statements run: a pooled connection for each step (the flushes, a relay
/// lane that has found nothing for a while), or a relay lane's own.
pub(crate) enum Conns<'a, DB: Backend> {
    Pool,
    Own(&'a mut OwnConn<DB>),
}

/// A connection taken for a step of a burst ([`Conns::take`]).
pub(crate) enum Taken<DB: Backend> {
    Pooled(sqlx::pool::PoolConnection<DB>),
    Own(DB::Connection),
}

impl<DB: Backend> std::ops::Deref for Taken<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        match self {
            Taken::Pooled(conn) => conn,
            Taken::Own(conn) => conn,
        }
    }
}

impl<DB: Backend> std::ops::DerefMut for Taken<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Taken::Pooled(conn) => conn,
            Taken::Own(conn) => conn,
        }
    }
}

impl<DB: Backend> Conns<'_, DB> {
    /// A connection for the next step.
    pub async fn take(&mut self, shared: &Shared<DB>) -> Result<Taken<DB>> {
        Ok(match self {
            Conns::Pool => Taken::Pooled(shared.pool().acquire().await?),
            Conns::Own(own) => Taken::Own(own.checkout(shared).await?),
        })
    }

    /// Give back the connection of a step that gave `result` (see [`OwnConn::checkin_after`]).
    pub fn give<T>(&mut self, taken: Taken<DB>, result: &Result<T>) {
        if let (Conns::Own(own), Taken::Own(conn)) = (self, taken) {
            own.checkin_after(conn, result);
        }
    }
}
