//! Atomic blocks: run a closure in a transaction, commit when it returns `Ok`, roll back when
//! it returns `Err` or panics, and run it again when the database reports a conflict with a
//! concurrent transaction. Plus row helpers ([`Record`], [`Transaction::get_row`],
//! [`Transaction::lock_row`]) for the usual "read the row, decide, write" procedures.
//!
//! ```no_run
//! use signalbus_core::{Result, SignalBus};
//! use sqlx::Postgres;
//!
//! async fn withdraw(bus: &SignalBus<Postgres>, account: i64, amount: i64) -> Result<i64> {
//!     bus.atomic(|tx| {
//!         Box::pin(async move {
//!             let balance: i64 =
//!                 sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1 FOR UPDATE")
//!                     .bind(account)
//!                     .fetch_one(&mut **tx)
//!                     .await?;
//!             sqlx::query("UPDATE accounts SET balance = $2 WHERE id = $1")
//!                 .bind(account)
//!                 .bind(balance - amount)
//!                 .execute(&mut **tx)
//!                 .await?;
//!             // tx.send(&Withdrawn { .. }).await?;  — sent after the final commit only
//!             Ok(balance - amount)
//!         })
//!     })
//!     .await
//! }
//! ```
//!
//! # Design
//! * **The closure** has the type `for<'t> FnMut(&'t mut Transaction<'a, DB>) ->
//!   BoxFuture<'t, Result<T>>`: callers write `|tx| Box::pin(async move { .. })`, or
//!   `|tx| Box::pin(my_procedure(tx, args))`. It is `FnMut` because it may run several times,
//!   so values it moves into its future must be `Copy` or cloned per attempt; it may borrow
//!   from the caller's scope (`'a`). Async closures (`AsyncFnMut`) would read better, but with
//!   Rust 1.95 their futures cannot be proven `Send` (not even for one concrete database), which
//!   `tokio::spawn` needs ("implementation of `AsyncFnMut` is not general enough").
//! * **Retries**: a conflict ([`is_conflict`]) rolls the attempt back and runs the closure
//!   again after a [`Backoff`] wait (full jitter, no wait before the first retry, as the
//!   original), at most [`Backoff::max_attempts`] attempts in all; then
//!   [`Error::RetriesExhausted`] says how many were made. Any other error is returned at once.
//!   A commit that fails with a conflict is retried too.
//! * **Signals** sent in an attempt are rows of that attempt's transaction: a rolled-back
//!   attempt leaves none, and only the committed attempt hands its signals to the auto-flush.
//! * **Nesting**: [`Transaction::atomic`] runs a block inside the caller's transaction; the
//!   outermost block alone commits, rolls back and retries. An inner block that fails marks
//!   the whole transaction: even if the outer closure swallows the error and returns `Ok`, the
//!   transaction is rolled back (and retried, if the inner failure was a conflict) rather than
//!   committed with part of its work missing; the caller then gets
//!   [`Error::InnerBlockFailed`].
//! * **Procedures** that must work alone and inside a larger block take
//!   `tx: &mut Transaction<'_, DB>`: the entry point runs
//!   `bus.atomic(|tx| Box::pin(transfer(tx, a, b, 10)))`, an enclosing block
//!   `tx.atomic(|tx| Box::pin(transfer(tx, a, b, 10)))`.
//!   Inside a block, use `tx.atomic`, not `bus.atomic`: the latter starts an independent
//!   transaction on another connection, which may wait for locks this one holds.
//! * **Tracing**: each attempt runs in a `debug` span `atomic{attempt=n}` (so the block's own
//!   events show it); every retry is a `debug` event with the attempt number, the wait and
//!   the error; a block that commits after retries reports its attempts; giving up is a
//!   `warn`.
//! * **Isolation**: REPEATABLE READ by default on PostgreSQL and MySQL/MariaDB, as the
//!   original. SQLite has no isolation levels; blocks start with `BEGIN IMMEDIATE` by default,
//!   so that a block that reads and then writes waits for the write lock up front (honouring
//!   the busy timeout) instead of failing with SQLITE_BUSY when it upgrades.
//! * **MariaDB caveat**: its REPEATABLE READ does not detect lost updates on plain reads
//!   unless `innodb_snapshot_isolation=ON` (MariaDB ≥ 11.6 default); read the rows you are
//!   going to change with [`Transaction::lock_row`] (`FOR UPDATE`), which is right on every
//!   database anyway.
//! * **Panics** roll the transaction back, then the panic continues.

