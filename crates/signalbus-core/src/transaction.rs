//! Writing signals inside a database transaction, and what happens after its commit.

use crate::delivery::{Delivery, DeliveryReport, SignalId};
use crate::engine::Engine;
use crate::engine::auto::{self, Item};
use crate::error::{Error, InnerError, Result};
use crate::prepared::PreparedSignal;
use crate::signal::Signal;
use crate::storage::Backend;
use std::borrow::Cow;
use std::ops::{Deref, DerefMut};

/// Records signals written through any connection or transaction of the caller, so that they
/// can be auto-flushed once that transaction has committed.
///
/// ```no_run
/// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>, s: impl signalbus_core::Signal) -> signalbus_core::Result<()> {
/// let mut tx = bus.pool().begin().await?;             // the caller's own sqlx transaction
/// let mut signals = bus.recorder();
/// signals.send(&mut *tx, &s).await?;
/// tx.commit().await?;
/// let report = signals.after_commit().await;            // sent and deleted
/// # Ok(()) }
/// ```
///
/// Dropping a recorder without [`Recorder::after_commit`] sends nothing now; the signals stay
/// pending for an explicit flush, which takes them once their lease has expired (signals
/// meant for the auto-flush are written leased, see [`crate::SignalBusBuilder::lease`]).
/// Calling it after a rollback sends nothing either: only rows that exist are ever sent.
pub struct Recorder<DB: Backend> {
    engine: Engine<DB>,
    autoflush: Vec<Item>,
    held_back: usize,
    /// Whether the transaction is one signalbus began itself as outermost, so that its
    /// commit is known to be real: then the auto-flush sends from memory without checking
    /// that the rows exist.
    verified: bool,
}

impl<DB: Backend> Recorder<DB> {
    pub(crate) fn new(engine: Engine<DB>) -> Self {
        Recorder {
            engine,
            autoflush: Vec::new(),
            held_back: 0,
            verified: false,
        }
    }

    /// Write `signal` as a row of its table through `conn` (usually `&mut *tx`).
    pub async fn send<S: Signal>(
        &mut self,
        conn: &mut DB::Connection,
        signal: &S,
    ) -> Result<SignalId> {
        let prepared = self.prepare(signal)?;
        let reg = self.engine.shared().registry().get(prepared.idx);
        let row_id = reg.sql.insert::<DB>(conn, prepared.row()).await?;
        Ok(self.record(prepared, row_id))
    }

    /// Prepare `signal`'s row for another database library to insert, in that library's
    /// transaction (see [`crate::prepared`]); then hand the new row's id to
    /// [`Recorder::record`].
    pub fn prepare<S: Signal>(&self, signal: &S) -> Result<PreparedSignal> {
        let ty = S::signal_type();
        let registry = self.engine.shared().registry();
        let idx = registry
            .index_of(ty.name())
            .filter(|&i| registry.get(i).ty == *ty)
            .ok_or_else(|| Error::NotRegistered(ty.name().to_owned()))?;
        let reg = registry.get(idx);
        #[allow(unused_mut)] // added to with the `otel` feature
        let mut headers = signal.headers();
        // The writer's trace travels with the row (and so with every copy sent).
        #[cfg(feature = "otel")]
        crate::otel::inject_current(&mut headers);
        let headers_json = if headers.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&headers).map_err(|e| Error::encode(ty.name(), e))?)
        };
        // A signal for the auto-flush is written leased, so that no explicit flush takes it
        // while the auto-flush publishes it from memory; the lease bounds the delay should
        // this process never hand it over (a crash, a full queue it could not give it back to).
        // Whether the auto-flush sends it is decided at commit, by the switch as it is then
        // (as the original does): every signal of an auto-flushed type is recorded for it,
        // leased only while the switch is on (off, the row is free for explicit flushes and
        // the relay at once, and wakes the relay; should the switch be on at the commit, the
        // auto-flush claims it before sending).
        let autoflush = ty.is_autoflush();
        let leased = autoflush && self.engine.shared().autoflush_on();
        let lease = self.engine.shared().config().lease();
        Ok(PreparedSignal {
            idx,
            signal: reg.name.clone(),
            sql: reg.sql.insert_sql(),
            returns_id: DB::DIALECT.insert_returning,
            message_id: uuid::Uuid::now_v7().to_string(),
            topic: signal.destination().into_owned(),
            routing_key: signal.routing_key().map(Cow::into_owned),
            headers_json,
            headers,
            body: signal.body()?,
            content_type: signal.content_type().map(Cow::into_owned),
            lease_ms: leased.then(|| crate::storage::millis(lease)),
            ordering_key: signal.ordering_key().map(Cow::into_owned),
            autoflush,
        })
    }

    /// Record a signal prepared by [`Recorder::prepare`] and inserted by the caller as row
    /// `row_id`, so that [`Recorder::after_commit`] sends it.
    pub fn record(&mut self, prepared: PreparedSignal, row_id: i64) -> SignalId {
        let id = SignalId {
            signal: prepared.signal.clone(),
            row_id,
            message_id: prepared.message_id.clone(),
        };
        match prepared.into_item(row_id) {
            Some(item) => self.autoflush.push(item),
            None => self.held_back += 1,
        }
        id
    }

    /// Number of signals recorded so far.
    pub fn len(&self) -> usize {
        self.autoflush.len() + self.held_back
    }

    /// Whether no signal was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hand the recorded signals to the auto-flush task. Call it after the transaction that
    /// wrote them has committed. Returns a [`Delivery`] to await if you want to know when (and
    /// whether) they were sent; dropping it changes nothing.
    pub fn after_commit(self) -> Delivery {
        auto::admit(&self.engine, self.autoflush, self.verified, self.held_back)
    }
}

