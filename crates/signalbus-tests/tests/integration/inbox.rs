//! The consumer inbox on every database: a message delivered three times, and to two
//! consumers at once, has its effects applied once; a rolled-back first attempt leaves the
//! message to the next copy; consumer names are independent; old ids are pruned in batches
//! (each statement deletes at most the batch).

use crate::common::{TestBackend, TestDb};
use crate::on_every_database;
use signalbus::inbox::{DEFAULT_INBOX_TABLE, Inbox, Receipt};
use std::sync::{Arc, Mutex};
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

/// `inbox.prune(pool, Duration::ZERO, batch)` on a pool of its own, whose one connection
/// notes how many ids the table holds each time prune takes it for its next statement: prune's
/// total, and the rows each statement deleted, in order.
async fn prune_batches<DB: TestBackend>(
    db: &TestDb<DB>,
    inbox: &Inbox<DB>,
    batch: u32,
) -> (u64, Vec<i64>) {
    let counts = Arc::new(Mutex::new(Vec::new()));
    let (main, log) = (db.pool.clone(), counts.clone());
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(1)
        .before_acquire(move |_, _| {
            let (main, log) = (main.clone(), log.clone());
            Box::pin(async move {
                let left = DB::count_rows(&main, DEFAULT_INBOX_TABLE).await;
                log.lock().unwrap().push(left);
                Ok::<_, sqlx::Error>(true)
            })
        })
        .connect(&db.url)
        .await
        .unwrap();
    // `before_acquire` runs when a connection is taken from the idle ones, not when it is
    // opened: open the one connection now (and forget what this acquire noted, if anything),
    // so that each of prune's statements is noted once.
    drop(pool.acquire().await.unwrap());
    counts.lock().unwrap().clear();
    let total = inbox.prune(&pool, Duration::ZERO, batch).await.unwrap();
    pool.close().await;
    let mut left = counts.lock().unwrap().clone();
    left.push(DB::count_rows(&db.pool, DEFAULT_INBOX_TABLE).await);
    (total, left.windows(2).map(|w| w[0] - w[1]).collect())
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

    // Retention: nothing is old yet; with none, billing's 3 ids go in batches of 2 (two
    // statements: 2 ids, then 1), audit's stays.
    assert_eq!(
        inbox
            .prune(&db.pool, Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (pruned, batches) = prune_batches(&db, &inbox, 2).await;
    assert_eq!(pruned, 3);
    assert_eq!(batches, [2, 1], "ids deleted per statement");
    assert_eq!(DB::count_rows(&db.pool, DEFAULT_INBOX_TABLE).await, 1);
    db.cleanup().await;
}

on_every_database!(inbox_applies_effects_once);
