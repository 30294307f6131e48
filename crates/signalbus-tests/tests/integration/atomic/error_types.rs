//! Atomic blocks with the error types services use: `anyhow::Error`, `eyre::Report` and a
//! plain enum that implements no `std::error::Error`. Each rolls back and returns a domain
//! error as itself, at once; each still runs the block again after a database conflict
//! raised by the caller's own query, and gives up at the cap as its own type.

use super::{AtomicDb, fast, setup};
use crate::on_every_database;
use signalbus::BlockError;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

/// What the test needs of an error type besides what atomic blocks ask.
trait ErrorKind: BlockError + From<sqlx::Error> {
    /// The domain failure "insufficient funds".
    fn insufficient(balance: i64) -> Self;
    /// Whether `self` is that domain failure, as it was made.
    fn is_insufficient(&self, balance: i64) -> bool;
    /// The text of `self` (a plain enum has no `Display`).
    fn text(&self) -> String;
}

impl ErrorKind for anyhow::Error {
    fn insufficient(balance: i64) -> Self {
        anyhow::anyhow!("insufficient funds: balance {balance}")
    }
    fn is_insufficient(&self, balance: i64) -> bool {
        self.to_string() == format!("insufficient funds: balance {balance}")
    }
    fn text(&self) -> String {
        format!("{self:#}")
    }
}

impl ErrorKind for eyre::Report {
    fn insufficient(balance: i64) -> Self {
        eyre::eyre!("insufficient funds: balance {balance}")
    }
    fn is_insufficient(&self, balance: i64) -> bool {
        self.to_string() == format!("insufficient funds: balance {balance}")
    }
    fn text(&self) -> String {
        format!("{self:#}")
    }
}

/// A domain error with only `Debug` and the conversions `?` needs.
#[derive(Debug)]
enum Plain {
    Insufficient(i64),
    Bus(signalbus::Error),
}

impl From<signalbus::Error> for Plain {
    fn from(e: signalbus::Error) -> Self {
        Plain::Bus(e)
    }
}

impl From<sqlx::Error> for Plain {
    fn from(e: sqlx::Error) -> Self {
        Plain::Bus(e.into())
    }
}

impl ErrorKind for Plain {
    fn insufficient(balance: i64) -> Self {
        Plain::Insufficient(balance)
    }
    fn is_insufficient(&self, balance: i64) -> bool {
        matches!(self, Plain::Insufficient(b) if *b == balance)
    }
    fn text(&self) -> String {
        match self {
            Plain::Insufficient(b) => format!("insufficient funds: balance {b}"),
            Plain::Bus(e) => e.to_string(),
        }
    }
}

async fn conflicts_retried_domain_errors_not<DB: AtomicDb, E: ErrorKind>() {
    let (db, bus, _) = setup::<DB>(2).await;
    DB::add_accounts(&db.pool, 1, 30).await;
    let attempts = AtomicU32::new(0);
    let (attempts, pool) = (&attempts, &db.pool);

    // A conflict raised by the caller's own query (its sqlx error converted by `?`).
    let value: Result<i64, E> = bus
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
    assert_eq!(attempts.load(SeqCst), 2, "the conflict ran the block again");

    // A domain error: rolled back, returned as itself, not retried.
    attempts.store(0, SeqCst);
    let result: Result<i64, E> = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::add_balance(tx, 1, -50).await?;
                Err(E::insufficient(20))
            })
        })
        .options(fast(5))
        .await;
    let error = result.unwrap_err();
    assert!(error.is_insufficient(20), "{error:?}");
    assert_eq!(attempts.load(SeqCst), 1, "a domain error is not retried");
    assert_eq!(DB::balances(&db.pool).await, vec![(1, 20)], "rolled back");

    // Conflicts without end: given up at the cap, as the caller's type, saying so.
    attempts.store(0, SeqCst);
    let result: Result<(), E> = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::raise_conflict(tx, pool).await?;
                Ok(())
            })
        })
        .options(fast(3))
        .await;
    let text = result.unwrap_err().text();
    assert_eq!(attempts.load(SeqCst), 3);
    assert!(text.contains("after 3 attempts"), "{text}");
    db.cleanup().await;
}

async fn anyhow_errors<DB: AtomicDb>() {
    conflicts_retried_domain_errors_not::<DB, anyhow::Error>().await
}

async fn eyre_errors<DB: AtomicDb>() {
    conflicts_retried_domain_errors_not::<DB, eyre::Report>().await
}

async fn plain_enum_errors<DB: AtomicDb>() {
    conflicts_retried_domain_errors_not::<DB, Plain>().await
}

/// An error type that holds `sqlx::Error` itself (as `thiserror` users write it): signalbus
/// never sees its queries' errors, so its sources are walked when the block asks for it.
#[derive(Debug, thiserror::Error)]
enum Holding {
    #[error("insufficient funds: balance {0}")]
    Insufficient(i64),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] signalbus::Error),
}

async fn sqlx_holding_errors_with_sources_walked<DB: AtomicDb>() {
    let (db, bus, _) = setup::<DB>(2).await;
    DB::add_accounts(&db.pool, 1, 30).await;
    let attempts = AtomicU32::new(0);
    let (attempts, pool) = (&attempts, &db.pool);
    let value: Result<i64, Holding> = bus
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
        .conflicts_in_sources()
        .await;
    assert_eq!(value.unwrap(), 20);
    assert_eq!(attempts.load(SeqCst), 2, "the conflict ran the block again");

    attempts.store(0, SeqCst);
    let result: Result<i64, Holding> = bus
        .atomic(|tx| {
            Box::pin(async move {
                attempts.fetch_add(1, SeqCst);
                DB::add_balance(tx, 1, -50).await?;
                Err(Holding::Insufficient(20))
            })
        })
        .options(fast(5))
        .conflicts_in_sources()
        .await;
    assert!(
        matches!(result, Err(Holding::Insufficient(20))),
        "{result:?}"
    );
    assert_eq!(attempts.load(SeqCst), 1, "a domain error is not retried");
    db.cleanup().await;
}

on_every_database!(
    anyhow_errors,
    eyre_errors,
    plain_enum_errors,
    sqlx_holding_errors_with_sources_walked
);
