//! Transactions and connections of flushes: how they begin, and a connection that is closed
//! (its statement cancelled on the server) when its flush is dropped midway.

use super::backend::Backend;
use crate::error::Result;

/// Begin a transaction with `begin`, or the driver's default `BEGIN`.
pub(crate) async fn begin<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    begin: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>> {
    Ok(match begin {
        Some(statement) => {
            pool.begin_with(sqlx::SqlSafeStr::into_sql_str(statement))
                .await?
        }
        None => pool.begin().await?,
    })
}

/// A pooled connection that is closed instead of going back to the pool when it is dropped
/// before its flush transaction ended ([`CloseOnDrop::end`]): a flush stopped mid-statement (a dropped future, SIGTERM,
/// Ctrl-C) closes its socket, and the server ends the statement instead of running it on
/// for nobody, holding its snapshot and locks (PostgreSQL notices within the
/// `client_connection_check_interval` that flush transactions set). A connection returned
/// to the pool instead would keep the statement running until it ends by itself.
pub(crate) struct CloseOnDrop<DB: Backend> {
    conn: sqlx::pool::PoolConnection<DB>,
    /// Where closing the socket does not stop a running statement (MySQL/MariaDB): the
    /// connection's server-side id, and the pool to send `KILL QUERY` through.
    kill: Option<(i64, sqlx::Pool<DB>)>,
    done: bool,
}

impl<DB: Backend> CloseOnDrop<DB> {
    pub async fn acquire(pool: &sqlx::Pool<DB>) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        let kill = match &DB::DIALECT.connection_id {
            Some(query) => {
                let id = DB::fetch_ids(&mut conn, &owned_sql(query), &[]).await?;
                id.first().map(|id| (*id, pool.clone()))
            }
            None => None,
        };
        Ok(CloseOnDrop {
            conn,
            kill,
            done: false,
        })
    }

    /// Begin a flush transaction on this connection: one in which the claims keep other
    /// flushers away, every statement bounded by a timeout where the database has one. Begun
    /// and ended ([`Self::end`]) by statements of our own rather than an sqlx `Transaction`:
    /// the connection is ours, and a flush stopped half-way closes it whole.
    pub async fn begin(&mut self) -> Result<&mut DB::Connection> {
        self.begin_with(DB::DIALECT.begin_flush).await
    }

    /// Begin with `statement`, through sqlx's transaction manager: the driver then knows the
    /// connection is in a transaction (statements that must run inside one when they are
    /// sent unnamed begin none of their own, see `run_unnamed`).
    async fn begin_with(&mut self, statement: &str) -> Result<&mut DB::Connection> {
        begin_on::<DB>(&mut self.conn, statement).await?;
        Ok(&mut self.conn)
    }

    /// Begin an operator's read ([`super::dialect::Dialect::begin_read`]) on this
    /// connection; ended with [`Self::end`] like a flush transaction.
    pub async fn begin_read(&mut self) -> Result<&mut DB::Connection> {
        self.begin_with(DB::DIALECT.begin_read).await
    }

    /// The connection, inside the transaction.
    pub fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }

    /// End the transaction: commit when `result` is `Ok`, roll back at once otherwise (a
    /// dropped transaction would keep its locks until the connection is next used).
    pub async fn end<T>(&mut self, result: Result<T>) -> Result<T> {
        let (result, ended) = end_on::<DB, T>(&mut self.conn, result).await;
        // Ended in doubt: the connection is closed on drop rather than reused.
        self.done = ended;
        result
    }
}

/// Begin a transaction with `statement` on `conn`, through sqlx's transaction manager (see
/// [`CloseOnDrop::begin`]); also on a connection a flusher keeps for itself, which it drops
/// (closes) when a flush stops half-way.
pub(crate) async fn begin_on<DB: Backend>(
    conn: &mut DB::Connection,
    statement: &str,
) -> Result<()> {
    use sqlx_core::transaction::TransactionManager as _;
    <DB as sqlx::Database>::TransactionManager::begin(conn, Some(owned_sql(statement))).await?;
    Ok(())
}

/// End the transaction begun by [`begin_on`]: commit when `result` is `Ok`, roll back at
/// once otherwise. Also whether it ended cleanly (else the connection is in doubt: close
/// it).
pub(crate) async fn end_on<DB: Backend, T>(
    conn: &mut DB::Connection,
    result: Result<T>,
) -> (Result<T>, bool) {
    use sqlx_core::transaction::TransactionManager as _;
    type Manager<DB> = <DB as sqlx::Database>::TransactionManager;
    let ended = if result.is_ok() {
        Manager::<DB>::commit(conn).await
    } else {
        Manager::<DB>::rollback(conn).await
    }
    .map_err(crate::error::Error::from);
    let clean = ended.is_ok();
    let result = match (result, ended) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    };
    (result, clean)
}

/// SQL text as an owned statement (a `&'static str` passed to sqlx trips the compiler's
/// check that the callers' futures are `Send`: rust-lang/rust#96865).
pub(crate) fn owned_sql(text: &str) -> sqlx::SqlStr {
    sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(text.to_owned()))
}

impl<DB: Backend> Drop for CloseOnDrop<DB> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.conn.close_on_drop();
        // The connection is closed, never reused, so its id names no one else's statement
        // (MySQL/MariaDB never reuse ids while the server runs).
        if let (Some((id, pool)), Ok(runtime)) =
            (self.kill.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let kill =
                    sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(format!("KILL QUERY {id}")));
                if let Ok(mut conn) = pool.acquire().await
                    && let Err(e) = DB::execute_script(&mut conn, &kill).await
                {
                    tracing::debug!(error = %e, "could not stop the statement of a stopped flush");
                }
            });
        }
    }
}

/// Begin a signalbus write transaction.
pub(crate) async fn begin_write<DB: Backend>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>> {
    begin(pool, DB::DIALECT.begin_write).await
}
