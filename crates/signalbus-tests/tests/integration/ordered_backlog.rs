//! The ordered read stays linear on a large backlog written by plain SQL just before, with the
//! table never analysed (the shared PostgreSQL runs without autovacuum, so its statistics
//! stay as stale as they get): 100,000 rows, half without a key and half over 500 keys, one
//! key held back by a parked row. Everything but that key goes out, each key in order. Before
//! the fix, PostgreSQL planned the held-key check as a scan of the whole table per row read
//! and this flush never finished.

use crate::common::TestBackend;
use crate::on_every_database;
use serde::Serialize;
use signalbus::publisher::MemoryPublisher;
use signalbus::{Selection, Signal, SignalBus};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Serialize, Signal)]
#[signal(name = "backlog", table = "backlog_signal", autoflush = false)]
struct Backlog {
    n: i64,
}

const ROWS: i64 = 100_000;
const KEYS: i64 = 500;

/// Rows 1..=ROWS, odd ones without a key, even ones over the keys `k0`..; body: the number.
fn bulk_insert(db: &str) -> &'static str {
    match db {
        "PostgreSQL" => {
            "INSERT INTO backlog_signal (topic, body, ordering_key) \
             SELECT 'backlog', convert_to(i::text, 'UTF8'), \
             CASE WHEN i % 2 = 1 THEN NULL ELSE 'k' || (i % 1000 / 2) END \
             FROM generate_series(1, 100000) AS i ORDER BY i"
        }
        // No recursive CTE: MariaDB stops those at 1,000 iterations by default.
        "MySQL" => {
            "INSERT INTO backlog_signal (topic, body, ordering_key) \
             SELECT 'backlog', CAST(i AS CHAR), \
             CASE WHEN i % 2 = 1 THEN NULL ELSE CONCAT('k', (i % 1000) DIV 2) END FROM \
             (SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS i \
              FROM (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                    UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                    UNION ALL SELECT 8 UNION ALL SELECT 9) AS a \
              CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                    UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                    UNION ALL SELECT 8 UNION ALL SELECT 9) AS b \
              CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                    UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                    UNION ALL SELECT 8 UNION ALL SELECT 9) AS c \
              CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                    UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                    UNION ALL SELECT 8 UNION ALL SELECT 9) AS e \
              CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                    UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                    UNION ALL SELECT 8 UNION ALL SELECT 9) AS f) AS seq ORDER BY i"
        }
        _ => {
            "INSERT INTO backlog_signal (topic, body, ordering_key) \
             WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 100000) \
             SELECT 'backlog', CAST(i AS TEXT), \
             CASE WHEN i % 2 = 1 THEN NULL ELSE 'k' || ((i % 1000) / 2) END FROM seq ORDER BY i"
        }
    }
}

/// Park the first row of key `k7`: the whole key is held back.
fn park_one(db: &str) -> &'static str {
    match db {
        "PostgreSQL" => {
            "UPDATE backlog_signal SET parked_at = now(), attempts = 10, last_error = 'planted' \
             WHERE id = (SELECT min(id) FROM backlog_signal WHERE ordering_key = 'k7')"
        }
        "MySQL" => {
            "UPDATE backlog_signal AS t JOIN (SELECT MIN(id) AS id FROM backlog_signal \
             WHERE ordering_key = 'k7') AS m ON t.id = m.id \
             SET t.parked_at = NOW(6), t.attempts = 10, t.last_error = 'planted'"
        }
        _ => {
            "UPDATE backlog_signal SET parked_at = 0, attempts = 10, last_error = 'planted' \
             WHERE id = (SELECT min(id) FROM backlog_signal WHERE ordering_key = 'k7')"
        }
    }
}

