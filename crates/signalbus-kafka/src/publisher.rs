//! The publisher: a batch is enqueued at once, then every delivery report is awaited.

use crate::logs::LogContext;
use crate::options::KafkaOptions;
use crate::{CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER};
use futures_util::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use signalbus_core::{BatchOutcome, Error, Message, PublishError, PublishErrorKind, Publisher};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Publishes to Kafka with an idempotent producer and `acks=all`. Cheap to clone; clones
/// share the producer. After a batch failed for any reason but a refusal, the producer is
/// replaced by a new one: an idempotent producer can stay stuck after the broker restarted
/// and lost its state (new producer id, sequences from 0 again).
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: Arc<RwLock<FutureProducer<LogContext>>>,
    options: KafkaOptions,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Create the producer for `url` and check that a broker answers. Fails at once, naming
    /// the brokers, when none can be reached.
    pub async fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(KafkaOptions::from_url(url)?).await
    }

    /// Create the producer with `options`.
    pub async fn with_options(options: KafkaOptions) -> signalbus_core::Result<Self> {
        let producer: FutureProducer<LogContext> = options
            .config()
            .create_with_context(LogContext::default())
            .map_err(|e| Error::Config(format!("invalid Kafka producer configuration: {e}")))?;
        let check = producer.clone();
        let limit = options.timeout;
        // librdkafka's metadata call blocks a thread.
        let answer = tokio::task::spawn_blocking(move || {
            check.client().fetch_metadata(None, limit).map(drop)
        })
        .await
        .map_err(|e| Error::Config(format!("Kafka metadata check panicked: {e}")))?;
        answer.map_err(|e| {
            Error::Publish(
                PublishError::unavailable(format!(
                    "cannot reach Kafka at {} within {limit:?} ({e}); check the hosts and ports \
                     and that the brokers run",
                    options.bootstrap_servers
                ))
                .with_source(e),
            )
        })?;
        Ok(KafkaPublisher {
            producer: Arc::new(RwLock::new(producer)),
            options,
        })
    }

    /// The producer in use now.
    pub fn producer(&self) -> FutureProducer<LogContext> {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Swap in a fresh producer; the old one is dropped off the runtime (dropping flushes).
    fn renew(&self) {
        match self
            .options
            .config()
            .create_with_context::<_, FutureProducer<LogContext>>(LogContext::default())
        {
            Ok(fresh) => {
                let old = std::mem::replace(
                    &mut *self
                        .producer
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    fresh,
                );
                // Off the runtime when there is one (dropping flushes, which blocks).
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(move || drop(old))),
                    Err(_) => drop(old),
                }
                tracing::info!(servers = %self.options.bootstrap_servers, "Kafka producer renewed after a failed batch");
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the Kafka producer"),
        }
    }

    /// Enqueue the batch, then await every delivery report. Returns the outcome so far and
    /// the indices of the messages whose delivery timed out (for the caller to tell a missing
    /// topic from a broker that does not answer).
    async fn send(&self, batch: &[Message]) -> Result<(BatchOutcome, Vec<usize>), PublishError> {
        let producer = self.producer();
        let mut outcome = BatchOutcome::all_stored();
        let mut reports = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let mut headers =
                OwnedHeaders::new_with_capacity(message.headers.len() + 2).insert(Header {
                    key: MESSAGE_ID_HEADER,
                    value: Some(message.id.as_str()),
                });
            if let Some(ct) = &message.content_type {
                headers = headers.insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(ct.as_str()),
                });
            }
            for (key, value) in &message.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            let mut record = FutureRecord::to(&message.destination)
                .payload(&message.body)
                .headers(headers);
            // The routing key, else the ordering key: it picks the partition, so the signals
            // of one key keep their order.
            let key = message.routing_key.as_deref().or_else(|| {
                message
                    .headers
                    .get(signalbus_core::ORDERING_KEY_HEADER)
                    .map(String::as_str)
            });
            if let Some(key) = key {
                record = record.key(key);
            }
            let mut record = Some(record);
            // A full local queue empties as reports come in: wait a little and try again.
            let report = loop {
                match producer.send_result(record.take().expect("set")) {
                    Ok(report) => break Some(report),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = Some(back);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // E.g. larger than `message.max.bytes`: refused before it is sent.
                    Err((e, _)) => match refusal(&e, message) {
                        Some(reason) => {
                            outcome.refuse(index, reason);
                            break None;
                        }
                        None => return Err(error(e, message)),
                    },
                }
            };
            reports.extend(report.map(|report| async move { (index, report.await) }));
        }
        let mut timed_out = Vec::new();
        for (index, report) in join_all(reports).await {
            let message = &batch[index];
            match report {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    if let Some(reason) = refusal(&e, message) {
                        outcome.refuse(index, reason);
                    } else if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
                        timed_out.push(index);
                    } else {
                        return Err(error(e, message));
                    }
                }
                Err(_) => {
                    return Err(PublishError::unavailable(
                        "the Kafka producer went away before reporting delivery",
                    ));
                }
            }
        }
        Ok((outcome, timed_out))
    }
}

