//! Test databases: every test gets its own PostgreSQL / MariaDB database or SQLite file, so
//! runs never collide. Servers come from SIGNALBUS_TEST_POSTGRES_URL and
//! SIGNALBUS_TEST_MYSQL_URL (defaults: the local servers); a server that is not reachable
//! fails the test with a message that says how to start it, never skips it.

use signalbus::Backend;
use sqlx::{MySql, Pool, Postgres, Sqlite};
use std::future::Future;
use std::time::Duration;

pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A database of one test, dropped by [`TestDb::cleanup`].
pub struct TestDb<DB: sqlx::Database> {
    pub pool: Pool<DB>,
    pub url: String,
    admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// What the tests need from each database beyond the signal tables: a business table.
pub trait TestBackend: Backend {
    fn create(max_connections: u32) -> impl Future<Output = TestDb<Self>> + Send;
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

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("valid test server URL");
    parsed.set_path(db);
    parsed.to_string()
}

async fn admin<DB: sqlx::Database>(url: &str, var: &str, start: &str) -> Pool<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test database server at {} ({e}); start it ({start}) or point {var} at one",
                signalbus::redact::redact_url(url)
            )
        })
}

impl<DB: sqlx::Database> TestDb<DB> {
    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Some((url, stmt)) = self.admin {
            if url.starts_with("postgres") {
                let admin: Pool<Postgres> = admin(&url, "", "").await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
                    .execute(&admin)
                    .await
                    .expect("drop test database");
            } else {
                let admin: Pool<MySql> = admin(&url, "", "").await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
                    .execute(&admin)
                    .await
                    .expect("drop test database");
            }
        }
    }
}

/// A fresh database on a server: created through `admin_pool`, dropped (with `drop_suffix`)
/// by [`TestDb::cleanup`].
async fn server_db<DB: sqlx::Database>(
    admin_pool: Pool<DB>,
    server: String,
    max_connections: u32,
    drop_suffix: &str,
) -> TestDb<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let name = unique_name("sbtest");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin_pool)
        .await
        .unwrap();
    admin_pool.close().await;
    let url = with_database(&server, &name);
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max_connections)
        .connect(&url)
        .await
        .unwrap();
    let drop = format!("DROP DATABASE IF EXISTS {name} {drop_suffix}");
    TestDb {
        pool,
        url,
        admin: Some((server, drop)),
        _dir: None,
    }
}

const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_START: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";
const MYSQL_START: &str =
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd";

impl TestBackend for Postgres {
    async fn create(max_connections: u32) -> TestDb<Self> {
        let server = server_url("SIGNALBUS_TEST_POSTGRES_URL", PG_DEFAULT);
        let admin_pool = admin(&server, "SIGNALBUS_TEST_POSTGRES_URL", PG_START).await;
        server_db(admin_pool, server, max_connections, "WITH (FORCE)").await
    }
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
    async fn create(max_connections: u32) -> TestDb<Self> {
        let server = server_url("SIGNALBUS_TEST_MYSQL_URL", MYSQL_DEFAULT);
        let admin_pool = admin(&server, "SIGNALBUS_TEST_MYSQL_URL", MYSQL_START).await;
        server_db(admin_pool, server, max_connections, "").await
    }
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
    async fn create(max_connections: u32) -> TestDb<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .unwrap();
        TestDb {
            pool,
            url: format!("sqlite:{}", path.display()),
            admin: None,
            _dir: Some(dir),
        }
    }
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
