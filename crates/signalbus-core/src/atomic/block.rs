//! The atomic block: its options, its builder, and the attempts that run it.

use super::retryable::{self, BlockError};
use crate::delivery::{Delivery, DeliveryReport};
use crate::engine::Engine;
use crate::error::Error;
use crate::locking::{Isolation, SqliteBegin};
use crate::publisher::Backoff;
use crate::seen::{self, Seen};
use crate::storage::{Backend, begin};
use crate::transaction::{Recorder, Transaction};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tracing::Instrument;

/// The future an atomic block's closure returns: `Box::pin(async move { .. })`.
pub type AtomicFuture<'t, T, E = Error> = BoxFuture<'t, Result<T, E>>;

/// How an atomic block runs: isolation, retries, which errors are retried. The methods of
/// [`Atomic`] set the same; pass a prepared value with [`Atomic::options`].
///
/// ```
/// use signalbus_core::{AtomicOptions, Isolation};
///
/// // Shared by every block of a service: SERIALIZABLE, up to 10 attempts.
/// let options = AtomicOptions::new()
///     .isolation(Isolation::Serializable)
///     .max_attempts(10);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct AtomicOptions {
    pub(crate) isolation: Isolation,
    pub(crate) sqlite_begin: SqliteBegin,
    pub(crate) backoff: Backoff,
    pub(crate) integrity_races: bool,
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
            integrity_races: false,
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

    /// Also retry when a unique or foreign-key constraint is violated anywhere in the block:
    /// the races of concurrent inserts, where the next attempt sees what the other
    /// transaction committed. [`Transaction::atomic_retrying_races`] does the same for a
    /// part of a block only.
    pub fn retry_on_integrity_error(mut self, on: bool) -> Self {
        self.integrity_races = on;
        self
    }
}

/// The types an [`Atomic`] carries without holding values of them.
type Types<'a, T, E> = fn(&'a ()) -> (T, E);

/// An atomic block to run, with its options; created by [`SignalBus::atomic`](crate::SignalBus::atomic), run by
/// awaiting it. Its output is the block's value once the transaction has committed (the
/// signals are then handed to the auto-flush).
#[must_use = "an atomic block does nothing until it is awaited"]
pub struct Atomic<'b, 'a, DB: Backend, T, E, F> {
    engine: &'b Engine<DB>,
    block: F,
    options: AtomicOptions,
    /// How to find a conflict in the block's error, when its sources are walked.
    sources: Option<Sources<E>>,
    _types: PhantomData<Types<'a, T, E>>,
}

/// Whether a block's error (with integrity races counted or not) is a conflict.
type Sources<E> = fn(&E, bool) -> bool;

impl<'b, 'a, DB, T, E, F> Atomic<'b, 'a, DB, T, E, F>
where
    DB: Backend,
    T: Send + 'b,
    E: BlockError,
    F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E> + Send + 'b,
    'a: 'b,
{
    /// Change the options with `f`, one of [`AtomicOptions`]' setters.
    fn with(mut self, f: impl FnOnce(AtomicOptions) -> AtomicOptions) -> Self {
        self.options = f(self.options);
        self
    }

    /// Isolation level on PostgreSQL and MySQL/MariaDB (default REPEATABLE READ).
    pub fn isolation(self, level: Isolation) -> Self {
        self.with(|o| o.isolation(level))
    }

    /// How the transaction begins on SQLite (default `BEGIN IMMEDIATE`).
    pub fn sqlite_begin(self, begin: SqliteBegin) -> Self {
        self.with(|o| o.sqlite_begin(begin))
    }

    /// Attempts in all, the first included (default 8, at least 1).
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.with(|o| o.max_attempts(attempts))
    }

    /// Number of attempts and waits between them.
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.with(|o| o.backoff(backoff))
    }

    /// Also retry unique and foreign-key violations (see
    /// [`AtomicOptions::retry_on_integrity_error`]).
    pub fn retry_on_integrity_error(self, on: bool) -> Self {
        self.with(|o| o.retry_on_integrity_error(on))
    }

    /// Run with these options instead of the ones set so far.
    pub fn options(mut self, options: AtomicOptions) -> Self {
        self.options = options;
        self
    }

    /// Also return the [`Delivery`] of the committed attempt's signals, to await when the
    /// caller must know they were sent.
    pub async fn delivery(self) -> Result<(T, Delivery), E> {
        let Atomic {
            engine,
            mut block,
            options,
            sources,
            ..
        } = self;
        run(engine, &options, sources, &mut block).await
    }

    /// Commit, then wait until the signals are sent or known to stay pending (as
    /// [`Transaction::commit_and_wait`]); returns the block's value and what became of its
    /// signals.
    pub async fn wait_for_delivery(self) -> Result<(T, DeliveryReport), E> {
        let (value, delivery) = self.delivery().await?;
        Ok((value, delivery.await))
    }
}

