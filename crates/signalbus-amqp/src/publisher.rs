//! The publisher: a batch is published back to back, then all confirms are awaited at once.

use crate::connection::{Live, bounded, close_later, open};
use crate::error::publish_error;
use crate::options::AmqpOptions;
use crate::properties::{Outgoing, outgoing};
use futures_util::future::join_all;
use lapin::options::ConfirmSelectOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{Channel, Confirmation, ErrorKind};
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

/// Why a publish call failed as a whole, and whether the connection can still be used.
enum Failure {
    /// The broker answered in a way that cannot be told apart per message; the connection is
    /// fine.
    Refused(PublishError),
    /// The channel or connection failed; open a new one next time.
    Broken(PublishError),
}

/// A message of the batch to publish: its index and what it is published with.
type Todo = (usize, Outgoing);

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
    /// [`crate::connection::CHANNELS`]), await every confirm, and say which messages RabbitMQ
    /// refused. When RabbitMQ closes the channel because of one message (a missing exchange,
    /// no access to it), the messages to that exchange are refused, and the others whose
    /// confirm the closing lost are published again on a fresh channel of the same
    /// connection.
    async fn send(&self, live: &Live, batch: &[Message]) -> Result<BatchOutcome, Failure> {
        let mut outcome = BatchOutcome::all_stored();
        let mut todo = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            match outgoing(message, &self.inner.options) {
                Ok(out) => todo.push((index, out)),
                // A header that cannot be sent: this message is refused, never published.
                // A header or property AMQP cannot carry fails every attempt alike.
                Err(reason) => outcome.refuse_permanently(index, reason),
            }
        }
        let (_own, shared) = live.take_channel().await;
        let mut spare: Option<Channel> = None;
        let result = async {
            while !todo.is_empty() {
                let channel = spare.as_ref().unwrap_or(shared);
                let lost = publish_pass(channel, batch, todo, &mut outcome).await?;
                if lost.is_empty() {
                    break;
                }
                todo = self.after_channel_closed(live, lost, &mut outcome)?;
                if !todo.is_empty() {
                    if let Some(old) = spare.take() {
                        close_channel_later(old, self.inner.options.timeout);
                    }
                    spare = Some(confirm_channel(live).await?);
                }
            }
            Ok(outcome)
        }
        .await;
        if let Some(old) = spare {
            close_channel_later(old, self.inner.options.timeout);
        }
        result
    }

    /// After RabbitMQ closed the channel: refuse the messages to the exchange its reason
    /// names, and give back the other lost ones, to be published again. A connection that
    /// broke, or a closing that names no exchange of the lost messages, fails or refuses
    /// them as a whole, so that this never loops.
    fn after_channel_closed(
        &self,
        live: &Live,
        mut lost: Vec<(Todo, lapin::Error)>,
        outcome: &mut BatchOutcome,
    ) -> Result<Vec<Todo>, Failure> {
        // Returned before the channel closed: refused already, not published again.
        lost.retain(|((index, _), _)| !outcome.is_refused(*index));
        let cause = lost.iter().find_map(|(_, e)| match e.kind() {
            ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
                Some(amqp.clone())
            }
            _ => None,
        });
        let Some(((_, out), e)) = lost.first() else {
            return Ok(Vec::new());
        };
        let Some(cause) = cause.filter(|_| live.connection.status().connected()) else {
            // The connection broke (or the channel closed without a reason): nothing of what
            // was not confirmed can be told apart.
            return Err(Failure::Broken(publish_error(
                e.clone(),
                out.exchange.as_str(),
                out.routing_key.as_str(),
            )));
        };
        let reason = channel_closed_reason(&cause);
        let culprit = culprit_exchange(cause.get_message().as_str());
        let theirs = |out: &Outgoing| Some(out.exchange.as_str()) == culprit;
        // When the closing names none of the lost messages' exchanges, refuse them all
        // rather than publish them again and again.
        let any_theirs = lost.iter().any(|((_, out), _)| theirs(out));
        let mut again = Vec::new();
        for ((index, out), _) in lost {
            if theirs(&out) || !any_theirs {
                outcome.refuse(
                    index,
                    format!(
                        "{reason} (publishing to exchange `{}` with routing key `{}`)",
                        out.exchange, out.routing_key
                    ),
                );
            } else {
                again.push((index, out));
            }
        }
        if !again.is_empty() {
            tracing::debug!(
                again = again.len(),
                "RabbitMQ closed the channel over one exchange; publishing the others again"
            );
        }
        Ok(again)
    }
}

