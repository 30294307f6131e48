//! Signals written inside a sea-orm transaction, on every database: a commit sends exactly
//! the transaction's signals, a rollback none, a bus that is down leaves them pending and a
//! later flush sends them, with the same `Delivery` reports as through sqlx.

use crate::common::TestBackend;
use crate::on_every_database;
use sea_orm::{ConnectionTrait, TransactionTrait};
use signalbus::SignalBus;
use signalbus::publisher::MemoryPublisher;

#[derive(Debug, serde::Serialize, signalbus::Signal)]
#[signal(name = "orm_event", table = "orm_event")]
struct OrmEvent {
    n: i64,
}

async fn seaorm_transactions<DB: TestBackend>() {
    let db = DB::create(5).await;
    DB::create_business_table(&db.pool).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrmEvent>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let orm = sea_orm::Database::connect(db.url.as_str()).await.unwrap();

    // A commit sends the transaction's signals, and only those.
    let txn = orm.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO orders (id, note) VALUES (1, 'x')")
        .await
        .unwrap();
    let mut signals = bus.recorder();
    for n in 0..2 {
        signalbus::seaorm::send(&txn, &mut signals, &OrmEvent { n })
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    let report = signals.after_commit().await;
    assert_eq!((report.sent, report.pending), (2, 0), "{report:?}");
    assert_eq!(outbox.len(), 2);
    assert_eq!(DB::count_rows(&db.pool, "orm_event").await, 0);

    // A rollback sends nothing, even when told the transaction committed.
    let txn = orm.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO orders (id, note) VALUES (2, 'x')")
        .await
        .unwrap();
    let mut signals = bus.recorder();
    signalbus::seaorm::send(&txn, &mut signals, &OrmEvent { n: 9 })
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    let report = signals.after_commit().await;
    assert_eq!(report.sent, 0, "{report:?}");
    assert_eq!(outbox.len(), 2);
    assert_eq!(DB::count_business(&db.pool).await, 1);
    assert_eq!(DB::count_rows(&db.pool, "orm_event").await, 0);

    // The bus is down: committed, pending; a flush sends them later.
    outbox.set_down(true);
    let txn = orm.begin().await.unwrap();
    let mut signals = bus.recorder();
    for n in 10..12 {
        signalbus::seaorm::send(&txn, &mut signals, &OrmEvent { n })
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    let report = signals.after_commit().await;
    assert_eq!((report.sent, report.pending), (0, 2), "{report:?}");
    assert!(report.error.is_some());
    assert_eq!(DB::count_rows(&db.pool, "orm_event").await, 2);
    outbox.set_down(false);
    crate::common::flush_until(&bus, 2).await;
    assert_eq!(DB::count_rows(&db.pool, "orm_event").await, 0);
    assert_eq!(crate::common::sent_numbers(&outbox), [0, 1, 10, 11]);
    orm.close().await.unwrap();
    bus.close(std::time::Duration::from_secs(5)).await;
    db.cleanup().await;
}

on_every_database!(seaorm_transactions);
