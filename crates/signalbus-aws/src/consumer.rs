//! The receiving side for SQS: a runner that long-polls a queue, hands each message to a
//! handler, and deletes it only once the handler succeeded.
//!
//! The handler does the message's work, usually one database transaction that records the
//! message id ([`Received::message_id`]) in the inbox (`signalbus::inbox`) together with the
//! effects. [`consume`] then:
//!
//! - receives up to 10 messages at a time, never more than it has free handler slots for
//!   (long polling, `WaitTimeSeconds` = [`ConsumerConfig::wait`]);
//! - keeps each message invisible to other consumers while its handler runs
//!   (`ChangeMessageVisibility` every half [`ConsumerConfig::visibility`]);
//! - on a FIFO queue (its URL ends in `.fifo`), handles the messages of one group in their
//!   order: a message's handler starts only after the one before it in its group (from the
//!   same receive) returned `Ok`; after an `Err`, the rest of that group's messages are not
//!   handled but made visible again with it, so that SQS delivers them again in order.
//!   Groups run side by side, up to `concurrency`;
//! - deletes it when the handler returns `Ok`, after its commit (a delete that fails is logged
//!   and counted as rejected: the message comes back, and the inbox skips it);
//! - makes it visible again after [`ConsumerConfig::retry_after`] when the handler returns
//!   `Err` (a queue's redrive policy moves it to a dead-letter queue after its
//!   `maxReceiveCount`);
//! - on `shutdown`, stops receiving (a long poll in flight is let answer, at most `wait`, and
//!   what it brought is made visible again at once), lets the handlers in flight finish and
//!   deletes what they finished.
//!
//! A consumer that dies between its commit and the delete leaves the message to come back
//! after its visibility timeout: the inbox skips it.
//!
//! When the connection fails, [`consume`] returns the error; to run on, connecting again
//! with backoff, run it in [`signalbus_core::consume::reconnecting`], which opens a new
//! session (connection and all) after each failure and hands it the shutdown.

use crate::encode::{CONTENT_ENCODING, HEADERS, MESSAGE_ID};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use base64::Engine;
use signalbus_core::consume::Handlers;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

pub use signalbus_core::consume::ConsumeReport;

/// Error of [`consume`]: SQS could not be read (the queue was deleted, credentials expired).
pub type ConsumeError = Box<dyn std::error::Error + Send + Sync>;

/// Which queue, and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The queue URL.
    pub queue_url: String,
    /// Long polling: how long one receive waits for messages (at most 20 s, the default).
    pub wait: Duration,
    /// How long a received message stays invisible to other consumers; renewed while its
    /// handler runs. 30 s by default.
    pub visibility: Duration,
    /// When a message whose handler failed is delivered again. 5 s by default.
    pub retry_after: Duration,
}

impl ConsumerConfig {
    /// Read `queue_url` with the defaults above.
    pub fn new(queue_url: impl Into<String>) -> Self {
        ConsumerConfig {
            queue_url: queue_url.into(),
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
        }
    }

    /// Set [`ConsumerConfig::wait`] (at most 20 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.min(Duration::from_secs(20));
        self
    }

    /// Set [`ConsumerConfig::visibility`] (at least 1 s).
    pub fn visibility(mut self, visibility: Duration) -> Self {
        self.visibility = visibility.max(Duration::from_secs(1));
        self
    }

    /// Set [`ConsumerConfig::retry_after`].
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }
}

/// A message as the handler gets it.
#[derive(Debug, Clone)]
pub struct Received {
    message: Message,
}

/// A message received with the SDK (with its message attributes asked for), to read it the
/// way the runner's handlers do.
impl From<Message> for Received {
    fn from(message: Message) -> Self {
        Received { message }
    }
}

impl Received {
    /// The signal's stable message id (attribute `signalbus-message-id`), the same on every
    /// copy: the key of the consumer inbox.
    pub fn message_id(&self) -> Option<&str> {
        self.attribute(MESSAGE_ID)
    }

    /// The message attribute `name`, as text.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.message.message_attributes()?.get(name)?.string_value()
    }

    /// The body as the signal had it: decoded when the publisher had to encode it
    /// (`signalbus-content-encoding: base64`, or `empty`).
    pub fn body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        let text = self.message.body().unwrap_or_default();
        match self.attribute(CONTENT_ENCODING) {
            Some("base64") => base64::engine::general_purpose::STANDARD.decode(text),
            Some("empty") => Ok(Vec::new()),
            _ => Ok(text.as_bytes().to_vec()),
        }
    }

    /// Header `name`: its own attribute, or an entry of `signalbus-headers` when the headers
    /// travelled as one JSON object.
    pub fn header(&self, name: &str) -> Option<String> {
        if let Some(all) = self.attribute(HEADERS) {
            let object: serde_json::Value = serde_json::from_str(all).ok()?;
            return object.get(name)?.as_str().map(str::to_owned);
        }
        self.attribute(name).map(str::to_owned)
    }

    /// Its FIFO queue's message group (`MessageGroupId`: the signal's ordering key, or the
    /// publisher's `fifo_group`); `None` on a standard queue.
    pub fn group_id(&self) -> Option<&str> {
        group_of(&self.message)
    }

    /// How many times SQS delivered it (`ApproximateReceiveCount`).
    pub fn receive_count(&self) -> Option<u32> {
        self.message
            .attributes()?
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)?
            .parse()
            .ok()
    }

    /// The SDK's message.
    pub fn sqs(&self) -> &Message {
        &self.message
    }
}

