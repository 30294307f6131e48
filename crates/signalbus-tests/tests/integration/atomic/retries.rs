//! Retries: conflicting transfers, "insert if absent" races, what is not retried, the cap.

use super::{Account, AtomicDb, fast, setup};
use crate::{on_every_database, on_server_databases};
use rand::Rng;
use signalbus::atomic::{PrimaryKey, RowLock, SqliteBegin, is_conflict};
use signalbus::{Error, Transaction};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use tokio::sync::Barrier;

on_server_databases!(
    two_conflicting_transfers_both_succeed,
    insert_race_of_two_is_retried,
    insert_race_without_the_option_fails,
);
on_every_database!(
    random_concurrent_transfers_keep_totals,
    concurrent_insert_if_absent,
    non_retryable_errors_surface_at_once,
    endless_conflict_stops_at_the_cap,
);

/// Move `amount` between two accounts, locking both first in the given order.
async fn move_money<DB: AtomicDb>(
    tx: &mut Transaction<'_, DB>,
    first: i64,
    second: i64,
    from: i64,
    amount: i64,
) -> signalbus::Result<()>
where
    Account: for<'r> sqlx::FromRow<'r, DB::Row>,
    i64: PrimaryKey<DB>,
{
    tx.lock_row::<Account>(first, RowLock::UPDATE)
        .await?
        .expect("account");
    tx.lock_row::<Account>(second, RowLock::UPDATE)
        .await?
        .expect("account");
    let to = if from == first { second } else { first };
    DB::add_balance(tx, from, -amount).await?;
    DB::add_balance(tx, to, amount).await?;
    Ok(())
}

/// Each transfer locks its source, waits for the other, then locks its destination: a
/// deadlock on every database. The loser is rolled back and runs again once the winner has
/// committed (so that PostgreSQL's snapshot does not make it conflict once more); both succeed.
async fn two_conflicting_transfers_both_succeed<DB: AtomicDb>()
where
    Account: for<'r> sqlx::FromRow<'r, DB::Row>,
    i64: PrimaryKey<DB>,
{
    let (db, bus, _) = setup::<DB>(4).await;
    DB::add_accounts(&db.pool, 2, 100).await;
    let barrier = Barrier::new(2);
    let attempts = AtomicU32::new(0);
    let (committed, committed_rx) = tokio::sync::watch::channel(0u32);
    let transfer = |from: i64, to: i64, amount: i64| {
        let (bus, barrier, attempts, committed) = (&bus, &barrier, &attempts, &committed);
        let committed_rx = &committed_rx;
        async move {
            let mut first_attempt = true;
            let result = bus
                .atomic(|tx| {
                    let first = std::mem::replace(&mut first_attempt, false);
                    let mut committed_rx = committed_rx.clone();
                    Box::pin(async move {
                        attempts.fetch_add(1, SeqCst);
                        if !first {
                            committed_rx.wait_for(|n| *n >= 1).await.unwrap();
                        }
                        tx.lock_row::<Account>(from, RowLock::UPDATE).await?;
                        if first {
                            barrier.wait().await;
                        }
                        tx.lock_row::<Account>(to, RowLock::UPDATE).await?;
                        DB::add_balance(tx, from, -amount).await?;
                        DB::add_balance(tx, to, amount).await?;
                        Ok::<_, Error>(from)
                    })
                })
                .options(fast(10))
                .await;
            committed.send_modify(|n| *n += 1);
            result
        }
    };
    let (a, b) = tokio::join!(transfer(1, 2, 10), transfer(2, 1, 25));
    assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
    assert_eq!(
        attempts.load(SeqCst),
        3,
        "one of the two must have run again"
    );
    assert_eq!(DB::balances(&db.pool).await, vec![(1, 115), (2, 85)]);
    db.cleanup().await;
}

