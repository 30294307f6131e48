//! What the broker crates' consumer runners share (`signalbus_amqp::consumer`,
//! `signalbus_nats::consumer`, `signalbus_kafka::consumer`, `signalbus_redis::consumer`,
//! `signalbus_aws::consumer`): the report of what became of the messages, and the handlers
//! running at once, bounded by a number of slots.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

/// What a consumer runner did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeReport {
    /// Handled and acknowledged (offset committed, on Kafka).
    pub acked: u64,
    /// Handler failed: handed back to the broker, to be delivered again.
    pub rejected: u64,
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
