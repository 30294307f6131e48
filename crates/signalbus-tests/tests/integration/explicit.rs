//! Explicit flushing: flushordered under interleaved commits, flush's wait against in-flight
//! auto-flushes, progress and stopping, restored PostgreSQL dumps.

use crate::common::{TestBackend, TestDb};
use crate::gated::Gated;
use crate::on_every_database;
use crate::signals::{OrderPlaced, order};
use serde::Serialize;
use signalbus::publisher::MemoryPublisher;
use signalbus::{Selection, Signal, SignalBus};
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ordered, never auto-flushed, small bursts so that an ordered flush takes many turns.
#[derive(Debug, Clone, Serialize, Signal)]
#[signal(name = "ledger_entry", autoflush = false, burst = 7)]
struct LedgerEntry {
    writer: i64,
    seq: i64,
}

on_every_database!(
    flushordered_never_goes_backwards,
    flush_wait_does_not_resend_inflight_autoflushes,
    progress_reports_and_stops_after_a_burst,
);

/// A bus with `LedgerEntry` registered and migrated, delivering to memory.
async fn ledger_bus<DB: TestBackend>(db: &TestDb<DB>) -> (SignalBus<DB>, MemoryPublisher) {
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<LedgerEntry>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    (bus, outbox)
}

const WRITERS: i64 = 8;
const TX_PER_WRITER: i64 = 25;

