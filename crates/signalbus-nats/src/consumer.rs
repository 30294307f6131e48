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
//!
//! When the connection fails, [`consume`] returns the error; to run on, connecting again
//! with backoff, run it in [`signalbus_core::consume::reconnecting`], which opens a new
//! session (connection and all) after each failure and hands it the shutdown.

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Acker, Message};
use futures_util::StreamExt;
use signalbus_core::consume::Handlers;
use std::future::Future;

pub use signalbus_core::consume::ConsumeReport;

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
    let mut handlers = Handlers::new(concurrency);
    let mut shutdown = std::pin::pin!(shutdown);
    let failure = loop {
        let slot = tokio::select! {
            slot = handlers.slot() => slot,
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
        handlers.spawn(async move {
            let outcome = work.await;
            drop(slot);
            match outcome {
                Ok(()) => acker.ack().await.map(|()| true),
                Err(e) => {
                    tracing::warn!(error = %e, "the handler failed; JetStream delivers the message again");
                    acker.ack_with(AckKind::Nak(None)).await.map(|()| false)
                }
            }
        })?;
    };
    drop(messages);
    let report = handlers.finish().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
