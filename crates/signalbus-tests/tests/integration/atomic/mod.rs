//! Atomic blocks (issue 5): retries, nesting, isolation, signals, row helpers.

mod blocks;
mod error_types;
mod errors;
mod retries;
mod rows;

use crate::common::{TestBackend, TestDb};
use crate::signals::OrderPlaced;
use signalbus::SignalBus;
use signalbus::atomic::{AtomicOptions, SqliteBegin, TableRow};
use signalbus::publisher::{Backoff, MemoryPublisher};
use sqlx::{AssertSqlSafe, MySql, Pool, Postgres, Sqlite};
use std::future::Future;
use std::time::Duration;

/// Tables and statements of the atomic tests, per database.
pub trait AtomicDb: TestBackend {
    fn setup_tables(pool: &Pool<Self>) -> impl Future<Output = ()> + Send;
    fn add_accounts(pool: &Pool<Self>, n: i64, balance: i64) -> impl Future<Output = ()> + Send;
    fn add_balance(
        conn: &mut Self::Connection,
        id: i64,
        delta: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn balances(pool: &Pool<Self>) -> impl Future<Output = Vec<(i64, i64)>> + Send;
    fn insert_parent(pool: &Pool<Self>, id: i64) -> impl Future<Output = ()> + Send;
    /// A row of `children` (foreign key to `parents`).
    fn insert_child(
        conn: &mut Self::Connection,
        id: i64,
        parent: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// The balances as the transaction of `conn` sees them.
    fn balances_in(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = sqlx::Result<Vec<(i64, i64)>>> + Send;
    /// Accounts with a positive balance.
    fn count_positive(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = sqlx::Result<i64>> + Send;
    fn kv_get(
        conn: &mut Self::Connection,
        k: &str,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send;
    fn kv_insert(
        conn: &mut Self::Connection,
        k: &str,
        v: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn count_orders(conn: &mut Self::Connection) -> impl Future<Output = sqlx::Result<i64>> + Send;
    fn insert_member(
        pool: &Pool<Self>,
        tenant: &str,
        id: i64,
        role: &str,
    ) -> impl Future<Output = ()> + Send;
    /// A real conflict error from the database. On SQLite (a BUSY_SNAPSHOT: the block's read
    /// snapshot is stale when it tries to write) it must be the block's first statement and
    /// the block must begin DEFERRED; `pool` must have a free connection.
    fn raise_conflict(
        conn: &mut Self::Connection,
        pool: &Pool<Self>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// `?` placeholders as the database wants them (`$n` on PostgreSQL).
fn sql<DB: sqlx::Database>(text: &str) -> AssertSqlSafe<String> {
    if DB::NAME != "PostgreSQL" {
        return AssertSqlSafe(text.to_owned());
    }
    let mut out = String::new();
    let mut n = 0;
    for c in text.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    AssertSqlSafe(out)
}

macro_rules! atomic_db {
    ($DB:ty, $raise:expr) => {
        impl AtomicDb for $DB {
            async fn setup_tables(pool: &Pool<Self>) {
                for stmt in [
                    "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
                    "CREATE TABLE kv (k VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL)",
                    "CREATE TABLE conflicts (n BIGINT)",
                    "CREATE TABLE members (tenant VARCHAR(32) NOT NULL, id BIGINT NOT NULL, \
                     role VARCHAR(32) NOT NULL, PRIMARY KEY (tenant, id))",
                    "CREATE TABLE parents (id BIGINT PRIMARY KEY)",
                    "CREATE TABLE children (id BIGINT PRIMARY KEY, parent BIGINT NOT NULL \
                     REFERENCES parents (id))",
                ] {
                    sqlx::raw_sql(stmt).execute(pool).await.unwrap();
                }
            }
            async fn add_accounts(pool: &Pool<Self>, n: i64, balance: i64) {
                for id in 1..=n {
                    sqlx::query(sql::<Self>(
                        "INSERT INTO accounts (id, balance) VALUES (?, ?)",
                    ))
                    .bind(id)
                    .bind(balance)
                    .execute(pool)
                    .await
                    .unwrap();
                }
            }
            async fn add_balance(
                conn: &mut Self::Connection,
                id: i64,
                delta: i64,
            ) -> sqlx::Result<()> {
                sqlx::query(sql::<Self>(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                ))
                .bind(delta)
                .bind(id)
                .execute(conn)
                .await
                .map(drop)
            }
            async fn insert_parent(pool: &Pool<Self>, id: i64) {
                sqlx::query(sql::<Self>("INSERT INTO parents (id) VALUES (?)"))
                    .bind(id)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            async fn insert_child(
                conn: &mut Self::Connection,
                id: i64,
                parent: i64,
            ) -> sqlx::Result<()> {
                sqlx::query(sql::<Self>(
                    "INSERT INTO children (id, parent) VALUES (?, ?)",
                ))
                .bind(id)
                .bind(parent)
                .execute(conn)
                .await
                .map(drop)
            }
            async fn balances_in(conn: &mut Self::Connection) -> sqlx::Result<Vec<(i64, i64)>> {
                sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
                    .fetch_all(conn)
                    .await
            }
            async fn balances(pool: &Pool<Self>) -> Vec<(i64, i64)> {
                sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }
            async fn count_positive(conn: &mut Self::Connection) -> sqlx::Result<i64> {
                sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE balance > 0")
                    .fetch_one(conn)
                    .await
            }
            async fn kv_get(conn: &mut Self::Connection, k: &str) -> sqlx::Result<Option<i64>> {
                sqlx::query_scalar(sql::<Self>("SELECT v FROM kv WHERE k = ?"))
                    .bind(k)
                    .fetch_optional(conn)
                    .await
            }
            async fn kv_insert(conn: &mut Self::Connection, k: &str, v: i64) -> sqlx::Result<()> {
                sqlx::query(sql::<Self>("INSERT INTO kv (k, v) VALUES (?, ?)"))
                    .bind(k)
                    .bind(v)
                    .execute(conn)
                    .await
                    .map(drop)
            }
            async fn count_orders(conn: &mut Self::Connection) -> sqlx::Result<i64> {
                sqlx::query_scalar("SELECT COUNT(*) FROM orders")
                    .fetch_one(conn)
                    .await
            }
            async fn insert_member(pool: &Pool<Self>, tenant: &str, id: i64, role: &str) {
                sqlx::query(sql::<Self>(
                    "INSERT INTO members (tenant, id, role) VALUES (?, ?, ?)",
                ))
                .bind(tenant)
                .bind(id)
                .bind(role)
                .execute(pool)
                .await
                .unwrap();
            }
            async fn raise_conflict(
                conn: &mut Self::Connection,
                pool: &Pool<Self>,
            ) -> sqlx::Result<()> {
                $raise(conn, pool).await
            }
        }
    };
}

atomic_db!(Postgres, pg_conflict);
atomic_db!(MySql, mysql_conflict);
atomic_db!(Sqlite, sqlite_conflict);

async fn pg_conflict(conn: &mut sqlx::PgConnection, _: &Pool<Postgres>) -> sqlx::Result<()> {
    sqlx::raw_sql("DO $$ BEGIN RAISE EXCEPTION 'test conflict' USING ERRCODE = '40001'; END $$")
        .execute(conn)
        .await
        .map(drop)
}

async fn mysql_conflict(conn: &mut sqlx::MySqlConnection, _: &Pool<MySql>) -> sqlx::Result<()> {
    sqlx::raw_sql("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'test conflict'")
        .execute(conn)
        .await
        .map(drop)
}

/// Read (the snapshot), let another connection commit a write, then write: SQLITE_BUSY_SNAPSHOT.
async fn sqlite_conflict(
    conn: &mut sqlx::SqliteConnection,
    pool: &Pool<Sqlite>,
) -> sqlx::Result<()> {
    let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conflicts")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO conflicts (n) VALUES (1)")
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO conflicts (n) VALUES (2)")
        .execute(conn)
        .await
        .map(drop)
}

/// An account row, for the row helpers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub balance: i64,
}

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for Account
where
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Account {
            id: row.try_get("id")?,
            balance: row.try_get("balance")?,
        })
    }
}

impl TableRow for Account {
    const TABLE: &'static str = "accounts";
    const PRIMARY_KEY: &'static [&'static str] = &["id"];
    type Key = i64;
    fn primary_key(&self) -> i64 {
        self.id
    }
}

pub async fn setup<DB: AtomicDb>(pool_size: u32) -> (TestDb<DB>, SignalBus<DB>, MemoryPublisher) {
    let db = DB::create(pool_size).await;
    DB::create_business_table(&db.pool).await;
    DB::setup_tables(&db.pool).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    (db, bus, outbox)
}

/// Short waits, `max_attempts` in all; SQLite blocks begin DEFERRED so that
/// [`AtomicDb::raise_conflict`] works there.
pub fn fast(max_attempts: u32) -> AtomicOptions {
    AtomicOptions::new()
        .backoff(Backoff {
            max_attempts,
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
            wait_before_first_retry: false,
        })
        .sqlite_begin(SqliteBegin::Deferred)
}

/// Like `on_every_database!`, for tests that need row locks or concurrent writers.
#[macro_export]
macro_rules! on_server_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { super::$name::<sqlx::Postgres>().await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() { super::$name::<sqlx::MySql>().await }
        }
    )*};
}