/// Why Kafka refused one message, when the failure is the message's own: its topic or
/// partition does not exist, the topic name is invalid, it is too large (for the producer's
/// `message.max.bytes` or the broker's limit), invalid, or its record batch too large (`MESSAGE_BATCH_TOO_LARGE`, the record list too large).
/// `None` for the failures of the call as a whole (transport, timeouts, producer state).
fn refusal(e: &KafkaError, message: &Message) -> Option<String> {
    let topic = &message.destination;
    let reason = match e.rdkafka_error_code()? {
        RDKafkaErrorCode::UnknownTopicOrPartition
        | RDKafkaErrorCode::UnknownTopic
        | RDKafkaErrorCode::UnknownPartition => {
            format!("Kafka has no topic `{topic}` (or partition): create the topic first ({e})")
        }
        RDKafkaErrorCode::InvalidTopic => format!("`{topic}` is not a valid Kafka topic ({e})"),
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::MessageBatchTooLarge => {
            format!("the message to topic `{topic}` is too large for Kafka ({e})")
        }
        RDKafkaErrorCode::InvalidMessage | RDKafkaErrorCode::InvalidRecord => {
            format!("Kafka refused the message to topic `{topic}` as invalid ({e})")
        }
        _ => return None,
    };
    Some(reason)
}

/// A failure of the call as a whole (not a [`refusal`]), naming the topic.
fn error(e: KafkaError, message: &Message) -> PublishError {
    let what = format!("message {} to topic `{}`", message.id, message.destination);
    let error = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => PublishError::new(
            PublishErrorKind::Timeout,
            format!("Kafka did not acknowledge {what} in time ({e}); the batch stays pending"),
        ),
        _ => PublishError::unavailable(format!(
            "Kafka did not store {what} ({e}); the batch stays pending"
        )),
    };
    error.with_source(e)
}

/// Whether the failure is about the producer's own state (its id or epoch, e.g. fenced after
/// a broker restart): a fresh producer can send the same batch at once.
fn producer_state_error(e: &PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<KafkaError>())
        .and_then(KafkaError::rdkafka_error_code)
        .is_some_and(|code| {
            matches!(
                code,
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerIdMapping
            )
        })
}

impl Publisher for KafkaPublisher {
    /// Publishes the batch and reports per message: refused are the messages whose delivery
    /// report says it is theirs (see `refusal`) and the ones that timed out waiting for a
    /// topic the broker does not have; any other failure fails the call.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let result = self.publish_once(batch).await;
        match result {
            Err(e) if producer_state_error(&e) => {
                tracing::info!(error = %e, "Kafka producer state lost; retrying the batch with a fresh producer");
                self.publish_once(batch).await
            }
            other => other,
        }
    }

    /// The brokers answer a metadata request.
    async fn check(&self) -> Result<(), PublishError> {
        let client = self.producer();
        let limit = self.options.timeout.min(Duration::from_secs(5));
        let answer =
            tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, limit)).await;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PublishError::unavailable(format!(
                "Kafka brokers do not answer: {e}"
            ))),
            Err(e) => Err(PublishError::unavailable(format!(
                "the Kafka check did not finish: {e}"
            ))),
        }
    }
}