mod dialect;
mod retryable;
mod rows;

pub use dialect::AtomicBackend;
pub use retryable::is_conflict;
pub use rows::{LockWait, PrimaryKey, Record, RowLock, get_row, lock_row};

use crate::bus::SignalBus;
use crate::error::{Error, Result};
use crate::publisher::Backoff;
use crate::transaction::{Delivery, Transaction};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tracing::Instrument;

/// The future an atomic block's closure returns: `Box::pin(async move { .. })`.
pub type AtomicFuture<'t, T> = BoxFuture<'t, Result<T>>;

/// Transaction isolation level of an atomic block (PostgreSQL and MySQL/MariaDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// Whatever the database or connection is configured with.
    DatabaseDefault,
    /// READ COMMITTED.
    ReadCommitted,
    /// REPEATABLE READ, the default (snapshot isolation on PostgreSQL).
    #[default]
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

/// How an atomic block begins its transaction on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteBegin {
    /// `BEGIN DEFERRED`: locks on first use; a reader that later writes may fail with
    /// SQLITE_BUSY (and be retried). Best for blocks that only read.
    Deferred,
    /// `BEGIN IMMEDIATE`, the default: takes the write lock at once, waiting up to the busy
    /// timeout.
    #[default]
    Immediate,
    /// `BEGIN EXCLUSIVE`.
    Exclusive,
}

/// How an atomic block runs: isolation, retries, which errors are retried.
#[derive(Debug, Clone)]
pub struct AtomicOptions {
    pub(crate) isolation: Isolation,
    pub(crate) sqlite_begin: SqliteBegin,
    pub(crate) backoff: Backoff,
    pub(crate) unique_races: bool,
}

impl Default for AtomicOptions {
    fn default() -> Self {
        AtomicOptions {
            isolation: Isolation::default(),
            sqlite_begin: SqliteBegin::default(),
            backoff: Backoff {
                max_attempts: 8,
                base: Duration::from_millis(20),
                max: Duration::from_secs(2),
                wait_before_first_retry: false,
            },
            unique_races: false,
        }
    }
}

impl AtomicOptions {
    /// The defaults: REPEATABLE READ, `BEGIN IMMEDIATE` on SQLite, 8 attempts, waits of up to
    /// 20 ms doubling to at most 2 s, no wait before the first retry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Isolation level on PostgreSQL and MySQL/MariaDB.
    pub fn isolation(mut self, level: Isolation) -> Self {
        self.isolation = level;
        self
    }

    /// How the transaction begins on SQLite.
    pub fn sqlite_begin(mut self, begin: SqliteBegin) -> Self {
        self.sqlite_begin = begin;
        self
    }

    /// Number of attempts and waits between them.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.backoff.max_attempts = attempts.max(1);
        self
    }

    /// Also retry when a unique or primary-key constraint is violated anywhere in the block:
    /// the "insert if absent" race, where the next attempt sees the row the other transaction
    /// inserted. [`Transaction::retry_on_unique_violation`] does the same for a part of a
    /// block only.
    pub fn retry_on_unique_violation(mut self, on: bool) -> Self {
        self.unique_races = on;
        self
    }
}

/// Failure of a nested block, recorded in the transaction for the outermost block.
#[derive(Debug, Default)]
pub(crate) struct BlockState {
    failure: Option<InnerFailure>,
}

#[derive(Debug)]
struct InnerFailure {
    reason: String,
    conflict: bool,
}

impl BlockState {
    fn record(&mut self, error: &Error, conflict: bool) {
        match &mut self.failure {
            Some(first) => first.conflict |= conflict,
            None => {
                self.failure = Some(InnerFailure {
                    reason: error.to_string(),
                    conflict,
                })
            }
        }
    }
}

impl<DB: AtomicBackend> SignalBus<DB> {
    /// Run `block` in a transaction with the default [`AtomicOptions`]; see the
    /// [module docs](crate::atomic). Returns the block's value once the transaction has
    /// committed; its signals are then handed to the auto-flush.
    pub async fn atomic<'a, T, F>(&self, block: F) -> Result<T>
    where
        F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T>,
    {
        Ok(self
            .atomic_with_delivery(&AtomicOptions::default(), block)
            .await?
            .0)
    }

