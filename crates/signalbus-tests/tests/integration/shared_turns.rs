//! Relays that take turns ([`BurstShare`], the fleet's `--bursts-at-once`) on every
//! database: a burst that has claimed its rows waits for its turn no longer than its claim
//! can safely last, then gives the rows back unsent, so another flusher that takes them sends
//! each once (the waiting relay never sends them late), unordered and in key order; the
//! waiting relay then takes its next turn before it claims, and a relay that stops leaves
//! the queue at once.

use crate::common::{TestBackend, TestDb};
use crate::gated::Gated;
use crate::keyed::{Keyed, arrivals, keyed, on_pool};
use crate::on_every_database;
use signalbus::publisher::MemoryPublisher;
use signalbus::relay::BurstShare;
use signalbus::{Selection, SignalBus};
use std::collections::HashSet;
use std::time::{Duration, Instant};

on_every_database!(a_burst_that_waits_too_long_for_its_turn_gives_its_rows_back);
on_every_database!(an_ordered_burst_that_waits_too_long_for_its_turn_gives_its_rows_back);

async fn a_burst_that_waits_too_long_for_its_turn_gives_its_rows_back<DB: TestBackend>() {
    gives_back::<DB>(false).await;
}

async fn an_ordered_burst_that_waits_too_long_for_its_turn_gives_its_rows_back<DB: TestBackend>() {
    gives_back::<DB>(true).await;
}

const KEYS: u32 = 4;
const PER_KEY: u32 = 5;

async fn write<DB: TestBackend>(bus: &SignalBus<DB>, seqs: std::ops::Range<u32>) {
    let mut tx = bus.begin().await.unwrap();
    for seq in seqs {
        for k in 0..KEYS {
            tx.send(&keyed(&format!("k{k}"), seq)).await.unwrap();
        }
    }
    tx.commit().await.unwrap();
}

/// Flush (in key order when `ordered`) until the table is empty.
async fn drain<DB: TestBackend>(db: &TestDb<DB>, flusher: &SignalBus<DB>, ordered: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while DB::count_rows(&db.pool, "keyed_signal").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the other flusher could not take the rows"
        );
        if ordered {
            flusher.flush_ordered(&Selection::all()).await.unwrap();
        } else {
            flusher.flush_many(&Selection::all()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gives_back<DB: TestBackend>(ordered: bool) {
    let busy_db = DB::create(4).await;
    let db = DB::create(8).await;
    let share = BurstShare::new(1);
    let poll = |relay: signalbus::RelayBuilder<DB>| {
        relay
            .share(share.clone())
            .ordered(ordered)
            .poll(Duration::from_millis(5), Duration::from_millis(50))
    };

    // The busy database's burst holds the only turn until the test opens its gate.
    let gated = Gated::new(MemoryPublisher::new());
    let busy = SignalBus::builder(busy_db.pool.clone())
        .publisher(gated.clone())
        .register::<Keyed>()
        .autoflush(false)
        .publish_timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    busy.migrate().await.unwrap();
    write(&busy, 0..1).await;
    let busy_relay = poll(busy.relay()).start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), gated.entered())
        .await
        .expect("the busy relay's burst reached the broker");

    // The quiet database's relay (lease 6 s, publish timeout 5 s: it waits at most 0.5 s for
    // a turn) claims its rows and waits behind it; another flusher, taking no turns, sends
    // the rows it gives back.
    let waiting = MemoryPublisher::new();
    // A lease far longer than the patience, so that rows given back (after 0.5 s) and rows
    // left to their lease (6 s) stay apart on a loaded machine.
    let quiet = SignalBus::builder(db.pool.clone())
        .publisher(waiting.clone())
        .register::<Keyed>()
        .autoflush(false)
        .publish_timeout(Duration::from_secs(5))
        .lease(Duration::from_secs(6))
        .build()
        .unwrap();
    quiet.migrate().await.unwrap();
    write(&quiet, 0..PER_KEY).await;
    let relay = poll(quiet.relay()).start().await.unwrap();
    // Its burst claims, then waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while quiet.overview("keyed").await.unwrap().in_flight == 0 {
        assert!(Instant::now() < deadline, "the relay claimed nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = MemoryPublisher::new();
    let flusher = on_pool(db.pool.clone(), other.clone()).await;
    let started = Instant::now();
    drain(&db, &flusher, ordered).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the rows came back before their lease ended ({:?})",
        started.elapsed()
    );

    // Written now, these are not claimed: the relay, having missed its turn, waits for the
    // next one before it claims. Its stop ends that wait at once.
    write(&quiet, PER_KEY..PER_KEY + 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    assert!(
        relay.shutdown(Duration::from_secs(5)).await,
        "the waiting relay stopped cleanly"
    );
    assert!(stopping.elapsed() < Duration::from_secs(1));
    let started = Instant::now();
    drain(&db, &flusher, ordered).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "nothing claimed"
    );

    // The busy burst goes out; the relay that waited sent nothing, the other flusher each
    // signal once (in key order when ordered).
    gated.open();
    assert!(busy_relay.shutdown(Duration::from_secs(10)).await);
    assert!(!gated.outbox.is_empty());
    assert!(
        waiting.is_empty(),
        "the relay that missed its turn sent nothing"
    );
    let arrived = arrivals(&other);
    assert_eq!(
        arrived.len(),
        (KEYS * (PER_KEY + 1)) as usize,
        "{arrived:?}"
    );
    let distinct: HashSet<_> = arrived.iter().cloned().collect();
    assert_eq!(distinct.len(), arrived.len(), "no duplicates: {arrived:?}");
    if ordered {
        for k in 0..KEYS {
            let key = format!("k{k}");
            let seqs: Vec<u32> = arrived
                .iter()
                .filter(|(a, _)| *a == key)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(seqs, (0..=PER_KEY).collect::<Vec<_>>(), "key {key}");
        }
    }
}
