//! What the tests need of each database beyond a database of their own (the test kit's
//! [`TestDb`], one per test on PostgreSQL, MariaDB or SQLite): a business table, row counts,
//! the order key of a transaction.

use signalbus::Backend;
pub use signalbus_testkit::database::{TestDb, TestServer};
use sqlx::{MySql, Pool, Postgres, Sqlite};
use std::future::Future;
use std::time::Duration;

/// What the tests need from each database beyond the signal tables: a business table.
pub trait TestBackend: Backend + TestServer {
    /// A fresh database of this test (the test kit's [`TestServer`]).
    fn create(max_connections: u32) -> impl Future<Output = TestDb<Self>> + Send {
        Self::fresh(max_connections)
    }
    fn create_business_table(pool: &Pool<Self>) -> impl Future<Output = ()> + Send;
    fn insert_business(
        conn: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn count_business(pool: &Pool<Self>) -> impl Future<Output = i64> + Send;
    fn count_rows(pool: &Pool<Self>, table: &str) -> impl Future<Output = i64> + Send;
    /// Drop what `migrate` adds beyond the signal tables themselves (MySQL's flush lock rows),
    /// as for tables created by other means.
    fn forget_flush_locks(_pool: &Pool<Self>) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The first part of the `flushordered` order of rows written in the current transaction
    /// of `conn`: the transaction id on PostgreSQL, 0 elsewhere (order is by id alone).
    fn order_key(conn: &mut Self::Connection) -> impl Future<Output = i64> + Send;
}

impl TestBackend for Postgres {
    async fn create_business_table(pool: &Pool<Self>) {
        sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT)")
            .execute(pool)
            .await
            .unwrap();
    }
    async fn insert_business(conn: &mut Self::Connection, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO orders (id, note) VALUES ($1, 'x')")
            .bind(id)
            .execute(conn)
            .await
            .map(drop)
    }
    async fn count_business(pool: &Pool<Self>) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(pool)
            .await
            .unwrap()
    }
    async fn count_rows(pool: &Pool<Self>, table: &str) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM {}",
            signalbus::Ident::new(table).unwrap().quoted('"')
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap()
    }
    async fn order_key(conn: &mut Self::Connection) -> i64 {
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(conn)
            .await
            .unwrap()
    }
}

impl TestBackend for MySql {
    async fn create_business_table(pool: &Pool<Self>) {
        sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT)")
            .execute(pool)
            .await
            .unwrap();
    }
    async fn insert_business(conn: &mut Self::Connection, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO orders (id, note) VALUES (?, 'x')")
            .bind(id)
            .execute(conn)
            .await
            .map(drop)
    }
    async fn count_business(pool: &Pool<Self>) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM orders")
            .fetch_one(pool)
            .await
            .unwrap()
    }
    async fn count_rows(pool: &Pool<Self>, table: &str) -> i64 {
        let sql = format!(
            "SELECT COUNT(*) FROM {}",
            signalbus::Ident::new(table).unwrap().quoted('`')
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap()
    }
    async fn forget_flush_locks(pool: &Pool<Self>) {
        sqlx::query("DELETE FROM signalbus_flush_lock")
            .execute(pool)
            .await
            .unwrap();
    }
    async fn order_key(_conn: &mut Self::Connection) -> i64 {
        0
    }
}

impl TestBackend for Sqlite {
    async fn create_business_table(pool: &Pool<Self>) {
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
            .execute(pool)
            .await
            .unwrap();
    }
    async fn insert_business(conn: &mut Self::Connection, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO orders (id, note) VALUES (?, 'x')")
            .bind(id)
            .execute(conn)
            .await
            .map(drop)
    }
    async fn count_business(pool: &Pool<Self>) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM orders")
            .fetch_one(pool)
            .await
            .unwrap()
    }
    async fn count_rows(pool: &Pool<Self>, table: &str) -> i64 {
        let sql = format!(
            "SELECT COUNT(*) FROM {}",
            signalbus::Ident::new(table).unwrap().quoted('"')
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap()
    }
    async fn order_key(_conn: &mut Self::Connection) -> i64 {
        0
    }
}

/// Runs one generic test body against each database: `on_every_database!(name)` expects
/// `async fn name<DB: TestBackend>()` and makes `name::postgres`, `name::mariadb`,
/// `name::sqlite`.
#[macro_export]
macro_rules! on_every_database {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { super::$name::<sqlx::Postgres>().await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() { super::$name::<sqlx::MySql>().await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { super::$name::<sqlx::Sqlite>().await }
        }
    )*};
}

/// Flush until `expected` signals went out (rows a failed auto-flush gave back, say); fails
/// after 5 s.
pub async fn flush_until<DB: Backend>(bus: &signalbus::SignalBus<DB>, expected: usize) {
    let mut sent = 0;
    for _ in 0..100 {
        sent += bus.flush_many(&signalbus::Selection::all()).await.unwrap();
        if sent >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent, expected);
}

/// The `n` of every message `outbox` holds, in order (signals with an `n` field).
pub fn sent_numbers(outbox: &signalbus::publisher::MemoryPublisher) -> Vec<i64> {
    outbox
        .messages()
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.body).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect()
}