/// Publish `todo` back to back on `channel`, then await every confirm: the ones acked are
/// stored, the ones returned (matched by `message_id`, see below) or nacked are refused. The
/// ones whose confirm did not come because the channel closed are given back with the error.
///
/// lapin hands a `basic.return` to whichever confirm of the channel completes next (with
/// multiple acks, an arbitrary one of them), not to the returned message's own; RabbitMQ
/// sends the return before the message's ack, so once every confirm of the channel is in,
/// every return of the batch has been handed to one of them. A returned message is therefore
/// told by its `message_id` property, the signal's id, which every message carries.
async fn publish_pass(
    channel: &Channel,
    batch: &[Message],
    todo: Vec<Todo>,
    outcome: &mut BatchOutcome,
) -> Result<Vec<(Todo, lapin::Error)>, Failure> {
    let mut confirms = Vec::with_capacity(todo.len());
    let mut sent = Vec::with_capacity(todo.len());
    let mut lost = Vec::new();
    let mut todo = todo.into_iter();
    while let Some((index, out)) = todo.next() {
        let published = channel
            .basic_publish(
                out.exchange.clone(),
                out.routing_key.clone(),
                out.options,
                &batch[index].body,
                out.properties.clone(),
            )
            .await;
        match published {
            Ok(confirm) => {
                confirms.push(confirm);
                sent.push((index, out));
            }
            Err(e) => {
                // The channel (or connection) is gone: neither this one nor the rest went out.
                lost.push(((index, out), e.clone()));
                lost.extend(todo.by_ref().map(|t| (t, e.clone())));
            }
        }
    }
    let mut returned = Vec::new();
    let mut nacked = Vec::new();
    for ((index, out), result) in sent.into_iter().zip(join_all(confirms).await) {
        match result {
            Ok(Confirmation::Ack(r)) => returned.extend(r),
            Ok(Confirmation::Nack(r)) => {
                returned.extend(r);
                nacked.push((index, out));
            }
            Ok(Confirmation::NotRequested) => {
                return Err(Failure::Broken(PublishError::unavailable(
                    "RabbitMQ channel is not in confirm mode; reconnecting",
                )));
            }
            Err(e) => lost.push(((index, out), e)),
        }
    }
    for (index, out) in nacked {
        outcome.refuse(
            index,
            format!(
                "nacked by RabbitMQ (not stored, e.g. a queue at its x-max-length with x-overflow=reject-publish): exchange `{}`, routing key `{}`",
                out.exchange, out.routing_key
            ),
        );
    }
    for message in returned {
        let delivery = &message.delivery;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str());
        let indices: Vec<usize> = batch
            .iter()
            .enumerate()
            .filter(|(i, m)| Some(m.id.as_str()) == id && !outcome.is_refused(*i))
            .map(|(i, _)| i)
            .collect();
        let routing_key = delivery.routing_key.as_str();
        let exchange = delivery.exchange.as_str();
        let reason = if message.reply_code == 312 {
            format!(
                "unroutable: no queue bound for routing key `{routing_key}` on exchange `{exchange}` ({} {})",
                message.reply_code, message.reply_text
            )
        } else {
            format!(
                "returned by RabbitMQ ({} {}): exchange `{exchange}`, routing key `{routing_key}`",
                message.reply_code, message.reply_text
            )
        };
        if indices.is_empty() && !batch.iter().any(|m| Some(m.id.as_str()) == id) {
            return Err(Failure::Refused(PublishError::rejected(format!(
                "RabbitMQ returned a message of this batch that has no known message id ({reason}); the batch stays pending"
            ))));
        }
        for index in indices {
            outcome.refuse(index, reason.clone());
        }
    }
    Ok(lost)
}

/// The exchange named in the text of a channel closing, e.g. `NOT_FOUND - no exchange 'x' in
/// vhost '/'` or `ACCESS_REFUSED - access to exchange 'x' in vhost '/' refused for user 'u'`.
/// Exchange names cannot contain quotes.
fn culprit_exchange(text: &str) -> Option<&str> {
    let start = text.find("exchange '")? + "exchange '".len();
    let len = text[start..].find('\'')?;
    Some(&text[start..start + len])
}

/// Why RabbitMQ closed the channel, as a reason for the messages it refuses.
fn channel_closed_reason(cause: &lapin::protocol::AMQPError) -> String {
    match cause.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
            match culprit_exchange(cause.get_message().as_str()) {
                Some(exchange) => format!(
                    "RabbitMQ has no exchange `{exchange}` ({}); declare the exchange first",
                    cause.get_message()
                ),
                None => format!("RabbitMQ closed the channel: {}", cause.get_message()),
            }
        }
        _ => format!("RabbitMQ closed the channel: {}", cause.get_message()),
    }
}

/// A channel in confirm mode of `live`'s connection, for publishing the messages a closed
/// channel lost; closed again after the batch.
async fn confirm_channel(live: &Live) -> Result<Channel, Failure> {
    let broken = |e: lapin::Error| {
        Failure::Broken(
            PublishError::unavailable(format!(
                "cannot open a RabbitMQ channel to publish again what a closed channel lost ({e}); the batch stays pending"
            ))
            .with_source(e),
        )
    };
    let channel = live.connection.create_channel().await.map_err(broken)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broken)?;
    Ok(channel)
}

fn close_channel_later(channel: Channel, limit: std::time::Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(limit, channel.close(200, "batch done".into())).await;
    });
}

impl Publisher for AmqpPublisher {
    /// Publishes the batch and reports per message: returned (unroutable while mandatory),
    /// nacked, with a header that cannot be sent, or to a missing exchange are refused; the
    /// others were confirmed. A lost connection or a timeout fails the call.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.is_empty() {
            return Ok(BatchOutcome::all_stored());
        }
        let limit = self.inner.options.timeout;
        let live = self.live().await?;
        let during = format!("confirming {} message(s)", batch.len());
        let result = bounded(limit, &during, async { Ok(self.send(&live, batch).await) }).await;
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(Failure::Refused(e))) => Err(e),
            Ok(Err(Failure::Broken(e))) | Err(e) => {
                self.discard(live.generation).await;
                Err(e)
            }
        }
    }

    /// The connection is up, or could be opened again now.
    async fn check(&self) -> Result<(), PublishError> {
        self.live().await.map(|_| ())
    }
}
