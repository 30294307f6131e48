//! Signal tables, one backend per database.
//!
//! Each database is described once (`dialect`: quoting, placeholders, column types, locking
//! clauses, conflict codes); every statement of a signal table is built from that description
//! when its type is registered (`statements`). [`Backend`] is sealed: it is implemented for
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
//! | `ordering_key` | text, nullable                | order is kept per key (NULL: one sequence)   |
//!
//! PostgreSQL tables also have `txid xid8 DEFAULT pg_current_xact_id()`, the writing
//! transaction, used for gap-safe ordered flushing, and an index on `(txid, id)`.
//!
//! # What `flushordered` guarantees, per database
//!
//! *Gap-safe* means: a signal whose transaction commits late is never overtaken by one that
//! comes after it in the order. Order is per ordering key (`ordering_key`; rows without one
//! are one sequence): everything below holds for the signals of one key, and keys whose
//! earliest pending signal is held (parked, backing off, in flight) are skipped by the read.
//!
//! * **PostgreSQL** — gap-safe. Only rows whose `txid` is older than the snapshot's xmin
//!   (`pg_snapshot_xmin(pg_current_snapshot())`) are sent: every transaction that could still
//!   add a row before them has ended. They go out ordered by `(txid, order_by…, id)`, so the
//!   order is the order in which the writing transactions *started writing*, and within one
//!   transaction the type's `order_by` (default: `id`). A row written by a transaction still
//!   open waits for the next round. xmin is cluster-wide: *any* transaction still open on
//!   the server (any database, also one idle in transaction) holds back the rows written
//!   after it began, until it ends; watch for long transactions. Ordering keys are hashed into 8 lanes
//!   (`hashtextextended`, the hash of hash partitioning, stable across versions; an index on
//!   the lane, `txid`, `id`); an ordered flusher holds the lane it sends with a session
//!   advisory lock, and lock waits are bounded (`SET LOCAL lock_timeout`). An
//!   index on `(txid, id)`, created with the table, keeps each burst an index scan. The keys
//!   held back by a refusal are read once per burst from the partial index of held rows and
//!   each row is checked against that set; the read runs with sequential and bitmap scans
//!   off, so that its plan does not depend on the table's statistics (stale right after a
//!   bulk insert, and never refreshed where autovacuum is off).
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
use sqlx::Connection as _;
use statements::{Arg, Ordered, OrderedRead, Statements, Stmt};
use std::time::Duration;

/// The columns of the table contract's first version: every signal table has them (later
/// versions added columns that `migrate` adds), so a table without them is not one.
const FIRST_CONTRACT: &[&str] = &[
    "id",
    "message_id",
    "topic",
    "routing_key",
    "headers",
    "body",
    "content_type",
    "created_at",
];

/// Columns of the table contract that `order_by` may name.
pub const ORDERABLE_COLUMNS: &[&str] = &["id", "created_at", "topic", "routing_key", "message_id"];

/// How many signals a table holds, and how old the oldest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PendingStats {
    /// Pending signals: every row of the table, backing-off and parked ones included.
    pub count: u64,
    /// Age of the oldest pending signal, by the database's clock.
    pub oldest_age: Option<Duration>,
    /// Signals the bus refused at least once, waiting for their next attempt.
    pub backing_off: u64,
    /// Age of the oldest backing-off signal.
    pub oldest_backing_off_age: Option<Duration>,
    /// Parked signals: refused too often, never sent again until unparked.
    pub parked: u64,
    /// Age of the oldest parked signal.
    pub oldest_parked_age: Option<Duration>,
}

/// What the gap-safe watermark of ordered flushing holds back in one table now (PostgreSQL;
/// always nothing elsewhere): rows written after the oldest transaction still running on the
/// server began. They go out once it ends; a transaction left open (idle in transaction)
/// holds them back, with every ordered flush of the cluster, until it is ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Holdback {
    /// Rows held back.
    pub rows: u64,
    /// The oldest transaction still running on the server (with an id), which holds them:
    /// `pid … on database … (state, open for …)`.
    pub holder: Option<String>,
    /// How long that transaction has been open.
    pub holder_age: Option<Duration>,
}

