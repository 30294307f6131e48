//! Auto-flush: what a commit sends, what a rollback does not, failures, switches, load.

use crate::common::TestBackend;
use crate::on_every_database;
use crate::signals::{AuditTrail, InvoiceSent, OrderPlaced, order};
use signalbus::publisher::MemoryPublisher;
use signalbus::{Error, Selection, Signal, SignalBus};
use std::collections::HashMap;
use std::time::Duration;

/// The auto-flush's pause after a bus failure in these tests: long, so that a slow machine
/// cannot end it between a failure and the commit that checks it.
const FAILURE_PAUSE: Duration = Duration::from_secs(30);

async fn setup<DB: TestBackend>(
    pool_size: u32,
) -> (crate::common::TestDb<DB>, SignalBus<DB>, MemoryPublisher) {
    setup_with_pause(pool_size, FAILURE_PAUSE).await
}

async fn setup_with_pause<DB: TestBackend>(
    pool_size: u32,
    pause: Duration,
) -> (crate::common::TestDb<DB>, SignalBus<DB>, MemoryPublisher) {
    let db = DB::create(pool_size).await;
    DB::create_business_table(&db.pool).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrderPlaced>()
        .register::<InvoiceSent>()
        .register::<AuditTrail>()
        .failure_pause(pause)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.migrate().await.unwrap(); // idempotent
    (db, bus, outbox)
}

on_every_database!(
    commit_sends_exactly_its_signals,
    rollback_and_drop_send_nothing,
    callers_own_transaction,
    failing_publisher_keeps_signals_pending,
    autoflush_switches,
    the_switch_counts_at_commit,
    concurrent_transactions_with_concurrent_flushmany,
    tables_created_elsewhere,
    a_panicking_publisher_loses_nothing,
);

async fn commit_sends_exactly_its_signals<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(5).await;

    // A signal committed while auto-flush was off must not ride along with a later commit.
    bus.set_autoflush(false);
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(99)).await.unwrap();
    tx.commit_and_wait().await.unwrap();
    bus.set_autoflush(true);

    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    let first = tx
        .send(&OrderPlaced {
            note: Some("gift".into()),
            ..order(1)
        })
        .await
        .unwrap();
    let second = tx.send(&order(2)).await.unwrap();
    let third = tx
        .send(&InvoiceSent {
            invoice: 7,
            region: "eu".into(),
        })
        .await
        .unwrap();
    assert_eq!(tx.signals(), 3);
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!(
        (report.sent, report.pending, report.elsewhere),
        (3, 0, 0),
        "{report:?}"
    );
    assert!(report.is_complete());

    let messages = outbox.messages();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    let by_id: HashMap<_, _> = messages.iter().map(|m| (m.id.clone(), m)).collect();
    let m1 = by_id[&first.message_id];
    assert_eq!(&*m1.signal, "order_placed");
    assert_eq!(m1.destination, "orders");
    assert_eq!(m1.routing_key.as_deref(), Some("order.placed"));
    assert_eq!(m1.headers["customer"], "customer-1");
    assert_eq!(m1.headers["x-note"], "gift");
    assert_eq!(m1.content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&m1.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"order_id": 1, "customer": "customer-1", "note": "gift"})
    );
    let m2 = by_id[&second.message_id];
    assert!(
        !m2.headers.contains_key("x-note"),
        "None header is left out"
    );
    let m3 = by_id[&third.message_id];
    assert_eq!(
        (m3.destination.as_str(), m3.routing_key.as_deref()),
        ("billing", Some("eu"))
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&m3.body).unwrap()["invoice"],
        7
    );

    assert_eq!(DB::count_business(&db.pool).await, 1);
    assert_eq!(DB::count_rows(&db.pool, "invoice_sent").await, 0);
    // Only the earlier signal is left, and flushing sends it with its own stable id.
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 1);
    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        1
    );
    let last = outbox.messages().pop().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&last.body).unwrap()["order_id"],
        99
    );
    db.cleanup().await;
}

