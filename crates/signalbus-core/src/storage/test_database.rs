//! A database of a test's own on the shared PostgreSQL, dropped whatever the test's outcome.

use super::sealed::Store as _;
use super::statements::Statements;
use crate::ident::Ident;
use futures_util::FutureExt as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Postgres};
use std::time::Duration;

/// The shared PostgreSQL the tests use (`SIGNALBUS_TEST_POSTGRES_URL`, else loopback).
fn server() -> PgConnectOptions {
    std::env::var("SIGNALBUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
        .parse()
        .expect("a PostgreSQL URL")
}

/// Run `test` on a new database named after `prefix`, then drop it (a failed test too).
pub(super) async fn on_own_database<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(PgConnectOptions) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let database = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = server()
        .connect()
        .await
        .expect("PostgreSQL (SIGNALBUS_TEST_POSTGRES_URL, else 127.0.0.1:5432)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let outcome = std::panic::AssertUnwindSafe(test(server().database(&database)))
        .catch_unwind()
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Signal table `name` created on `conn`, and its statements.
pub(super) async fn signal_table(conn: &mut sqlx::PgConnection, name: &str) -> (Ident, Statements) {
    let table = Ident::new(name).unwrap();
    let sql = Statements::new(
        Postgres::DIALECT,
        &table,
        &[],
        Duration::from_secs(5),
        false,
    );
    sql.create_table::<Postgres>(conn).await.unwrap();
    (table, sql)
}