/// A parked signal, as operators inspect it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedSignal {
    /// The row's id.
    pub id: i64,
    /// The message id it is sent with.
    pub message_id: String,
    /// Attempts the bus refused.
    pub attempts: u64,
    /// The bus' last reason.
    pub last_error: Option<String>,
    /// How long it has been parked, by the database's clock.
    pub parked_for: Option<Duration>,
    /// Its ordering key: in ordered flushing, the later signals of this key wait for it.
    pub ordering_key: Option<String>,
}

/// Which parked signals an operator command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedRows<'a> {
    /// Every parked signal of the selected types.
    All,
    /// The parked signals with these row ids.
    Ids(&'a [i64]),
}

/// A database signalbus keeps signals in: [`sqlx::Postgres`], [`sqlx::MySql`] or
/// [`sqlx::Sqlite`], behind the features of the same names.
///
/// Sealed: it only names the database in `SignalBus<DB>` and in code generic over it; its
/// operations are signalbus' own and cannot be implemented or called from outside.
pub trait Backend: sealed::Store {}

pub(crate) use sealed::{NewRow, Param, StoredRow};

/// A parked row as read: id, message id, attempts, last error, age in microseconds,
/// ordering key.
pub(crate) type ParkedRow = (
    i64,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
);

// The sealed trait's signatures use crate-private types on purpose: nobody outside can name
// or implement it.
#[allow(private_interfaces, private_bounds)]
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
        /// A lease in milliseconds from now that keeps flushers away (`None`: sendable at once).
        pub lease_ms: Option<i64>,
        /// The ordering key (`None`: the type's sequence of rows without a key).
        pub ordering_key: Option<&'a str>,
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
        /// Attempts the bus refused so far.
        pub attempts: i64,
        /// Whether it can be sent now (not parked, leased or backing off).
        pub ready: bool,
        /// Microseconds since it was written (`created_at`), by the database's clock.
        pub age_micros: Option<i64>,
        /// Its ordering key.
        pub ordering_key: Option<String>,
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
                attempts: row.try_get(7)?,
                ready: row.try_get::<i64, _>(8)? != 0,
                age_micros: row.try_get(9)?,
                ordering_key: row.try_get(10)?,
            })
        }
    }

    /// One bound parameter of a signalbus statement.
    #[derive(Debug, Clone, Copy)]
    pub enum Param<'a> {
        /// A list of row ids (an array on PostgreSQL, a JSON array elsewhere).
        Ids(&'a [i64]),
        /// A list of texts (an array on PostgreSQL, a JSON array elsewhere).
        Texts(&'a [String]),
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

        /// Run `sql`, reading one nullable text column.
        fn fetch_keys(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send;

        /// Run `sql`, reading one row of nullable integers.
        fn fetch_numbers(
            conn: &mut Self::Connection,
            sql: &SqlStr,
        ) -> impl Future<Output = Result<Vec<Option<i64>>>> + Send;

        /// Run `sql`, reading parked rows.
        fn fetch_parked(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<super::ParkedRow>>> + Send;

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

        /// A connection of its own that hears the wake-up notifications of new rows
        /// ([`crate::relay`]); `None` where the database has none.
        fn listener(
            pool: &sqlx::Pool<Self>,
        ) -> impl Future<Output = Result<Option<Box<dyn crate::relay::wake::Listen>>>> + Send;

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
    ($db:ty, $dialect:expr, ids: $ids:expr, texts: $texts:expr, insert: $insert:ident, listen: $listen:path, feature: $feature:literal) => {
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

            async fn fetch_keys(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<Option<String>>> {
                let rows: Vec<(Option<String>,)> = fetch_all_as(conn, sql, params).await?;
                Ok(rows.into_iter().map(|(key,)| key).collect())
            }

            async fn fetch_numbers(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
            ) -> $crate::error::Result<Vec<Option<i64>>> {
                use sqlx::Row as _;
                let row = sqlx::query::<$db>(sql.clone()).fetch_one(conn).await?;
                (0..row.len())
                    .map(|i| row.try_get::<Option<i64>, _>(i).map_err(Into::into))
                    .collect()
            }

            async fn fetch_parked(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<$crate::storage::ParkedRow>> {
                fetch_all_as(conn, sql, params).await
            }

            async fn execute(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<u64> {
                let mut query = sqlx::query::<$db>(sql.clone());
                for param in params {
                    query = $crate::storage::store!(@bind query, param, $ids, $texts);
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
                    .bind(row.content_type)
                    .bind(row.lease_ms)
                    .bind(row.ordering_key);
                $crate::storage::store!(@insert $insert, query, conn)
            }

            async fn listener(
                pool: &sqlx::Pool<$db>,
            ) -> $crate::error::Result<Option<Box<dyn $crate::relay::wake::Listen>>> {
                $listen(pool).await
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
                query = $crate::storage::store!(@bind query, param, $ids, $texts);
            }
            Ok(query.fetch_all(conn).await?)
        }
    };
    (@bind $query:ident, $param:ident, $ids:expr, $texts:expr) => {
        match *$param {
            $crate::storage::Param::Ids(ids) => $query.bind(($ids)(ids)),
            $crate::storage::Param::Texts(texts) => $query.bind(($texts)(texts)),
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

/// Texts as a JSON array, bound as one parameter (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn json_texts(texts: &[String]) -> String {
    serde_json::to_string(texts).expect("a list of strings is JSON")
}

/// The values a statement's parameters ([`Arg`]) are bound from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Values<'a> {
    pub ids: &'a [i64],
    pub lease_ms: i64,
    pub token: &'a str,
    pub limit: usize,
    pub delay_ms: i64,
    pub max_attempts: u32,
    pub error: &'a str,
    pub name: &'a str,
    pub lane: u32,
    pub keys: &'a [String],
    pub null_held: bool,
}

impl<'a> Values<'a> {
    /// The parameters of `stmt`, in its order.
    fn bind(&self, stmt: &Stmt) -> Vec<Param<'a>> {
        stmt.args
            .iter()
            .map(|arg| match arg {
                Arg::Ids => Param::Ids(self.ids),
                Arg::Lease => Param::Int(self.lease_ms),
                Arg::Token => Param::Text(self.token),
                Arg::Limit => Param::Int(i64::try_from(self.limit).unwrap_or(i64::MAX)),
                Arg::Delay => Param::Int(self.delay_ms),
                Arg::Max => Param::Int(i64::from(self.max_attempts)),
                Arg::Error => Param::Text(self.error),
                Arg::Name => Param::Text(self.name),
                Arg::Lane => Param::Int(i64::from(self.lane)),
                Arg::Keys => Param::Texts(self.keys),
                Arg::NullHeld => Param::Int(i64::from(self.null_held)),
            })
            .collect()
    }
}

/// Milliseconds of a duration, as a bound integer.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn age(micros: Option<i64>) -> Option<Duration> {
    micros.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
}

fn count(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The operations of the flushing engine on one table, generic over the database.
impl Statements {
    async fn run_rows<DB: Backend>(
        conn: &mut DB::Connection,
        stmt: &Stmt,
        values: Values<'_>,
    ) -> Result<Vec<StoredRow>> {
        DB::fetch_rows(conn, &stmt.sql, &values.bind(stmt)).await
    }

    async fn run<DB: Backend>(
        conn: &mut DB::Connection,
        stmt: &Stmt,
        values: Values<'_>,
    ) -> Result<u64> {
        DB::execute(conn, &stmt.sql, &values.bind(stmt)).await
    }

    /// Refuse a table of this name that exists and is not a signal table (a business table
    /// whose name a signal type happens to use): `migrate` must never add signalbus' columns,
    /// indexes or triggers to it. Runs before `migrate` changes anything.
    pub async fn check_table<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        table: &str,
    ) -> Result<()> {
        let present = DB::fetch_texts(conn, &self.columns, &[]).await?;
        if present.is_empty() {
            return Ok(()); // not there yet: `migrate` creates it
        }
        let extra: &[&str] = if DB::DIALECT.ordered_read == dialect::OrderedRead::TxidWatermark {
            &["txid"]
        } else {
            &[]
        };
        let missing: Vec<&str> = FIRST_CONTRACT
            .iter()
            .chain(extra)
            .copied()
            .filter(|column| !present.iter().any(|c| c.eq_ignore_ascii_case(column)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "table `{table}` exists but is not a signal table: it has no column{} {}; migrate \
             changed nothing. Give the signal type a table of its own (`#[signal(table = \"...\")]` \
             or `SignalType::table`), or rename the existing table",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Create the table (and what goes with it) if it does not exist, and add the columns of
    /// the contract an older table lacks. Outside any transaction: on MySQL DDL commits.
    /// [`Self::check_table`] first.
    pub async fn create_table<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        for statement in &self.create {
            DB::execute_script(conn, statement).await?;
        }
        let present = DB::fetch_texts(conn, &self.columns, &[]).await?;
        for (column, add) in &self.add_columns {
            if !present.iter().any(|c| c.eq_ignore_ascii_case(column)) {
                DB::execute_script(conn, add).await?;
            }
        }
        if let Some(lock) = &self.flush_lock {
            let name = Values {
                name: &lock.name,
                ..Values::default()
            };
            Self::run::<DB>(conn, &lock.add, name).await?;
        }
        for statement in &self.after_columns {
            DB::execute_script(conn, statement).await?;
        }
        Ok(())
    }

    /// The insert statement (for [`crate::prepared::PreparedSignal`]).
    pub fn insert_sql(&self) -> sqlx::SqlStr {
        self.insert.clone()
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
        let name = Values {
            name: &lock.name,
            ..Values::default()
        };
        let params = name.bind(&lock.take);
        let found = DB::fetch_texts(conn, &lock.take.sql, &params)
            .await
            .map_err(missing_lock_table)?;
        if found.is_empty() {
            // A signal table created by other means: add its lock row, then take it.
            Self::run::<DB>(conn, &lock.add, name).await?;
            DB::fetch_texts(conn, &lock.take.sql, &params).await?;
        }
        Ok(())
    }

    /// Claim (lease for `lease`, with `token`) the sendable rows among `ids`, or — with
    /// `ids` empty — up to `limit` sendable rows, lowest ids first. No transaction is left
    /// open: the lease alone keeps other flushers away until it is settled or expires.
    pub async fn claim<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: Option<&[i64]>,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        match DB::DIALECT.begin_async {
            Some(begin) => {
                let mut tx = conn.begin_with(begin).await?;
                let rows = self
                    .claim_in::<DB>(&mut tx, ids, limit, lease, token)
                    .await?;
                tx.commit().await?;
                Ok(rows)
            }
            None => self.claim_in::<DB>(conn, ids, limit, lease, token).await,
        }
    }

    /// Claim the sendable rows among `ids` in the caller's open transaction (an ordered
    /// burst's short read-and-claim step).
    pub async fn claim_in_tx<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        self.claim_in::<DB>(conn, Some(ids), ids.len(), lease, token)
            .await
    }

    /// Whether a flusher holds a live claim on rows of this table.
    /// Ordered lanes of the table: ordering keys are hashed into this many lanes, and one
    /// ordered flusher at a time sends a lane ([`Self::try_lane`]); 1 where the database
    /// has none (its ordered flushers take turns per burst instead).
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// Take `lane` for the connection's session (until [`Self::free_lane`], or until the
    /// connection closes); `false` when another flusher has it. Always `true` without lanes.
    pub async fn try_lane<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        lane: u32,
    ) -> Result<bool> {
        match &self.lane_locks {
            Some((take, _)) => Ok(Self::lane_lock::<DB>(conn, take, lane).await?),
            None => Ok(true),
        }
    }

    /// Give `lane` back.
    pub async fn free_lane<DB: Backend>(&self, conn: &mut DB::Connection, lane: u32) -> Result<()> {
        if let Some((_, free)) = &self.lane_locks {
            Self::lane_lock::<DB>(conn, free, lane).await?;
        }
        Ok(())
    }

    /// Run a lane lock statement; whether it answered 1 (taken, or given back).
    async fn lane_lock<DB: Backend>(
        conn: &mut DB::Connection,
        stmt: &Stmt,
        lane: u32,
    ) -> Result<bool> {
        let values = Values {
            lane,
            ..Values::default()
        };
        let answer = DB::fetch_ids(conn, &stmt.sql, &values.bind(stmt)).await?;
        Ok(answer.first().copied() == Some(1))
    }

    pub async fn claimed_now<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<bool> {
        let n = DB::fetch_ids(conn, &self.in_flight, &[]).await?;
        Ok(n.first().copied().unwrap_or(0) > 0)
    }

    async fn claim_in<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: Option<&[i64]>,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        let values = Values {
            ids: ids.unwrap_or_default(),
            limit,
            lease_ms: millis(lease),
            token,
            ..Values::default()
        };
        let stmt = if ids.is_some() {
            &self.claim_ids
        } else {
            &self.claim_burst
        };
        let mut rows = match &self.read_claimed {
            None => Self::run_rows::<DB>(conn, stmt, values).await?,
            Some(read) => {
                Self::run::<DB>(conn, stmt, values).await?;
                Self::run_rows::<DB>(conn, read, values).await?
            }
        };
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }

    /// Claim for the auto-flush the rows among `ids` that exist and no other flusher holds;
    /// returns their ids.
    pub async fn claim_own<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        lease: Duration,
        token: &str,
    ) -> Result<Vec<i64>> {
        let values = Values {
            ids,
            lease_ms: millis(lease),
            token,
            ..Values::default()
        };
        match &self.read_claimed_ids {
            None => DB::fetch_ids(conn, &self.claim_own.sql, &values.bind(&self.claim_own)).await,
            Some(read) => {
                Self::run::<DB>(conn, &self.claim_own, values).await?;
                DB::fetch_ids(conn, &read.sql, &values.bind(read)).await
            }
        }
    }

    /// Count a refusal of the rows `ids`: one more attempt, the next after `delay`, or
    /// parked once they reach `max_attempts`.
    pub async fn refuse<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        delay: Duration,
        max_attempts: u32,
        error: &str,
    ) -> Result<u64> {
        let values = Values {
            ids,
            delay_ms: millis(delay),
            max_attempts,
            error,
            ..Values::default()
        };
        Self::run::<DB>(conn, &self.refuse, values).await
    }

    /// Give claimed rows back at once, without spending an attempt.
    pub async fn release<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
    ) -> Result<u64> {
        let values = Values {
            ids,
            ..Values::default()
        };
        Self::run::<DB>(conn, &self.release, values).await
    }

    /// Lock and read the next up to `n` rows in `flushordered` order (the type's `order_by`,
    /// then `id`), gap-safe as far as the database allows (see the module docs), whether
    /// they can be sent now or not (the caller stops at the first that cannot). It waits for
    /// held rows instead of skipping them (skipping would break the order); ordered flushers
    /// of one table take turns.
    pub async fn lock_ordered<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        lane: u32,
        n: usize,
    ) -> Result<Vec<StoredRow>> {
        let OrderedRead { held_keys, read } = &self.ordered;
        if let Ordered::Watermark { turn, .. } = read {
            DB::execute_script(conn, turn).await?;
        }
        // The keys held back by a refusal, once per burst (bounded by the held rows, read
        // from their index where there is one); the read then checks each row against them.
        let mut keys = DB::fetch_keys(conn, &held_keys.sql, &[]).await?;
        let null_held = keys.iter().any(Option::is_none);
        let mut keys: Vec<String> = keys.drain(..).flatten().collect();
        keys.sort_unstable();
        keys.dedup();
        let values = Values {
            limit: n,
            lane,
            keys: &keys,
            null_held,
            ..Values::default()
        };
        match read {
            Ordered::Watermark {
                restored, settled, ..
            } => {
                // Rows restored from another cluster first (usually none: an index probe),
                // then the settled ones.
                let rows = Self::run_rows::<DB>(conn, restored, values).await?;
                if !rows.is_empty() {
                    return Ok(rows);
                }
                Self::run_rows::<DB>(conn, settled, values).await
            }
            Ordered::Locking(read) => {
                // The turn keeps every other flusher out; the locking read in order then
                // waits for rows whose inserting transaction is still open instead of
                // passing them, bounded by the server's lock wait timeout.
                self.take_turn::<DB>(conn).await?;
                Self::run_rows::<DB>(conn, read, values).await
            }
        }
    }

    /// Delete the rows with these ids. Sent rows, outside a transaction (`alone`): without
    /// waiting for the disk where the database allows, see [`dialect::Dialect::begin_async`].
    pub async fn delete_ids<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        alone: bool,
    ) -> Result<u64> {
        let values = Values {
            ids,
            ..Values::default()
        };
        match DB::DIALECT.begin_async.filter(|_| alone) {
            Some(begin) => {
                let mut tx = conn.begin_with(begin).await?;
                let deleted = Self::run::<DB>(&mut tx, &self.delete_ids, values).await?;
                tx.commit().await?;
                Ok(deleted)
            }
            None => Self::run::<DB>(conn, &self.delete_ids, values).await,
        }
    }

    /// The ids of the rows that can be sent now, ascending.
    pub async fn pending_ids<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<Vec<i64>> {
        DB::fetch_ids(conn, &self.pending_ids, &[]).await
    }

    /// Counts and ages of all, backing-off and parked rows.
    pub async fn pending_stats<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<PendingStats> {
        let n = DB::fetch_numbers(conn, &self.pending_stats).await?;
        let at = |i: usize| n.get(i).copied().flatten();
        Ok(PendingStats {
            count: count(at(0)),
            oldest_age: age(at(1)),
            backing_off: count(at(2)),
            oldest_backing_off_age: age(at(3)),
            parked: count(at(4)),
            oldest_parked_age: age(at(5)),
        })
    }

    /// What the ordered watermark holds back in this table now ([`Holdback`]).
    pub async fn holdback<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<Holdback> {
        let Some(held) = &self.watermark_held else {
            return Ok(Holdback::default());
        };
        let n = DB::fetch_numbers(conn, held).await?;
        let rows = count(n.first().copied().flatten());
        let holder_age = n
            .get(1)
            .copied()
            .flatten()
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        let holder = match (rows, DB::DIALECT.watermark_holder) {
            (1.., Some(who)) => DB::fetch_keys(conn, &owned_sql(who), &[])
                .await?
                .into_iter()
                .next()
                .flatten(),
            _ => None,
        };
        Ok(Holdback {
            rows,
            holder,
            holder_age,
        })
    }

    /// Wake the relays of this table, where the database has notifications.
    pub async fn wake_relays<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        if let Some(wake) = &self.wake_relays {
            DB::execute_script(conn, wake).await?;
        }
        Ok(())
    }

    /// Up to `limit` parked rows, lowest ids first.
    pub async fn parked<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        limit: usize,
    ) -> Result<Vec<ParkedSignal>> {
        let values = Values {
            limit,
            ..Values::default()
        };
        let rows = DB::fetch_parked(conn, &self.parked.sql, &values.bind(&self.parked)).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, message_id, attempts, last_error, parked_us, ordering_key)| ParkedSignal {
                    id,
                    message_id,
                    attempts: count(Some(attempts)),
                    last_error,
                    parked_for: age(parked_us),
                    ordering_key,
                },
            )
            .collect())
    }

    /// Unpark (send again on the next pass, attempts reset) or delete parked rows; returns
    /// how many.
    pub async fn settle_parked<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        rows: ParkedRows<'_>,
        delete: bool,
    ) -> Result<u64> {
        match (rows, delete) {
            (ParkedRows::All, false) => DB::execute(conn, &self.unpark_all, &[]).await,
            (ParkedRows::All, true) => DB::execute(conn, &self.purge_all, &[]).await,
            (ParkedRows::Ids(ids), delete) => {
                let stmt = if delete {
                    &self.purge_ids
                } else {
                    &self.unpark_ids
                };
                let values = Values {
                    ids,
                    ..Values::default()
                };
                Self::run::<DB>(conn, stmt, values).await
            }
        }
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
        DB::execute_script(&mut self.conn, &owned_sql(DB::DIALECT.begin_flush)).await?;
        Ok(&mut self.conn)
    }

    /// The connection, inside the transaction.
    pub fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }

    /// End the transaction: commit when `result` is `Ok`, roll back at once otherwise (a
    /// dropped transaction would keep its locks until the connection is next used).
    pub async fn end<T>(&mut self, result: Result<T>) -> Result<T> {
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = DB::execute_script(&mut self.conn, &owned_sql(end)).await;
        // Ended in doubt: the connection is closed on drop rather than reused.
        self.done = ended.is_ok();
        match (result, ended) {
            (Ok(value), Ok(())) => Ok(value),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        }
    }
}

/// SQL text as an owned statement (a `&'static str` passed to sqlx trips the compiler's
/// check that the callers' futures are `Send`: rust-lang/rust#96865).
fn owned_sql(text: &str) -> sqlx::SqlStr {
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
