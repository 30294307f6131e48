//! The sealed trait that names a database (`Backend`), the per-database primitives behind it
//! (`sealed::Store`), and the `store!` macro that implements them once per database.

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

/// A signal row as an operator sees it ([`super::inspect::Inspect::list`]): id, message id,
/// destination, routing key, ordering key, content type, attempts, last error, the ages (in
/// microseconds) of `created_at`, `parked_at` and `next_attempt_at` (negative: in the
/// future), in flight (0/1), body size, headers.
pub(crate) type InspectedRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// One failure-group aggregate ([`super::inspect::Inspect::groups`]): last error,
/// destination, routing key, rows, parked rows, highest id, ages (microseconds) of the
/// oldest and newest row.
pub(crate) type GroupRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// One line of the audit log: id, actor, role, action, signal, filter, matched, changed,
/// age in microseconds.
pub(crate) type AuditRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

// The sealed trait's signatures use crate-private types on purpose: nobody outside can name
// or implement it.
#[allow(private_interfaces, private_bounds)]
pub(crate) mod sealed {
    use crate::error::Result;
    use crate::storage::dialect::Dialect;
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

        /// Run `sql`, reading rows as an operator sees them.
        fn fetch_inspected(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<super::InspectedRow>>> + Send;

        /// Run `sql`, reading failure-group aggregates.
        fn fetch_groups(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<super::GroupRow>>> + Send;

        /// Run `sql`, handing each failure-group aggregate to `each` as it arrives (a read of
        /// very many is never held whole); stops at the first error `each` returns.
        fn each_group(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
            each: &mut (dyn FnMut(super::GroupRow) -> Result<()> + Send),
        ) -> impl Future<Output = Result<()>> + Send;

        /// Run `sql`, reading audit lines.
        fn fetch_audit(
            conn: &mut Self::Connection,
            sql: &SqlStr,
            params: &[Param<'_>],
        ) -> impl Future<Output = Result<Vec<super::AuditRow>>> + Send;

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
        ) -> impl Future<Output = Result<Option<Box<dyn crate::storage::listen::Listen>>>> + Send;

        /// The connect options of `url` with `settings` ([`crate::storage::open_pool`]):
        /// what differs per database is SQLite's file.
        fn connect_options(
            url: &str,
            settings: &crate::storage::PoolSettings,
        ) -> std::result::Result<<Self::Connection as sqlx::Connection>::Options, sqlx::Error>;

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
/// the value bound for [`Param::Ids`], `$insert` is `returning` or `last_insert_id`,
/// `$connect` makes the connect options of a URL.
macro_rules! store {
    ($db:ty, $dialect:expr, ids: $ids:expr, texts: $texts:expr, insert: $insert:ident, listen: $listen:path, connect: $connect:path, feature: $feature:literal) => {
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
                let row = $crate::storage::backend::run_unnamed!(conn, sql, |conn| sqlx::query::<$db>(sql.clone())
                    .persistent(!$crate::storage::statements::is_unnamed(sql))
                    .fetch_one(conn)
                    .await)?;
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

            async fn fetch_inspected(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<$crate::storage::InspectedRow>> {
                fetch_all_as(conn, sql, params).await
            }

            async fn fetch_groups(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<$crate::storage::GroupRow>> {
                fetch_all_as(conn, sql, params).await
            }

            async fn each_group(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
                each: &mut (dyn FnMut($crate::storage::GroupRow) -> $crate::error::Result<()>
                          + Send),
            ) -> $crate::error::Result<()> {
                use futures_util::TryStreamExt as _;
                $crate::storage::backend::run_unnamed!(conn, sql, |c| {
                    let mut query =
                        sqlx::query_as::<$db, $crate::storage::GroupRow>(sql.clone())
                            .persistent(!$crate::storage::statements::is_unnamed(sql));
                    for param in params {
                        query = $crate::storage::store!(@bind query, param, $ids, $texts);
                    }
                    let mut rows = query.fetch(c);
                    loop {
                        match rows.try_next().await {
                            Ok(Some(row)) => {
                                if let Err(e) = each(row) {
                                    break Err(e);
                                }
                            }
                            Ok(None) => break Ok(()),
                            Err(e) => break Err($crate::error::Error::from(e)),
                        }
                    }
                })
            }

            async fn fetch_audit(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<Vec<$crate::storage::AuditRow>> {
                fetch_all_as(conn, sql, params).await
            }

            async fn execute(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &sqlx::SqlStr,
                params: &[$crate::storage::Param<'_>],
            ) -> $crate::error::Result<u64> {
                let done = $crate::storage::backend::run_unnamed!(conn, sql, |c| {
                    let mut query = sqlx::query::<$db>(sql.clone())
                        .persistent(!$crate::storage::statements::is_unnamed(sql));
                    for param in params {
                        query = $crate::storage::store!(@bind query, param, $ids, $texts);
                    }
                    query.execute(c).await
                })?;
                Ok(done.rows_affected())
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
                $crate::storage::backend::run_unnamed!(conn, sql, |c| {
                    let query = sqlx::query::<$db>(sql.clone())
                        .persistent(!$crate::storage::statements::is_unnamed(sql))
                        .bind(row.message_id)
                        .bind(row.topic)
                        .bind(row.routing_key)
                        .bind(row.headers)
                        .bind(row.body)
                        .bind(row.content_type)
                        .bind(row.lease_ms)
                        .bind(row.ordering_key);
                    $crate::storage::store!(@insert $insert, query, c)
                })
            }

            async fn listener(
                pool: &sqlx::Pool<$db>,
            ) -> $crate::error::Result<Option<Box<dyn $crate::storage::listen::Listen>>> {
                $listen(pool).await
            }

            fn connect_options(
                url: &str,
                settings: &$crate::storage::PoolSettings,
            ) -> ::std::result::Result<
                <<$db as sqlx::Database>::Connection as sqlx::Connection>::Options,
                sqlx::Error,
            > {
                $connect(url, settings)
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
            Ok($crate::storage::backend::run_unnamed!(conn, sql, |c| {
                let mut query = sqlx::query_as::<$db, R>(sql.clone())
                    .persistent(!$crate::storage::statements::is_unnamed(sql));
                for param in params {
                    query = $crate::storage::store!(@bind query, param, $ids, $texts);
                }
                query.fetch_all(c).await
            })?)
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

/// Run `$body` (a closure of the connection, `|conn| ... .await`, giving an sqlx result) on
/// `$conn`. A statement sent unnamed ([`super::statements::is_unnamed`]: behind a pooler in
/// transaction mode) is parsed in one exchange and executed in the next; outside a
/// transaction the pooler may hand each exchange to another server session, whose unnamed
/// statement is someone else's. So there it runs in a transaction of its own, which holds one
/// session for both.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! run_unnamed {
    ($conn:ident, $sql:ident, |$c:ident| $body:expr) => {{
        use sqlx::Connection as _;
        if $crate::storage::statements::is_unnamed($sql) && !$conn.is_in_transaction() {
            let mut tx = $conn.begin().await?;
            let result = {
                let $c: &mut _ = &mut *tx;
                $body
            };
            match result {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(value)
                }
                Err(e) => Err(e),
            }
        } else {
            let $c = $conn;
            $body
        }
    }};
}
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use run_unnamed;
