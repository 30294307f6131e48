//! Per-key order on every database (in-memory bus: one list records the arrival order of
//! everything every relay sent, as one consumer would): keys written by concurrent writers
//! whose transactions interleave come out in write order per key, through two relays of four
//! ordered lanes each, one of them dropped mid-run (its bursts come back after the lease); a
//! poison message holds back only its key, which resumes in order after `unpark`; a
//! late-committing transaction on a key is never overtaken (PostgreSQL); `order_by` means
//! what the docs say on each database.

use crate::common::{TestBackend, TestDb};
use crate::on_every_database;
use serde::Serialize;
use signalbus::publisher::MemoryPublisher;
use signalbus::{ORDERING_KEY_HEADER, ParkedRows, Selection, Signal, SignalBus, SignalType};
use std::collections::HashMap;
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
struct Keyed {
    #[signal(key)]
    account: String,
    seq: u32,
    #[signal(destination)]
    topic: String,
}

fn keyed(account: &str, seq: u32) -> Keyed {
    Keyed {
        account: account.to_owned(),
        seq,
        topic: "accounts".to_owned(),
    }
}

async fn bus<DB: TestBackend>(db: &TestDb<DB>, outbox: &MemoryPublisher) -> SignalBus<DB> {
    on_pool(db.pool.clone(), outbox).await
}

