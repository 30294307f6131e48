//! The publisher: a batch is enqueued at once, then every delivery report is awaited.

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
    producer: Arc<RwLock<FutureProducer>>,
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
        let producer: FutureProducer = options
            .config()
            .create()
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
    pub fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Swap in a fresh producer; the old one is dropped off the runtime (dropping flushes).
    fn renew(&self) {
        match self.options.config().create::<FutureProducer>() {
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

    async fn send(&self, batch: &[Message]) -> Result<(), PublishError> {
        let producer = self.producer();
        let mut reports = Vec::with_capacity(batch.len());
        for message in batch {
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
            if let Some(key) = &message.routing_key {
                record = record.key(key.as_str());
            }
            let mut record = Some(record);
            // A full local queue empties as reports come in: wait a little and try again.
            let report = loop {
                match producer.send_result(record.take().expect("set")) {
                    Ok(report) => break report,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = Some(back);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(error(e, message)),
                }
            };
            reports.push(report);
        }
        for (message, report) in batch.iter().zip(join_all(reports).await) {
            match report {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(error(e, message)),
                Err(_) => {
                    return Err(PublishError::unavailable(
                        "the Kafka producer went away before reporting delivery",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A delivery failure that names the topic and says whether retrying helps.
fn error(e: KafkaError, message: &Message) -> PublishError {
    let what = format!("message {} to topic `{}`", message.id, message.destination);
    let code = e.rdkafka_error_code();
    let error = match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            PublishError::rejected(format!(
                "Kafka has no topic for {what}: create the topic first; the batch stays pending"
            ))
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => PublishError::new(
            PublishErrorKind::Timeout,
            format!("Kafka did not acknowledge {what} in time ({e}); the batch stays pending"),
        ),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            PublishError::rejected(format!("{what} is too large for Kafka: {e}"))
        }
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
    /// All or nothing for now: an error refusing the batch makes the flush engine send its
    /// messages one by one to find the refused one.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        self.publish_all(batch)
            .await
            .map(|()| BatchOutcome::all_stored())
    }
}

impl KafkaPublisher {
    async fn publish_all(&self, batch: &[Message]) -> Result<(), PublishError> {
        let result = self.publish_once(batch).await;
        match result {
            Err(e) if producer_state_error(&e) => {
                tracing::info!(error = %e, "Kafka producer state lost; retrying the batch with a fresh producer");
                self.publish_once(batch).await
            }
            other => other,
        }
    }
}

impl KafkaPublisher {
    async fn publish_once(&self, batch: &[Message]) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
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
        let e = match result {
            Err(e) if e.kind() != PublishErrorKind::Rejected => e,
            done => {
                renew.0 = None;
                return done;
            }
        };
        // librdkafka waits for a missing topic until the message times out: say so. Asked
        // through the producer in use, which is connected, before it is replaced.
        if e.kind() == PublishErrorKind::Timeout {
            return Err(self.missing_topic(batch).await.unwrap_or(e));
        }
        Err(e)
    }

    /// After a timeout: the batch's topics that the broker does not have, as a refusal that
    /// names them; `None` when they all exist or the broker cannot be asked.
    async fn missing_topic(&self, batch: &[Message]) -> Option<PublishError> {
        let client = self.producer();
        let limit = self.options.timeout.min(Duration::from_secs(5));
        // All topics: asking for one by name could create it on a broker that auto-creates.
        let metadata =
            tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, limit))
                .await
                .ok()?
                .ok()?;
        let known: HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        let missing: Vec<&str> = topics(batch)
            .into_iter()
            .filter(|t| !known.contains(t))
            .collect();
        if missing.is_empty() {
            return None;
        }
        Some(PublishError::rejected(format!(
            "Kafka has no {}: create it first; the batch stays pending",
            named_topics(&missing)
        )))
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

/// The distinct destinations of a batch, in order of first use.
fn topics(batch: &[Message]) -> Vec<&str> {
    let mut seen = HashSet::new();
    batch
        .iter()
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
