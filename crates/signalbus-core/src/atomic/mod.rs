//! Atomic blocks: run a closure in a transaction, commit when it returns `Ok`, roll back when
//! it returns `Err` or panics, and run it again when the database reports a conflict with a
//! concurrent transaction. Plus row helpers ([`TableRow`], [`Transaction::get_row`](crate::Transaction::get_row),
//! [`Transaction::lock_row`](crate::Transaction::lock_row)) for the usual "read the row, decide, write" procedures.
//!
//! The block returns the caller's own error type (any `E: From<signalbus::Error> + Debug`:
//! a `thiserror` enum, `anyhow::Error`, `eyre::Report`, a plain enum; see [`BlockError`]), so
//! a domain error rolls the block back without being dressed up as a signalbus error:
//!
//! ```no_run
//! use signalbus_core::{Isolation, SignalBus};
//! use sqlx::Postgres;
//!
//! #[derive(Debug, thiserror::Error)]
//! enum WithdrawError {
//!     #[error("insufficient funds: balance {0}")]
//!     InsufficientFunds(i64),
//!     #[error(transparent)]
//!     Db(#[from] signalbus_core::Error),
//! }
//!
//! impl From<sqlx::Error> for WithdrawError {
//!     fn from(e: sqlx::Error) -> Self {
//!         WithdrawError::Db(e.into())
//!     }
//! }
//!
//! async fn withdraw(
//!     bus: &SignalBus<Postgres>,
//!     account: i64,
//!     amount: i64,
//! ) -> Result<i64, WithdrawError> {
//!     bus.atomic(|tx| {
//!         Box::pin(async move {
//!             let balance: i64 =
//!                 sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1 FOR UPDATE")
//!                     .bind(account)
//!                     .fetch_one(&mut **tx)
//!                     .await?;
//!             if balance < amount {
//!                 return Err(WithdrawError::InsufficientFunds(balance)); // rolled back
//!             }
//!             sqlx::query("UPDATE accounts SET balance = $2 WHERE id = $1")
//!                 .bind(account)
//!                 .bind(balance - amount)
//!                 .execute(&mut **tx)
//!                 .await?;
//!             // tx.send(&Withdrawn { .. }).await?;  — sent after the final commit only
//!             Ok(balance - amount)
//!         })
//!     })
//!     .isolation(Isolation::Serializable)
//!     .max_attempts(5)
//!     .await
//! }
//! ```
//!
//! # Design
//! * **One entry point**, [`SignalBus::atomic`](crate::SignalBus::atomic), returns an [`Atomic`] builder: options
//!   (isolation, attempts and backoff, integrity-error retries) are methods on it, and
//!   awaiting it runs the block. [`Atomic::wait_for_delivery`] also waits until the
//!   committed signals are sent and returns their [`DeliveryReport`](crate::DeliveryReport); [`Atomic::delivery`]
//!   returns the [`Delivery`](crate::Delivery) to await later.
//! * **The closure** has the type `for<'t> FnMut(&'t mut Transaction<'a, DB>) ->
//!   BoxFuture<'t, Result<T, E>>`: callers write `|tx| Box::pin(async move { .. })`, or
//!   `|tx| Box::pin(my_procedure(tx, args))`. It is `FnMut` because it may run several times,
//!   so values it moves into its future must be `Copy` or cloned per attempt; it may borrow
//!   from the caller's scope (`'a`). Async closures (`async |tx| ..`, `AsyncFnMut`) would read
//!   better, but with Rust 1.95 the future of an async closure that borrows its argument
//!   cannot be proven `Send` (not even for one concrete database): the compiler reports
//!   "implementation of `AsyncFnMut` is not general enough" as soon as the block is awaited
//!   inside `tokio::spawn`, which every server does. `Box::pin` names the future's type and
//!   its `Send` bound, so it stays until the compiler can express that bound
//!   (return-type notation).
//! * **Errors**: the block's error type `E` is the caller's; signalbus and sqlx errors reach it
//!   through `From`. Conflicts are found inside `E` when its type shows its causes, and
//!   otherwise where signalbus saw the database error ([`BlockError`] says which).
//! * **Retries**: a conflict ([`is_conflict`]) rolls the attempt back and runs the closure
//!   again after a [`Backoff`](crate::publisher::Backoff) wait (full jitter, no wait before the first retry, as the
//!   original), at most [`Backoff::max_attempts`](crate::publisher::Backoff::max_attempts) attempts in all; then the caller gets
//!   [`Error::RetriesExhausted`](crate::Error::RetriesExhausted) (converted into `E`), which says how many were made and
//!   keeps the last attempt's error as its source. Any other error is returned at once, as
//!   it is. A commit that fails with a conflict is retried too.
//! * **Integrity races**: [`Atomic::retry_on_integrity_error`] (the whole block) and
//!   [`Transaction::atomic_retrying_races`](crate::Transaction::atomic_retrying_races) (a part of it) also retry unique and
//!   foreign-key violations: an "insert if absent" that lost the race, or a child inserted
//!   against a parent that another transaction is inserting. Like the original, the scoped
//!   form refuses to run outside an atomic block ([`Error::NotInAtomicBlock`](crate::Error::NotInAtomicBlock)): without a
//!   block around it, nothing would run the transaction again.
//! * **Signals** sent in an attempt are rows of that attempt's transaction: a rolled-back
//!   attempt leaves none, and only the committed attempt hands its signals to the auto-flush.
//! * **Nesting**: [`Transaction::atomic`](crate::Transaction::atomic) runs a block inside the caller's transaction; the
//!   outermost block alone commits, rolls back and retries. An inner block that fails marks
//!   the whole transaction: even if the outer closure swallows the error and returns `Ok`, the
//!   transaction is rolled back (and retried, if the inner failure was a conflict) rather than
//!   committed with part of its work missing; the caller then gets
//!   [`Error::InnerBlockFailed`](crate::Error::InnerBlockFailed), whose source keeps the inner error's message and database
//!   code.
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
//!   going to change with [`Transaction::lock_row`](crate::Transaction::lock_row) (`FOR UPDATE`), which is right on every
//!   database anyway.
//! * **Panics** roll the transaction back, then the panic continues.

mod block;
mod retryable;
mod rows;

pub use crate::locking::{Isolation, LockWait, RowLock, SqliteBegin};
pub use block::{Atomic, AtomicFuture, AtomicOptions};
pub use retryable::{BlockError, is_conflict};
pub use rows::{PrimaryKey, TableRow, get_row, lock_row};
