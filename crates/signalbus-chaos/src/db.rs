//! The harness' databases: the same workload, faults and checks on PostgreSQL, MariaDB and
//! SQLite. What differs is only the harness' own SQL (the business row and what the checker
//! reads), one impl of [`HarnessDb`] per database type; the signals go through signalbus'
//! generic API.

use serde::Serialize;
use std::future::Future;

/// A database of the harness (`--db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Db {
    /// A private PostgreSQL cluster behind a proxy: restarted, crashed, cut, slowed,
    /// partitioned.
    Postgres,
    /// A private MariaDB server behind a proxy: the same faults.
    Mysql,
    /// One SQLite file per bus, written by every writer and relay process: no server, so
    /// the database's faults are the processes killed mid-transaction.
    Sqlite,
}

impl Db {
    pub const ALL: [Db; 3] = [Db::Postgres, Db::Mysql, Db::Sqlite];

    pub fn name(self) -> &'static str {
        match self {
            Db::Postgres => "postgres",
            Db::Mysql => "mysql",
            Db::Sqlite => "sqlite",
        }
    }

    /// Whether it is a server the harness can restart, crash, cut and partition.
    pub fn has_server(self) -> bool {
        self != Db::Sqlite
    }
}

/// A committed business row as the checker reads it: id, signals written, key, the first
/// sequence number of its keyed signals.
pub type TxRow = (i64, i32, Option<String>, Option<i64>);

/// The harness' own SQL on one database type.
pub trait HarnessDb: signalbus::Backend + sqlx::Database {
    /// The business table; `seq` is the first sequence number of the transaction's keyed
    /// signals, computed in the transaction (unique per key: two commits cannot share one).
    const BUSINESS_DDL: &'static str;

    /// Insert the business row of a transaction in the caller's transaction: its id, and
    /// the first sequence number of its keyed signals when it has a key.
    fn insert_tx(
        conn: &mut Self::Connection,
        writer: i32,
        n: i32,
        key: Option<&str>,
    ) -> impl Future<Output = Result<(i64, Option<i64>), sqlx::Error>> + Send;

    /// Make the business rows' ids start at `first` or above (fleet mode: the tenants of a
    /// bus share the checker's one space of transaction ids).
    fn start_ids_at(
        pool: &sqlx::Pool<Self>,
        first: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Create the business table.
    fn create_business_table(
        pool: &sqlx::Pool<Self>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Every committed business row.
    fn tx_rows(
        pool: &sqlx::Pool<Self>,
    ) -> impl Future<Output = Result<Vec<TxRow>, sqlx::Error>> + Send;

    /// The bodies `sql` (a harness constant) reads.
    fn bodies(
        pool: &sqlx::Pool<Self>,
        sql: &'static str,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, sqlx::Error>> + Send;

    /// The single count `sql` (a harness constant) reads.
    fn count(
        pool: &sqlx::Pool<Self>,
        sql: &'static str,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
}

/// What reads alike on every database (the column and table names are the harness' own).
macro_rules! reads {
    () => {
        async fn create_business_table(pool: &sqlx::Pool<Self>) -> Result<(), sqlx::Error> {
            sqlx::raw_sql(Self::BUSINESS_DDL).execute(pool).await?;
            Ok(())
        }

        async fn tx_rows(pool: &sqlx::Pool<Self>) -> Result<Vec<TxRow>, sqlx::Error> {
            sqlx::query_as("SELECT id, n, chaos_key, seq FROM chaos_tx")
                .fetch_all(pool)
                .await
        }

        async fn bodies(
            pool: &sqlx::Pool<Self>,
            sql: &'static str,
        ) -> Result<Vec<Vec<u8>>, sqlx::Error> {
            let rows: Vec<(Vec<u8>,)> = sqlx::query_as(sql).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(body,)| body).collect())
        }

        async fn count(pool: &sqlx::Pool<Self>, sql: &'static str) -> Result<i64, sqlx::Error> {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await?;
            Ok(n)
        }
    };
}

impl HarnessDb for sqlx::Postgres {
    const BUSINESS_DDL: &'static str = "CREATE TABLE IF NOT EXISTS chaos_tx (\
        id BIGSERIAL PRIMARY KEY, writer INT NOT NULL, n INT NOT NULL, \
        chaos_key TEXT NULL, seq BIGINT NULL, UNIQUE (chaos_key, seq))";

    async fn insert_tx(
        conn: &mut sqlx::PgConnection,
        writer: i32,
        n: i32,
        key: Option<&str>,
    ) -> Result<(i64, Option<i64>), sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO chaos_tx (writer, n, chaos_key, seq) VALUES ($1, $2, $3, \
             CASE WHEN $3::text IS NULL THEN NULL ELSE \
             (SELECT COALESCE(MAX(seq + n), 0) FROM chaos_tx WHERE chaos_key = $3) END) \
             RETURNING id, seq",
        )
        // Unnamed: through PgBouncer (`--pgbouncer`) the next transaction may run on another
        // server session, which would not know a statement sqlx prepared and cached here.
        .persistent(false)
        .bind(writer)
        .bind(n)
        .bind(key)
        .fetch_one(conn)
        .await
    }

