//! What the broker crates' consumer runners share (`signalbus_amqp::consumer`,
//! `signalbus_nats::consumer`, `signalbus_kafka::consumer`, `signalbus_redis::consumer`,
//! `signalbus_aws::consumer`): the report of what became of the messages, the handlers
//! running at once, bounded by a number of slots, and [`reconnecting`], which runs any of
//! them again, connection and all, when its connection fails.

use futures_util::FutureExt as _;
use futures_util::future::Shared;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

/// What a consumer runner did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeReport {
    /// Handled and acknowledged (offset committed, on Kafka).
    pub acked: u64,
    /// Handed back to the broker, to be delivered again: the handler failed, the
    /// acknowledgement did not go through, or (SQS FIFO) the message was not handled because
    /// the one before it in its group failed.
    pub rejected: u64,
    /// Sessions that ended without a shutdown (the connection failed, the subscription
    /// ended) and were started again by [`reconnecting`]. The messages a failed session
    /// had acknowledged are not in `acked`: a runner that fails returns no report.
    pub reconnects: u64,
}

/// Message handlers running at once, at most as many as there are slots; each resolves to
/// whether its message was acknowledged (`true`) or handed back (`false`), or the broker
/// client's error `E`.
#[derive(Debug)]
pub struct Handlers<E> {
    slots: Arc<Semaphore>,
    running: JoinSet<Result<bool, E>>,
    report: ConsumeReport,
}

impl<E: Send + 'static> Handlers<E> {
    /// At most `concurrency` handlers at once (at least one).
    pub fn new(concurrency: usize) -> Self {
        Handlers {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            running: JoinSet::new(),
            report: ConsumeReport::default(),
        }
    }

    /// A free slot, to hold while a handler runs (waits for one).
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// A free slot if there is one now (does not wait).
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Run `handler` (which drops its slot when it is done), and count those finished
    /// meanwhile; the first broker error of one of them.
    pub fn spawn(
        &mut self,
        handler: impl Future<Output = Result<bool, E>> + Send + 'static,
    ) -> Result<(), E> {
        self.running.spawn(handler);
        while let Some(done) = self.running.try_join_next() {
            self.tally(done)?;
        }
        Ok(())
    }

    /// Wait for every handler still running; what they all did.
    pub async fn finish(mut self) -> Result<ConsumeReport, E> {
        while let Some(done) = self.running.join_next().await {
            self.tally(done)?;
        }
        Ok(self.report)
    }

    fn tally(&mut self, done: Result<Result<bool, E>, JoinError>) -> Result<(), E> {
        match done {
            Ok(Ok(true)) => self.report.acked += 1,
            Ok(Ok(false)) => self.report.rejected += 1,
            Ok(Err(e)) => return Err(e),
            // A handler that panicked: its message was neither acknowledged nor handed back,
            // so the broker delivers it again (when the channel closes, after the ack wait).
            Err(e) => tracing::error!(error = %e, "a message handler panicked"),
        }
        Ok(())
    }
}

/// How [`reconnecting`] waits before it connects again: from `base`, doubling up to `max`,
/// each wait drawn between half and all of its ceiling (so that many consumers cut off at
/// once do not come back at once); back to `base` after a session that ran for `healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// A session that ran this long was a success: the next failure waits `base` again.
    pub healthy: Duration,
    /// After the shutdown, how long a session may take to end (its handlers finishing)
    /// before it is dropped: a session still connecting does not see the shutdown.
    pub grace: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
            healthy: Duration::from_secs(30),
            grace: Duration::from_secs(30),
        }
    }
}

impl Reconnect {
    /// Waits from `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Reconnect {
            base,
            max: max.max(base),
            ..Reconnect::default()
        }
    }

    /// The wait before the `failures`-th reconnection in a row (1: the first); at least
    /// [`MIN_WAIT`], so that a session that fails at once never spins.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self
            .base
            .max(MIN_WAIT)
            .saturating_mul(1 << failures.saturating_sub(1).min(20))
            .min(self.max.max(MIN_WAIT));
        ceiling.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

/// The shortest ceiling of a wait between two sessions, whatever the policy says.
pub const MIN_WAIT: Duration = Duration::from_millis(10);

