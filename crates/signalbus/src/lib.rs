//! # signalbus — the transactional outbox for Rust services
//!
//! A service records *signals* (messages) as rows in its own SQL database, inside the same
//! transaction as its business writes. Right after the commit, signalbus sends them over a
//! message bus and deletes the rows. What cannot be sent at once stays *pending* and is sent by
//! a later flush, so no signal is ever lost, even when the process dies between commit and
//! send.
//!
//! ```
//! use serde::Serialize;
//! use signalbus::{Signal, SignalBus, publisher::MemoryPublisher};
//!
//! #[derive(Serialize, Signal)]
//! #[signal(destination = "orders", routing_key = "order.placed")]
//! struct OrderPlaced {
//!     order_id: i64,
//!     #[signal(header)]
//!     customer: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> signalbus::Result<()> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT)").execute(&pool).await?;
//!
//! let outbox = MemoryPublisher::new();
//! let bus = SignalBus::builder(pool)
//!     .publisher(outbox.clone())
//!     .register::<OrderPlaced>()
//!     .build()?;
//! bus.migrate().await?; // creates the `order_placed` table
//!
//! let mut tx = bus.begin().await?;
//! sqlx::query("INSERT INTO orders (id, customer) VALUES (1, 'ada')").execute(&mut *tx).await?;
//! tx.send(&OrderPlaced { order_id: 1, customer: "ada".into() }).await?;
//! let report = tx.commit_and_wait().await?; // committed, sent, row deleted
//!
//! assert_eq!(report.sent, 1);
//! assert_eq!(outbox.messages()[0].headers["customer"], "ada");
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! * **At-least-once.** A signal is deleted only after the bus confirmed it. A crash or a lost
//!   database connection after the bus took a message and before the delete committed makes
//!   it go out again: duplicates are possible. Every message carries a stable id
//!   ([`Message::id`]) that is the same on every re-send, so brokers and consumers can drop
//!   duplicates.
//! * **Nothing lost.** A commit never fails because the bus is down; its signals stay pending
//!   until [`SignalBus::flush`] or [`SignalBus::flush_many`] (or the `signalbus` command line)
//!   sends them.
//! * **No order** across auto-flushes, except where a flush mode promises one.
//!
//! ## Features
//! `sqlite` (default), `postgres`, `mysql` choose the databases; `derive` (default) gives
//! `#[derive(Signal)]`. `amqp` (RabbitMQ), `nats` (NATS JetStream), `kafka`, `redis`
//! (Redis Streams), `webhook` (signed HTTP), `sqs` and `sns` (Amazon) add the publishers of
//! those buses, chosen by URL with [`connect_bus`]; each confirms delivery
//! before a row is deleted. Any other bus is a [`Publisher`] of your own: see the
//! `webhook` example. `console` adds the operator console (`signalbus::console`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bus_url;

pub use bus_url::connect_bus;
// The public API, by name: what users touch. The core crate's other public items serve the
// broker crates and are not part of it.
pub use signalbus_core::{
    Atomic, AtomicOptions, Backend, BatchOutcome, BlockError, BoxPublisher, BurstShare,
    DEFAULT_BURST, DEFAULT_FLUSH_WAIT, Deferred, Delivery, DeliveryReport, Error, FlushProgress,
    Headers, Holdback, InnerError, InsertParam, Isolation, Message, ORDERING_KEY_HEADER,
    OnProgress, OrderColumn, ParkedRows, ParkedSignal, PendingStats, PreparedSignal, PublishError,
    PublishErrorKind, Publisher, PublisherExt, Readiness, ReadinessCheck, Recorder, Refused, Relay,
    RelayBuilder, Result, RetryPolicy, RowLock, Selection, Signal, SignalBus, SignalBusBuilder,
    SignalId, SignalType, TableRow, Transaction, json_body,
};
pub use signalbus_core::{
    atomic, consume, fleet, inspection, locking, metrics, prepared, publisher, relay, storage,
};
// The database a URL names, chosen once for the command line, the benchmarks and tools.
pub use signalbus_core::with_database;

#[cfg(feature = "inbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "inbox")))]
pub use signalbus_core::inbox;

#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub use signalbus_core::otel;

#[cfg(feature = "wal")]
#[cfg_attr(docsrs, doc(cfg(feature = "wal")))]
pub use signalbus_core::{CaptureState, WalCapture, capture};

/// Hides passwords in URLs before they reach logs and errors (for the command line and
/// tools built on signalbus).
#[doc(hidden)]
pub use signalbus_core::redact;

/// A validated, quoted SQL identifier (for the command line and the tests' own SQL).
#[doc(hidden)]
pub use signalbus_core::Ident;

#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use signalbus_macros::Signal;

/// The RabbitMQ publisher (publisher confirms, mandatory routing, reconnects, TLS), for
/// configuring it beyond a bus URL.
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use signalbus_amqp as amqp;

/// The NATS JetStream publisher (acknowledged publishes, `Nats-Msg-Id` deduplication).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use signalbus_nats as nats;

/// The Kafka publisher (idempotent producer, `acks=all`).
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use signalbus_kafka as kafka;

/// The Redis Streams publisher (pipelined `XADD`, an outcome per entry) and its
/// consumer-group runner.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use signalbus_redis as redis;

/// The webhook publisher: signed HTTP POSTs (Standard Webhooks), allow-listed hosts, an
/// outcome per endpoint.
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub use signalbus_webhook as webhook;

/// The operator console: held signals, failure groups, bulk unpark and purge with a dry run
/// and an audit log, as an axum `Router` to mount next to an in-process relay (the
/// `signalbus` command serves it with `signalbus console` and `signalbus relay --console`).
#[cfg(feature = "console")]
#[cfg_attr(docsrs, doc(cfg(feature = "console")))]
pub use signalbus_console as console;

/// The Amazon SQS and SNS publishers (batches of 10, FIFO per ordering key) and the SQS
/// consumer runner.
#[cfg(any(feature = "sqs", feature = "sns"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqs", feature = "sns"))))]
pub use signalbus_aws as aws;

#[cfg(feature = "sea-orm")]
#[cfg_attr(docsrs, doc(cfg(feature = "sea-orm")))]
pub use signalbus_seaorm as seaorm;

#[cfg(any(feature = "diesel-postgres", feature = "diesel-mysql"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "diesel-postgres", feature = "diesel-mysql")))
)]
pub use signalbus_diesel as diesel;

/// The README's examples, compiled and run as doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
#[cfg(doctest)]
mod guide_doctests;
