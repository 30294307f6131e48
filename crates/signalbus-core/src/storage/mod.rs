//! Signal tables, one backend per database.
//!
//! Each database is described once ([`dialect`]: quoting, placeholders, column types, locking
//! clauses, conflict codes); every statement of a signal table is built from that description
//! when its type is registered ([`statements`]). [`Backend`] is sealed: it is implemented for
//! [`sqlx::Postgres`], [`sqlx::MySql`] and [`sqlx::Sqlite`] (features `postgres`, `mysql`,
//! `sqlite`) and names the database in `SignalBus<DB>`; its methods are signalbus' own.
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

pub(crate) mod dialect;
pub(crate) mod statements;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use crate::error::{Error, Result};
use dialect::BurstRead;
use statements::{Ordered, Statements};
use std::time::Duration;

/// Columns of the table contract that `order_by` may name.
pub const ORDERABLE_COLUMNS: &[&str] = &["id", "created_at", "topic", "routing_key", "message_id"];

/// How many signals a table holds, and how old the oldest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PendingStats {
    /// Pending signals.
    pub count: u64,
    /// Age of the oldest pending signal, by the database's clock.
    pub oldest_age: Option<Duration>,
}

/// A database signalbus keeps signals in: [`sqlx::Postgres`], [`sqlx::MySql`] or
/// [`sqlx::Sqlite`], behind the features of the same names.
///
/// Sealed: it only names the database in `SignalBus<DB>` and in code generic over it; its
/// operations are signalbus' own and cannot be implemented or called from outside.
pub trait Backend: sealed::Store {}

pub(crate) use sealed::{NewRow, Param, StoredRow};

// The sealed trait's signatures use crate-private types on purpose: nobody outside can name
// or implement it.
#[allow(private_interfaces)]
pub(crate) mod sealed {
    use super::dialect::Dialect;
    use crate::error::Result;
    use sqlx::{Database, FromRow, SqlStr};
    use std::future::Future;

