//! RabbitMQ publisher for [signalbus](https://docs.rs/signalbus), on lapin.
//!
//! `amqp://user:password@host:5672/vhost` (or `amqps://` for TLS). Every batch is published
//! on one dedicated channel in confirm mode: all messages go out back to back, then one wait
//! collects every confirm, and the publisher says what became of each message (a
//! [`BatchOutcome`](signalbus_core::BatchOutcome)):
//!
//! * **stored**: acknowledged by RabbitMQ (and not returned);
//! * **refused**, with a reason naming the exchange and routing key (never the body): a
//!   message returned as unroutable (`unroutable: no queue bound for routing key …`; told by
//!   its `message_id`) — every message is published `mandatory` unless the URL says
//!   `unroutable=drop`, so a routing key nobody is bound for is never lost silently — nacked (e.g. a full queue with
//!   `x-overflow=reject-publish`), with a reserved header that cannot be sent (never
//!   published), or to an exchange that does not exist or that the user may not publish to.
//!   The last two make RabbitMQ close the channel: the messages to that exchange are refused,
//!   and the others whose confirm the closing lost are published again on a fresh channel in
//!   the same call (those published before the culprit may then arrive twice, with the same
//!   `message_id`); the next batch uses a new connection;
//! * an **error** for the whole call, with nothing stored: the connection broke, or RabbitMQ
//!   did not answer within `timeout_ms`. The publisher reconnects on the next batch.
//!
//! A cluster: list its nodes, comma-separated —
//! `amqp://user:password@host1:5672,host2:5672,host3:5672/%2f` — and each new connection
//! goes to the first that answers, starting one node further along each time. Declare the
//! queues as quorum queues (`x-queue-type: quorum`) so that a confirmed message survives a
//! node: RabbitMQ confirms a message on a quorum queue once a majority of its replicas wrote
//! it.
//!
//! # Logs
//! lapin logs every returned message at `warn`, target `lapin::returned_messages` ("Server
//! returned us a message"), in its `Debug` form: the **body** (as bytes) and every property
//! and header. That happens inside lapin when the frames arrive, before this publisher sees
//! the return, so it cannot be avoided here: applications should lower that target (the
//! `signalbus` command line does), e.g. `RUST_LOG=warn,lapin::returned_messages=error` or
//! `EnvFilter::new("warn,lapin::returned_messages=error")`. The reason the publisher reports
//! carries the exchange, routing key and reply code only.
//!
//! Each message is published to the exchange named by its destination (`""` or
//! `amq.default` mean the default exchange) with its routing key, and these properties:
//! `message_id` = the stable signal id, `content_type`, `headers`, `type` = the signal name,
//! `timestamp` = the publish time, `app_id` (from the URL), `delivery_mode` = persistent.
//!
//! # URL query parameters
//! | parameter | default | meaning |
//! |---|---|---|
//! | `unroutable` | `refuse` | `refuse`: every message is published mandatory, so one that no queue is bound for comes back and is refused (retried, then parked); `drop`: RabbitMQ discards it and it counts as sent |
//! | `mandatory` | `true` | the AMQP flag's own name: `true` is `unroutable=refuse`, `false` is `unroutable=drop` |
//! | `mandatory_signals` | none | with `unroutable=drop`: comma-separated signal names still published as mandatory |
//! | `persistent` | `true` | delivery mode 2 (stored on disk by durable queues) |
//! | `app_id` | none | the `app_id` property |
//! | `timeout_ms` | `10000` | limit of every wait on the broker (publish, confirms, connect) |
//! | `cacertfile` | none | `amqps://`: a PEM file of CA certificates to trust besides the system's (e.g. a private CA); the system's CA store (Debian: `ca-certificates`) must exist either way |
//! | `certfile`, `keyfile` | none | `amqps://`: a client certificate (PEM) and its unencrypted PKCS#8 key (PEM), for brokers that verify clients |
//! | `heartbeat`, `channel_max`, `frame_max`, `connection_timeout`, `auth_mechanism` | lapin's | passed to lapin |
//!
//! # Reserved headers
//! Headers named in [`headers`] are not sent as headers: they set the AMQP property of the
//! same name for that one message, so a signal type (or a single message) chooses them by
//! returning them from `Signal::headers` (or with `#[signal(header = "amqp-priority")]`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;
pub mod consumer;
mod error;
mod options;
mod properties;
mod publisher;

pub use options::AmqpOptions;
pub use publisher::AmqpPublisher;

/// The signal's message id as a consumer reads it from a delivery (the AMQP `message_id`
/// property this publisher sets): the key of the consumer inbox (`signalbus::inbox`), the same
/// on every copy. `None` for a message that has none (not sent by signalbus).
pub fn message_id(delivery: &lapin::message::Delivery) -> Option<&str> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
}

/// Reserved message header names that the AMQP publisher turns into properties or publish
/// options and does not send as headers. Other buses send them as ordinary headers.
pub mod headers {
    /// `true` or `false`: publish this message as mandatory (overrides the URL and type).
    pub const MANDATORY: &str = "amqp-mandatory";
    /// `true` or `false`: delivery mode 2 (persistent) or 1 for this message.
    pub const PERSISTENT: &str = "amqp-persistent";
    /// The `type` property (default: the signal name).
    pub const TYPE: &str = "amqp-type";
    /// The `correlation_id` property.
    pub const CORRELATION_ID: &str = "amqp-correlation-id";
    /// The `reply_to` property.
    pub const REPLY_TO: &str = "amqp-reply-to";
    /// The `expiration` property: a per-message TTL in milliseconds, e.g. `"60000"`.
    pub const EXPIRATION: &str = "amqp-expiration";
    /// The `priority` property, `0` to `255`.
    pub const PRIORITY: &str = "amqp-priority";
    /// Every reserved name.
    pub const ALL: [&str; 7] = [
        MANDATORY,
        PERSISTENT,
        TYPE,
        CORRELATION_ID,
        REPLY_TO,
        EXPIRATION,
        PRIORITY,
    ];
}
