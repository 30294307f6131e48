//! The receiving side: a consumer runner that hands each delivery to a handler and
//! acknowledges it only once the handler succeeded.
//!
//! The handler does the message's work, usually one database transaction that records the
//! message id in the inbox (`signalbus::inbox`) together with the effects. [`consume`] then:
//!
//! - acknowledges the message when the handler returns `Ok`, after its commit;
//! - rejects it with requeue when the handler returns `Err`, so RabbitMQ delivers it again;
//! - runs at most `concurrency` handlers at once, with the channel's prefetch bounding what
//!   RabbitMQ sends ahead;
//! - on `shutdown`, cancels the subscription, lets the handlers in flight finish and
//!   acknowledges what they finished. A message whose handler never ran stays with RabbitMQ,
//!   which delivers it again.
//!
//! When the connection fails, [`consume`] returns the error — also when lapin does not say
//! so: the channel's state is looked at every second, and an acknowledgement that takes
//! over 10 s fails the session; to run on, connecting again
//! with backoff, run it in [`signalbus_core::consume::reconnecting`], which opens a new
//! session (connection and all) after each failure and hands it the shutdown.
//!
//! ```no_run
//! # async fn run(channel: lapin::Channel) -> Result<(), lapin::Error> {
//! use signalbus_amqp::consumer::{ConsumerOptions, consume};
//!
//! let stop = async { let _ = tokio::signal::ctrl_c().await; };
//! let report = consume(&channel, "orders", ConsumerOptions::default(), |delivery| async move {
//!     // ... the message's effects, in one transaction with its inbox record ...
//!     let _ = delivery.data;
//!     Ok::<(), std::io::Error>(())
//! }, stop)
//! .await?;
//! println!("{} acknowledged, {} rejected", report.acked, report.rejected);
//! # Ok(()) }
//! ```

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use signalbus_core::consume::Handlers;
use std::future::Future;
use std::time::Duration;

/// How [`consume`] subscribes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Messages RabbitMQ may send before they are acknowledged (`basic.qos` prefetch count).
    pub prefetch: u16,
    /// Handlers running at once (at most `prefetch` can have work).
    pub concurrency: usize,
    /// The consumer tag; empty: the broker picks one.
    pub consumer_tag: String,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            prefetch: 32,
            concurrency: 8,
            consumer_tag: String::new(),
        }
    }
}

impl ConsumerOptions {
    /// With `prefetch` messages sent ahead.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// With at most `concurrency` handlers at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
}

pub use signalbus_core::consume::ConsumeReport;

/// How often [`consume`] looks at its channel's state.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The longest an acknowledgement (ack, nack, cancel) may take before the connection is
/// taken for broken.
const ACK_LIMIT: Duration = Duration::from_secs(10);

/// Whether `channel` is gone: neither connected nor being recovered by lapin (for those who
/// turned lapin's own recovery on).
fn lost(channel: &lapin::Channel) -> bool {
    let status = channel.status();
    !status.connected() && !status.reconnecting()
}

/// The error of a session whose channel is no longer connected.
fn broken() -> lapin::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the RabbitMQ channel is no longer connected (the connection broke)",
    )
    .into()
}

/// `ack`, or a timeout error after [`ACK_LIMIT`].
async fn bounded<T>(ack: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, lapin::Error> {
    tokio::time::timeout(ACK_LIMIT, ack).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("RabbitMQ took no acknowledgement within {ACK_LIMIT:?}: the connection is taken for broken"),
        )
        .into())
    })
}

/// Consume `queue` on `channel` until `shutdown` resolves: every delivery goes to `handler`,
/// and is acknowledged when it returns `Ok` and rejected with requeue when it returns `Err`
/// (see the [module documentation](self)). Fails when the subscription cannot be made or the
/// channel fails (the connection dropped, say): the messages not acknowledged then come back.
pub async fn consume<H, Fut, E>(
    channel: &lapin::Channel,
    queue: &str,
    options: ConsumerOptions,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeReport, lapin::Error>
where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    channel
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            options.consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let tag = deliveries.tag();
    let mut handlers = Handlers::new(options.concurrency);
    let mut shutdown = std::pin::pin!(shutdown);
    // lapin does not always end the delivery stream, nor answer an ack, after the
    // connection broke (the session would then wait for ever and never reconnect): the
    // channel's state is looked at every second, and every ack is bounded.
    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failure = 'session: loop {
        let slot = loop {
            tokio::select! {
                slot = handlers.slot() => break slot,
                _ = &mut shutdown => break 'session None,
                _ = watch.tick() => if lost(channel) {
                    break 'session Some(broken());
                },
            }
        };
        let delivery = loop {
            tokio::select! {
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => break delivery,
                    Some(Err(e)) => break 'session Some(e),
                    None => break 'session None,
                },
                _ = &mut shutdown => break 'session None,
                _ = watch.tick() => if lost(channel) {
                    break 'session Some(broken());
                },
            }
        };
        let acker = delivery.acker.clone();
        let work = handler(delivery);
        handlers.spawn(async move {
            let outcome = work.await;
            drop(slot);
            match outcome {
                Ok(()) => bounded(acker.ack(BasicAckOptions::default())).await.map(|_| true),
                Err(e) => {
                    tracing::warn!(error = %e, "the handler failed; the message goes back to the queue");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    };
                    bounded(acker.nack(requeue)).await.map(|_| false)
                }
            }
        })?;
    };
    if failure.is_none() {
        // No new deliveries; those already sent ahead come back to the queue with the channel.
        let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
        let _ = tokio::time::timeout(ACK_LIMIT, cancel).await;
    }
    let report = handlers.finish().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
