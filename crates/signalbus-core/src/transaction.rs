//! Writing signals inside a database transaction, and what happens after its commit.

use crate::bus::SignalBus;
use crate::error::{Error, Result};
use crate::flush::auto::{FlushRequest, Item};
use crate::prepared::PreparedSignal;
use crate::signal::Signal;
use crate::storage::Backend;
use std::borrow::Cow;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

/// The identity of a recorded signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalId {
    /// Name of the signal type.
    pub signal: Arc<str>,
    /// Primary key of its row.
    pub row_id: i64,
    /// The stable message id it will carry on every send.
    pub message_id: String,
}

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
    bus: SignalBus<DB>,
    autoflush: Vec<Item>,
    held_back: usize,
    /// Whether the transaction is one signalbus began itself as outermost, so that its
    /// commit is known to be real: then the auto-flush sends from memory without checking
    /// that the rows exist.
    verified: bool,
}

impl<DB: Backend> Recorder<DB> {
    pub(crate) fn new(bus: SignalBus<DB>) -> Self {
        Recorder {
            bus,
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
        let reg = self.bus.shared.registry.get(prepared.idx);
        let row_id = reg.sql.insert::<DB>(conn, prepared.row()).await?;
        Ok(self.record(prepared, row_id))
    }

    /// Prepare `signal`'s row for another database library to insert, in that library's
    /// transaction (see [`crate::prepared`]); then hand the new row's id to
    /// [`Recorder::record`].
    pub fn prepare<S: Signal>(&self, signal: &S) -> Result<PreparedSignal> {
        let ty = S::signal_type();
        let registry = &self.bus.shared.registry;
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
        let leased = autoflush && self.bus.autoflush_enabled();
        let lease = self.bus.shared.config.lease();
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
        let mut report = DeliveryReport {
            pending: self.held_back,
            ..DeliveryReport::default()
        };
        if self.autoflush.is_empty() {
            return Delivery::ready(report);
        }
        let count = self.autoflush.len();
        if !self.bus.autoflush_enabled() {
            // Switched off by the time of the commit: left for an explicit flush, their
            // leases lifted before the delivery resolves.
            report.pending += count;
            let leased: Vec<Item> = self.autoflush.into_iter().filter(|i| i.leased).collect();
            return given_back(&self.bus, leased, report);
        }
        let refused = |report: &mut DeliveryReport, error: Error| {
            report.pending += count;
            report.error = Some(Arc::new(error));
        };
        if self.bus.is_closed() {
            refused(&mut report, Error::Closed);
            give_back(&self.bus, self.autoflush);
            return Delivery::ready(report);
        }
        let (reply, rx) = oneshot::channel();
        // Rows written without a lease may be taken by another flusher meanwhile: claimed
        // first, like the rows of a caller's own transaction.
        let verified = self.verified && self.autoflush.iter().all(|i| i.leased);
        let request = FlushRequest {
            items: self.autoflush,
            verified,
            reply,
            committed: tokio::time::Instant::now(),
        };
        match self.bus.autoflush_tx.try_send(request) {
            Ok(()) => Delivery {
                state: State::Waiting {
                    rx,
                    extra: report,
                    count,
                },
            },
            Err(TrySendError::Full(request)) => {
                let capacity = self.bus.shared.config.queue_capacity;
                tracing::debug!(
                    signals = count,
                    capacity,
                    "auto-flush queue full; signals left pending"
                );
                refused(&mut report, Error::QueueFull { capacity });
                give_back(&self.bus, request.items);
                Delivery::ready(report)
            }
            Err(TrySendError::Closed(request)) => {
                let error = if self.bus.is_closed() {
                    Error::Closed
                } else {
                    Error::Stopped
                };
                refused(&mut report, error);
                give_back(&self.bus, request.items);
                Delivery::ready(report)
            }
        }
    }
}

/// [`give_back`], and a delivery that resolves with `report` once the leases are lifted (so
/// that a flush right after awaiting it takes the signals).
fn given_back<DB: Backend>(
    bus: &SignalBus<DB>,
    items: Vec<Item>,
    report: DeliveryReport,
) -> Delivery {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Delivery::ready(report);
    };
    if items.is_empty() {
        return Delivery::ready(report);
    }
    let shared = bus.shared.clone();
    let (reply, rx) = oneshot::channel();
    runtime.spawn(async move {
        crate::flush::auto::release(&shared, items.iter().map(|i| (i.idx, i.id))).await;
        let _ = reply.send(DeliveryReport::default());
    });
    Delivery {
        state: State::Waiting {
            rx,
            extra: report,
            count: 0,
        },
    }
}

