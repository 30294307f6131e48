//! Signal tables, one backend per database.
//!
//! Every signal type has its own table with the same columns, the *table contract*, so that
//! the flushing code never needs the Rust type, and services in other languages can write
//! signals that the `signalbus` command line sends:
//!
//! | column         | type                          | meaning                                      |
//! |----------------|-------------------------------|----------------------------------------------|
//! | `id`           | auto-increment integer, PK    | insertion order                              |
//! | `message_id`   | text, default: a random UUID  | stable message id, the same on every re-send |
//! | `topic`        | text, not null                | destination: exchange / subject / topic      |
//! | `routing_key`  | text, nullable                | routing key (AMQP) or key (Kafka)            |
//! | `headers`      | text, nullable                | a JSON object of string values               |
//! | `body`         | bytes, not null               | the payload                                  |
//! | `content_type` | text, nullable                | MIME type of the payload                     |
//! | `created_at`   | timestamp, default: now       | for the age of the oldest pending signal     |
//!
//! PostgreSQL tables also have `txid xid8 DEFAULT pg_current_xact_id()`, the writing
//! transaction, used for gap-safe ordered flushing, and an index on `(txid, id)`.
//!
//! # What `flushordered` guarantees, per database
//!
//! *Gap-safe* means: a signal whose transaction commits late is never overtaken by one that
//! comes after it in the order.
//!
//! * **PostgreSQL** — gap-safe. Only rows whose `txid` is older than the snapshot's xmin
//!   (`pg_snapshot_xmin(pg_current_snapshot())`) are sent: every transaction that could still
//!   add a row before them has ended. They go out ordered by `(txid, order_by…, id)`, so the
//!   order is the order in which the writing transactions *started writing*, and within one
//!   transaction the type's `order_by` (default: `id`). A row written by a transaction still
//!   open waits for the next round. xmin is cluster-wide: *any* transaction still open on
//!   the server (any database, also one idle in transaction) holds back the rows written
//!   after it began, until it ends; watch for long transactions. Ordered flushers of one table take turns
//!   (`pg_advisory_xact_lock`), and lock waits are bounded (`SET LOCAL lock_timeout`). An
//!   index on `(txid, id)`, created with the table, keeps each burst an index scan.
//!   *Restored dumps:* `txid` values copied from another cluster may be ahead of this
//!   cluster's counter. A visible row with `txid ≥ pg_snapshot_xmax(...)` cannot belong to a
//!   transaction of this cluster that is running or yet to run, so it is treated as settled
//!   and sent *first* (it was written before the dump, hence before anything written since).
//!   Such rows never stall the flush. Once the counter passes them they sort by `txid` like
//!   any settled row. To drop the question entirely, run `UPDATE <table> SET txid = '0'`
//!   right after restoring (it marks the restored rows as the oldest).
//! * **SQLite** — gap-safe. SQLite has one writer: a transaction holds the write lock from
//!   its first write to its commit, so ids (`AUTOINCREMENT`, assigned at insert) are in
//!   commit order, and a flush (`BEGIN IMMEDIATE`) never sees a half-written set.
//! * **MySQL / MariaDB** — ordered by `order_by` (default `id`), *almost* gap-safe.
//!   `AUTO_INCREMENT` ids are assigned at insert, not at commit. The ordered read is a locking
//!   read in primary-key order (`ORDER BY id LIMIT n FOR UPDATE`), and InnoDB makes a locking
//!   read *wait* for a row whose inserting transaction is still open; so a late committer
//!   whose row is already inserted is not overtaken (the flush waits for it, bounded by
//!   `innodb_lock_wait_timeout`, default 50 s). What remains: an id that is allocated but not
//!   yet in the index while the flush reads (a window of microseconds inside one INSERT) can
//!   be overtaken. Services that need strict order on MySQL should write signals of one
//!   ordered type from one transaction at a time.

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use crate::error::Result;
use crate::ident::Ident;
use crate::signal::OrderColumn;
use sqlx::{Database, Pool};
use std::future::Future;
use std::time::Duration;

/// Columns of the table contract that `order_by` may name.
pub const ORDERABLE_COLUMNS: &[&str] = &["id", "created_at", "topic", "routing_key", "message_id"];

/// `ORDER BY` text for `order`, always ending with `id` as the tie-breaker; `prefix` is put
/// before each column (e.g. `t.`). Columns were validated against [`ORDERABLE_COLUMNS`].
pub(crate) fn order_clause(order: &[OrderColumn], prefix: &str, quote: char) -> String {
    let mut parts: Vec<String> = order
        .iter()
        .map(|c| {
            let dir = if c.descending { " DESC" } else { "" };
            format!("{prefix}{quote}{}{quote}{dir}", c.column)
        })
        .collect();
    if !order.iter().any(|c| c.column == "id") {
        parts.push(format!("{prefix}{quote}id{quote}"));
    }
    parts.join(", ")
}