impl<'b, 'a, DB, T, E, F> IntoFuture for Atomic<'b, 'a, DB, T, E, F>
where
    DB: Backend,
    T: Send + 'b,
    E: BlockError,
    F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E> + Send + 'b,
    'a: 'b,
{
    type Output = Result<T, E>;
    type IntoFuture = BoxFuture<'b, Result<T, E>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { Ok(self.delivery().await?.0) })
    }
}

impl<'b, 'a, DB, T, E, F> Atomic<'b, 'a, DB, T, E, F>
where
    DB: Backend,
    T: Send + 'b,
    E: BlockError,
    F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E> + Send + 'b,
    'a: 'b,
{
    /// A block on `engine`'s bus with the default options ([`SignalBus::atomic`](crate::SignalBus::atomic)).
    pub(crate) fn new(engine: &'b Engine<DB>, block: F) -> Self {
        Atomic {
            engine,
            block,
            options: AtomicOptions::default(),
            sources: None,
            _types: PhantomData,
        }
    }
}

impl<'b, 'a, DB, T, E, F> Atomic<'b, 'a, DB, T, E, F>
where
    DB: Backend,
    T: Send + 'b,
    E: BlockError + std::error::Error,
    F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E> + Send + 'b,
    'a: 'b,
{
    /// Find conflicts by walking the block's error down its
    /// [sources](std::error::Error::source) to the database error: for an error type that
    /// holds `sqlx::Error` itself (`#[from] sqlx::Error`), whose conflicts signalbus does not
    /// see otherwise (see [`BlockError`]).
    ///
    /// ```no_run
    /// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>) {
    /// #[derive(Debug, thiserror::Error)]
    /// enum AppError {
    ///     #[error(transparent)]
    ///     Sql(#[from] sqlx::Error),
    ///     #[error(transparent)]
    ///     Bus(#[from] signalbus_core::Error),
    /// }
    ///
    /// let n: Result<i64, AppError> = bus
    ///     .atomic(|tx| Box::pin(async move {
    ///         Ok(sqlx::query_scalar("SELECT 1").fetch_one(&mut **tx).await?)
    ///     }))
    ///     .conflicts_in_sources()
    ///     .await;
    /// # let _ = n; }
    /// ```
    pub fn conflicts_in_sources(mut self) -> Self {
        self.sources = Some(retryable::walk_sources::<DB, E>);
        self
    }
}

/// A failed attempt: its error, whether it is a conflict worth another attempt, and what the
/// attempt was seen to meet.
struct Failed<E> {
    error: E,
    conflict: bool,
    seen: Seen,
}

