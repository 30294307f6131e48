//! What atomic blocks and row helpers need to know about each database: how to begin, which
//! errors are conflicts, and the bits of SQL that differ. Kept concrete per database, like
//! [`Backend`], so that no generic code needs sqlx's executor bounds.

use super::{AtomicOptions, Isolation, RowLock, SqliteBegin};
use crate::error::Result;
use crate::storage::Backend;
use sqlx::error::DatabaseError;
use sqlx::{FromRow, Pool};
use std::future::Future;

/// A database that atomic blocks and row helpers work with: PostgreSQL, MySQL/MariaDB and
/// SQLite, behind the features of the same names.
pub trait AtomicBackend: Backend {
    /// The character that quotes identifiers.
    const QUOTE: char;

    /// The placeholder of the `n`-th bound parameter (counting from 1).
    fn placeholder(n: usize) -> String;

    /// The clause that locks the rows a `SELECT` returns (empty where rows cannot be locked).
    fn lock_clause(lock: RowLock) -> &'static str;

    /// Whether the database error is a conflict that running the transaction again can
    /// resolve (see [`super::is_conflict`]).
    fn is_conflict_error(error: &dyn DatabaseError) -> bool;

    /// Begin the transaction of one attempt of an atomic block.
    fn begin_atomic(
        pool: &Pool<Self>,
        options: &AtomicOptions,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self>>> + Send;

    /// Run `sql` with `args` and decode the first row, if any.
    fn fetch_optional_as<R>(
        conn: &mut Self::Connection,
        sql: String,
        args: Self::Arguments,
    ) -> impl Future<Output = Result<Option<R>>> + Send
    where
        R: for<'r> FromRow<'r, Self::Row> + Send + Unpin;
}

#[cfg(feature = "mysql")]
fn isolation_sql(level: Isolation) -> Option<&'static str> {
    match level {
        Isolation::DatabaseDefault => None,
        Isolation::ReadCommitted => Some("READ COMMITTED"),
        Isolation::RepeatableRead => Some("REPEATABLE READ"),
        Isolation::Serializable => Some("SERIALIZABLE"),
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::{AssertSqlSafe, PgConnection, Postgres, postgres::PgArguments};

    impl AtomicBackend for Postgres {
        const QUOTE: char = '"';

        fn placeholder(n: usize) -> String {
            format!("${n}")
        }

        fn lock_clause(lock: RowLock) -> &'static str {
            use super::super::LockWait::*;
            match (lock.shared, lock.wait) {
                (false, Wait) => " FOR UPDATE",
                (false, NoWait) => " FOR UPDATE NOWAIT",
                (false, SkipLocked) => " FOR UPDATE SKIP LOCKED",
                (true, Wait) => " FOR SHARE",
                (true, NoWait) => " FOR SHARE NOWAIT",
                (true, SkipLocked) => " FOR SHARE SKIP LOCKED",
            }
        }

        /// 40001 serialization failure, 40P01 deadlock, and 55P03 lock not available (raised by
        /// `lock_timeout` and `NOWAIT`: the counterpart of MySQL's 1205).
        fn is_conflict_error(error: &dyn DatabaseError) -> bool {
            error
                .code()
                .is_some_and(|code| matches!(&*code, "40001" | "40P01" | "55P03"))
        }

        async fn begin_atomic(
            pool: &Pool<Postgres>,
            options: &AtomicOptions,
        ) -> Result<sqlx::Transaction<'static, Postgres>> {
            Ok(match options.isolation {
                Isolation::DatabaseDefault => pool.begin().await?,
                Isolation::ReadCommitted => {
                    pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                        .await?
                }
                Isolation::RepeatableRead => {
                    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        .await?
                }
                Isolation::Serializable => {
                    pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
                        .await?
                }
            })
        }