/// Consume `config.queue_url` until `shutdown` resolves, at most `concurrency` handlers at
/// once (see the [module documentation](self)).
pub async fn consume<H, Fut, E>(
    client: &aws_sdk_sqs::Client,
    config: &ConsumerConfig,
    concurrency: usize,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeReport, ConsumeError>
where
    H: Fn(Received) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut handlers = Handlers::<ConsumeError>::new(concurrency);
    let mut shutdown = std::pin::pin!(shutdown);
    let seconds = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let fifo = config.queue_url.ends_with(".fifo");
    let failure = loop {
        // Receive only as many messages as there are slots free: a message waiting for a slot
        // would use up its visibility doing nothing.
        let first = tokio::select! {
            slot = handlers.slot() => slot,
            _ = &mut shutdown => break None,
        };
        let mut slots = vec![first];
        while slots.len() < 10 {
            match handlers.try_slot() {
                Some(slot) => slots.push(slot),
                None => break,
            }
        }
        let max = i32::try_from(slots.len()).unwrap_or(10);
        let receive = client
            .receive_message()
            .queue_url(&config.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(seconds(config.wait))
            .visibility_timeout(seconds(config.visibility))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            // The long poll outlasts the client's own call timeout (`timeout_ms`).
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_timeout(config.wait + Duration::from_secs(10))
                        .build(),
                ),
            )
            .send();
        let mut receive = std::pin::pin!(receive);
        let received = tokio::select! {
            received = &mut receive => received,
            _ = &mut shutdown => {
                // The long poll in flight may have taken messages already: let it answer (at
                // most `wait`), and make them visible again at once instead of after the
                // visibility timeout (on a FIFO queue they would hold up their group).
                if let Ok(output) = receive.await {
                    release(client, config, output.messages.unwrap_or_default()).await;
                }
                break None;
            }
        };
        let messages = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(e) => {
                break Some(ConsumeError::from(format!(
                    "cannot receive from {}: {}",
                    config.queue_url,
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                )));
            }
        };
        // FIFO: each message's turn comes when the one before it in its group (in this
        // receive; SQS gives no more of a group while some of it is in flight) ended `Ok`.
        let mut last_of_group: HashMap<String, tokio::sync::oneshot::Receiver<bool>> =
            HashMap::new();
        for (message, slot) in messages.into_iter().zip(slots) {
            let Some(receipt) = message.receipt_handle().map(str::to_owned) else {
                continue;
            };
            let (turn, done) = if fifo {
                // Without a group id (an emulator may not say), the whole receive is one.
                let group = group_of(&message).unwrap_or_default().to_owned();
                let (done, next) = tokio::sync::oneshot::channel();
                (last_of_group.insert(group, next), Some(done))
            } else {
                (None, None)
            };
            let work = handler(Received { message });
            let (client, config) = (client.clone(), config.clone());
            handlers.spawn(async move {
                let visibility = seconds(config.visibility);
                // Renew the visibility every half of it while the handler runs.
                let renew = async {
                    loop {
                        tokio::time::sleep(config.visibility / 2).await;
                        let renewed = client
                            .change_message_visibility()
                            .queue_url(&config.queue_url)
                            .receipt_handle(&receipt)
                            .visibility_timeout(visibility)
                            .send()
                            .await;
                        if let Err(e) = renewed {
                            tracing::warn!(
                                error = %aws_smithy_types::error::display::DisplayErrorContext(&e),
                                "could not extend a message's visibility; another consumer may get it too"
                            );
                        }
                    }
                };
                // `None`: not handled, the one before it in its group failed.
                let run = async {
                    if let Some(turn) = turn
                        && !turn.await.unwrap_or(false)
                    {
                        return None;
                    }
                    let outcome = work.await;
                    if let (Some(done), Ok(())) = (done, &outcome) {
                        let _ = done.send(true);
                    }
                    Some(outcome)
                };
                let outcome = tokio::select! {
                    outcome = run => outcome,
                    () = renew => unreachable!("renews until the handler ends"),
                };
                drop(slot);
                match outcome {
                    // A delete that fails ends nothing: the message comes back after its
                    // visibility timeout, and the inbox skips it then.
                    Some(Ok(())) => {
                        let deleted = client
                            .delete_message()
                            .queue_url(&config.queue_url)
                            .receipt_handle(&receipt)
                            .send()
                            .await;
                        match deleted {
                            Ok(_) => Ok(true),
                            Err(e) => {
                                tracing::warn!(
                                    error = %aws_smithy_types::error::display::DisplayErrorContext(&e),
                                    queue = %config.queue_url,
                                    "could not delete a handled message; SQS delivers it again"
                                );
                                Ok(false)
                            }
                        }
                    }
                    // Failed, or (`None`) not handled since the one before it in its group
                    // failed: visible again with that one, to come back after it.
                    failed => {
                        if let Some(Err(e)) = failed {
                            tracing::warn!(error = %e, queue = %config.queue_url, "the handler failed; SQS delivers the message again");
                        }
                        let _ = client
                            .change_message_visibility()
                            .queue_url(&config.queue_url)
                            .receipt_handle(&receipt)
                            .visibility_timeout(seconds(config.retry_after))
                            .send()
                            .await;
                        Ok(false)
                    }
                }
            })?;
        }
    };
    let report = handlers.finish().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// A message's `MessageGroupId` (FIFO queues).
fn group_of(message: &Message) -> Option<&str> {
    message
        .attributes()?
        .get(&MessageSystemAttributeName::MessageGroupId)
        .map(String::as_str)
}

/// Make `messages` visible again at once (received, not handled).
async fn release(client: &aws_sdk_sqs::Client, config: &ConsumerConfig, messages: Vec<Message>) {
    for message in messages {
        if let Some(receipt) = message.receipt_handle() {
            let _ = client
                .change_message_visibility()
                .queue_url(&config.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
}
