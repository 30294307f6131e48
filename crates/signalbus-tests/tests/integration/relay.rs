//! The relay in-process on every database and every broker (the fixtures of `bus_amqp.rs`,
//! `bus_nats.rs`, `bus_kafka.rs`): rows written by plain SQL (no signalbus in the writer) are
//! picked up without waiting for a poll on PostgreSQL (the poll is set to 30 s there, so only
//! the wake-up notification can deliver in time) and within the adaptive poll elsewhere; a
//! message the broker refuses neither stops the relay nor holds back the others, and goes
//! out once its route exists; shutdown ends cleanly.

use crate::bus_amqp::Amqp;
use crate::bus_kafka::Kafka;
use crate::bus_nats::Nats;
use crate::buses::{BusEvent, BusFixture, Route};
use crate::common::TestBackend;
use crate::on_every_database;
use signalbus::{Signal, SignalBus};
use std::time::{Duration, Instant};

const TABLE: &str = "bus_event";

/// Rows for `route`, `n` in `range`, inserted the way a writer in another language does.
async fn insert_plain<DB: TestBackend>(
    pool: &sqlx::Pool<DB>,
    route: &Route,
    range: std::ops::Range<i64>,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let values: Vec<String> = range
        .map(|n| {
            format!(
                "('{}', '{}', '{{\"customer\":\"c{n}\"}}', '{{\"n\":{n}}}')",
                route.0, route.1
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO {TABLE} (topic, routing_key, headers, body) VALUES {}",
        values.join(", ")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

/// Waits until the table holds `rows` rows; returns how long that took.
async fn until_rows<DB: TestBackend>(
    pool: &sqlx::Pool<DB>,
    rows: i64,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = DB::count_rows(pool, TABLE).await;
        if now == rows {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the table still holds {now} rows (expected {rows}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn relayed<DB: TestBackend, F: BusFixture>(fx: F)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(5).await;
    let publisher = fx.publisher().await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register_type(
            BusEvent::signal_type()
                .clone()
                .retry(signalbus::RetryPolicy {
                    max_attempts: 50,
                    base: Duration::from_millis(200),
                    max: Duration::from_secs(1),
                }),
        )
        .publish_timeout(Duration::from_secs(30))
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let push = DB::NAME == "PostgreSQL";
    // On PostgreSQL the poll is far slower than the test's bound: only a notification
    // delivers in time.
    let poll_max = if push {
        Duration::from_secs(30)
    } else {
        Duration::from_millis(200)
    };
    let relay = bus
        .relay()
        .poll(Duration::from_millis(10), poll_max)
        .start()
        .await
        .unwrap();
    // Let every lane go idle (its first round finds nothing), so that what follows must
    // wake it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let ready = fx.ready();
    insert_plain(&db.pool, &ready, 0..5).await;
    let took = until_rows(&db.pool, 0, Duration::from_secs(20)).await;
    eprintln!(
        "{}: 5 plain-SQL rows sent by the relay in {took:?}",
        DB::NAME
    );
    if push {
        assert!(
            took < Duration::from_secs(10),
            "woken by the notification, not the 30 s poll: {took:?}"
        );
    }
    let got = fx.received(&ready, 5).await;
    assert_eq!(got.len(), 5, "{got:?}");

    // Refused: kept and retried with backoff; the relay goes on sending the others.
    let later = fx.later();
    insert_plain(&db.pool, &later, 0..2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = bus.pending(&signalbus::Selection::all()).await.unwrap()[0].1;
        if stats.backing_off == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    insert_plain(&db.pool, &ready, 5..8).await;
    until_rows(&db.pool, 2, Duration::from_secs(20)).await;
    // (Some fixtures read from the start, some consume: the three new ones at least.)
    assert!(fx.received(&ready, 3).await.len() >= 3);

    // Once the broker takes the route, the retries deliver (the relay wakes when their
    // backoff ends, not at its next poll).
    fx.open_later().await;
    until_rows(&db.pool, 0, Duration::from_secs(25)).await;
    assert_eq!(fx.received(&later, 2).await.len(), 2);

    assert!(
        relay.shutdown(Duration::from_secs(10)).await,
        "clean shutdown"
    );
    fx.cleanup().await;
    db.cleanup().await;
}

on_every_database!(
    amqp_relay,
    nats_relay,
    kafka_relay,
    redis_relay,
    webhook_relay,
    sqs_relay
);

async fn amqp_relay<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    relayed::<DB, _>(Amqp::new().await).await;
}

async fn nats_relay<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    relayed::<DB, _>(Nats::new().await).await;
}

async fn kafka_relay<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    relayed::<DB, _>(Kafka::new().await).await;
}

async fn redis_relay<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    relayed::<DB, _>(crate::bus_redis::Redis::new().await).await;
}

async fn webhook_relay<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    relayed::<DB, _>(crate::bus_webhook::Webhook::new().await).await;
}

async fn sqs_relay<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    relayed::<DB, _>(crate::bus_sqs::Sqs::new().await).await;
}

/// A relay that polls every 10 ms while it finds signals, backing off to 200 ms.
async fn polling_relay<DB: signalbus::Backend>(bus: &SignalBus<DB>) -> signalbus::Relay {
    bus.relay()
        .poll(Duration::from_millis(10), Duration::from_millis(200))
        .start()
        .await
        .unwrap()
}

/// A relay lane that is sending keeps a connection of its own: an application that holds
/// every connection of the pool the relay shares (its writers queueing for them) does not
/// hold the relay up. Its bursts took pooled connections, twice each, and waited in the
/// writers' queue: seconds at 5,000 writes/s on a pool of 12 (docs/benchmarks.md).
async fn a_sending_lane_needs_no_pooled_connection<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(2).await;
    let outbox = signalbus::publisher::MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register_type(BusEvent::signal_type().clone())
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    // The writers' pool.
    let writers = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let relay = polling_relay(&bus).await;
    let route: Route = ("t".to_owned(), "k".to_owned());
    // Two bursts found, one after the other: the lane's round after the first one ran on a
    // connection of the lane's own.
    for n in 0..2 {
        insert_plain(&writers, &route, n..n + 1).await;
        until_rows(&writers, 0, Duration::from_secs(20)).await;
    }
    // The application takes every connection of the bus' pool that is free (PostgreSQL's
    // listener keeps one), and writes on.
    let mut held = Vec::new();
    while let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(1), db.pool.acquire()).await {
        held.push(conn);
    }
    assert!(!held.is_empty() && db.pool.num_idle() == 0);
    insert_plain(&writers, &route, 2..5).await;
    // (The pool's acquire timeout is 30 s.)
    until_rows(&writers, 0, Duration::from_secs(10)).await;
    assert_eq!(outbox.len(), 5);
    drop(held);
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    writers.close().await;
    db.cleanup().await;
}