/// Lift the leases of signals written for an auto-flush that will not send them, so that the
/// next explicit flush (or relay) takes them at once. In the background and best effort: if
/// it fails, they come back when their lease expires.
fn give_back<DB: Backend>(bus: &SignalBus<DB>, items: Vec<Item>) {
    if items.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = bus.shared.clone();
    runtime.spawn(async move {
        crate::flush::auto::release(&shared, items.iter().map(|i| (i.idx, i.id))).await;
    });
}

/// A database transaction of the signal bus. Business queries run in it through `&mut *tx`;
/// signals are added with [`Transaction::send`]. After [`Transaction::commit`], the signals
/// added here, and only those, are sent and deleted. A rollback or a drop sends nothing.
pub struct Transaction<'c, DB: Backend> {
    tx: sqlx::Transaction<'c, DB>,
    recorder: Recorder<DB>,
    /// Failure of a nested atomic block, kept for the outermost one (see `atomic`).
    pub(crate) atomic: crate::atomic::BlockState,
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
        if !self.recorder.bus.autoflush_enabled() && !self.recorder.autoflush.is_empty() {
            // The leases of those written while it was on are lifted in the transaction
            // itself, so that they commit free (and wake the relay).
            let items = std::mem::take(&mut self.recorder.autoflush);
            crate::flush::auto::release_in(
                &self.recorder.bus.shared,
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

/// What became of a transaction's signals after commit.
#[derive(Debug, Clone, Default)]
pub struct DeliveryReport {
    /// Sent and deleted by this auto-flush.
    pub sent: usize,
    /// Not found, or held by another flusher, when the auto-flush claimed them — only for a
    /// transaction the caller began itself ([`SignalBus::wrap`](crate::SignalBus::wrap),
    /// [`Recorder`]), whose rows the auto-flush claims before it sends: rows that never
    /// committed (a recorder handed over after a rollback, a wrapped savepoint whose outer
    /// transaction has not committed yet), or rows whose lease had expired and another flush
    /// took. Signals of [`SignalBus::begin`](crate::SignalBus::begin)'s transactions are sent
    /// from memory, never counted here.
    pub elsewhere: usize,
    /// Left pending: auto-flush off, or the bus failed. An explicit flush will send them.
    pub pending: usize,
    /// Why signals were left pending, if the bus failed.
    pub error: Option<Arc<Error>>,
}

impl DeliveryReport {
    /// Whether no signal of the transaction is left pending by this auto-flush (see
    /// [`DeliveryReport::elsewhere`] for what it cannot know).
    pub fn is_complete(&self) -> bool {
        self.pending == 0 && self.error.is_none()
    }
}

/// Resolves to the [`DeliveryReport`] of a committed transaction's signals.
pub struct Delivery {
    state: State,
}

enum State {
    Ready(Option<DeliveryReport>),
    Waiting {
        rx: oneshot::Receiver<DeliveryReport>,
        extra: DeliveryReport,
        count: usize,
    },
}

impl Delivery {
    fn ready(report: DeliveryReport) -> Self {
        Delivery {
            state: State::Ready(Some(report)),
        }
    }
}

impl Future for Delivery {
    type Output = DeliveryReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DeliveryReport> {
        match &mut self.state {
            State::Ready(report) => Poll::Ready(report.take().unwrap_or_default()),
            State::Waiting { rx, extra, count } => {
                let mut report = match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(report)) => report,
                    Poll::Ready(Err(_)) => DeliveryReport {
                        pending: *count,
                        error: Some(Arc::new(Error::Stopped)),
                        ..DeliveryReport::default()
                    },
                };
                report.pending += extra.pending;
                Poll::Ready(report)
            }
        }
    }
}