async fn rollback_and_drop_send_nothing<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(5).await;
    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    tx.send(&order(1)).await.unwrap();
    tx.rollback().await.unwrap();
    {
        let mut tx = bus.begin().await.unwrap();
        tx.send(&order(2)).await.unwrap();
        // dropped without commit
    }
    // A recorder handed over after a rollback must not send anything either.
    let mut tx = bus.pool().begin().await.unwrap();
    let mut recorder = bus.recorder();
    recorder.send(&mut *tx, &order(3)).await.unwrap();
    tx.rollback().await.unwrap();
    let report = recorder.after_commit().await;
    assert_eq!((report.sent, report.elsewhere), (0, 1));

    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        0
    );
    assert!(outbox.is_empty());
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    assert_eq!(DB::count_business(&db.pool).await, 0);

    // Sending an unregistered type is refused with a message that says how to fix it.
    let other = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .build()
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    let err = tx.send(&order(4)).await.unwrap_err();
    assert!(matches!(err, Error::NotRegistered(_)), "{err}");
    assert!(err.to_string().contains("register::<"), "{err}");
    drop(tx);
    db.cleanup().await;
}

async fn callers_own_transaction<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(5).await;
    let mut tx = db.pool.begin().await.unwrap();
    let mut recorder = bus.recorder();
    DB::insert_business(&mut tx, 5).await.unwrap();
    let id = recorder.send(&mut *tx, &order(5)).await.unwrap();
    tx.commit().await.unwrap();
    let report = recorder.after_commit().await;
    assert_eq!(report.sent, 1, "{report:?}");
    assert_eq!(outbox.messages()[0].id, id.message_id);

    // A transaction the caller began, wrapped by the bus.
    let tx = db.pool.begin().await.unwrap();
    let mut tx = bus.wrap(tx);
    tx.send(&order(6)).await.unwrap();
    let delivery = tx.commit().await.unwrap();
    assert_eq!(delivery.await.sent, 1);
    assert_eq!(outbox.len(), 2);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    db.cleanup().await;
}

async fn failing_publisher_keeps_signals_pending<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(5).await;
    outbox.set_down(true);
    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    let id = tx.send(&order(1)).await.unwrap();
    tx.send(&InvoiceSent {
        invoice: 1,
        region: "us".into(),
    })
    .await
    .unwrap();
    let report = tx
        .commit_and_wait()
        .await
        .expect("commit succeeds although the bus is down");
    assert_eq!((report.sent, report.pending), (0, 2), "{report:?}");
    assert!(
        report
            .error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("publishing failed")
    );
    assert_eq!(DB::count_business(&db.pool).await, 1);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 1);
    assert_eq!(DB::count_rows(&db.pool, "invoice_sent").await, 1);

    // Right after a failure auto-flush pauses: the next commit is answered at once as
    // pending, without another publish attempt.
    let calls_before = outbox.batches();
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(2)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (0, 1), "{report:?}");
    assert_eq!(outbox.batches(), calls_before);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 2);

    // An explicit flush while still down fails loudly and keeps the rows.
    let err = bus.flush_many(&Selection::all()).await.unwrap_err();
    assert!(matches!(err, Error::Publish(_)), "{err}");
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 2);

    outbox.set_down(false);
    let pending = bus.pending(&Selection::all()).await.unwrap();
    assert_eq!(pending.iter().map(|(_, s)| s.count).sum::<u64>(), 3);
    assert!(pending[0].1.oldest_age.is_some());
    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        3
    );
    let messages = outbox.messages();
    assert_eq!(messages.len(), 3);
    assert!(
        messages.iter().any(|m| m.id == id.message_id),
        "the stable id survives the retry"
    );
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    assert_eq!(DB::count_rows(&db.pool, "invoice_sent").await, 0);
    db.cleanup().await;
}