/// Run the attempts of a block until one commits, fails for good or the attempts run out.
async fn run<'a, DB, T, E, F>(
    engine: &Engine<DB>,
    options: &AtomicOptions,
    sources: Option<Sources<E>>,
    block: &mut F,
) -> Result<(T, Delivery), E>
where
    DB: Backend,
    E: BlockError,
    F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E>,
{
    let max_attempts = options.backoff.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let span = tracing::debug_span!("atomic", attempt);
        let failed = match attempt_once(engine, options, sources, block)
            .instrument(span)
            .await
        {
            Ok(done) => {
                if attempt > 1 {
                    tracing::debug!(attempts = attempt, "atomic block committed");
                }
                return Ok(done);
            }
            Err(failed) if !failed.conflict => return Err(failed.error),
            Err(failed) => failed,
        };
        if attempt >= max_attempts {
            tracing::warn!(attempts = attempt, error = %retryable::describe(&failed.error), "atomic block gave up");
            return Err(E::from(Error::RetriesExhausted {
                attempts: attempt,
                last: retryable::last_error(failed.error, &failed.seen),
            }));
        }
        let wait = options.backoff.delay(attempt);
        tracing::debug!(attempt, ?wait, error = %retryable::describe(&failed.error), "atomic block conflicted, retrying");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// One attempt.
async fn attempt_once<'a, DB, T, E, F>(
    engine: &Engine<DB>,
    options: &AtomicOptions,
    sources: Option<Sources<E>>,
    block: &mut F,
) -> Result<(T, Delivery), Failed<E>>
where
    DB: Backend,
    E: BlockError,
    F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E>,
{
    // signalbus' own failures (begin, commit) are judged before they become `E`.
    let fail = |e: Error| {
        let conflict = retryable::classify::<DB>(&e, options.integrity_races);
        let seen = Seen {
            conflict,
            integrity: false,
            code: e.database_code(),
        };
        Failed {
            conflict,
            error: E::from(e),
            seen,
        }
    };
    let begin_sql = (DB::DIALECT.begin_atomic)(options.isolation, options.sqlite_begin);
    let tx = begin(engine.shared().pool(), begin_sql)
        .await
        .map_err(fail)?;
    let mut tx: Transaction<'a, DB> =
        Transaction::new(tx, Recorder::new(engine.clone())).outermost();
    tx.atomic.in_block = true;
    let (outcome, seen) = seen::watching(
        DB::DIALECT.is_conflict,
        false,
        AssertUnwindSafe(block(&mut tx)).catch_unwind(),
    )
    .await;
    let inner = tx.atomic.failure.take();
    match outcome {
        Err(panic) => {
            let _ = tx.rollback().await;
            std::panic::resume_unwind(panic)
        }
        Ok(Ok(value)) => match inner {
            None => tx.commit().await.map(|d| (value, d)).map_err(fail),
            Some(inner) => {
                let _ = tx.rollback().await;
                let error = E::from(Error::InnerBlockFailed {
                    source: inner.error,
                });
                Err(Failed {
                    error,
                    conflict: inner.conflict,
                    seen,
                })
            }
        },
        Ok(Err(error)) => {
            // Rolling back is best effort: the connection may be gone, and dropping an
            // open sqlx transaction rolls it back anyway.
            let _ = tx.rollback().await;
            let conflict = match sources {
                Some(walk) => walk(&error, options.integrity_races),
                None => {
                    retryable::is_block_conflict::<DB, E>(&error, &seen, options.integrity_races)
                }
            } || inner.is_some_and(|i| i.conflict);
            Err(Failed {
                error,
                conflict,
                seen,
            })
        }
    }
}

impl<'c, DB: Backend> Transaction<'c, DB> {
    /// Run a nested atomic block in this transaction: the outermost block commits, rolls back
    /// and retries. When `block` fails, the whole transaction will be rolled back, even if the
    /// caller goes on after the error.
    pub async fn atomic<T, E, F>(&mut self, block: F) -> Result<T, E>
    where
        E: BlockError,
        F: for<'t> FnOnce(&'t mut Transaction<'c, DB>) -> AtomicFuture<'t, T, E>,
    {
        let (result, seen) = seen::watching(DB::DIALECT.is_conflict, true, block(self)).await;
        if let Err(e) = &result {
            let conflict = retryable::is_block_conflict::<DB, E>(e, &seen, false);
            self.atomic
                .record(retryable::inner_error(e, &seen), conflict);
        }
        result
    }

    /// Like [`Transaction::atomic`], and a unique or foreign-key violation in `block` makes
    /// the outermost block run again: the races of concurrent inserts. Put the insert that
    /// may race in here; the next attempt sees what the other transaction committed.
    ///
    /// Must run inside an atomic block ([`SignalBus::atomic`](crate::SignalBus::atomic)): otherwise nothing would run
    /// the transaction again, and it fails at once with [`Error::NotInAtomicBlock`] without
    /// running `block`.
    pub async fn atomic_retrying_races<T, E, F>(&mut self, block: F) -> Result<T, E>
    where
        E: BlockError,
        F: for<'t> FnOnce(&'t mut Transaction<'c, DB>) -> AtomicFuture<'t, T, E>,
    {
        if !self.atomic.in_block {
            return Err(E::from(Error::NotInAtomicBlock));
        }
        let (result, seen) = seen::watching(DB::DIALECT.is_conflict, true, block(self)).await;
        if let Err(e) = &result {
            let conflict = retryable::is_block_conflict::<DB, E>(e, &seen, true);
            self.atomic
                .record(retryable::inner_error(e, &seen), conflict);
        }
        result
    }
}
