//! SQLite: one writer at a time. A flush takes the write lock up front (`BEGIN IMMEDIATE`),
//! so two flushers never read the same rows; there is no `SKIP LOCKED` and none is needed.

use super::{Backend, NewRow, PendingStats, StoredRow, json_ids, order_clause};
use crate::error::Result;
use crate::ident::Ident;
use crate::signal::OrderColumn;
use sqlx::{AssertSqlSafe, Pool, Sqlite, SqliteConnection};
use std::time::Duration;

fn q(table: &Ident) -> String {
    table.quoted('"')
}

/// `body` is read as a BLOB even when a foreign writer stored it as TEXT.
const SELECT_SQLITE: &str =
    "id, message_id, topic, routing_key, headers, CAST(body AS BLOB), content_type";

impl Backend for Sqlite {
    const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

    /// `BEGIN IMMEDIATE`: a signalbus transaction writes anyway, and taking the write lock up
    /// front waits (busy_timeout) instead of failing with SQLITE_BUSY_SNAPSHOT when a flush
    /// committed between this transaction's first read and its first write.
    async fn begin_write(pool: &Pool<Sqlite>) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn create_table(conn: &mut SqliteConnection, table: &Ident) -> Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id TEXT NOT NULL DEFAULT (lower(hex(randomblob(16)))),
                topic TEXT NOT NULL,
                routing_key TEXT,
                headers TEXT,
                body BLOB NOT NULL,
                content_type TEXT,
                created_at INTEGER NOT NULL
                    DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
            )",
            q(table)
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn insert(conn: &mut SqliteConnection, table: &Ident, row: NewRow<'_>) -> Result<i64> {
        let sql = format!(
            "INSERT INTO {} (message_id, topic, routing_key, headers, body, content_type) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            q(table)
        );
        let id = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(row.message_id)
            .bind(row.topic)
            .bind(row.routing_key)
            .bind(row.headers)
            .bind(row.body)
            .bind(row.content_type)
            .fetch_one(&mut *conn)
            .await?;
        Ok(id)
    }

    async fn begin_flush(pool: &Pool<Sqlite>) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn lock_ids(
        conn: &mut SqliteConnection,
        table: &Ident,
        ids: &[i64],
    ) -> Result<Vec<StoredRow>> {
        let sql = format!(
            "SELECT {SELECT_SQLITE} FROM {} WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            q(table)
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(json_ids(ids))
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn lock_burst(
        conn: &mut SqliteConnection,
        table: &Ident,
        limit: usize,
    ) -> Result<Vec<StoredRow>> {
        let sql = format!(
            "SELECT {SELECT_SQLITE} FROM {} ORDER BY id LIMIT ?",
            q(table)
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn lock_ordered(
        conn: &mut SqliteConnection,
        table: &Ident,
        order: &[OrderColumn],
        limit: usize,
        _lock_wait: Duration,
    ) -> Result<Vec<StoredRow>> {
        // The flush transaction already holds the write lock (BEGIN IMMEDIATE), and no writer
        // is half-way: every row here is committed, in commit order by id.
        let sql = format!(
            "SELECT {SELECT_SQLITE} FROM {} ORDER BY {} LIMIT ?",
            q(table),
            order_clause(order, "", '"')
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn delete_ids(conn: &mut SqliteConnection, table: &Ident, ids: &[i64]) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE id IN (SELECT value FROM json_each(?))",
            q(table)
        );
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(json_ids(ids))
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }

    async fn pending_ids(conn: &mut SqliteConnection, table: &Ident) -> Result<Vec<i64>> {
        let sql = format!("SELECT id FROM {} ORDER BY id", q(table));
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?)
    }

    async fn pending_stats(conn: &mut SqliteConnection, table: &Ident) -> Result<PendingStats> {
        let sql = format!(
            "SELECT COUNT(*), CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - MIN(created_at) \
             FROM {}",
            q(table)
        );
        let (count, age_ms): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        Ok(PendingStats {
            count: count.max(0) as u64,
            oldest_age: age_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        })
    }
}