async fn autoflush_switches<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(5).await;
    // Per type: AuditTrail has autoflush = false.
    let mut tx = bus.begin().await.unwrap();
    tx.send(&AuditTrail {
        line: "kept".into(),
    })
    .await
    .unwrap();
    tx.send(&order(1)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (1, 1), "{report:?}");
    assert_eq!(DB::count_rows(&db.pool, "audit_trail").await, 1);
    assert!(!AuditTrail::signal_type().is_autoflush());

    // Global switch.
    bus.set_autoflush(false);
    assert!(!bus.autoflush_enabled());
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(2)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (0, 1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 1);

    // Explicit flushes send what the switches held back; exclusion is honoured.
    let only_orders = Selection::all().exclude(["AuditTrail"]);
    assert_eq!(bus.flush_many(&only_orders).await.unwrap(), 1);
    assert_eq!(DB::count_rows(&db.pool, "audit_trail").await, 1);
    assert_eq!(
        bus.flush_many(&Selection::only(["AuditTrail"]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(outbox.len(), 3);
    let err = bus
        .flush_many(&Selection::only(["nope"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown signal name `nope`"),
        "{err}"
    );

    // Built with auto-flush off.
    let quiet = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrderPlaced>()
        .autoflush(false)
        .build()
        .unwrap();
    let mut tx = quiet.begin().await.unwrap();
    tx.send(&order(3)).await.unwrap();
    assert_eq!(tx.commit_and_wait().await.unwrap().pending, 1);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 1);
    db.cleanup().await;
}

const TASKS: i64 = 32;
const TX_PER_TASK: i64 = 500;

async fn concurrent_transactions_with_concurrent_flushmany<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(24).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // An explicit flusher racing the auto-flushes the whole time.
    let racer = {
        let (bus, stop) = (bus.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += bus.flush_many(&Selection::all()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut report_sent = 0;
            for n in 0..TX_PER_TASK {
                let id = task * TX_PER_TASK + n;
                let mut tx = bus.begin().await.unwrap();
                DB::insert_business(&mut tx, id).await.unwrap();
                tx.send(&order(id)).await.unwrap();
                let report = tx.commit_and_wait().await.unwrap();
                assert!(report.error.is_none(), "{report:?}");
                report_sent += report.sent;
            }
            report_sent
        }));
    }
    let mut autoflushed = 0;
    for task in tasks {
        autoflushed += task.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let raced = racer.await.unwrap();
    let rest = bus.flush_many(&Selection::all()).await.unwrap();

    let total = usize::try_from(TASKS * TX_PER_TASK).unwrap();
    let messages = outbox.messages();
    let mut seen = std::collections::HashSet::new();
    let duplicates = messages
        .iter()
        .filter(|m| !seen.insert(m.id.clone()))
        .count();
    println!(
        "{}: {total} signals, {} delivered ({autoflushed} by auto-flush, {raced} by the racing flushmany, {rest} after), duplicates: {duplicates}, publish calls: {}",
        <DB as sqlx::Database>::NAME,
        messages.len(),
        outbox.batches()
    );
    assert_eq!(seen.len(), total, "every signal delivered");
    assert_eq!(duplicates, 0, "no signal sent twice");
    assert_eq!(autoflushed + raced + rest, total);
    assert!(
        outbox.batches() < total,
        "auto-flush coalesced transactions into shared batches"
    );
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    assert_eq!(DB::count_business(&db.pool).await, TASKS * TX_PER_TASK);
    db.cleanup().await;
}

/// Signal tables made by the service's own migrations (no `migrate` bookkeeping): flushing
/// works, and a failed publish still rolls back (MySQL: no DDL inside flush transactions).
async fn tables_created_elsewhere<DB: TestBackend>() {
    let pause = Duration::from_millis(200);
    let (db, bus, outbox) = setup_with_pause::<DB>(5, pause).await;
    DB::forget_flush_locks(&db.pool).await;
    outbox.set_down(true);
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(1)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!(report.pending, 1, "{report:?}");
    assert_eq!(
        DB::count_rows(&db.pool, "order_placed_signal").await,
        1,
        "rolled back, kept"
    );
    outbox.set_down(false);
    tokio::time::sleep(pause * 2).await; // auto-flush pauses after a bus failure
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(2)).await.unwrap();
    assert_eq!(tx.commit_and_wait().await.unwrap().sent, 1);
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 1);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    db.cleanup().await;
}

