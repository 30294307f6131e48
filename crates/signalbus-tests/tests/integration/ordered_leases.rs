//! Ordered bursts are claimed in a short transaction and published with none open: writers
//! commit while an ordered burst waits for the broker (on SQLite too), and a second ordered
//! flusher does not interleave with the one in flight.

use crate::common::TestBackend;
use crate::gated::Gated;
use crate::on_every_database;
use serde::Serialize;
use signalbus::publisher::MemoryPublisher;
use signalbus::{Selection, Signal, SignalBus};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Signal)]
#[signal(name = "step", autoflush = false, burst = 100)]
struct Step {
    n: i64,
}

async fn an_ordered_burst_holds_no_lock_while_it_publishes<DB: TestBackend>() {
    let db = DB::create(6).await;
    DB::create_business_table(&db.pool).await;
    let gated = Gated::new(MemoryPublisher::new());
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(gated.clone())
        .register::<Step>()
        .publish_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let mut tx = bus.begin().await.unwrap();
    for n in 0..10 {
        tx.send(&Step { n }).await.unwrap();
    }
    tx.commit().await.unwrap();

    let first = tokio::spawn({
        let bus = bus.clone();
        async move { bus.flush_ordered(&Selection::all()).await.unwrap() }
    });
    gated.entered().await;

    // A writer commits while the burst waits for the broker: no lock is held.
    let started = Instant::now();
    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    tx.send(&Step { n: 10 }).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "the writer waited {:?} behind the ordered burst",
        started.elapsed()
    );

    // A second ordered flusher waits for the burst in flight instead of overtaking it.
    let second = tokio::spawn({
        let bus = bus.clone();
        async move { bus.flush_ordered(&Selection::all()).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second flusher waits for its turn"
    );
    assert_eq!(
        gated.held().len(),
        10,
        "only the first burst reached the broker"
    );

    gated.open();
    // Whichever takes the next turn sends what came after the burst.
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first + second, 11, "{first} + {second}");
    assert!(first >= 10, "the burst in flight was the first's");
    let order: Vec<i64> = gated
        .outbox
        .messages()
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.body).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, (0..=10).collect::<Vec<_>>(), "in order, each once");
    db.cleanup().await;
}

on_every_database!(an_ordered_burst_holds_no_lock_while_it_publishes);