/// A signal row about to be inserted.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    /// Stable message id.
    pub message_id: &'a str,
    /// Destination.
    pub topic: &'a str,
    /// Routing key.
    pub routing_key: Option<&'a str>,
    /// Headers as a JSON object, `None` when there are none.
    pub headers: Option<&'a str>,
    /// Payload.
    pub body: &'a [u8],
    /// MIME type.
    pub content_type: Option<&'a str>,
}

/// A pending signal row as read back for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Primary key.
    pub id: i64,
    /// Stable message id.
    pub message_id: String,
    /// Destination.
    pub topic: String,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Headers as JSON text.
    pub headers: Option<String>,
    /// Payload.
    pub body: Vec<u8>,
    /// MIME type.
    pub content_type: Option<String>,
}

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for StoredRow
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(StoredRow {
            id: row.try_get(0)?,
            message_id: row.try_get(1)?,
            topic: row.try_get(2)?,
            routing_key: row.try_get(3)?,
            headers: row.try_get(4)?,
            body: row.try_get(5)?,
            content_type: row.try_get(6)?,
        })
    }
}

/// The columns read for sending, in [`StoredRow`] order.
pub(crate) const SELECT_COLUMNS: &str =
    "id, message_id, topic, routing_key, headers, body, content_type";

/// How many signals a table holds, and how old the oldest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PendingStats {
    /// Pending signals.
    pub count: u64,
    /// Age of the oldest pending signal, by the database's clock.
    pub oldest_age: Option<Duration>,
}

/// A database signalbus can keep signals in: PostgreSQL, MySQL/MariaDB or SQLite.
///
/// Implemented for [`sqlx::Postgres`], [`sqlx::MySql`] and [`sqlx::Sqlite`] behind the
/// features of the same names. Table names reach these methods already validated
/// ([`Ident`]) and are quoted here.
pub trait Backend: Database {
    /// The publish timeout a bus uses unless told otherwise. On SQLite a flush holds the
    /// database's one write lock while it publishes, so a hung broker must give up well before
    /// writers waiting on that lock do (sqlx's default `busy_timeout` is 5 s).
    const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

    /// Begin a transaction that will write (a signalbus [`crate::Transaction`]).
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self>>> + Send {
        async move { Ok(pool.begin().await?) }
    }

    /// Create the signal table of the contract, if it does not exist.
    fn create_table(
        conn: &mut Self::Connection,
        table: &Ident,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Insert one signal; returns its `id`.
    fn insert(
        conn: &mut Self::Connection,
        table: &Ident,
        row: NewRow<'_>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Begin the transaction that sends and deletes rows: one in which row locks taken by
    /// [`Backend::lock_ids`] and [`Backend::lock_burst`] keep other flushers away.
    fn begin_flush(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self>>> + Send;

    /// Lock and read the rows among `ids` that still exist and no other flusher holds,
    /// ordered by id.
    fn lock_ids(
        conn: &mut Self::Connection,
        table: &Ident,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<StoredRow>>> + Send;

    /// Lock and read up to `limit` rows that no other flusher holds, lowest ids first.
    fn lock_burst(
        conn: &mut Self::Connection,
        table: &Ident,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredRow>>> + Send;

    /// Lock and delete, in one go where the database can, the rows among `ids` that still
    /// exist and no other flusher holds; returns them ordered by id. The caller publishes
    /// them and commits, or rolls back to keep them.
    fn take_ids(
        conn: &mut Self::Connection,
        table: &Ident,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<StoredRow>>> + Send {
        async move {
            let rows = Self::lock_ids(conn, table, ids).await?;
            let locked: Vec<i64> = rows.iter().map(|r| r.id).collect();
            if !locked.is_empty() {
                Self::delete_ids(conn, table, &locked).await?;
            }
            Ok(rows)
        }
    }
    /// Lock and read the next up to `limit` rows in `flushordered` order (`order`, then `id`),
    /// gap-safe as far as the database allows (see the module docs). Unlike
    /// [`Backend::lock_burst`] it does not skip locked rows: it waits for them, at most
    /// `lock_wait` where the database lets us bound the wait, because skipping would break
    /// the order. Ordered flushers of one table run one after the other.
    fn lock_ordered(
        conn: &mut Self::Connection,
        table: &Ident,
        order: &[OrderColumn],
        limit: usize,
        lock_wait: Duration,
    ) -> impl Future<Output = Result<Vec<StoredRow>>> + Send;

    /// Delete the rows with these ids.
    fn delete_ids(
        conn: &mut Self::Connection,
        table: &Ident,
        ids: &[i64],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// The ids of all rows in the table, ascending.
    fn pending_ids(
        conn: &mut Self::Connection,
        table: &Ident,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// Count of rows and age of the oldest.
    fn pending_stats(
        conn: &mut Self::Connection,
        table: &Ident,
    ) -> impl Future<Output = Result<PendingStats>> + Send;
}

/// Ids as a JSON array, bound as one parameter (`JSON_TABLE` on MySQL, `json_each` on
/// SQLite): one statement text whatever the number of ids.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn json_ids(ids: &[i64]) -> String {
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}
