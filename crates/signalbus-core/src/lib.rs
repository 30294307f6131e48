//! The core of [signalbus](https://docs.rs/signalbus): signal types, the publisher trait,
//! storage per database and the flushing engine.
//!
//! **This crate is an implementation detail of `signalbus`, with no semver promises of its
//! own** (as `sqlx-core` is for `sqlx`): applications depend on the `signalbus` facade crate,
//! which re-exports the public API by name. Its public items beyond those exist for the broker
//! crates (`signalbus-amqp`, `signalbus-nats`, `signalbus-kafka`) and may change in any
//! release.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// A named place where a fault-injection run may crash the process (the `failpoints` feature,
/// configured through the `fail` crate); nothing at all without that feature.
macro_rules! fail_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

// The modules, bottom to top: each imports only from the layers below it (checked by
// tests/layers.rs, which lists the same layers).
//
// 1. model: plain types and errors
mod contract;
mod delivery;
mod error;
mod ident;
pub mod inspection;
pub mod locking;
mod message;
pub mod metrics;
#[doc(hidden)]
pub mod redact;
mod seen;
mod signal;
// 2. what talks to the outside: brokers, databases; the consumer side's plumbing
#[doc(hidden)]
pub mod consume;
#[cfg(feature = "otel")]
pub mod otel;
pub mod publisher;
pub mod storage;
// 3. the registered signal types; the consumer's inbox
#[cfg(feature = "inbox")]
pub mod inbox;
mod registry;
// 4. the engine: publish-and-settle, bursts, auto-flush, the relay
mod engine;
// 5. the write path: transactions, recorders, prepared signals
pub mod prepared;
mod transaction;
// 6. atomic blocks
pub mod atomic;
// 7. the handle users hold
mod bus;
// 8. many databases' relays
pub mod fleet;

pub use atomic::{Atomic, AtomicOptions, BlockError, Isolation, RowLock, TableRow};
pub use bus::{SignalBus, SignalBusBuilder};
pub use contract::{Holdback, ParkedRows, ParkedSignal, PendingStats};
pub use delivery::{
    DEFAULT_FLUSH_WAIT, Delivery, DeliveryReport, FlushProgress, OnProgress, SignalId,
};
#[cfg(feature = "wal")]
pub use engine::capture::{self, CaptureState, WalCapture};
pub use engine::relay::{self, BurstShare, Readiness, ReadinessCheck, Relay, RelayBuilder};
pub use error::{Error, InnerError, PublishError, PublishErrorKind, Result};
#[doc(hidden)]
pub use ident::Ident;
pub use message::{Headers, Message, ORDERING_KEY_HEADER};
pub use prepared::{InsertParam, PreparedSignal};
pub use publisher::{BatchOutcome, BoxPublisher, Deferred, Publisher, PublisherExt, Refused};
pub use registry::Selection;
pub use signal::{DEFAULT_BURST, OrderColumn, RetryPolicy, Signal, SignalType, json_body};
pub use storage::Backend;
pub use transaction::{Recorder, Transaction};