/// The shutdown each session of [`reconnecting`] is given: it resolves once the caller's
/// shutdown has, and may be awaited by every session.
pub type Shutdown = Shared<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// Run a consumer that connects by itself until `shutdown`: `session` opens the connection
/// (and channel, subscription…) and runs one of the runners on it, passing on the
/// [`Shutdown`] it is given; when it fails, or ends without a shutdown, the failure is
/// logged and, after a wait ([`Reconnect`]), a new session starts. The messages the failed
/// session had not acknowledged are the broker's again and come back to the next one: a
/// handler that records the message id in the inbox (`crate::inbox`) with its effects
/// applies each once.
///
/// ```no_run
/// # async fn run() {
/// use signalbus_core::consume::{Reconnect, reconnecting};
/// # async fn consume_once(stop: signalbus_core::consume::Shutdown)
/// #     -> Result<signalbus_core::consume::ConsumeReport, std::io::Error> { stop.await; Ok(Default::default()) }
/// let stop = async { let _ = tokio::signal::ctrl_c().await; };
/// let report = reconnecting(
///     |stop| async move {
///         // connect, then e.g. signalbus_amqp::consumer::consume(&channel, "orders", options, handler, stop)
///         consume_once(stop).await
///     },
///     Reconnect::default(),
///     stop,
/// )
/// .await;
/// println!("{} acknowledged, {} reconnections", report.acked, report.reconnects);
/// # }
/// ```
pub async fn reconnecting<S, F, E>(
    mut session: S,
    policy: Reconnect,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ConsumeReport
where
    S: FnMut(Shutdown) -> F,
    F: Future<Output = Result<ConsumeReport, E>>,
    E: std::fmt::Display,
{
    let stop: Shutdown = (Box::pin(shutdown) as Pin<Box<dyn Future<Output = ()> + Send>>).shared();
    let mut total = ConsumeReport::default();
    let mut failures = 0u32;
    loop {
        if stop.peek().is_some() {
            return total;
        }
        let started = Instant::now();
        let run = session(stop.clone());
        let mut run = std::pin::pin!(run);
        // A session ends by itself on the shutdown once it consumes; one still connecting
        // does not see it, and is given `grace` before it is dropped.
        let ended = tokio::select! {
            ended = &mut run => ended,
            () = stop.clone() => match tokio::time::timeout(policy.grace, &mut run).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::warn!(grace = ?policy.grace, "the consumer did not stop in time; dropped");
                    return total;
                }
            },
        };
        let stopped = stop.peek().is_some();
        match ended {
            Ok(report) => {
                total.acked += report.acked;
                total.rejected += report.rejected;
                total.reconnects += report.reconnects;
                if stopped {
                    return total;
                }
                tracing::warn!(
                    "the consumer's subscription ended without a shutdown; connecting again"
                );
            }
            Err(e) if stopped => {
                tracing::warn!(error = %e, "the consumer failed while stopping");
                return total;
            }
            Err(e) => tracing::warn!(error = %e, "the consumer failed; connecting again"),
        }
        if started.elapsed() >= policy.healthy {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let wait = policy.delay(failures);
        tracing::info!(retry_in = ?wait, failures, "consumer: reconnecting");
        tokio::select! {
            () = tokio::time::sleep(wait) => total.reconnects += 1,
            () = stop.clone() => return total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn waits_double_up_to_the_ceiling_with_jitter() {
        let policy = Reconnect::new(Duration::from_millis(100), Duration::from_secs(1));
        for (failures, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let wait = policy.delay(failures);
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                wait <= ceiling && wait >= ceiling / 2,
                "{failures}: {wait:?}"
            );
        }
    }

    /// Sessions that fail, then one that ends with the shutdown: reports add up, every
    /// failure counts as a reconnection, and the shutdown ends the run (a session that sees
    /// it, or the wait between two).
    #[tokio::test(start_paused = true)]
    async fn failed_sessions_start_again_until_the_shutdown() {
        let calls = Arc::new(AtomicU32::new(0));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let counted = calls.clone();
        let mut stop_tx = Some(stop_tx);
        let report = reconnecting(
            move |stop| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let stop_now = (n == 3).then(|| stop_tx.take()).flatten();
                async move {
                    match n {
                        0 | 1 => Err("connection refused"),
                        2 => Ok(ConsumeReport {
                            acked: 5,
                            ..ConsumeReport::default()
                        }),
                        _ => {
                            if let Some(tx) = stop_now {
                                let _ = tx.send(());
                            }
                            stop.await;
                            Ok(ConsumeReport {
                                acked: 2,
                                rejected: 1,
                                ..ConsumeReport::default()
                            })
                        }
                    }
                }
            },
            Reconnect::new(Duration::from_millis(10), Duration::from_millis(40)),
            async move {
                let _ = stop_rx.await;
            },
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(
            (report.acked, report.rejected, report.reconnects),
            (7, 1, 3)
        );

        // A shutdown during the wait between two sessions ends it at once.
        let report = reconnecting(
            |_stop| async { Err::<ConsumeReport, _>("connection refused") },
            Reconnect::new(Duration::from_secs(3600), Duration::from_secs(3600)),
            tokio::time::sleep(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(report.reconnects, 0);

        // A session that never sees the shutdown (stuck connecting) is dropped after the
        // grace; one that fails at once never spins, whatever the policy.
        let started = tokio::time::Instant::now();
        let stuck = reconnecting(
            |_stop| std::future::pending::<Result<ConsumeReport, &str>>(),
            Reconnect::default(),
            tokio::time::sleep(Duration::from_secs(1)),
        )
        .await;
        assert_eq!(stuck.reconnects, 0);
        assert_eq!(started.elapsed(), Duration::from_secs(31));
        let zero = Reconnect::new(Duration::ZERO, Duration::ZERO);
        assert!(zero.delay(1) >= MIN_WAIT / 2);
    }
}