/// A database transaction of the signal bus. Business queries run in it through `&mut *tx`;
/// signals are added with [`Transaction::send`]. After [`Transaction::commit`], the signals
/// added here, and only those, are sent and deleted. A rollback or a drop sends nothing.
///
/// ```no_run
/// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Postgres>, placed: impl signalbus_core::Signal) -> signalbus_core::Result<()> {
/// let mut tx = bus.begin().await?;
/// sqlx::query("UPDATE stock SET n = n - 1 WHERE sku = $1")
///     .bind("A-1")
///     .execute(&mut *tx) // business queries run in the same transaction
///     .await?;
/// tx.send(&placed).await?;
/// let delivery = tx.commit().await?; // durable now; sending happens after
/// let report = delivery.await; // optional: when (and whether) it went out
/// if !report.is_complete() {
///     // left pending (a broker incident): the relay or `signalbus flushmany` sends it
/// }
/// # Ok(()) }
/// ```
pub struct Transaction<'c, DB: Backend> {
    tx: sqlx::Transaction<'c, DB>,
    recorder: Recorder<DB>,
    /// Failure of a nested atomic block, kept for the outermost one (see `atomic`).
    pub(crate) atomic: BlockState,
}

impl<'c, DB: Backend> Transaction<'c, DB> {
    pub(crate) fn new(tx: sqlx::Transaction<'c, DB>, recorder: Recorder<DB>) -> Self {
        Transaction {
            tx,
            recorder,
            atomic: Default::default(),
        }
    }

    /// Mark this transaction as an outermost one signalbus began itself, whose commit is a
    /// real database commit.
    pub(crate) fn outermost(mut self) -> Self {
        self.recorder.verified = true;
        self
    }

    /// Record `signal` in this transaction.
    pub async fn send<S: Signal>(&mut self, signal: &S) -> Result<SignalId> {
        self.recorder.send(&mut self.tx, signal).await
    }

    /// Commit. Returns once the commit is durable, with a [`Delivery`] that resolves when the
    /// auto-flush has sent the signals (or failed to; they then stay pending). A bus that is
    /// down never makes the commit fail.
    ///
    /// The auto-flush switch ([`SignalBus::set_autoflush`](crate::SignalBus::set_autoflush))
    /// counts as it is at the commit: switched off by then, the signals are left for an
    /// explicit flush, which can take them as soon as this returns.
    pub async fn commit(mut self) -> Result<Delivery> {
        if !self.recorder.engine.shared().autoflush_on() && !self.recorder.autoflush.is_empty() {
            // The leases of those written while it was on are lifted in the transaction
            // itself, so that they commit free (and wake the relay).
            let items = std::mem::take(&mut self.recorder.autoflush);
            auto::release_in(
                self.recorder.engine.shared(),
                &mut self.tx,
                items.iter().filter(|i| i.leased).map(|i| (i.idx, i.id)),
            )
            .await?;
            self.recorder.held_back += items.len();
        }
        self.tx.commit().await?;
        // Committed, nothing sent yet: the rows must reach the bus through another flusher.
        fail_point!("signalbus::after-commit");
        Ok(self.recorder.after_commit())
    }

    /// Commit, then wait until the signals are sent or known to stay pending, as the original
    /// Flask-SignalBus does. Fails only when the commit fails.
    pub async fn commit_and_wait(self) -> Result<DeliveryReport> {
        Ok(self.commit().await?.await)
    }

    /// Roll back; nothing is sent.
    pub async fn rollback(self) -> Result<()> {
        Ok(self.tx.rollback().await?)
    }

    /// Signals recorded so far.
    pub fn signals(&self) -> usize {
        self.recorder.len()
    }
}

impl<DB: Backend> Deref for Transaction<'_, DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: Backend> DerefMut for Transaction<'_, DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Failure of a nested block, recorded in the transaction for the outermost block.
#[derive(Debug, Default)]
pub(crate) struct BlockState {
    /// Whether the transaction belongs to an atomic block (scoped integrity retries need one).
    pub(crate) in_block: bool,
    pub(crate) failure: Option<InnerFailure>,
}

/// What a nested block failed with, and whether it was a conflict.
#[derive(Debug)]
pub(crate) struct InnerFailure {
    pub(crate) error: InnerError,
    pub(crate) conflict: bool,
}

impl BlockState {
    /// Keep the first nested failure; any conflict among them makes the block run again.
    pub(crate) fn record(&mut self, error: InnerError, conflict: bool) {
        match &mut self.failure {
            Some(first) => first.conflict |= conflict,
            None => self.failure = Some(InnerFailure { error, conflict }),
        }
    }
}