async fn flushordered_never_goes_backwards<DB: TestBackend>() {
    let db: TestDb<DB> = DB::create(u32::try_from(WRITERS).unwrap() + 4).await;
    let (bus, outbox) = ledger_bus(&db).await;
    // message id -> (order key, row id) of every committed signal.
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (bus, committed) = (bus.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..TX_PER_WRITER {
                let mut tx = bus.begin().await.unwrap();
                let key = DB::order_key(&mut tx).await;
                let mut mine = Vec::new();
                for seq in 0..1 + (writer + n) % 3 {
                    let id = tx.send(&LedgerEntry { writer, seq }).await.unwrap();
                    mine.push((id.message_id, (key, id.row_id)));
                }
                // Hold the transaction open for a while, so that commits interleave and
                // later writers commit first.
                let hold = (writer * 7 + n * 13) % 20;
                tokio::time::sleep(Duration::from_millis(hold.unsigned_abs())).await;
                if n % 10 == 9 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.lock().unwrap().extend(mine);
                }
            }
        }));
    }
    let flusher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            for _ in 0..200 {
                sent += bus.flush_ordered(&Selection::all()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    let mut sent = flusher.await.unwrap();
    let committed = committed.lock().unwrap().clone();
    sent += flushordered_until(&bus, committed.len().saturating_sub(sent)).await;

    let messages = outbox.messages();
    let keys: Vec<(i64, i64)> = messages
        .iter()
        .map(|m| {
            *committed
                .get(&m.id)
                .expect("only committed signals are sent")
        })
        .collect();
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no signal sent twice");
    assert_eq!(keys.len(), committed.len(), "every committed signal sent");
    assert_eq!(sent, committed.len());
    let backwards: Vec<_> = keys.windows(2).filter(|w| w[1] < w[0]).collect();
    assert!(
        backwards.is_empty(),
        "{}: received order went backwards {} time(s), e.g. {:?}",
        <DB as sqlx::Database>::NAME,
        backwards.len(),
        backwards.first()
    );
    assert_eq!(DB::count_rows(&db.pool, "ledger_entry").await, 0);
    db.cleanup().await;
}

/// An explicit flush never sends again the rows an auto-flush round is publishing (the race
/// is made to happen: the round is held inside the publisher while the flushes run).
async fn flush_wait_does_not_resend_inflight_autoflushes<DB: TestBackend>() {
    const WAIT: Duration = Duration::from_millis(1000);
    let db: TestDb<DB> = DB::create(12).await;
    let outbox = MemoryPublisher::new();
    let gated = Gated::new(outbox.clone());
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(gated.clone())
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    // One transaction, so that one auto-flush round takes all 20 rows (on SQLite too, whose
    // single writer would keep later transactions from committing behind a held round).
    let mut tx = bus.begin().await.unwrap();
    let mut ids = HashSet::new();
    for id in 0..20 {
        ids.insert(tx.send(&order(id)).await.unwrap().message_id.to_string());
    }
    let delivery = tx.commit().await.unwrap();
    // The round has the rows and is publishing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gated.held().len() < ids.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the auto-flush did not reach the publisher with every signal: {:?}",
            gated.held()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held: HashSet<String> = gated.held().into_iter().collect();
    assert_eq!(held, ids, "the auto-flush round holds every signal");

    // While that round is in flight its rows are leased (written so for the auto-flush):
    // explicit flushes do not even list them, so they cannot send them again.
    let started = std::time::Instant::now();
    let flushed = bus.flush(&Selection::all(), WAIT).await.unwrap();
    assert!(
        started.elapsed() < WAIT,
        "nothing sendable was listed, so the flush did not wait"
    );
    let drained = bus.flush_many(&Selection::all()).await.unwrap();
    assert_eq!(
        (flushed, drained),
        (0, 0),
        "the rows the round holds are not taken"
    );
    assert!(outbox.messages().is_empty(), "nothing confirmed yet");
    assert_eq!(gated.held().len(), 20, "still in flight");
    gated.open();

    let report = delivery.await;
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(
        (report.sent, report.elsewhere, report.pending),
        (20, 0, 0),
        "the round in flight sent every signal: {report:?}"
    );
    assert_eq!(flushed, 0, "the flush sent none of the rows the round held");
    let messages = outbox.messages();
    let sent: HashSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(messages.len(), 20, "every signal sent exactly once");
    assert_eq!(sent, ids);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    db.cleanup().await;
}

async fn progress_reports_and_stops_after_a_burst<DB: TestBackend>() {
    let db: TestDb<DB> = DB::create(4).await;
    let (bus, outbox) = ledger_bus(&db).await;
    let mut tx = bus.begin().await.unwrap();
    for seq in 0..30 {
        tx.send(&LedgerEntry { writer: 0, seq }).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut seen = Vec::new();
    let sent = bus
        .flush_many_with(&Selection::all(), &mut |p| {
            seen.push((p.signal.to_owned(), p.burst, p.sent));
            if p.sent >= 14 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert_eq!(sent, 14, "stopped after the second burst of 7");
    assert_eq!(
        seen,
        [
            ("ledger_entry".into(), 7, 7),
            ("ledger_entry".into(), 7, 14)
        ]
    );
    assert_eq!(DB::count_rows(&db.pool, "ledger_entry").await, 16);
    let (mut bursts, mut rest) = (0, 0);
    // On PostgreSQL a transaction of a parallel test may hold the rows back for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rest < 16 && std::time::Instant::now() < deadline {
        rest += bus
            .flush_ordered_with(&Selection::all(), &mut |_| {
                bursts += 1;
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
    }
    assert_eq!((rest, bursts), (16, 3));
    let seqs: Vec<i64> = outbox.messages()[14..]
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.body).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (14..30).collect::<Vec<_>>(), "in insertion order");
    db.cleanup().await;
}

/// flushordered until `want` more were sent. On PostgreSQL the snapshot's xmin is
/// cluster-wide: a transaction of a test running in parallel (in another database) holds back
/// rows written after it began, until it ends.
async fn flushordered_until<DB: TestBackend>(bus: &SignalBus<DB>, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < want && std::time::Instant::now() < deadline {
        sent += bus.flush_ordered(&Selection::all()).await.unwrap();
        if sent < want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sent
}

/// A database restored from a dump carries txids from another cluster, possibly ahead of
/// this cluster's counter: such rows go first and do not stall the ordered flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushordered_after_restore_from_dump_postgres() {
    let db: TestDb<sqlx::Postgres> = <sqlx::Postgres as TestBackend>::create(4).await;
    let (bus, outbox) = ledger_bus(&db).await;
    let mut tx = bus.begin().await.unwrap();
    tx.send(&LedgerEntry { writer: 1, seq: 0 }).await.unwrap();
    tx.commit().await.unwrap();
    // Rows "restored" with txids a million transactions ahead of this cluster.
    sqlx::query(
        "INSERT INTO ledger_entry (topic, body, txid) SELECT 'ledger_entry', \
         convert_to('{\"writer\":0,\"seq\":' || g || '}', 'UTF8'), \
         ((pg_current_xact_id()::text::bigint + 1000000 + g)::text)::xid8 \
         FROM generate_series(0, 2) AS g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // The restored rows are not held back by any running transaction: they go at once.
    let first = bus.flush_ordered(&Selection::all()).await.unwrap();
    assert!(first >= 3, "restored rows sent at once, got {first}");
    assert_eq!(first + flushordered_until(&bus, 4 - first).await, 4);
    let order: Vec<(i64, i64)> = outbox
        .messages()
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            (v["writer"].as_i64().unwrap(), v["seq"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        order,
        [(0, 0), (0, 1), (0, 2), (1, 0)],
        "restored rows first"
    );
    db.cleanup().await;
}

/// A transaction still open on PostgreSQL holds back everything written after it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushordered_waits_for_open_transactions_postgres() {
    let db: TestDb<sqlx::Postgres> = <sqlx::Postgres as TestBackend>::create(4).await;
    let (bus, outbox) = ledger_bus(&db).await;
    let mut early = bus.begin().await.unwrap();
    early
        .send(&LedgerEntry { writer: 1, seq: 0 })
        .await
        .unwrap();
    let mut late = bus.begin().await.unwrap();
    late.send(&LedgerEntry { writer: 2, seq: 0 }).await.unwrap();
    late.commit().await.unwrap();
    assert_eq!(
        bus.flush_ordered(&Selection::all()).await.unwrap(),
        0,
        "held back"
    );
    early.commit().await.unwrap();
    assert_eq!(flushordered_until(&bus, 2).await, 2);
    let writers: Vec<i64> = outbox
        .messages()
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.body).unwrap()["writer"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(writers, [1, 2]);
    db.cleanup().await;
}
