//! Nesting, isolation, panics, and the signals of retried attempts.

use super::{AtomicDb, fast, setup};
use crate::signals::order;
use crate::{on_every_database, on_server_databases};
use signalbus::atomic::{AtomicOptions, Isolation, SqliteBegin};
use signalbus::{Error, Selection};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

on_every_database!(
    nested_blocks_join_the_outer_one,
    signals_of_retried_attempts_are_sent_once,
    panic_rolls_back_and_resumes,
);
on_server_databases!(repeatable_read_by_default, write_skew_needs_serializable);

async fn nested_blocks_join_the_outer_one<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    let pool = &db.pool;

    // Inner work becomes visible only when the outer block commits.
    bus.atomic(|tx| {
        Box::pin(async move {
            DB::insert_business(tx, 1).await?;
            tx.atomic(|tx| {
                Box::pin(async move { Ok::<_, Error>(DB::insert_business(tx, 2).await?) })
            })
            .await?;
            assert_eq!(DB::count_orders(tx).await?, 2);
            assert_eq!(
                DB::count_business(pool).await,
                0,
                "not committed by the inner block"
            );
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    assert_eq!(DB::count_business(pool).await, 2);

    // An inner error, passed on, rolls back everything.
    let error = bus
        .atomic(|tx| {
            Box::pin(async move {
                DB::insert_business(tx, 3).await?;
                tx.atomic(|tx| {
                    Box::pin(async move {
                        DB::insert_business(tx, 4).await?;
                        Err::<(), _>(Error::Config("inner fails".into()))
                    })
                })
                .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert_eq!(DB::count_business(pool).await, 2);

    // An inner error that the outer block swallows still rolls back everything.
    let attempts = AtomicU32::new(0);
    let attempts = &attempts;
    let error = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::insert_business(tx, 5).await?;
                let inner = tx
                    .atomic(|_| Box::pin(async move { Err::<(), _>(Error::Config("x".into())) }))
                    .await;
                assert!(inner.is_err());
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InnerBlockFailed { .. }), "{error:?}");
    assert_eq!(attempts.swap(0, SeqCst), 1, "not a conflict: not retried");
    assert_eq!(DB::count_business(pool).await, 2);

    // A swallowed inner conflict makes the outermost block run again.
    bus.atomic(|tx| {
        Box::pin(async move {
            if attempts.fetch_add(1, SeqCst) == 0 {
                let inner = tx
                    .atomic(|tx| {
                        Box::pin(async move { Ok::<_, Error>(DB::raise_conflict(tx, pool).await?) })
                    })
                    .await;
                assert!(inner.is_err());
            } else {
                DB::insert_business(tx, 6).await?;
            }
            Ok::<_, Error>(())
        })
    })
    .options(fast(5))
    .await
    .unwrap();
    assert_eq!(attempts.load(SeqCst), 2);
    assert_eq!(DB::count_business(pool).await, 3);
    db.cleanup().await;
}

/// Each attempt records a business row and a signal; the first two then hit a conflict
/// (after writing, so a unique violation on SQLite, where a writer cannot conflict).
async fn signals_of_retried_attempts_are_sent_once<DB: AtomicDb>() {
    let (db, bus, outbox) = setup::<DB>(4).await;
    let mut conn = db.pool.acquire().await.unwrap();
    DB::kv_insert(&mut conn, "taken", 1).await.unwrap();
    drop(conn);
    let attempts = AtomicU32::new(0);
    let (attempts, pool) = (&attempts, &db.pool);
    let options = fast(5)
        .retry_on_integrity_error(true)
        .sqlite_begin(SqliteBegin::Immediate);
    let (n, delivery) = bus
        .atomic(|tx| {
            Box::pin(async move {
                let n = i64::from(attempts.fetch_add(1, SeqCst) + 1);
                DB::insert_business(tx, n).await?;
                tx.send(&order(n)).await?;
                if n < 3 {
                    if DB::NAME == "SQLite" {
                        DB::kv_insert(tx, "taken", n).await?;
                    } else {
                        DB::raise_conflict(tx, pool).await?;
                    }
                }
                Ok::<_, Error>(n)
            })
        })
        .options(options.clone())
        .delivery()
        .await
        .unwrap();
    assert_eq!(n, 3);
    let report = delivery.await;
    assert_eq!((report.sent, report.pending), (1, 0), "{report:?}");
    let messages = outbox.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let body: serde_json::Value = serde_json::from_slice(&messages[0].body).unwrap();
    assert_eq!(body["order_id"], 3);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        0
    );
    assert_eq!(outbox.len(), 1);
    assert_eq!(DB::count_business(&db.pool).await, 1);
    db.cleanup().await;
}

async fn panic_rolls_back_and_resumes<DB: AtomicDb>() {
    // One connection: the one the panicking block used must come back usable.
    let (db, bus, outbox) = setup::<DB>(1).await;
    let task = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.atomic(|tx| {
                Box::pin(async move {
                    DB::insert_business(tx, 1).await?;
                    tx.send(&order(1)).await?;
                    if DB::count_orders(tx).await? == 1 {
                        panic!("boom in an atomic block");
                    }
                    Ok::<_, Error>(())
                })
            })
            .await
        })
    };
    let joined = task.await.unwrap_err();
    assert!(joined.is_panic());
    assert_eq!(DB::count_business(&db.pool).await, 0);
    bus.atomic(|tx| Box::pin(async move { Ok::<_, Error>(DB::insert_business(tx, 2).await?) }))
        .await
        .unwrap();
    assert_eq!(DB::count_business(&db.pool).await, 1);
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    assert!(outbox.is_empty());
    db.cleanup().await;
}

/// REPEATABLE READ by default: a row committed by another connection during the block stays
/// invisible to it; READ COMMITTED on request sees it.
async fn repeatable_read_by_default<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    let pool = &db.pool;
    let id = AtomicU32::new(0);
    let id = &id;
    let mut seen = Vec::new();
    for options in [
        AtomicOptions::new(),
        AtomicOptions::new().isolation(Isolation::ReadCommitted),
    ] {
        let (before, after) = bus
            .atomic(|tx| {
                Box::pin(async move {
                    let before = DB::count_orders(tx).await?;
                    let mut other = pool.acquire().await?;
                    DB::insert_business(&mut other, i64::from(id.fetch_add(1, SeqCst))).await?;
                    drop(other);
                    Ok::<_, Error>((before, DB::count_orders(tx).await?))
                })
            })
            .options(options.clone())
            .await
            .unwrap();
        seen.push(after - before);
    }
    assert_eq!(seen, vec![0, 1]);
    db.cleanup().await;
}

