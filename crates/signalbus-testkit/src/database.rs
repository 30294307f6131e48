//! A database of one test (feature `databases`): its own PostgreSQL or MariaDB database on
//! the shared server, or an SQLite file in a directory of its own, so that runs never
//! collide. Servers come from SIGNALBUS_TEST_POSTGRES_URL and SIGNALBUS_TEST_MYSQL_URL
//! (defaults: the local servers); a server that is not reachable fails the test with a
//! message that says how to start it, never skips it.

use signalbus_core::redact::redact_url;
use sqlx::{MySql, Pool, Postgres, Sqlite};
use std::future::Future;
use std::time::Duration;

/// `prefix_` and a random suffix: a name no other run uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("valid test server URL");
    parsed.set_path(db);
    parsed.to_string()
}

/// The database of one test, dropped by [`TestDb::cleanup`].
pub struct TestDb<DB: sqlx::Database> {
    /// A pool on it.
    pub pool: Pool<DB>,
    /// Its URL, for the processes and pools of the test.
    pub url: String,
    /// Its name on the server (the file's path for SQLite).
    pub name: String,
    /// The server's URL and the statement that drops the database; none for SQLite.
    admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// A database a test can have one of: [`Postgres`], [`MySql`] (MariaDB), [`Sqlite`].
pub trait TestServer: sqlx::Database {
    /// A fresh database with a pool of `max_connections`.
    fn fresh(max_connections: u32) -> impl Future<Output = TestDb<Self>> + Send;
}

impl<DB: TestServer> TestDb<DB> {
    /// A fresh database with a pool of `max_connections`.
    pub async fn new(max_connections: u32) -> Self {
        DB::fresh(max_connections).await
    }
}

impl<DB: sqlx::Database> TestDb<DB> {
    /// The URL of the server's own database (to alter or drop this one); `None` for SQLite.
    pub fn server(&self) -> Option<&str> {
        self.admin.as_ref().map(|(url, _)| url.as_str())
    }

    /// Close the pool and drop the database (SQLite: its directory goes with `self`).
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

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
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
                redact_url(url)
            )
        })
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
        name,
        admin: Some((server, drop)),
        _dir: None,
    }
}

const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_START: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";
const MYSQL_START: &str =
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd";

impl TestServer for Postgres {
    async fn fresh(max_connections: u32) -> TestDb<Self> {
        let server = server_url("SIGNALBUS_TEST_POSTGRES_URL", PG_DEFAULT);
        let admin_pool = admin(&server, "SIGNALBUS_TEST_POSTGRES_URL", PG_START).await;
        server_db(admin_pool, server, max_connections, "WITH (FORCE)").await
    }
}

impl TestServer for MySql {
    async fn fresh(max_connections: u32) -> TestDb<Self> {
        let server = server_url("SIGNALBUS_TEST_MYSQL_URL", MYSQL_DEFAULT);
        let admin_pool = admin(&server, "SIGNALBUS_TEST_MYSQL_URL", MYSQL_START).await;
        server_db(admin_pool, server, max_connections, "").await
    }
}

impl TestServer for Sqlite {
    async fn fresh(max_connections: u32) -> TestDb<Self> {
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
            name: path.display().to_string(),
            admin: None,
            _dir: Some(dir),
        }
    }
}