async fn on_pool<DB: TestBackend>(pool: sqlx::Pool<DB>, outbox: &MemoryPublisher) -> SignalBus<DB> {
    let bus = SignalBus::builder(pool)
        .publisher(outbox.clone())
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
fn arrivals(outbox: &MemoryPublisher) -> Vec<(String, u32)> {
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

/// Every key's first deliveries are 0, 1, …, `per_key - 1` in that order; returns how many
/// duplicates arrived.
fn check_order(arrived: &[(String, u32)], keys: usize, per_key: u32) -> usize {
    let mut next: HashMap<&str, u32> = HashMap::new();
    let mut duplicates = 0;
    for (key, seq) in arrived {
        let expected = next.entry(key).or_insert(0);
        if *seq < *expected {
            duplicates += 1; // an earlier one again (at-least-once)
            continue;
        }
        assert_eq!(
            *seq, *expected,
            "key {key}: {seq} arrived before {expected}"
        );
        *expected += 1;
    }
    assert_eq!(next.len(), keys, "every key arrived");
    for (key, n) in &next {
        assert_eq!(*n, per_key, "key {key}: all its signals arrived");
    }
    duplicates
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
    keys_keep_their_order_across_relays,
    a_poison_message_holds_back_only_its_key,
    order_by_means_what_the_docs_say,
);

async fn keys_keep_their_order_across_relays<DB: TestBackend>() {
    const KEYS: usize = 48;
    const PER_KEY: u32 = 20;
    const WRITERS: usize = 8;
    let db = DB::create(16).await;
    let outbox = MemoryPublisher::new();
    let first = bus(&db, &outbox).await;
    let second = bus(&db, &outbox).await;
    let start = |bus: &SignalBus<DB>| {
        let bus = bus.clone();
        async move {
            bus.relay()
                .ordered(true)
                .ordered_lanes(4)
                .poll(Duration::from_millis(5), Duration::from_millis(100))
                .start()
                .await
                .unwrap()
        }
    };
    // The relay that dies has a pool of its own, as a process would: dropping its tasks
    // cancels their queries mid-flight, and a MySQL connection whose query was cancelled
    // must not be handed to anyone else (sqlx would wait on it for an answer that never
    // comes).
    let doomed_pool = sqlx::Pool::<DB>::connect(&db.url).await.unwrap();
    let doomed_bus = on_pool(doomed_pool.clone(), &outbox).await;
    let doomed = start(&doomed_bus).await;
    let survivor = start(&second).await;

    // Each writer owns KEYS / WRITERS keys and writes their signals in order, a few keys per
    // transaction, its transactions interleaving with the other writers'.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let bus = first.clone();
        writers.spawn(async move {
            let keys: Vec<String> = (w..KEYS)
                .step_by(WRITERS)
                .map(|k| format!("k{k}"))
                .collect();
            for seq in 0..PER_KEY {
                for pair in keys.chunks(2) {
                    let mut tx = bus.begin().await.unwrap();
                    for key in pair {
                        tx.send(&keyed(key, seq)).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(seq % 3))).await;
                    tx.commit().await.unwrap();
                }
            }
        });
    }
    // One relay dies (its tasks dropped mid-burst, as in a crash): the other goes on, and
    // takes the dead one's keys once their lease expires.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(doomed);
    drop(doomed_bus);
    doomed_pool.close().await;
    while writers.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(90);
    while DB::count_rows(&db.pool, "keyed_signal").await > 0 {
        assert!(Instant::now() < deadline, "not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(survivor.shutdown(Duration::from_secs(10)).await);
    let arrived = arrivals(&outbox);
    let duplicates = check_order(&arrived, KEYS, PER_KEY);
    eprintln!(
        "{}: {} deliveries of {} signals, {duplicates} duplicates, in order per key",
        DB::NAME,
        arrived.len(),
        KEYS * PER_KEY as usize
    );
    db.cleanup().await;
}

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

/// An ordered relay woken by a notification whose row is still held back by the gap-safe
/// watermark (an older transaction is running) looks again soon, instead of waiting for its
/// poll: no notification comes when the older transaction ends. The poll is 30 s here; the
/// row must go out within seconds of the older transaction's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordered_relay_sends_a_row_soon_after_the_watermark_passes_it() {
    let db = <sqlx::Postgres as TestBackend>::create(6).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, &outbox).await;
    let relay = bus
        .relay()
        .ordered(true)
        .ordered_lanes(2)
        .poll(Duration::from_millis(10), Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // every lane idle
    // An older transaction with an id: the watermark holds back what commits after it began.
    let mut older = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO keyed_signal (topic, body, ordering_key) \
         VALUES ('accounts', '{\"account\":\"a\",\"seq\":0}', 'a')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox.len(),
        0,
        "held back while the older transaction runs"
    );
    // And the library says so, naming the transaction that holds it (the oldest on the
    // server: ours, unless another test's began earlier).
    let held = bus.ordered_holdback(&Selection::all()).await.unwrap();
    assert_eq!(held[0].1.rows, 1, "{held:?}");
    let holder = held[0].1.holder.clone().unwrap_or_default();
    assert!(
        holder.starts_with("pid ") && holder.contains("open for"),
        "{holder}"
    );
    older.commit().await.unwrap();
    let released = Instant::now();
    while outbox.is_empty() {
        assert!(
            released.elapsed() < Duration::from_secs(15),
            "not sent {:?} after the watermark passed it (the poll is 30 s)",
            released.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "sent {:?} after the watermark passed it",
        released.elapsed()
    );
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    db.cleanup().await;
}

/// `ordered` is a setting of the signal type: one relay, not ordered itself, sends the type
/// that says so in order (held back by the gap-safe watermark while an older transaction
/// runs) and another type as it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_relay_sends_the_types_that_say_so_in_order() {
    let db = <sqlx::Postgres as TestBackend>::create(6).await;
    let outbox = MemoryPublisher::new();
    let plain = SignalType::new("plain")
        .table("plain_signal")
        .autoflush(false);
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register_type(Keyed::signal_type().clone().ordered(true))
        .register_type(plain)
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let relay = bus
        .relay()
        .poll(Duration::from_millis(10), Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let mut older = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO keyed_signal (topic, body, ordering_key) \
         VALUES ('accounts', '{\"account\":\"a\",\"seq\":0}', 'a'); \
         INSERT INTO plain_signal (topic, body) VALUES ('plain', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox.is_empty() {
        assert!(Instant::now() < deadline, "the plain type was not sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<String> = outbox
        .messages()
        .iter()
        .map(|m| m.signal.to_string())
        .collect();
    assert_eq!(
        sent,
        ["plain"],
        "the ordered type waits for the older transaction"
    );
    older.commit().await.unwrap();
    // Other tests' transactions on the shared server may hold the watermark a while longer.
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox.len() < 2 {
        assert!(Instant::now() < deadline, "the ordered type was not sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    db.cleanup().await;
}