/// Two "on call" accounts; each block takes itself off call if the other is still on. Under
/// REPEATABLE READ both see two on call and both leave (write skew); under SERIALIZABLE one
/// of them conflicts, runs again, sees the other gone and stays.
async fn write_skew_needs_serializable<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    DB::add_accounts(&db.pool, 2, 1).await;
    let mut results = Vec::new();
    for isolation in [Isolation::RepeatableRead, Isolation::Serializable] {
        // Both on call again (RR leaves both off).
        let mut conn = db.pool.acquire().await.unwrap();
        for (id, balance) in DB::balances(&db.pool).await {
            DB::add_balance(&mut conn, id, 1 - balance).await.unwrap();
        }
        drop(conn);
        let barrier = tokio::sync::Barrier::new(2);
        let attempts = AtomicU32::new(0);
        let options = fast(10).isolation(isolation);
        let leave = |me: i64| {
            let (bus, barrier, attempts, options) = (&bus, &barrier, &attempts, &options);
            async move {
                bus.atomic(|tx| {
                    let first = attempts.fetch_add(1, SeqCst) < 2;
                    Box::pin(async move {
                        let on_call = DB::count_positive(tx).await?;
                        if first {
                            barrier.wait().await;
                        }
                        if on_call >= 2 {
                            DB::add_balance(tx, me, -1).await?;
                        }
                        Ok::<_, Error>(())
                    })
                })
                .options(options.clone())
                .await
            }
        };
        let (a, b) = tokio::join!(leave(1), leave(2));
        a.unwrap();
        b.unwrap();
        let mut conn = db.pool.acquire().await.unwrap();
        results.push((
            DB::count_positive(&mut conn).await.unwrap(),
            attempts.load(SeqCst) > 2,
        ));
    }
    assert_eq!(results, vec![(0, false), (1, true)]);
    db.cleanup().await;
}