    async fn start_ids_at(pool: &sqlx::PgPool, first: i64) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT setval(pg_get_serial_sequence('chaos_tx', 'id'), $1, false)")
            .bind(first)
            .execute(pool)
            .await?;
        Ok(())
    }

    reads!();
}

impl HarnessDb for sqlx::MySql {
    // InnoDB's auto-increment never hands out a rolled-back id again (while the server
    // runs; MariaDB keeps the counter across restarts).
    const BUSINESS_DDL: &'static str = "CREATE TABLE IF NOT EXISTS chaos_tx (\
        id BIGINT AUTO_INCREMENT PRIMARY KEY, writer INT NOT NULL, n INT NOT NULL, \
        chaos_key VARCHAR(64) NULL, seq BIGINT NULL, UNIQUE (chaos_key, seq)) ENGINE=InnoDB";

    async fn insert_tx(
        conn: &mut sqlx::MySqlConnection,
        writer: i32,
        n: i32,
        key: Option<&str>,
    ) -> Result<(i64, Option<i64>), sqlx::Error> {
        // INSERT … SELECT: MariaDB refuses a subquery on the table a plain INSERT writes.
        sqlx::query_as(
            "INSERT INTO chaos_tx (writer, n, chaos_key, seq) SELECT ?, ?, ?, \
             CASE WHEN ? IS NULL THEN NULL ELSE \
             (SELECT COALESCE(MAX(seq + n), 0) FROM chaos_tx WHERE chaos_key = ?) END \
             RETURNING id, seq",
        )
        .bind(writer)
        .bind(n)
        .bind(key)
        .bind(key)
        .bind(key)
        .fetch_one(conn)
        .await
    }

    async fn start_ids_at(pool: &sqlx::MySqlPool, first: i64) -> Result<(), sqlx::Error> {
        // A number, formatted: no input reaches the statement.
        let alter = format!("ALTER TABLE chaos_tx AUTO_INCREMENT = {first}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(alter))
            .execute(pool)
            .await?;
        Ok(())
    }

    reads!();
}

impl HarnessDb for sqlx::Sqlite {
    // The id comes from the writer: SQLite's own (rowid, even AUTOINCREMENT) is given again
    // after a rollback, and the checker tells rolled-back transactions by their ids.
    const BUSINESS_DDL: &'static str = "CREATE TABLE IF NOT EXISTS chaos_tx (\
        id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, n INTEGER NOT NULL, \
        chaos_key TEXT NULL, seq INTEGER NULL, UNIQUE (chaos_key, seq))";

