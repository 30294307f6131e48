//! Per-key order of `flush_ordered` on every database (in-memory bus): a poison message holds
//! back only its key, which resumes in order after `unpark`; a late-committing transaction on
//! a key is never overtaken (PostgreSQL); `order_by` means what the docs say on each
//! database. The keyed signal and its helpers serve the relay's keyed tests too
//! (`relay_keyed.rs`).

use crate::common::{TestBackend, TestDb};
use crate::on_every_database;
use serde::Serialize;
use signalbus::publisher::MemoryPublisher;
use signalbus::{
    ORDERING_KEY_HEADER, ParkedRows, Publisher, Selection, Signal, SignalBus, SignalType,
};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Signal)]
#[signal(
    name = "keyed",
    table = "keyed_signal",
    autoflush = false,
    burst = 50,
    max_attempts = 1,
    retry_base_ms = 100
)]
pub struct Keyed {
    #[signal(key)]
    account: String,
    seq: u32,
    #[signal(destination)]
    topic: String,
}

pub fn keyed(account: &str, seq: u32) -> Keyed {
    Keyed {
        account: account.to_owned(),
        seq,
        topic: "accounts".to_owned(),
    }
}

pub async fn bus<DB: TestBackend>(db: &TestDb<DB>, outbox: &MemoryPublisher) -> SignalBus<DB> {
    on_pool(db.pool.clone(), outbox.clone()).await
}

pub async fn on_pool<DB: TestBackend>(
    pool: sqlx::Pool<DB>,
    publisher: impl Publisher,
) -> SignalBus<DB> {
    let bus = SignalBus::builder(pool)
        .publisher(publisher)
        .register::<Keyed>()
        .autoflush(false)
        .publish_timeout(Duration::from_secs(1))
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus
}

/// (key, seq) of every message in arrival order.
pub fn arrivals(outbox: &MemoryPublisher) -> Vec<(String, u32)> {
    outbox
        .messages()
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            assert_eq!(
                m.headers.get(ORDERING_KEY_HEADER),
                body["account"].as_str().map(str::to_owned).as_ref(),
                "the key travels as a header"
            );
            (
                body["account"].as_str().unwrap().to_owned(),
                u32::try_from(body["seq"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Flush in order until `outbox` holds `n` messages. One call may send nothing yet: on
/// PostgreSQL any transaction open on the server (another test's) holds rows back until it
/// ends.
async fn flush_until<DB: TestBackend>(bus: &SignalBus<DB>, outbox: &MemoryPublisher, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox.len() < n {
        bus.flush_ordered(&Selection::all()).await.unwrap();
        assert!(Instant::now() < deadline, "{} of {n} sent", outbox.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And nothing more comes.
    assert_eq!(bus.flush_ordered(&Selection::all()).await.unwrap(), 0);
}

on_every_database!(
    a_poison_message_holds_back_only_its_key,
    order_by_means_what_the_docs_say,
);

async fn a_poison_message_holds_back_only_its_key<DB: TestBackend>() {
    let db = DB::create(5).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, &outbox).await;
    outbox.refuse_destination("poison");
    let mut tx = bus.begin().await.unwrap();
    for seq in 0..5 {
        for k in 0..10 {
            let mut signal = keyed(&format!("k{k}"), seq);
            if k == 3 && seq == 2 {
                signal.topic = "poison".into();
            }
            tx.send(&signal).await.unwrap();
        }
    }
    tx.commit().await.unwrap();
    flush_until(&bus, &outbox, 45 + 2).await;
    let arrived = arrivals(&outbox);
    for k in (0..10).filter(|&k| k != 3) {
        let key = format!("k{k}");
        let seqs: Vec<u32> = arrived
            .iter()
            .filter(|(a, _)| *a == key)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4], "key {key} fully delivered, in order");
    }
    let held: Vec<u32> = arrived
        .iter()
        .filter(|(a, _)| a == "k3")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(held, [0, 1], "k3 stops at its poison message");
    let parked = bus.parked(&Selection::all(), 10).await.unwrap();
    assert_eq!(parked[0].1.len(), 1);
    assert_eq!(
        parked[0].1[0].ordering_key.as_deref(),
        Some("k3"),
        "parked shows the key held"
    );

    outbox.accept_destination("poison");
    outbox.take();
    assert_eq!(
        bus.unpark(&Selection::all(), ParkedRows::All)
            .await
            .unwrap(),
        1
    );
    flush_until(&bus, &outbox, 3).await;
    assert_eq!(
        arrivals(&outbox),
        [2, 3, 4].map(|s| ("k3".to_owned(), s)),
        "k3 resumes in order"
    );
    assert_eq!(DB::count_rows(&db.pool, "keyed_signal").await, 0);
    db.cleanup().await;
}

/// `order_by = "routing_key"`, with `b` written in a transaction that began first and `a` in
/// one after it (the original's own test): on PostgreSQL transactions go in the order they
/// began writing and `order_by` orders the signals within one (gap-safe); on MySQL/MariaDB
/// and SQLite `order_by` orders the table.
async fn order_by_means_what_the_docs_say<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(5).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register_type(
            SignalType::new("sorted")
                .autoflush(false)
                .order_by(["routing_key"]),
        )
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    for key in ["b", "a"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sorted (topic, routing_key, body) VALUES ('t', '{key}', 'x')"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    flush_until(&bus, &outbox, 2).await;
    let keys: Vec<String> = outbox
        .messages()
        .iter()
        .map(|m| m.routing_key.clone().unwrap())
        .collect();
    let expected = if DB::NAME == "PostgreSQL" {
        ["b", "a"]
    } else {
        ["a", "b"]
    };
    assert_eq!(keys, expected, "{}", DB::NAME);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_committing_transaction_is_never_overtaken_on_its_key() {
    let db = <sqlx::Postgres as TestBackend>::create(5).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, &outbox).await;
    let mut late = bus.begin().await.unwrap();
    late.send(&keyed("k", 0)).await.unwrap();
    let mut tx = bus.begin().await.unwrap();
    tx.send(&keyed("k", 1)).await.unwrap();
    tx.send(&keyed("other", 0)).await.unwrap();
    tx.commit().await.unwrap();
    // The late transaction is open: nothing written after it began may go yet.
    assert_eq!(bus.flush_ordered(&Selection::all()).await.unwrap(), 0);
    late.commit().await.unwrap();
    flush_until(&bus, &outbox, 3).await;
    let arrived = arrivals(&outbox);
    let k: Vec<u32> = arrived
        .iter()
        .filter(|(a, _)| a == "k")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(k, [0, 1]);
    assert_eq!(arrived.len(), 3);
    db.cleanup().await;
}