// (Database servers: on SQLite a lane takes no connection out of the pool, see
// `Dialect::own_connections`.)
mod a_sending_lane_needs_no_pooled_connection {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::a_sending_lane_needs_no_pooled_connection::<sqlx::Postgres>().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mariadb() {
        super::a_sending_lane_needs_no_pooled_connection::<sqlx::MySql>().await
    }
}

/// A database that takes connections but refuses every write (read-only) is not ready: the
/// ping alone said "database ok" while every burst failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_database_is_not_ready() {
    let db = <sqlx::Postgres as TestBackend>::create(3).await;
    let setup = SignalBus::builder(db.pool.clone())
        .publisher(signalbus::publisher::MemoryPublisher::new())
        .register_type(BusEvent::signal_type().clone())
        .autoflush(false)
        .build()
        .unwrap();
    setup.migrate().await.unwrap();
    sqlx::query("INSERT INTO bus_event (topic, body) VALUES ('t', '\\x31')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        db.name
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    // New connections are read-only from now on.
    let read_only = sqlx::PgPool::connect(&db.url).await.unwrap();
    let bus = SignalBus::builder(read_only.clone())
        .publisher(signalbus::publisher::MemoryPublisher::new())
        .register_type(BusEvent::signal_type().clone())
        .autoflush(false)
        .build()
        .unwrap();
    let relay = polling_relay(&bus).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let why = loop {
        let ready = relay.ready().await;
        if let Err(why) = &ready.database {
            break why.clone();
        }
        assert!(Instant::now() < deadline, "still ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains("read-only"), "{why}");
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    read_only.close().await;
    db.cleanup().await;
}
