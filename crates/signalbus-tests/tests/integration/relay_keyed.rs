//! The relay's per-key order on every database (in-memory bus: one list records the arrival
//! order of everything every relay sent, as one consumer would): keys written by concurrent
//! writers whose transactions interleave come out in write order per key, through two relays
//! of four ordered lanes each, one of them dropped mid-run after it sent some (its bursts in
//! flight come back after the lease); on PostgreSQL an ordered relay sends a row soon after
//! the gap-safe watermark passes it, and one relay sends the types that say so in order. The
//! keyed signal and its helpers live in `keyed.rs`.

use crate::common::TestBackend;
use crate::keyed::{Keyed, arrivals, bus, keyed, on_pool};
use crate::on_every_database;
use signalbus::publisher::MemoryPublisher;
use signalbus::{
    BatchOutcome, Message, PublishError, Publisher, Selection, Signal, SignalBus, SignalType,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The shared outbox, counting the messages one relay delivered to it.
struct Tally {
    outbox: MemoryPublisher,
    sent: Arc<AtomicUsize>,
}

impl Publisher for Tally {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let outcome = self.outbox.publish(batch).await?;
        self.sent.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(outcome)
    }
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

on_every_database!(keys_keep_their_order_across_relays);

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
    let doomed_sent = Arc::new(AtomicUsize::new(0));
    let tally = Tally {
        outbox: outbox.clone(),
        sent: doomed_sent.clone(),
    };
    let doomed_bus = on_pool(doomed_pool.clone(), tally).await;
    let doomed = start(&doomed_bus).await;

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
    // The relay that dies sends alone first, so that some keys have gone out through it
    // when it dies, however the machine schedules the two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while doomed_sent.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the relay to be dropped sent nothing in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let survivor = start(&second).await;
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
    let dropped = doomed_sent.load(Ordering::SeqCst);
    assert!(dropped > 0, "the dropped relay sent nothing");
    eprintln!(
        "{}: {} deliveries of {} signals ({dropped} by the dropped relay), {duplicates} \
         duplicates, in order per key",
        DB::NAME,
        arrived.len(),
        KEYS * PER_KEY as usize
    );
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
