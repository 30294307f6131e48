//! A broker outage spends no attempt: a private nats-server (the test's own) is stopped while
//! signals are pending; flushes fail as a whole, nothing is refused, parked or lost; once the
//! server is back, everything is delivered, each once.

use crate::common::TestBackend;
use crate::on_every_database;
use async_nats::jetstream::{self, stream};
use signalbus::{Selection, SignalBus, SignalType};
use signalbus_testkit::nats::{PrivateServer, free_port};
use sqlx::AssertSqlSafe;
use std::collections::HashSet;
use std::time::{Duration, Instant};

async fn an_outage_spends_no_attempt<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = PrivateServer::start(port, dir.path());
    server.wait_ready().await;
    let url = format!("nats://127.0.0.1:{port}");
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let subject = format!("outage.{}", uuid::Uuid::new_v4().simple());
    let mut stored = js
        .create_stream(stream::Config {
            name: "OUTAGE".into(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();

    let db = DB::create(3).await;
    let publisher = signalbus::connect_bus(&format!("{url}?timeout_ms=500"))
        .await
        .unwrap();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register_type(SignalType::new("outage").autoflush(false).burst(5))
        .publish_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let values: Vec<String> = (0..20)
        .map(|n| format!("('{subject}', '{{\"n\":{n}}}')"))
        .collect();
    let sql = format!(
        "INSERT INTO outage (topic, body) VALUES {}",
        values.join(", ")
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();

    // The broker goes away.
    let (port, path) = server.stop();
    for _ in 0..3 {
        let failed = bus.flush_many(&Selection::all()).await;
        assert!(failed.is_err(), "{failed:?}");
    }
    let stats = bus.pending(&Selection::all()).await.unwrap()[0].1;
    assert_eq!(
        (stats.count, stats.backing_off, stats.parked),
        (20, 0, 0),
        "an outage spends no attempt: {stats:?}"
    );

    // It comes back (same port and store): everything goes out, each message once.
    let server = PrivateServer::start(port, &path);
    server.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < 20 {
        sent += bus.flush_many(&Selection::all()).await.unwrap_or(0);
        assert!(
            Instant::now() < deadline,
            "sent {sent} of 20 after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(DB::count_rows(&db.pool, "outage").await, 0);
    // A publish that failed as a whole may still have reached the stream once; Nats-Msg-Id
    // drops any second copy, so the stream holds every signal exactly once.
    let info = stored.info().await.unwrap();
    assert_eq!(info.state.messages, 20, "{:?}", info.state);
    let consumer = stored
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(20).messages().await.unwrap();
    let mut ids = HashSet::new();
    use futures_util::StreamExt;
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .unwrap();
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 20, "each signal once, by its stable id");
    drop(server);
    db.cleanup().await;
}

on_every_database!(an_outage_spends_no_attempt);