async fn random_concurrent_transfers_keep_totals<DB: AtomicDb>()
where
    Account: for<'r> sqlx::FromRow<'r, DB::Row>,
    i64: PrimaryKey<DB>,
{
    const ACCOUNTS: i64 = 10;
    let (db, bus, _) = setup::<DB>(10).await;
    DB::add_accounts(&db.pool, ACCOUNTS, 1000).await;
    let mut rng = rand::rng();
    let transfers: Vec<(i64, i64, i64)> = (0..200)
        .map(|_| {
            let from = rng.random_range(1..=ACCOUNTS);
            let to = (from + rng.random_range(1..ACCOUNTS) - 1) % ACCOUNTS + 1;
            (from, to, rng.random_range(1..=50))
        })
        .collect();
    let mut expected: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|id| (id, 1000)).collect();
    for &(from, to, amount) in &transfers {
        *expected.get_mut(&from).unwrap() -= amount;
        *expected.get_mut(&to).unwrap() += amount;
    }
    let attempts = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = transfers
        .iter()
        .enumerate()
        .map(|(i, &(from, to, amount))| {
            let (bus, attempts) = (bus.clone(), attempts.clone());
            tokio::spawn(async move {
                let attempts = &attempts;
                // Locks in id order: conflicts, but no deadlocks.
                let (first, second) = (from.min(to), from.max(to));
                bus.atomic(|tx| {
                    Box::pin(async move {
                        attempts.fetch_add(1, SeqCst);
                        move_money(tx, first, second, from, amount).await
                    })
                })
                .options(fast(1000).sqlite_begin(sqlite_begin(i)))
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let balances: BTreeMap<i64, i64> = DB::balances(&db.pool).await.into_iter().collect();
    assert_eq!(balances, expected);
    assert_eq!(balances.values().sum::<i64>(), ACCOUNTS * 1000);
    eprintln!(
        "{}: 200 transfers in {} attempts",
        DB::NAME,
        attempts.load(SeqCst)
    );
    db.cleanup().await;
}

/// Half of the SQLite blocks begin IMMEDIATE (the default: no upgrade conflicts), half
/// DEFERRED (SQLITE_BUSY_SNAPSHOT conflicts, retried).
fn sqlite_begin(i: usize) -> SqliteBegin {
    if i.is_multiple_of(2) {
        SqliteBegin::Immediate
    } else {
        SqliteBegin::Deferred
    }
}

/// 50 callers insert the same key if it is absent: half with the block option, half with a
/// scoped `atomic_retrying_races`. Every caller gets the one row's value.
async fn concurrent_insert_if_absent<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(10).await;
    let tasks: Vec<_> = (0..50i64)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let options = fast(100)
                    .retry_on_integrity_error(i % 2 == 0)
                    .sqlite_begin(sqlite_begin(usize::try_from(i / 2).unwrap()));
                bus.atomic(|tx| {
                    Box::pin(async move {
                        if let Some(v) = DB::kv_get(tx, "the-key").await? {
                            return Ok::<_, Error>(v);
                        }
                        if i % 2 == 0 {
                            DB::kv_insert(tx, "the-key", i).await?;
                        } else {
                            tx.atomic_retrying_races(|tx| {
                                Box::pin(async move {
                                    Ok::<_, Error>(DB::kv_insert(tx, "the-key", i).await?)
                                })
                            })
                            .await?;
                        }
                        Ok(i)
                    })
                })
                .options(options.clone())
                .await
            })
        })
        .collect();
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap().expect("every caller succeeds"));
    }
    assert_eq!(DB::count_rows(&db.pool, "kv").await, 1);
    let mut conn = db.pool.acquire().await.unwrap();
    let stored = DB::kv_get(&mut conn, "the-key").await.unwrap().unwrap();
    drop(conn);
    assert!(
        values.iter().all(|&v| v == stored),
        "{values:?} vs {stored}"
    );
    db.cleanup().await;
}