impl KafkaPublisher {
    async fn publish_once(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.is_empty() {
            return Ok(BatchOutcome::all_stored());
        }
        // message.timeout.ms bounds every report, but librdkafka looks for expired messages
        // only about once a second, later still on a busy machine: this guard only catches a
        // producer that hangs.
        let limit = self.options.timeout + GUARD_MARGIN;
        // A fresh producer after any failure but a refusal, also when the bus' own publish
        // timeout cancels this call first: the guard renews when dropped armed.
        let mut renew = RenewIfAbandoned(Some(self));
        let result = match tokio::time::timeout(limit, self.send(batch)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(
                PublishErrorKind::Timeout,
                format!(
                    "Kafka did not report delivery of {} message(s) to {} within {limit:?}; \
                     the batch stays pending",
                    batch.len(),
                    named_topics(&topics(batch))
                ),
            )),
        };
        // Any failure of the call renews the producer (the guard stays armed).
        let (mut outcome, timed_out) = result?;
        if timed_out.is_empty() {
            renew.0 = None;
            return Ok(outcome);
        }
        // librdkafka waits for a missing topic until the message times out: such messages are
        // refused, naming the topic. Asked through the producer in use, which is connected,
        // before it is replaced.
        let missing = self.missing_topics(batch, &timed_out).await;
        let waited: Vec<usize> = timed_out
            .into_iter()
            .filter(|&i| !missing.contains(batch[i].destination.as_str()))
            .collect();
        if !waited.is_empty() {
            let late: Vec<&Message> = waited.iter().map(|&i| &batch[i]).collect();
            return Err(PublishError::new(
                PublishErrorKind::Timeout,
                format!(
                    "Kafka did not acknowledge {} message(s) to {} in time; the batch stays \
                     pending",
                    late.len(),
                    named_topics(&topics(late))
                ),
            ));
        }
        for (index, message) in batch.iter().enumerate() {
            if missing.contains(message.destination.as_str()) && !outcome.is_refused(index) {
                outcome.refuse(
                    index,
                    format!(
                        "Kafka has no topic `{}`: create it first (the message timed out \
                         waiting for it)",
                        message.destination
                    ),
                );
            }
        }
        renew.0 = None;
        Ok(outcome)
    }

    /// After a timeout: the topics of the messages at `indices` that the broker does not have
    /// (none when the broker cannot be asked).
    async fn missing_topics<'a>(
        &self,
        batch: &'a [Message],
        indices: &[usize],
    ) -> HashSet<&'a str> {
        let client = self.producer();
        let limit = self.options.timeout.min(Duration::from_secs(5));
        // All topics: asking for one by name could create it on a broker that auto-creates.
        let metadata =
            tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, limit)).await;
        let Ok(Ok(metadata)) = metadata else {
            return HashSet::new();
        };
        let known: HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        indices
            .iter()
            .map(|&i| batch[i].destination.as_str())
            .filter(|t| !known.contains(t))
            .collect()
    }
}

/// Renews the producer when dropped while still holding it: after a failed batch, and when
/// the batch is abandoned half-way (its future dropped). The producer may be what got stuck.
struct RenewIfAbandoned<'a>(Option<&'a KafkaPublisher>);

impl Drop for RenewIfAbandoned<'_> {
    fn drop(&mut self) {
        if let Some(publisher) = self.0 {
            publisher.renew();
        }
    }
}

/// How long after `message.timeout.ms` a batch is given up without delivery reports.
const GUARD_MARGIN: Duration = Duration::from_secs(5);

/// The distinct destinations of messages, in order of first use.
fn topics<'a>(batch: impl IntoIterator<Item = &'a Message>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    batch
        .into_iter()
        .map(|m| m.destination.as_str())
        .filter(|t| seen.insert(*t))
        .collect()
}

/// `topic `a`` or `topics `a`, `b``, for error messages.
fn named_topics(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|t| format!("`{t}`")).collect();
    match names.len() {
        1 => format!("topic {}", quoted[0]),
        _ => format!("topics {}", quoted.join(", ")),
    }
}