    /// Run `block` in a transaction with `options`.
    pub async fn atomic_with<'a, T, F>(&self, options: &AtomicOptions, block: F) -> Result<T>
    where
        F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T>,
    {
        Ok(self.atomic_with_delivery(options, block).await?.0)
    }

    /// Run `block` in a transaction with `options`; also returns the [`Delivery`] of the
    /// committed attempt's signals, to await when the caller must know they were sent.
    pub async fn atomic_with_delivery<'a, T, F>(
        &self,
        options: &AtomicOptions,
        mut block: F,
    ) -> Result<(T, Delivery)>
    where
        F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T>,
    {
        let max_attempts = options.backoff.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let span = tracing::debug_span!("atomic", attempt);
            let error = match self
                .atomic_attempt(options, &mut block)
                .instrument(span)
                .await
            {
                Ok(done) => {
                    if attempt > 1 {
                        tracing::debug!(attempts = attempt, "atomic block committed");
                    }
                    return Ok(done);
                }
                Err((error, false)) => return Err(error),
                Err((error, true)) => error,
            };
            if attempt >= max_attempts {
                tracing::warn!(attempts = attempt, %error, "atomic block gave up");
                return Err(Error::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            let wait = options.backoff.delay(attempt);
            tracing::debug!(attempt, ?wait, %error, "atomic block conflicted, retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt; the error comes with whether it is a conflict worth another attempt.
    async fn atomic_attempt<'a, T, F>(
        &self,
        options: &AtomicOptions,
        block: &mut F,
    ) -> Result<(T, Delivery), (Error, bool)>
    where
        F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T>,
    {
        let conflict = |e: &Error| retryable::classify::<DB>(e, options.unique_races);
        let tx = match DB::begin_atomic(self.pool(), options).await {
            Ok(tx) => tx,
            Err(e) => {
                let c = conflict(&e);
                return Err((e, c));
            }
        };
        let mut tx: Transaction<'a, DB> = self.wrap(tx);
        let outcome = AssertUnwindSafe(block(&mut tx)).catch_unwind().await;
        let inner = tx.atomic.failure.take();
        match outcome {
            Err(panic) => {
                let _ = tx.rollback().await;
                std::panic::resume_unwind(panic)
            }
            Ok(Ok(value)) => match inner {
                None => match tx.commit().await {
                    Ok(delivery) => Ok((value, delivery)),
                    Err(e) => {
                        let c = conflict(&e);
                        Err((e, c))
                    }
                },
                Some(inner) => {
                    let _ = tx.rollback().await;
                    Err((
                        Error::InnerBlockFailed {
                            reason: inner.reason,
                        },
                        inner.conflict,
                    ))
                }
            },
            Ok(Err(e)) => {
                // Rolling back is best effort: the connection may be gone, and dropping an
                // open sqlx transaction rolls it back anyway.
                let _ = tx.rollback().await;
                let c = conflict(&e) || inner.is_some_and(|i| i.conflict);
                Err((e, c))
            }
        }
    }
}

impl<'c, DB: AtomicBackend> Transaction<'c, DB> {
    /// Run a nested atomic block in this transaction: the outermost block commits, rolls back
    /// and retries. When `block` fails, the whole transaction will be rolled back, even if the
    /// caller goes on after the error.
    pub async fn atomic<T, F>(&mut self, block: F) -> Result<T>
    where
        F: for<'t> FnOnce(&'t mut Transaction<'c, DB>) -> AtomicFuture<'t, T>,
    {
        let result = block(self).await;
        if let Err(e) = &result {
            let conflict = retryable::classify::<DB>(e, false);
            self.atomic.record(e, conflict);
        }
        result
    }

    /// Like [`Transaction::atomic`], and a unique or primary-key violation in `block` makes
    /// the outermost block run again: the "insert if absent" race. Put the insert that may
    /// race in here; the next attempt sees the row the other transaction inserted.
    pub async fn retry_on_unique_violation<T, F>(&mut self, block: F) -> Result<T>
    where
        F: for<'t> FnOnce(&'t mut Transaction<'c, DB>) -> AtomicFuture<'t, T>,
    {
        let result = block(self).await;
        if let Err(e) = &result {
            let conflict = retryable::classify::<DB>(e, true);
            self.atomic.record(e, conflict);
        }
        result
    }
}