/// Both callers see the key absent, then both insert: the second one's unique violation
/// makes it run again, and then it finds the row.
async fn insert_race_of_two_is_retried<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    let (barrier, attempts) = (Barrier::new(2), AtomicU32::new(0));
    let caller = |v: i64| {
        let (bus, barrier, attempts) = (&bus, &barrier, &attempts);
        async move {
            let options = fast(10).retry_on_integrity_error(true);
            bus.atomic(|tx| {
                let first = attempts.fetch_add(1, SeqCst) < 2;
                Box::pin(async move {
                    let found = DB::kv_get(tx, "k").await?;
                    if first {
                        barrier.wait().await;
                    }
                    match found {
                        Some(v) => Ok::<_, Error>(v),
                        None => {
                            DB::kv_insert(tx, "k", v).await?;
                            Ok(v)
                        }
                    }
                })
            })
            .options(options.clone())
            .await
        }
    };
    let (a, b) = tokio::join!(caller(1), caller(2));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(attempts.load(SeqCst), 3);
    assert_eq!(DB::count_rows(&db.pool, "kv").await, 1);
    db.cleanup().await;
}

/// The same race without the option: the loser gets the unique violation, after one attempt.
async fn insert_race_without_the_option_fails<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    let (barrier, attempts) = (Barrier::new(2), AtomicU32::new(0));
    let caller = |v: i64| {
        let (bus, barrier, attempts) = (&bus, &barrier, &attempts);
        async move {
            bus.atomic(|tx| {
                Box::pin(async move {
                    attempts.fetch_add(1, SeqCst);
                    let found = DB::kv_get(tx, "k").await?;
                    barrier.wait().await;
                    if found.is_none() {
                        DB::kv_insert(tx, "k", v).await?;
                    }
                    Ok(v)
                })
            })
            .options(fast(10))
            .await
        }
    };
    let (a, b) = tokio::join!(caller(1), caller(2));
    assert_eq!(attempts.load(SeqCst), 2);
    let error = match (a, b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("exactly one caller must fail: {other:?}"),
    };
    match &error {
        Error::Database(sqlx::Error::Database(e)) => {
            assert!(e.is_unique_violation(), "{error}")
        }
        other => panic!("expected the unique violation, got {other:?}"),
    }
    db.cleanup().await;
}

async fn non_retryable_errors_surface_at_once<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    let mut conn = db.pool.acquire().await.unwrap();
    DB::kv_insert(&mut conn, "taken", 1).await.unwrap();
    drop(conn);

    let attempts = AtomicU32::new(0);
    let attempts = &attempts;
    let error = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::kv_insert(tx, "taken", 2).await?;
                Ok(())
            })
        })
        .options(fast(10))
        .await
        .unwrap_err();
    assert_eq!(attempts.swap(0, SeqCst), 1, "{error}");
    assert!(!is_conflict::<DB>(&error));
    assert!(matches!(&error, Error::Database(sqlx::Error::Database(e)) if e.is_unique_violation()));

    let error = bus
        .atomic(|_tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                Err::<(), _>(Error::Config("not a conflict".into()))
            })
        })
        .options(fast(10))
        .await
        .unwrap_err();
    assert_eq!(attempts.load(SeqCst), 1);
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    db.cleanup().await;
}

async fn endless_conflict_stops_at_the_cap<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(4).await;
    let attempts = AtomicU32::new(0);
    let (attempts, pool) = (&attempts, &db.pool);
    let error = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::raise_conflict(tx, pool).await?;
                Ok::<_, Error>(())
            })
        })
        .options(fast(4))
        .await
        .unwrap_err();
    assert_eq!(attempts.load(SeqCst), 4);
    assert!(
        error.to_string().contains("after 4 attempts"),
        "the error says how many attempts: {error}"
    );
    match &error {
        Error::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 4);
            assert!(is_conflict::<DB>(&**last), "{last}");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(error.database_code().is_some());
    db.cleanup().await;
}
