//! The bounded auto-flush queue, `SignalBus::close`, and the builder's checks, on every
//! database.

use crate::common::TestBackend;
use crate::gated::Gated;
use crate::on_every_database;
use crate::signals::{OrderPlaced, order};
use signalbus::publisher::MemoryPublisher;
use signalbus::{Error, Selection, SignalBus};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Flush until `expected` signals were sent in all (rows given back in the background become
/// sendable a moment later).
async fn flush_until<DB: TestBackend>(bus: &SignalBus<DB>, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while sent < expected {
        sent += bus.flush_many(&Selection::all()).await.unwrap();
        assert!(Instant::now() < deadline, "sent {sent} of {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sent, expected);
}

fn counts(outbox: &MemoryPublisher) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in outbox.messages() {
        *seen.entry(m.id).or_default() += 1;
    }
    seen
}

/// A full queue answers a commit "pending" at once (QueueFull), instead of waiting behind a
/// slow bus; the rows stay and a later flush sends them; nothing is lost or sent twice.
async fn a_full_queue_answers_pending_at_once<DB: TestBackend>() {
    let db = DB::create(6).await;
    let gated = Gated::new(MemoryPublisher::new());
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(gated.clone())
        .register::<OrderPlaced>()
        .flush_workers(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    // Commit every transaction first (on SQLite a round holds the write lock while it
    // publishes), then hand them all to the auto-flush at once.
    let mut recorders = Vec::new();
    for i in 0..4 {
        let mut tx = db.pool.begin().await.unwrap();
        let mut signals = bus.recorder();
        signals.send(&mut *tx, &order(i)).await.unwrap();
        tx.commit().await.unwrap();
        recorders.push(signals);
    }
    let started = Instant::now();
    let deliveries: Vec<_> = recorders.into_iter().map(|r| r.after_commit()).collect();
    // The queue holds one transaction, the worker (held in publish) at most one more.
    let mut waiting = Vec::new();
    let mut refused = 0;
    for mut delivery in deliveries {
        match tokio::time::timeout(Duration::from_millis(200), &mut delivery).await {
            Ok(report) => {
                assert_eq!(report.pending, 1);
                assert!(
                    matches!(
                        report.error.as_deref(),
                        Some(Error::QueueFull { capacity: 1 })
                    ),
                    "{report:?}"
                );
                assert!(report.error.unwrap().to_string().contains("queue is full"));
                refused += 1;
            }
            Err(_) => waiting.push(delivery),
        }
    }
    assert!((2..=3).contains(&refused), "{refused} refused at once");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "nobody waited behind the bus"
    );
    gated.open();
    let mut sent = 0;
    for delivery in waiting {
        sent += delivery.await.sent;
    }
    assert_eq!(sent + refused, 4);
    // The refused transactions' rows were given back at once (no wait for their lease).
    flush_until(&bus, refused).await;
    let seen = counts(&gated.outbox);
    assert_eq!(seen.len(), 4);
    assert!(
        seen.values().all(|&n| n == 1),
        "each exactly once: {seen:?}"
    );
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    db.cleanup().await;
}

/// `close` sends what was handed over before, gives up at the deadline on a round the bus
/// does not confirm (rolled back, left pending), and then takes no more auto-flush work; an
/// explicit flush still sends everything, each once.
async fn close_finishes_within_its_deadline<DB: TestBackend>() {
    let db = DB::create(6).await;
    let gated = Gated::new(MemoryPublisher::new());
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(gated.clone())
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    // A round held in publish when the close comes.
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(1)).await.unwrap();
    tx.send(&order(2)).await.unwrap();
    let held = tx.commit().await.unwrap();
    gated.entered().await;
    let started = Instant::now();
    let left = bus.close(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert_eq!(left, 2, "the held round's signals were left pending");
    assert!(
        took >= Duration::from_millis(300),
        "waited for the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "and not much longer: {took:?}"
    );
    let report = held.await;
    assert_eq!(report.pending, 2);
    assert!(
        matches!(report.error.as_deref(), Some(Error::Closed)),
        "{report:?}"
    );
    assert!(bus.is_closed());

    // After the close: commits work, their signals stay pending.
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(3)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!(report.pending, 1);
    assert!(matches!(report.error.as_deref(), Some(Error::Closed)));
    assert_eq!(bus.close(Duration::from_secs(1)).await, 0, "closing again");

    gated.open();
    flush_until(&bus, 3).await;
    let seen = counts(&gated.outbox);
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    db.cleanup().await;
}

/// A close with nothing held returns at once, having sent what was queued.
async fn close_sends_what_was_handed_over<DB: TestBackend>() {
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..5 {
        let mut tx = bus.begin().await.unwrap();
        tx.send(&order(i)).await.unwrap();
        deliveries.push(tx.commit().await.unwrap());
    }
    assert_eq!(bus.close(Duration::from_secs(10)).await, 0);
    let mut sent = 0;
    for d in deliveries {
        sent += d.await.sent;
    }
    assert_eq!(sent, 5);
    assert_eq!(outbox.messages().len(), 5);
    db.cleanup().await;
}

/// Every builder setting that cannot work is an error at `build()`, none silently changed.
async fn builder_settings_are_checked<DB: TestBackend>() {
    let db = DB::create(2).await;
    let build = |f: fn(signalbus::SignalBusBuilder<DB>) -> signalbus::SignalBusBuilder<DB>| {
        f(SignalBus::builder(db.pool.clone()).publisher(MemoryPublisher::new()))
            .build()
            .map(drop)
    };
    for (what, result) in [
        ("max_batch", build(|b| b.max_batch(0))),
        ("flush_workers", build(|b| b.flush_workers(0))),
        ("flush_workers", build(|b| b.flush_workers(65))),
        ("queue_capacity", build(|b| b.queue_capacity(0))),
        (
            "publish_timeout",
            build(|b| b.publish_timeout(Duration::ZERO)),
        ),
    ] {
        match result {
            Err(Error::Config(message)) => assert!(message.contains(what), "{message}"),
            other => panic!("{what}: expected a configuration error, got {other:?}"),
        }
    }
    assert!(build(|b| b.max_batch(1).flush_workers(64).queue_capacity(1)).is_ok());
    db.cleanup().await;
}

on_every_database!(
    a_full_queue_answers_pending_at_once,
    close_finishes_within_its_deadline,
    close_sends_what_was_handed_over,
    builder_settings_are_checked,
);
