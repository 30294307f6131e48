//! Kafka publisher for [signalbus](https://docs.rs/signalbus), on rdkafka with its bundled
//! librdkafka.
//!
//! `kafka://host:9092[,host2:9092…]`. The producer is idempotent with `acks=all`: a
//! message counts as stored when every in-sync replica has it, and librdkafka's own retries
//! never duplicate or reorder it. Each message goes to the topic named by its destination,
//! keyed by its routing key (so one key stays on one partition, in order), with its headers
//! plus `message-id` = the stable signal id and `content-type`. A batch is handed to the
//! producer at once, then every delivery report is awaited, and the publisher says what
//! became of each message (a [`BatchOutcome`](signalbus_core::BatchOutcome)):
//!
//! * **stored**: a successful delivery report;
//! * **refused**, with a reason naming the topic (never the body): unknown topic or
//!   partition, including a message that timed out waiting for a topic the broker does not
//!   have (librdkafka waits for a missing topic until `message.timeout.ms`; the topics are
//!   then looked up), an invalid topic name, a message too large (producer
//!   `message.max.bytes` or the broker's limit), an invalid message or record, a record batch
//!   too large;
//! * an **error** for the whole call, with nothing counted as stored: transport failures,
//!   timeouts on topics that exist, producer state errors (fenced, unknown producer id,
//!   out-of-order sequence; retried once at once with a fresh producer). After such an error
//!   the producer is replaced.
//!
//! # URL query parameters
//! `timeout_ms` (default `10000`) bounds the connect check and each batch (librdkafka's
//! `message.timeout.ms`). Every other parameter is a librdkafka producer property, e.g.
//! `?compression.type=lz4&linger.ms=5&client.id=orders` (this build has no TLS or SASL).
//!
//! The bus applies its own publish timeout around every batch (30 s by default, 3 s on
//! SQLite). Keep `timeout_ms` below it (or raise the bus' with `publish_timeout`) so that
//! Kafka's own timeout reports first, with the reason (e.g. a missing topic is named).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consumer;
mod logs;
mod options;
mod publisher;

pub use logs::LogContext;
pub use options::KafkaOptions;
pub use publisher::KafkaPublisher;

/// The header that carries [`signalbus_core::Message::id`].
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// The signal's message id as a consumer reads it from a record (the [`MESSAGE_ID_HEADER`]
/// header this publisher sets): the key of the consumer inbox (`signalbus::inbox`), the same
/// on every copy. `None` for a record without it, or with an id that is not UTF-8.
pub fn message_id<M: rdkafka::Message>(message: &M) -> Option<&str> {
    use rdkafka::message::Headers as _;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == MESSAGE_ID_HEADER)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
/// The header that carries [`signalbus_core::Message::content_type`].
pub const CONTENT_TYPE_HEADER: &str = "content-type";
