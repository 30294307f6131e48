//! The receiving side: a runner over a JetStream pull consumer that hands each message to a
//! handler and acknowledges it only once the handler succeeded.
//!
//! The handler does the message's work, usually one database transaction that records the
//! message id ([`crate::message_id`]) in the inbox (`signalbus::inbox`) together with the
//! effects. [`consume`] then:
//!
//! - acknowledges the message when the handler returns `Ok`, after its commit;
//! - naks it when the handler returns `Err`, so JetStream delivers it again;
//! - runs at most `concurrency` handlers at once; the consumer's `max_ack_pending` bounds what
//!   the server sends ahead;
//! - on `shutdown`, stops pulling, lets the handlers in flight finish and acknowledges what
//!   they finished. Messages pulled but not handled come back after the consumer's
//!   `ack_wait`.
//!
//! Use an explicit-ack consumer (the default of `pull::Config`).

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Acker, Message};
use futures_util::StreamExt;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What [`consume`] did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeReport {
    /// Handled and acknowledged.
    pub acked: u64,
    /// Handler failed: nak'ed, to be delivered again.
    pub rejected: u64,
}

/// Error of [`consume`]: the pull failed (the server went away, the consumer was deleted).
pub type ConsumeError = Box<dyn std::error::Error + Send + Sync>;

/// Consume from `consumer` until `shutdown` resolves, at most `concurrency` handlers at once
/// (see the [module documentation](self)).
pub async fn consume<H, Fut, E>(
    consumer: &PullConsumer,
    concurrency: usize,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeReport, ConsumeError>
where
    H: Fn(Message) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut messages = consumer.messages().await?;
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running: JoinSet<Result<bool, ConsumeError>> = JoinSet::new();
    let mut report = ConsumeReport::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let failure = loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break None,
        };
        let message = tokio::select! {
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => break Some(ConsumeError::from(e)),
                None => break None,
            },
            _ = &mut shutdown => break None,
        };
        let acker = Acker::new(message.context.clone(), message.message.reply.clone());
        let work = handler(message);
        running.spawn(async move {
            let outcome = work.await;
            drop(slot);
            match outcome {
                Ok(()) => acker.ack().await.map(|()| true),
                Err(e) => {
                    tracing::warn!(error = %e, "the handler failed; JetStream delivers the message again");
                    acker.ack_with(AckKind::Nak(None)).await.map(|()| false)
                }
            }
        });
        while let Some(done) = running.try_join_next() {
            tally(&mut report, done)?;
        }
    };
    drop(messages);
    while let Some(done) = running.join_next().await {
        tally(&mut report, done)?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn tally(
    report: &mut ConsumeReport,
    done: Result<Result<bool, ConsumeError>, tokio::task::JoinError>,
) -> Result<(), ConsumeError> {
    match done {
        Ok(Ok(true)) => report.acked += 1,
        Ok(Ok(false)) => report.rejected += 1,
        Ok(Err(e)) => return Err(e),
        // A handler that panicked: its message is delivered again after `ack_wait`.
        Err(e) => tracing::error!(error = %e, "a message handler panicked"),
    }
    Ok(())
}
