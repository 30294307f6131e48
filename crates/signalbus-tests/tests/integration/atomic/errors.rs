//! Atomic blocks with the caller's own error type, and integrity-error retries (a
//! foreign-key race as well as a unique one) that only run inside a block.

use super::{AtomicDb, fast, setup};
use crate::on_every_database;
use crate::signals::order;
use signalbus::atomic::is_conflict;
use signalbus::{Error, Selection};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A service's own error: a domain failure next to the database's.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("insufficient funds: balance {balance}, wanted {wanted}")]
    InsufficientFunds { balance: i64, wanted: i64 },
    #[error(transparent)]
    Bus(#[from] Error),
}

impl From<sqlx::Error> for TransferError {
    fn from(e: sqlx::Error) -> Self {
        TransferError::Bus(e.into())
    }
}

/// A domain error rolls the block back (the write and the signal are gone), is returned as it
/// is, and is not retried.
async fn domain_error_rolls_back_unretried<DB: AtomicDb>() {
    let (db, bus, outbox) = setup::<DB>(2).await;
    DB::add_accounts(&db.pool, 1, 30).await;
    let attempts = AtomicU32::new(0);
    let attempts = &attempts;
    let result: Result<i64, TransferError> = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::add_balance(tx, 1, -50).await?;
                tx.send(&order(1)).await?;
                let balance = DB::balances_in(tx).await?[0].1;
                if balance < 0 {
                    return Err(TransferError::InsufficientFunds {
                        balance: balance + 50,
                        wanted: 50,
                    });
                }
                Ok(balance)
            })
        })
        .options(fast(5))
        .await;
    match result {
        Err(TransferError::InsufficientFunds { balance, wanted }) => {
            assert_eq!((balance, wanted), (30, 50))
        }
        other => panic!("expected the domain error, got {other:?}"),
    }
    assert_eq!(attempts.load(SeqCst), 1, "a domain error is not retried");
    assert_eq!(DB::balances(&db.pool).await, vec![(1, 30)], "rolled back");
    assert_eq!(
        bus.flush_many(&Selection::all()).await.unwrap(),
        0,
        "no signal row left"
    );
    assert!(outbox.messages().is_empty());

    // The same error type carries database conflicts, which are retried.
    let pool = &db.pool;
    attempts.store(0, SeqCst);
    let value: Result<i64, TransferError> = bus
        .atomic(|tx| {
            Box::pin(async move {
                if attempts.fetch_add(1, SeqCst) == 0 {
                    DB::raise_conflict(tx, pool).await?;
                }
                DB::add_balance(tx, 1, -10).await?;
                Ok(DB::balances_in(tx).await?[0].1)
            })
        })
        .options(fast(5))
        .await;
    assert_eq!(value.unwrap(), 20);
    assert_eq!(
        attempts.load(SeqCst),
        2,
        "the conflict inside the domain error type ran it again"
    );
    db.cleanup().await;
}

/// A child inserted against a parent that another transaction is still inserting: the
/// foreign-key violation is retried by `atomic_retrying_races` (as the original's
/// integrity-error retry does), and the next attempt sees the parent. Without it, the
/// violation is returned at once.
async fn foreign_key_race_is_retried<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(3).await;
    let pool = &db.pool;
    let attempts = AtomicU32::new(0);
    let attempts = &attempts;
    let plain: Result<(), Error> = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::insert_child(tx, 1, 7).await?;
                Ok(())
            })
        })
        .options(fast(5))
        .await;
    let error = plain.unwrap_err();
    assert!(
        !is_conflict::<DB>(&error),
        "an FK violation alone is no conflict: {error}"
    );
    assert_eq!(attempts.load(SeqCst), 1);

    // The other transaction, committing the parent once the failed attempt has rolled back
    // (before that, the attempt's locks would make it wait).
    let parent_writer: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);
    let parent_writer = &parent_writer;
    let commit_parent_later = |id: i64| {
        let pool = pool.clone();
        tokio::spawn(async move { DB::insert_parent(&pool, id).await })
    };
    let wait_for_parent = || async move {
        if let Some(writer) = parent_writer.lock().await.take() {
            writer.await.unwrap();
        }
    };

    attempts.store(0, SeqCst);
    bus.atomic(|tx| {
        Box::pin(async move {
            if attempts.fetch_add(1, SeqCst) > 0 {
                wait_for_parent().await;
            }
            let inserted = tx
                .atomic_retrying_races(|tx| {
                    Box::pin(async move { Ok::<_, Error>(DB::insert_child(tx, 2, 8).await?) })
                })
                .await;
            if inserted.is_err() {
                *parent_writer.lock().await = Some(commit_parent_later(8));
            }
            inserted?;
            Ok::<_, Error>(())
        })
    })
    .options(fast(5))
    .await
    .unwrap();
    assert_eq!(attempts.load(SeqCst), 2, "retried once the parent existed");
    assert_eq!(DB::count_rows(&db.pool, "children").await, 1);

    // The whole-block option does the same.
    attempts.store(0, SeqCst);
    bus.atomic(|tx| {
        Box::pin(async move {
            if attempts.fetch_add(1, SeqCst) > 0 {
                wait_for_parent().await;
            }
            let inserted = DB::insert_child(tx, 3, 9).await;
            if inserted.is_err() {
                *parent_writer.lock().await = Some(commit_parent_later(9));
            }
            inserted?;
            Ok::<_, Error>(())
        })
    })
    .options(fast(5))
    .retry_on_integrity_error(true)
    .await
    .unwrap();
    assert_eq!(attempts.load(SeqCst), 2);
    db.cleanup().await;
}

/// Outside an atomic block nothing could run the transaction again: the scoped retry
/// refuses to run, and the block inside it does not run.
async fn integrity_retry_refuses_outside_a_block<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(2).await;
    let ran = AtomicU32::new(0);
    let ran = &ran;
    let mut tx = bus.begin().await.unwrap();
    let result = tx
        .atomic_retrying_races(|_| {
            Box::pin(async move {
                ran.fetch_add(1, SeqCst);
                Ok::<_, Error>(())
            })
        })
        .await;
    assert!(matches!(result, Err(Error::NotInAtomicBlock)), "{result:?}");
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("inside an atomic block")
    );
    assert_eq!(ran.load(SeqCst), 0);
    tx.rollback().await.unwrap();
    db.cleanup().await;
}

/// A nested block's failure swallowed by the outer block: the caller gets
/// `InnerBlockFailed`, whose source keeps the nested error's database code.
async fn inner_failure_keeps_its_database_code<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(2).await;
    let error = bus
        .atomic(|tx| {
            Box::pin(async move {
                let inner = tx
                    .atomic(|tx| {
                        Box::pin(async move {
                            // No parent 999: a foreign-key violation.
                            Ok::<_, Error>(DB::insert_child(tx, 50, 999).await?)
                        })
                    })
                    .await;
                assert!(inner.is_err());
                Ok::<_, Error>(())
            })
        })
        .options(fast(3))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InnerBlockFailed { .. }), "{error:?}");
    let source = std::error::Error::source(&error).expect("the inner error is the source");
    assert!(source.to_string().contains("database error"), "{source}");
    let code = error.database_code().expect("the database code is kept");
    assert!(
        ["23503", "23000", "787"].contains(&code.as_str()),
        "a foreign-key violation's code, got {code}"
    );
    db.cleanup().await;
}

on_every_database!(
    domain_error_rolls_back_unretried,
    foreign_key_race_is_retried,
    integrity_retry_refuses_outside_a_block,
    inner_failure_keeps_its_database_code,
);