async fn an_ordered_flush_of_a_fresh_backlog_is_linear<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<Backlog>()
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    sqlx::raw_sql(bulk_insert(DB::NAME))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::raw_sql(park_one(DB::NAME))
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(DB::count_rows(&db.pool, "backlog_signal").await, ROWS);

    let held = ROWS / 2 / KEYS; // the rows of `k7`
    let started = Instant::now();
    // Bounded only so that a regression fails instead of hanging the suite: linear, this
    // takes seconds; quadratic, it did not finish in minutes.
    let mut sent = 0;
    let mut progress = Instant::now();
    while sent < usize::try_from(ROWS - held).unwrap() {
        let burst = tokio::time::timeout(
            Duration::from_secs(240),
            bus.flush_ordered(&Selection::all()),
        )
        .await
        .expect("the ordered flush of the backlog did not finish in 240 s")
        .unwrap();
        sent += burst;
        if burst > 0 {
            progress = Instant::now();
        }
        assert!(
            progress.elapsed() < Duration::from_secs(60),
            "stuck at {sent} sent"
        );
        if burst == 0 {
            // Another test's transaction open on the server holds rows back (PostgreSQL).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "{}: {sent} sent in order in {:?}",
        DB::NAME,
        started.elapsed()
    );
    assert_eq!(bus.flush_ordered(&Selection::all()).await.unwrap(), 0);

    let mut last: HashMap<Option<String>, i64> = HashMap::new();
    for message in outbox.messages() {
        let n: i64 = std::str::from_utf8(&message.body).unwrap().parse().unwrap();
        let key = message.headers.get(signalbus::ORDERING_KEY_HEADER).cloned();
        assert_ne!(key.as_deref(), Some("k7"), "the held key stays back");
        let before = last.insert(key.clone(), n);
        assert!(
            before.is_none_or(|b| b < n),
            "{key:?}: {n} after {before:?}"
        );
    }
    assert_eq!(outbox.len(), usize::try_from(ROWS - held).unwrap());
    assert_eq!(DB::count_rows(&db.pool, "backlog_signal").await, held);
    db.cleanup().await;
}

on_every_database!(an_ordered_flush_of_a_fresh_backlog_is_linear);

/// A flush stopped while its ordered read waits (for the claim turn on PostgreSQL, for a row
/// lock on MariaDB; a dropped future, as SIGTERM or a timeout does) leaves no statement running on the server: before, the connection went back to the
/// pool and the read went on waiting for the lock for the whole lock timeout, holding its
/// snapshot (and so every ordered flush of the cluster) back. `running` counts the
/// statements on `backlog_signal` still running on the server, other than its own. PostgreSQL
/// notices the closed connection; MariaDB, where closing the socket does not stop a
/// statement, gets `KILL QUERY`.
async fn a_stopped_ordered_flush_leaves_no_statement_running<DB: TestBackend>(
    running: &str,
    blocker_sql: &str,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let db = DB::create(4).await;
    // Lock waits far longer than the test runs.
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(MemoryPublisher::new())
        .register::<Backlog>()
        .autoflush(false)
        .publish_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    sqlx::raw_sql("INSERT INTO backlog_signal (topic, body) VALUES ('backlog', '1')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(blocker_sql.to_owned()))
        .execute(&mut *blocker)
        .await
        .unwrap();
    let count = || async {
        use sqlx::Row as _;
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(running.to_owned()))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        row.try_get::<i64, _>(0).unwrap()
    };
    // An ordered flush in a task of its own. On PostgreSQL a flush first looks for lanes with
    // rows below the watermark; while a transaction of another test holds the cluster's
    // watermark below the row, it finds none and ends without reading, so it starts again.
    let spawn_flush = || {
        let bus = bus.clone();
        tokio::spawn(async move { bus.flush_ordered(&Selection::all()).await })
    };
    let mut flush = spawn_flush();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await == 0 {
        assert!(Instant::now() < deadline, "the ordered read never waited");
        if flush.is_finished() {
            assert_eq!(flush.await.unwrap().unwrap(), 0, "flushed past the blocker");
            flush = spawn_flush();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flush.abort();
    assert!(flush.await.unwrap_err().is_cancelled());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = count().await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} statement(s) of the stopped flush still running on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blocker.rollback().await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_ordered_flush_leaves_no_statement_running_postgres() {
    a_stopped_ordered_flush_leaves_no_statement_running::<sqlx::Postgres>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state = 'active' AND query LIKE '%backlog_signal%' AND pid <> pg_backend_pid()",
        // The claim turn, which an ordered read takes before it reads (it locks no row).
        "SELECT pg_advisory_xact_lock(1397309773, 'backlog_signal'::regclass::oid::int4)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_ordered_flush_leaves_no_statement_running_mariadb() {
    a_stopped_ordered_flush_leaves_no_statement_running::<sqlx::MySql>(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() \
         AND command <> 'Sleep' AND info LIKE '%backlog_signal%' AND id <> CONNECTION_ID()",
        "SELECT id FROM backlog_signal FOR UPDATE",
    )
    .await;
}
