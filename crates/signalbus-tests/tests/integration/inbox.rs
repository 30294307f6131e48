//! The consumer inbox on every database: a message delivered three times, and to two
//! consumers at once, has its effects applied once; a rolled-back first attempt leaves the
//! message to the next copy; consumer names are independent; old ids are pruned in batches.

use crate::common::TestBackend;
use crate::on_every_database;
use signalbus::inbox::{Inbox, Receipt};
use std::time::Duration;

/// One delivery: record the id and, the first time, apply the effect (an `orders` row with a
/// number of its own, so that an effect applied twice shows as two rows).
async fn deliver<DB: TestBackend>(
    pool: &sqlx::Pool<DB>,
    inbox: &Inbox<DB>,
    id: &str,
    effect: i64,
) -> Receipt {
    let mut tx = pool.begin().await.unwrap();
    let receipt = inbox.receive(&mut tx, id).await.unwrap();
    if receipt == Receipt::First {
        DB::insert_business(&mut tx, effect).await.unwrap();
    }
    tx.commit().await.unwrap();
    receipt
}

async fn inbox_applies_effects_once<DB: TestBackend>() {
    let db = DB::create(5).await;
    DB::create_business_table(&db.pool).await;
    let inbox = Inbox::<DB>::new("billing").unwrap();
    inbox.migrate(&db.pool).await.unwrap();
    inbox.migrate(&db.pool).await.unwrap(); // idempotent

    // The same message three times: once applied, twice skipped.
    let receipts = [
        deliver(&db.pool, &inbox, "m1", 1).await,
        deliver(&db.pool, &inbox, "m1", 2).await,
        deliver(&db.pool, &inbox, "m1", 3).await,
    ];
    assert_eq!(
        receipts,
        [Receipt::First, Receipt::Duplicate, Receipt::Duplicate]
    );
    assert_eq!(DB::count_business(&db.pool).await, 1);

    // Two consumers at once: the second waits for the first's transaction and, once that
    // committed, sees a duplicate.
    let mut first = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive(&mut first, "m2").await.unwrap(),
        Receipt::First
    );
    let (pool, other) = (db.pool.clone(), inbox.clone());
    let second = tokio::spawn(async move { deliver(&pool, &other, "m2", 11).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second copy waits for the first");
    DB::insert_business(&mut first, 10).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), Receipt::Duplicate);
    assert_eq!(DB::count_business(&db.pool).await, 2);

    // A first attempt that rolls back (its handler failed) leaves the message to the next.
    let mut failed = db.pool.begin().await.unwrap();
    assert_eq!(
        inbox.receive(&mut failed, "m3").await.unwrap(),
        Receipt::First
    );
    failed.rollback().await.unwrap();
    assert_eq!(deliver(&db.pool, &inbox, "m3", 20).await, Receipt::First);
    assert_eq!(DB::count_business(&db.pool).await, 3);

    // Another consumer name keeps its own ids.
    let audit = Inbox::<DB>::new("audit").unwrap();
    assert_eq!(deliver(&db.pool, &audit, "m1", 30).await, Receipt::First);

    // Bad input is refused before the database.
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(inbox.receive(&mut conn, "").await.is_err());
    assert!(inbox.receive(&mut conn, &"x".repeat(192)).await.is_err());
    assert!(Inbox::<DB>::with_table("billing", "bad name; drop").is_err());
    drop(conn);

    // Retention: nothing is old yet; with none, billing's 3 ids go in batches of 2, audit's
    // stays.
    assert_eq!(
        inbox
            .prune(&db.pool, Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(inbox.prune(&db.pool, Duration::ZERO, 2).await.unwrap(), 3);
    assert_eq!(
        DB::count_rows(&db.pool, signalbus::inbox::DEFAULT_INBOX_TABLE).await,
        1
    );
    db.cleanup().await;
}

on_every_database!(inbox_applies_effects_once);