        async fn fetch_optional_as<R>(
            conn: &mut PgConnection,
            sql: String,
            args: PgArguments,
        ) -> Result<Option<R>>
        where
            R: for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
        {
            Ok(sqlx::query_as_with(AssertSqlSafe(sql), args)
                .fetch_optional(conn)
                .await?)
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use sqlx::{AssertSqlSafe, Executor, MySql, MySqlConnection, mysql::MySqlArguments};

    impl AtomicBackend for MySql {
        const QUOTE: char = '`';

        fn placeholder(_: usize) -> String {
            "?".to_owned()
        }

        /// `LOCK IN SHARE MODE` rather than `FOR SHARE`, which MariaDB does not know; MySQL 8
        /// accepts NOWAIT / SKIP LOCKED only after `FOR UPDATE`.
        fn lock_clause(lock: RowLock) -> &'static str {
            use super::super::LockWait::*;
            match (lock.shared, lock.wait) {
                (false, Wait) => " FOR UPDATE",
                (false, NoWait) => " FOR UPDATE NOWAIT",
                (false, SkipLocked) => " FOR UPDATE SKIP LOCKED",
                (true, Wait) => " LOCK IN SHARE MODE",
                (true, NoWait) => " LOCK IN SHARE MODE NOWAIT",
                (true, SkipLocked) => " LOCK IN SHARE MODE SKIP LOCKED",
            }
        }

        /// By error number (the SQLSTATE of 1205 is the generic HY000): 1213 deadlock, 1205
        /// lock wait timeout (also MariaDB's NOWAIT), 3572 MySQL's NOWAIT, 1020 MariaDB's
        /// snapshot-isolation conflict (`innodb_snapshot_isolation=ON`).
        fn is_conflict_error(error: &dyn DatabaseError) -> bool {
            error
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| matches!(e.number(), 1213 | 1205 | 3572 | 1020))
        }

        async fn begin_atomic(
            pool: &Pool<MySql>,
            options: &AtomicOptions,
        ) -> Result<sqlx::Transaction<'static, MySql>> {
            let mut conn = pool.acquire().await?;
            if let Some(level) = isolation_sql(options.isolation) {
                // Applies to the next transaction of this connection only.
                let sql = format!("SET TRANSACTION ISOLATION LEVEL {level}");
                conn.execute(AssertSqlSafe(sql)).await?;
            }
            Ok(sqlx::Transaction::begin(conn, None).await?)
        }

        async fn fetch_optional_as<R>(
            conn: &mut MySqlConnection,
            sql: String,
            args: MySqlArguments,
        ) -> Result<Option<R>>
        where
            R: for<'r> FromRow<'r, sqlx::mysql::MySqlRow> + Send + Unpin,
        {
            Ok(sqlx::query_as_with(AssertSqlSafe(sql), args)
                .fetch_optional(conn)
                .await?)
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use sqlx::{AssertSqlSafe, Sqlite, SqliteConnection, sqlite::SqliteArguments};

    impl AtomicBackend for Sqlite {
        const QUOTE: char = '"';

        fn placeholder(_: usize) -> String {
            "?".to_owned()
        }

        /// SQLite has no row locks: a write transaction locks the whole database.
        fn lock_clause(_: RowLock) -> &'static str {
            ""
        }

        /// SQLITE_BUSY and SQLITE_LOCKED with all their extended codes (e.g. 517,
        /// BUSY_SNAPSHOT: a read transaction that cannot become a writer).
        fn is_conflict_error(error: &dyn DatabaseError) -> bool {
            error
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(|code| matches!(code & 0xff, 5 | 6))
        }

        async fn begin_atomic(
            pool: &Pool<Sqlite>,
            options: &AtomicOptions,
        ) -> Result<sqlx::Transaction<'static, Sqlite>> {
            // SQLite transactions are always serializable; only the locking start differs.
            Ok(match options.sqlite_begin {
                SqliteBegin::Deferred => pool.begin_with("BEGIN DEFERRED").await?,
                SqliteBegin::Immediate => pool.begin_with("BEGIN IMMEDIATE").await?,
                SqliteBegin::Exclusive => pool.begin_with("BEGIN EXCLUSIVE").await?,
            })
        }

        async fn fetch_optional_as<R>(
            conn: &mut SqliteConnection,
            sql: String,
            args: SqliteArguments,
        ) -> Result<Option<R>>
        where
            R: for<'r> FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
        {
            Ok(sqlx::query_as_with(AssertSqlSafe(sql), args)
                .fetch_optional(conn)
                .await?)
        }
    }
}
