//! What became of signals: the identity of a recorded one, the report of a committed
//! transaction's delivery, and the progress of an explicit flush.

use crate::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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

/// How long [`SignalBus::flush`](crate::SignalBus::flush) waits by default for in-flight auto-flushes.
pub const DEFAULT_FLUSH_WAIT: Duration = Duration::from_secs(3);

/// One settled burst of an explicit flush, as handed to a progress callback.
///
/// ```no_run
/// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Postgres>) -> signalbus_core::Result<()> {
/// use signalbus_core::Selection;
/// use std::ops::ControlFlow;
///
/// let sent = bus
///     .flush_many_with(&Selection::all(), &mut |p| {
///         eprintln!("{}: {} sent ({} in all), {} refused", p.signal, p.burst, p.sent, p.refused);
///         // stop after a million, e.g. to yield to other work
///         if p.sent >= 1_000_000 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
///     })
///     .await?;
/// # let _ = sent; Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushProgress<'a> {
    /// The signal type of the burst.
    pub signal: &'a str,
    /// Signals sent (and deleted) by this burst.
    pub burst: usize,
    /// Signals sent so far by this flush call, all types together.
    pub sent: usize,
    /// Signals the bus refused in this burst (kept: retried later, or parked).
    pub refused: usize,
    /// Of those, signals parked by this burst.
    pub parked: usize,
}

/// A progress callback of an explicit flush: called after every settled burst; returning
/// `ControlFlow::Break(())` stops the flush after that burst.
pub type OnProgress<'a> =
    &'a mut (dyn FnMut(&FlushProgress<'_>) -> std::ops::ControlFlow<()> + Send);

/// What became of a transaction's signals after commit.
#[derive(Debug, Clone, Default)]
pub struct DeliveryReport {
    /// Sent and deleted by this auto-flush.
    pub sent: usize,
    /// Not found, or held by another flusher, when the auto-flush claimed them — only for a
    /// transaction the caller began itself ([`SignalBus::wrap`](crate::SignalBus::wrap),
    /// [`Recorder`](crate::Recorder)), whose rows the auto-flush claims before it sends: rows that never
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
    pub(crate) fn ready(report: DeliveryReport) -> Self {
        Delivery {
            state: State::Ready(Some(report)),
        }
    }

    /// A delivery that resolves with what `rx` reports for `count` signals, plus the
    /// pending ones of `extra` (`count` of them are reported stopped if the sender is dropped: the auto-flush task is
    /// gone).
    pub(crate) fn waiting(
        rx: oneshot::Receiver<DeliveryReport>,
        extra: DeliveryReport,
        count: usize,
    ) -> Self {
        Delivery {
            state: State::Waiting { rx, extra, count },
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
