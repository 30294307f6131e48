//! Kafka publisher for [signalbus](https://docs.rs/signalbus), on rdkafka with its bundled
//! librdkafka.
//!
//! `kafka://host:9092[,host2:9092…]`. The producer is idempotent with `acks=all`: a
//! message counts as stored when every in-sync replica has it, and librdkafka's own retries
//! never duplicate or reorder it. Each message goes to the topic named by its destination,
//! keyed by its routing key (so one key stays on one partition, in order), with its headers
//! plus `message-id` = the stable signal id and `content-type`. A batch is handed to the
//! producer at once and counts as sent when every delivery report is a success.
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

mod options;
mod publisher;

pub use options::KafkaOptions;
pub use publisher::KafkaPublisher;

/// The header that carries [`signalbus_core::Message::id`].
pub const MESSAGE_ID_HEADER: &str = "message-id";
/// The header that carries [`signalbus_core::Message::content_type`].
pub const CONTENT_TYPE_HEADER: &str = "content-type";