    async fn insert_tx(
        conn: &mut sqlx::SqliteConnection,
        writer: i32,
        n: i32,
        key: Option<&str>,
    ) -> Result<(i64, Option<i64>), sqlx::Error> {
        // Microseconds since the epoch, times 1,000, plus the writer: unique across writers
        // and their restarts (a writer runs one transaction at a time).
        let micros = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(i64::MAX / 1000);
        let id = micros * 1000 + i64::from(writer % 1000);
        sqlx::query_as(
            "INSERT INTO chaos_tx (id, writer, n, chaos_key, seq) VALUES (?1, ?2, ?3, ?4, \
             CASE WHEN ?4 IS NULL THEN NULL ELSE \
             (SELECT COALESCE(MAX(seq + n), 0) FROM chaos_tx WHERE chaos_key = ?4) END) \
             RETURNING id, seq",
        )
        .bind(id)
        .bind(writer)
        .bind(n)
        .bind(key)
        .fetch_one(conn)
        .await
    }

    async fn start_ids_at(_: &sqlx::SqlitePool, _: i64) -> Result<(), sqlx::Error> {
        // Ids come from the clock and the writer, unique across the tenants' files.
        Ok(())
    }

    reads!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalbus_testkit::database::{TestDb, TestServer};

    /// The business row on a real database: per-key sequence numbers that follow the
    /// committed rows, none for an unkeyed row, and ids never given twice, not even after a
    /// rollback (the checker tells rolled-back transactions by their ids).
    async fn business_rows<D: HarnessDb + TestServer>() {
        let db = TestDb::<D>::new(2).await;
        D::create_business_table(&db.pool).await.unwrap();
        let insert = |n: i32, key: Option<&'static str>| {
            let pool = db.pool.clone();
            async move {
                let mut conn = pool.acquire().await.unwrap();
                D::insert_tx(&mut conn, 7, n, key).await.unwrap()
            }
        };
        let (a, seq_a) = insert(2, Some("k")).await;
        let (b, seq_b) = insert(3, Some("k")).await;
        let (c, seq_c) = insert(1, None).await;
        let (d, seq_d) = insert(1, Some("j")).await;
        assert_eq!(
            (seq_a, seq_b, seq_c, seq_d),
            (Some(0), Some(2), None, Some(0))
        );
        let (e, seq_e) = insert(1, Some("k")).await;
        assert_eq!(seq_e, Some(5), "after 2 + 3 signals of key k");

        let mut tx = db.pool.begin().await.unwrap();
        let (rolled_back, _) = D::insert_tx(&mut tx, 7, 1, Some("k")).await.unwrap();
        tx.rollback().await.unwrap();
        // SQLite's ids come from the clock: a later one may not be the same microsecond.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let (f, seq_f) = insert(1, Some("k")).await;
        assert_eq!(
            seq_f,
            Some(6),
            "the rolled-back row took no sequence number"
        );

        let ids = std::collections::HashSet::from([a, b, c, d, e, f, rolled_back]);
        assert_eq!(
            ids.len(),
            7,
            "ids given twice: {a} {b} {c} {d} {e} {f} {rolled_back}"
        );
        let mut rows = D::tx_rows(&db.pool).await.unwrap();
        rows.sort_by_key(|r| r.0);
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows.iter().find(|r| r.0 == b),
            Some(&(b, 3, Some("k".to_owned()), Some(2)))
        );
        let count = D::count(&db.pool, "SELECT count(*) FROM chaos_tx")
            .await
            .unwrap();
        assert_eq!(count, 6);

        // A fleet's tenant: its ids from its own range on.
        let first = 5_000_000_000_000;
        D::start_ids_at(&db.pool, first).await.unwrap();
        let (g, _) = insert(1, None).await;
        assert!(g >= first, "id {g} below the tenant's first {first}");
        db.cleanup().await;
    }

    #[tokio::test]
    async fn business_rows_on_postgres() {
        business_rows::<sqlx::Postgres>().await;
    }

    #[tokio::test]
    async fn business_rows_on_mariadb() {
        business_rows::<sqlx::MySql>().await;
    }

    #[tokio::test]
    async fn business_rows_on_sqlite() {
        business_rows::<sqlx::Sqlite>().await;
    }
}
