//! Several `signalbus flushmany` processes on one backlog: every row sent exactly once.

use crate::{Scratch, received, text};
use signalbus_testkit::database::{TestDb, TestServer};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Instant;

const BULK: &str = "[[signal]]\nname = \"bulk\"\n";

/// Runs `processes` flushmany processes at once; checks that bodies 1..=rows arrived exactly
/// once in total.
fn drain_with_processes(s: &Scratch, db_url: &str, rows: usize, processes: usize) {
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            s.cmd(db_url)
                .args(["flushmany", "--bus-url", &s.bus(&format!("out{p}.jsonl"))])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut per_process = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        per_process.push(
            text(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in 0..processes {
        for (_, body) in received(&s.path(&format!("out{p}.jsonl"))) {
            *counts.entry(body).or_default() += 1;
        }
    }
    let duplicates = counts.values().filter(|&&n| n > 1).count();
    println!(
        "{processes} processes drained {rows} rows in {:.1?}: {per_process:?}",
        started.elapsed()
    );
    assert_eq!(duplicates, 0, "no row sent twice");
    assert_eq!(counts.len(), rows, "every row sent");
    assert!((1..=rows).all(|n| counts.contains_key(&n.to_string())));
}

/// A fresh database on a server (the test kit's), `migrate`d, filled with 100,000 rows by
/// `fill`, drained by four processes, then dropped.
async fn drain_100k_on_server<DB: TestServer>(fill: &'static str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let db = TestDb::<DB>::new(2).await;
    let s = Scratch::new(BULK);
    assert!(s.run(&db.url, &["migrate"]).status.success());
    sqlx::query(fill).execute(&db.pool).await.unwrap();
    drain_with_processes(&s, &db.url, 100_000, 4);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bulk")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "table empty");
    db.cleanup().await;
}

#[tokio::test]
async fn four_flushmany_processes_drain_100k_postgres() {
    drain_100k_on_server::<sqlx::Postgres>(
        "INSERT INTO bulk (topic, body) SELECT 'bulk', convert_to(g::text, 'UTF8') \
         FROM generate_series(1, 100000) AS g",
    )
    .await;
}

#[tokio::test]
async fn four_flushmany_processes_drain_100k_mariadb() {
    drain_100k_on_server::<sqlx::MySql>(
        "INSERT INTO bulk (topic, body) SELECT 'bulk', CAST(seq AS CHAR) FROM seq_1_to_100000",
    )
    .await;
}

/// SQLite has no SKIP LOCKED: flushers take the single write lock in turn (BEGIN IMMEDIATE),
/// which is just as exact.
#[tokio::test]
async fn four_flushmany_processes_drain_20k_sqlite() {
    let s = Scratch::new(BULK);
    let (url, pool) = s.migrated_sqlite().await;
    sqlx::query(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000) \
         INSERT INTO bulk (topic, body) SELECT 'bulk', CAST(CAST(n AS TEXT) AS BLOB) FROM g",
    )
    .execute(&pool)
    .await
    .unwrap();
    drain_with_processes(&s, &url, 20_000, 4);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bulk")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
