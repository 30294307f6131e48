//! MySQL 8 and MariaDB ≥ 10.6.
//!
//! Flush transactions run at READ COMMITTED (no gap locks, so writers are never blocked by a
//! flush) and take a per-table lock row in `signalbus_flush_lock` first, so flushers of one
//! table run one after the other. We do not rely on `SKIP LOCKED` here: under concurrent
//! flushers MariaDB 10.11 was seen to hand one row to two of them (a deadlock on the delete,
//! and a duplicate send), and to skip rows whose inserting transaction had already committed,
//! leaving them pending. Serialized flushers are exact; several `flushmany` processes are
//! still safe, they just take turns.
//!
//! Rows are addressed by id through `JSON_TABLE(?) STRAIGHT_JOIN table`: one primary-key
//! lookup per id, whatever the optimizer thinks of the table's size (a plain `id IN (...)`
//! may be run as a scan that locks rows it does not return).

use super::{Backend, NewRow, PendingStats, SELECT_COLUMNS, StoredRow, json_ids, order_clause};
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::signal::OrderColumn;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, Pool, SqlSafeStr};
use std::time::Duration;

/// The bound JSON array of ids as a table `x(id)`.
const BY_ID: &str = "JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS x";

fn q(table: &Ident) -> String {
    table.quoted('`')
}

/// Serializes the flush transactions of one table (see the module docs). Runs inside the
/// flush transaction, so it must not run DDL: on MySQL any `CREATE TABLE` commits the open
/// transaction. The lock table itself is created by `create_table` (`SignalBus::migrate`).
async fn lock_table(conn: &mut MySqlConnection, table: &Ident) -> Result<()> {
    const LOCK: &str =
        "SELECT table_name FROM signalbus_flush_lock WHERE table_name = ? FOR UPDATE";
    let name = table.to_string();
    let found: Option<String> = sqlx::query_scalar(LOCK)
        .bind(&name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(missing_lock_table)?;
    if found.is_none() {
        // A signal table created by other means: add its lock row, then take it.
        sqlx::query("INSERT IGNORE INTO signalbus_flush_lock (table_name) VALUES (?)")
            .bind(&name)
            .execute(&mut *conn)
            .await?;
        sqlx::query(LOCK).bind(&name).execute(&mut *conn).await?;
    }
    Ok(())
}

/// MySQL's "table doesn't exist" (1146) on the lock table, as an error that says what to do.
fn missing_lock_table(e: sqlx::Error) -> Error {
    let missing = matches!(&e, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| m.number() == 1146));
    if missing {
        Error::Config(
            "table `signalbus_flush_lock` is missing: run `SignalBus::migrate` (or `signalbus migrate`) \
             once on this database"
                .into(),
        )
    } else {
        e.into()
    }
}

/// Creates the lock table and the table's lock row; outside any transaction (DDL commits).
async fn ensure_lock_row(conn: &mut MySqlConnection, table: &Ident) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS signalbus_flush_lock (table_name VARCHAR(255) NOT NULL PRIMARY KEY) ENGINE=InnoDB",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT IGNORE INTO signalbus_flush_lock (table_name) VALUES (?)")
        .bind(table.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Backend for MySql {
    async fn create_table(conn: &mut MySqlConnection, table: &Ident) -> Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                message_id VARCHAR(64) NOT NULL DEFAULT (UUID()),
                topic VARCHAR(255) NOT NULL,
                routing_key VARCHAR(255) NULL,
                headers TEXT NULL,
                body LONGBLOB NOT NULL,
                content_type VARCHAR(255) NULL,
                created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
            ) ENGINE=InnoDB",
            q(table)
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        ensure_lock_row(conn, table).await
    }

    async fn insert(conn: &mut MySqlConnection, table: &Ident, row: NewRow<'_>) -> Result<i64> {
        let sql = format!(
            "INSERT INTO {} (message_id, topic, routing_key, headers, body, content_type) \
             VALUES (?, ?, ?, ?, ?, ?)",
            q(table)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(row.message_id)
            .bind(row.topic)
            .bind(row.routing_key)
            .bind(row.headers)
            .bind(row.body)
            .bind(row.content_type)
            .execute(&mut *conn)
            .await?;
        Ok(done.last_insert_id() as i64)
    }

    async fn begin_flush(pool: &Pool<MySql>) -> Result<sqlx::Transaction<'static, MySql>> {
        let conn: PoolConnection<MySql> = pool.acquire().await?;
        // One statement, so that a cancelled begin cannot leave READ COMMITTED pending for the
        // connection's next (business) transaction. READ COMMITTED takes no gap locks.
        let begin = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";
        Ok(sqlx::Transaction::begin(conn, Some(begin.into_sql_str())).await?)
    }

    async fn lock_ids(
        conn: &mut MySqlConnection,
        table: &Ident,
        ids: &[i64],
    ) -> Result<Vec<StoredRow>> {
        let columns = SELECT_COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {columns} FROM {BY_ID} STRAIGHT_JOIN {} AS t ON t.id = x.id \
             ORDER BY t.id FOR UPDATE",
            q(table)
        );
        lock_table(conn, table).await?;
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(json_ids(ids))
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn lock_burst(
        conn: &mut MySqlConnection,
        table: &Ident,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        lock_table(conn, table).await?;
        let sql = format!("SELECT id FROM {} ORDER BY id LIMIT ?", q(table));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let columns = SELECT_COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {columns} FROM {BY_ID} STRAIGHT_JOIN {} AS t ON t.id = x.id ORDER BY t.id FOR UPDATE",
            q(table)
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(json_ids(&ids))
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn lock_ordered(
        conn: &mut MySqlConnection,
        table: &Ident,
        order: &[OrderColumn],
        limit: usize,
        _lock_wait: Duration,
    ) -> Result<Vec<StoredRow>> {
        // The per-table lock row keeps every other flusher out; the locking read in order
        // then waits for rows whose inserting transaction is still open instead of passing
        // them (see the storage module docs), bounded by innodb_lock_wait_timeout. A session
        // setting would outlive this transaction on a pooled connection, so we keep the
        // server's limit.
        lock_table(conn, table).await?;
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM {} ORDER BY {} LIMIT ? FOR UPDATE",
            q(table),
            order_clause(order, "", '`')
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn delete_ids(conn: &mut MySqlConnection, table: &Ident, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "DELETE t FROM {BY_ID} STRAIGHT_JOIN {} AS t ON t.id = x.id",
            q(table)
        );
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(json_ids(ids))
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }

    async fn pending_ids(conn: &mut MySqlConnection, table: &Ident) -> Result<Vec<i64>> {
        let sql = format!("SELECT id FROM {} ORDER BY id", q(table));
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn pending_stats(conn: &mut MySqlConnection, table: &Ident) -> Result<PendingStats> {
        let sql = format!(
            "SELECT COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) FROM {}",
            q(table)
        );
        let (count, age_us): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        Ok(PendingStats {
            count: count.max(0) as u64,
            oldest_age: age_us.map(|us| Duration::from_micros(us.max(0) as u64)),
        })
    }
}