/// Panics on its first batch, then delivers to the memory publisher.
struct PanicsOnce {
    outbox: MemoryPublisher,
    panicked: std::sync::atomic::AtomicBool,
}

impl signalbus::Publisher for PanicsOnce {
    async fn publish(
        &self,
        batch: &[signalbus::Message],
    ) -> Result<signalbus::BatchOutcome, signalbus::PublishError> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("test publisher panics on purpose");
        }
        self.outbox.publish(batch).await
    }
}

/// A round that dies half-way (here a panic; a cancelled task is the same) must neither
/// lose its rows nor leave its transaction, rows deleted but not committed, to the next user
/// of the connection. One connection in the pool makes that reuse certain.
async fn a_panicking_publisher_loses_nothing<DB: TestBackend>() {
    let db = DB::create(1).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(PanicsOnce {
            outbox: outbox.clone(),
            panicked: Default::default(),
        })
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let mut tx = bus.begin().await.unwrap();
    let first = tx.send(&order(1)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (0, 1), "{report:?}");
    assert!(
        matches!(report.error.as_deref(), Some(Error::Panicked(m)) if m.contains("on purpose")),
        "{report:?}"
    );
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 1);

    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(2)).await.unwrap();
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (1, 0), "{report:?}");
    assert_eq!(
        DB::count_rows(&db.pool, "order_placed_signal").await,
        1,
        "the first signal is still pending"
    );
    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        1
    );
    let ids: Vec<_> = outbox.messages().into_iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.message_id));
    db.cleanup().await;
}

/// The auto-flush switch takes effect when a transaction commits, as in the original (its own
/// tests, replayed): a signal written while it was off and committed after it was switched on
/// is sent; one written while on and committed while off is left pending, and a flush right
/// after the commit (no wait) takes it. Both through `begin` and through a recorder on the
/// caller's own transaction.
async fn the_switch_counts_at_commit<DB: TestBackend>() {
    let (db, bus, outbox) = setup::<DB>(5).await;

    // Off when written, on at commit: sent by the auto-flush.
    bus.set_autoflush(false);
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(1)).await.unwrap();
    bus.set_autoflush(true);
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (1, 0), "{report:?}");
    assert_eq!(outbox.len(), 1);

    // On when written, off at commit: pending, and free for a flush at once.
    let mut tx = bus.begin().await.unwrap();
    tx.send(&order(2)).await.unwrap();
    bus.set_autoflush(false);
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (0, 1), "{report:?}");
    assert_eq!(outbox.len(), 1, "not sent by the auto-flush");
    assert_eq!(
        bus.flush_many(&Selection::all()).await.unwrap(),
        1,
        "taken by a flush right after the commit, not held by a lease"
    );
    assert_eq!(outbox.len(), 2);

    // The same through a recorder on the caller's own transaction.
    bus.set_autoflush(false);
    let mut tx = db.pool.begin().await.unwrap();
    let mut signals = bus.recorder();
    signals.send(&mut tx, &order(3)).await.unwrap();
    bus.set_autoflush(true);
    tx.commit().await.unwrap();
    let report = signals.after_commit().await;
    assert_eq!((report.sent, report.pending), (1, 0), "{report:?}");
    assert_eq!(outbox.len(), 3);

    let mut tx = db.pool.begin().await.unwrap();
    let mut signals = bus.recorder();
    signals.send(&mut tx, &order(4)).await.unwrap();
    bus.set_autoflush(false);
    tx.commit().await.unwrap();
    let report = signals.after_commit().await;
    assert_eq!((report.sent, report.pending), (0, 1), "{report:?}");
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 1);
    assert_eq!(outbox.len(), 4);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    db.cleanup().await;
}