    /// A signal row about to be inserted.
    #[derive(Debug, Clone, Copy)]
    pub struct NewRow<'a> {
        pub message_id: &'a str,
        pub topic: &'a str,
        pub routing_key: Option<&'a str>,
        /// Headers as a JSON object, `None` when there are none.
        pub headers: Option<&'a str>,
        pub body: &'a [u8],
        pub content_type: Option<&'a str>,
    }

    /// A pending signal row as read back for sending.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StoredRow {
        pub id: i64,
        pub message_id: String,
        pub topic: String,
        pub routing_key: Option<String>,
        /// Headers as JSON text.
        pub headers: Option<String>,
        pub body: Vec<u8>,
        pub content_type: Option<String>,
    }

    impl<'r, R: sqlx::Row> FromRow<'r, R> for StoredRow
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

    /// One bound parameter of a signalbus statement.
    #[derive(Debug, Clone, Copy)]
    pub enum Param<'a> {
        /// A list of row ids (an array on PostgreSQL, a JSON array elsewhere).
        Ids(&'a [i64]),
        Int(i64),
        Text(&'a str),
    }

    /// What signalbus runs on a database: a few executor calls that take prepared statement
    /// text ([`super::statements::Statements`]) and bound parameters. Everything else is
    /// generic code over these, so that no generic code needs sqlx's executor bounds.
    pub trait Store: Database {
        /// The database's SQL.
        const DIALECT: &'static Dialect;

        /// Run `sql`, reading signal rows.
        fn fetch_rows(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<StoredRow>>> + Send;

        /// Run `sql`, reading one integer column.
        fn fetch_ids(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<i64>>> + Send;

        /// Run `sql`, reading one text column.
        fn fetch_texts(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<String>>> + Send;

        /// Run `sql`, reading one row of a count and a nullable integer.
        fn fetch_count(
            conn: &mut Self::Connection,
            sql: &SqlStr,
        ) -> impl Future<Output = Result<(i64, Option<i64>)>> + Send;

        /// Run `sql`; returns the number of rows affected.
        fn execute(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<u64>> + Send;

        /// Run `sql`, which may hold several statements, without parameters.
        fn execute_script(
            conn: &mut Self::Connection,
            sql: &SqlStr,
        ) -> impl Future<Output = Result<()>> + Send;

        /// Insert one signal with `sql` ([`super::statements::Statements::insert`]); returns
        /// its id.
        fn insert_row(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            row: NewRow<'_>,
        ) -> impl Future<Output = Result<i64>> + Send;

        /// Run `sql` with `args` and decode the first row, if any (the row helpers).
        fn fetch_optional_with<R>(
            conn: &mut Self::Connection,
            sql: String,
            args: Self::Arguments,
        ) -> impl Future<Output = Result<Option<R>>> + Send
        where
            R: for<'r> FromRow<'r, Self::Row> + Send + Unpin;
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
/// Implements [`sealed::Store`] and [`Backend`] for one database; `$ids` turns a `&[i64]` into
/// the value bound for [`Param::Ids`], `$insert` is `returning` or `last_insert_id`.
macro_rules! store {
    ($db:ty, $dialect:expr, ids: $ids:expr, insert: $insert:ident, feature: $feature:literal) => {
        #[allow(private_interfaces)]
        impl $crate::storage::sealed::Store for $db {
            const DIALECT: &'static $crate::storage::dialect::Dialect = &$dialect;

            async fn fetch_rows(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<$crate::storage::StoredRow>> {
                fetch_all_as(conn, sql, params).await
            }

            async fn fetch_ids(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<i64>> {
                let rows: Vec<(i64,)> = fetch_all_as(conn, sql, params).await?;
                Ok(rows.into_iter().map(|(id,)| id).collect())
            }

            async fn fetch_texts(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<String>> {
                let rows: Vec<(String,)> = fetch_all_as(conn, sql, params).await?;
                Ok(rows.into_iter().map(|(text,)| text).collect())
            }

            async fn fetch_count(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
            ) -> $crate::error::Result<(i64, Option<i64>)> {
                Ok(sqlx::query_as::<$db, (i64, Option<i64>)>(sql.clone())
                    .fetch_one(conn)
                    .await?)
            }

            async fn execute(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<u64> {
                let mut query = sqlx::query::<$db>(sql.clone());
                for param in params {
                    query = $crate::storage::store!(@bind query, param, $ids);
                }
                Ok(query.execute(conn).await?.rows_affected())
            }

            async fn execute_script(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
            ) -> $crate::error::Result<()> {
                sqlx::raw_sql(sql.clone()).execute(conn).await?;
                Ok(())
            }

            async fn insert_row(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                row: $crate::storage::NewRow<'_>,
            ) -> $crate::error::Result<i64> {
                let query = sqlx::query::<$db>(sql.clone())
                    .bind(row.message_id)
                    .bind(row.topic)
                    .bind(row.routing_key)
                    .bind(row.headers)
                    .bind(row.body)
                    .bind(row.content_type);
                $crate::storage::store!(@insert $insert, query, conn)
            }

            async fn fetch_optional_with<R>(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: String,
                args: <$db as sqlx::Database>::Arguments,
            ) -> $crate::error::Result<Option<R>>
            where
                R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                Ok(sqlx::query_as_with::<$db, R, _>(sqlx::AssertSqlSafe(sql), args)
                    .fetch_optional(conn)
                    .await?)
            }
        }

        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        impl $crate::storage::Backend for $db {}

        /// Run `sql` with `params` and decode every row as `R`.
        async fn fetch_all_as<R>(
            conn: &mut <$db as sqlx::Database>::Connection,
            sql: &sqlx::SqlStr,
            params: &[$crate::storage::Param<'_>],
        ) -> $crate::error::Result<Vec<R>>
        where
            R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
        {
            let mut query = sqlx::query_as::<$db, R>(sql.clone());
            for param in params {
                query = $crate::storage::store!(@bind query, param, $ids);
            }
            Ok(query.fetch_all(conn).await?)
        }
    };
    (@bind $query:ident, $param:ident, $ids:expr) => {
        match *$param {
            $crate::storage::Param::Ids(ids) => $query.bind(($ids)(ids)),
            $crate::storage::Param::Int(n) => $query.bind(n),
            $crate::storage::Param::Text(text) => $query.bind(text),
        }
    };
    (@insert returning, $query:ident, $conn:ident) => {{
        use sqlx::Row as _;
        Ok($query.fetch_one($conn).await?.try_get::<i64, _>(0)?)
    }};
    (@insert last_insert_id, $query:ident, $conn:ident) => {{
        let id = $query.execute($conn).await?.last_insert_id();
        i64::try_from(id).map_err(|_| {
            $crate::error::Error::Config(format!("insert id {id} does not fit a 64-bit signed id"))
        })
    }};
}
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use store;

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

/// A limit as a bound integer.
fn limit(n: usize) -> Param<'static> {
    Param::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The operations of the flushing engine on one table, generic over the database.
impl Statements {
    /// Create the table (and what goes with it), if it does not exist. Outside any
    /// transaction: on MySQL DDL commits.
    pub async fn create_table<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        for statement in &self.create {
            DB::execute_script(conn, statement).await?;
        }
        if let Some(lock) = &self.flush_lock {
            DB::execute(conn, &lock.add, &[Param::Text(&lock.name)]).await?;
        }
        Ok(())
    }

    /// Insert one signal; returns its id.
    pub async fn insert<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        row: NewRow<'_>,
    ) -> Result<i64> {
        DB::insert_row(conn, &self.insert, row).await
    }

    /// Take this table's turn among flushers where the database needs it (see
    /// [`dialect::Dialect::flush_lock_table`]); held until the transaction ends.
    async fn take_turn<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        let Some(lock) = &self.flush_lock else {
            return Ok(());
        };
        let name = [Param::Text(&lock.name)];
        let found = DB::fetch_texts(conn, &lock.take, &name)
            .await
            .map_err(missing_lock_table)?;
        if found.is_empty() {
            // A signal table created by other means: add its lock row, then take it.
            DB::execute(conn, &lock.add, &name).await?;
            DB::fetch_texts(conn, &lock.take, &name).await?;
        }
        Ok(())
    }

    /// Lock and read the rows among `ids` that still exist and no other flusher holds,
    /// ordered by id.
    pub async fn lock_ids<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
    ) -> Result<Vec<StoredRow>> {
        self.take_turn::<DB>(conn).await?;
        DB::fetch_rows(conn, &self.lock_ids, &[Param::Ids(ids)]).await
    }

    /// Lock and delete, in one statement where the database can, the rows among `ids` that
    /// still exist and no other flusher holds; returns them ordered by id. The caller
    /// publishes them and commits, or rolls back to keep them.
    pub async fn take_ids<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
    ) -> Result<Vec<StoredRow>> {
        match &self.take_ids {
            Some(take) => {
                let mut rows = DB::fetch_rows(conn, take, &[Param::Ids(ids)]).await?;
                rows.sort_unstable_by_key(|r| r.id);
                Ok(rows)
            }
            None => {
                let rows = self.lock_ids::<DB>(conn, ids).await?;
                let locked: Vec<i64> = rows.iter().map(|r| r.id).collect();
                if !locked.is_empty() {
                    self.delete_ids::<DB>(conn, &locked).await?;
                }
                Ok(rows)
            }
        }
    }

    /// Lock and read up to `n` rows that no other flusher holds, lowest ids first.
    pub async fn lock_burst<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        n: usize,
    ) -> Result<Vec<StoredRow>> {
        self.take_turn::<DB>(conn).await?;
        match DB::DIALECT.burst_read {
            BurstRead::Select => DB::fetch_rows(conn, &self.burst, &[limit(n)]).await,
            BurstRead::IdsThenRows => {
                let ids = DB::fetch_ids(conn, &self.burst, &[limit(n)]).await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                DB::fetch_rows(conn, &self.lock_ids, &[Param::Ids(&ids)]).await
            }
        }
    }

    /// Lock and read the next up to `n` rows in `flushordered` order (the type's `order_by`,
    /// then `id`), gap-safe as far as the database allows (see the module docs). Unlike
    /// [`Statements::lock_burst`] it waits for held rows instead of skipping them (skipping
    /// would break the order); ordered flushers of one table take turns.
    pub async fn lock_ordered<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        n: usize,
    ) -> Result<Vec<StoredRow>> {
        match &self.ordered {
            Ordered::Watermark {
                turn,
                restored,
                settled,
            } => {
                DB::execute_script(conn, turn).await?;
                // Rows restored from another cluster first (usually none: an index probe),
                // then the settled ones.
                let rows = DB::fetch_rows(conn, restored, &[limit(n)]).await?;
                if !rows.is_empty() {
                    return Ok(rows);
                }
                DB::fetch_rows(conn, settled, &[limit(n)]).await
            }
            Ordered::Locking(read) => {
                // The turn keeps every other flusher out; the locking read in order then
                // waits for rows whose inserting transaction is still open instead of
                // passing them, bounded by the server's lock wait timeout.
                self.take_turn::<DB>(conn).await?;
                DB::fetch_rows(conn, read, &[limit(n)]).await
            }
        }
    }

    /// Delete the rows with these ids.
    pub async fn delete_ids<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
    ) -> Result<u64> {
        DB::execute(conn, &self.delete_ids, &[Param::Ids(ids)]).await
    }

    /// The ids of all rows in the table, ascending.
    pub async fn pending_ids<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<Vec<i64>> {
        DB::fetch_ids(conn, &self.pending_ids, &[]).await
    }

    /// Count of rows and age of the oldest.
    pub async fn pending_stats<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<PendingStats> {
        let (count, age_us) = DB::fetch_count(conn, &self.pending_stats).await?;
        Ok(PendingStats {
            count: u64::try_from(count).unwrap_or(0),
            oldest_age: age_us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
        })
    }
}

/// "Table doesn't exist" (SQLSTATE 42S02) on the flush lock table, as an error that says what
/// to do.
fn missing_lock_table(e: Error) -> Error {
    let missing = matches!(&e, Error::Database(sqlx::Error::Database(db))
        if db.code().is_some_and(|code| code == "42S02"));
    if missing {
        Error::Config(
            "table `signalbus_flush_lock` is missing: run `SignalBus::migrate` (or `signalbus migrate`) \
             once on this database"
                .into(),
        )
    } else {
        e
    }
}

/// Begin a transaction with `begin`, or the driver's default `BEGIN`.
pub(crate) async fn begin<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    begin: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>> {
    Ok(match begin {
        Some(statement) => pool.begin_with(statement).await?,
        None => pool.begin().await?,
    })
}

/// Begin the transaction that sends and deletes rows: one in which the claims keep other
/// flushers away.
pub(crate) async fn begin_flush<DB: Backend>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>> {
    begin(pool, Some(DB::DIALECT.begin_flush)).await
}

/// Begin a signalbus write transaction.
pub(crate) async fn begin_write<DB: Backend>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>> {
    begin(pool, DB::DIALECT.begin_write).await
}
