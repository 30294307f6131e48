//! The publisher: a batch is published back to back, then all confirms are awaited at once.

use crate::connection::{Live, bounded, close_later, open};
use crate::error::publish_error;
use crate::options::AmqpOptions;
use crate::properties::outgoing;
use futures_util::future::join_all;
use lapin::Confirmation;
use signalbus_core::{BatchOutcome, Error, Message, PublishError, Publisher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// Publishes to RabbitMQ with publisher confirms over one reused connection, which is
/// replaced after the broker closed it. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AmqpPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    options: AmqpOptions,
    live: Mutex<Option<Arc<Live>>>,
    generations: AtomicU64,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Why a batch failed, and whether the channel can still be used.
enum Failure {
    /// The broker refused some messages (returned or nacked); the channel is fine.
    Refused(PublishError),
    /// The channel or connection failed; open a new one next time.
    Broken(PublishError),
}

impl AmqpPublisher {
    /// Connect to the broker of `url` (see the crate docs for the query parameters). Fails
    /// at once, naming the host, user or vhost at fault, when the broker cannot be used.
    pub async fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(AmqpOptions::from_url(url)?).await
    }

    /// Connect with `options`.
    pub async fn with_options(options: AmqpOptions) -> signalbus_core::Result<Self> {
        let publisher = AmqpPublisher {
            inner: Arc::new(Inner {
                options,
                live: Mutex::new(None),
                generations: AtomicU64::new(0),
            }),
        };
        publisher.live().await.map_err(Error::Publish)?;
        Ok(publisher)
    }

    /// The options in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.inner.options
    }

    /// The current connection, or a new one when the broker closed the previous one.
    async fn live(&self) -> Result<Arc<Live>, PublishError> {
        let limit = self.inner.options.timeout;
        let mut guard = bounded(limit, "waiting for a reconnect", async {
            Ok(self.inner.live.lock().await)
        })
        .await?;
        if let Some(live) = guard.as_ref().filter(|l| l.is_usable()) {
            return Ok(live.clone());
        }
        if let Some(old) = guard.take() {
            tracing::info!(url = %self.inner.options.display, "RabbitMQ connection lost; reconnecting");
            close_later(old, limit);
        }
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let live = open(&self.inner.options, generation).await?;
        *guard = Some(live.clone());
        Ok(live)
    }

    /// Forget connection `generation` after a failure on it, so the next batch reconnects.
    async fn discard(&self, generation: u64) {
        let mut guard = self.inner.live.lock().await;
        if guard.as_ref().is_some_and(|l| l.generation == generation)
            && let Some(old) = guard.take()
        {
            close_later(old, self.inner.options.timeout);
        }
    }

    /// Publish on a channel of `live` that no other batch uses (see
    /// [`crate::connection::CHANNELS`]), then await every confirm.
    async fn send(&self, live: &Live, batch: &[Message]) -> Result<(), Failure> {
        // Check every message before publishing any, so a bad one sends nothing.
        let outs = batch
            .iter()
            .map(|m| outgoing(m, &self.inner.options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Failure::Refused)?;
        let (_own, channel) = live.take_channel().await;
        let mut confirms = Vec::with_capacity(batch.len());
        for (message, out) in batch.iter().zip(outs) {
            let confirm = channel
                .basic_publish(
                    out.exchange.clone(),
                    out.routing_key.clone(),
                    out.options,
                    &message.body,
                    out.properties,
                )
                .await
                .map_err(|e| {
                    Failure::Broken(publish_error(
                        e,
                        out.exchange.as_str(),
                        out.routing_key.as_str(),
                    ))
                })?;
            confirms.push(confirm);
        }
        let mut refused = Vec::new();
        for (message, result) in batch.iter().zip(join_all(confirms).await) {
            let exchange = crate::properties::exchange_name(&message.destination);
            let routing_key = message.routing_key.as_deref().unwrap_or("");
            let why = match result {
                Ok(Confirmation::Ack(None)) => continue,
                Ok(Confirmation::Ack(Some(returned))) => format!(
                    "returned as unroutable ({} {})",
                    returned.reply_code, returned.reply_text
                ),
                Ok(Confirmation::Nack(_)) => "nacked (not stored) by the broker".to_owned(),
                Ok(Confirmation::NotRequested) => "not confirmed (confirm mode is off)".to_owned(),
                Err(e) => return Err(Failure::Broken(publish_error(e, exchange, routing_key))),
            };
            refused.push(format!(
                "message {} to exchange `{exchange}` with routing key `{routing_key}` was {why}",
                message.id
            ));
        }
        if refused.is_empty() {
            return Ok(());
        }
        Err(Failure::Refused(PublishError::rejected(format!(
            "RabbitMQ did not store {} of {} message(s), so the batch stays pending: {}",
            refused.len(),
            batch.len(),
            refused.join("; ")
        ))))
    }
}

impl Publisher for AmqpPublisher {
    /// All or nothing for now: an error refusing the batch makes the flush engine send its
    /// messages one by one to find the refused one.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        self.publish_all(batch)
            .await
            .map(|()| BatchOutcome::all_stored())
    }
}

impl AmqpPublisher {
    async fn publish_all(&self, batch: &[Message]) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
        }
        let limit = self.inner.options.timeout;
        let live = self.live().await?;
        let during = format!("confirming {} message(s)", batch.len());
        let result = bounded(limit, &during, async { Ok(self.send(&live, batch).await) }).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Failure::Refused(e))) => Err(e),
            Ok(Err(Failure::Broken(e))) | Err(e) => {
                self.discard(live.generation).await;
                Err(e)
            }
        }
    }
}
