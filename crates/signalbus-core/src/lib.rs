//! The core of [signalbus](https://docs.rs/signalbus): signal types, the publisher trait,
//! storage per database and the flushing engine. Applications depend on the `signalbus`
//! facade crate, which re-exports this one.
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

pub mod atomic;
mod bus;
pub mod consume;
mod error;
mod flush;
mod ident;
#[cfg(feature = "inbox")]
pub mod inbox;
mod message;
#[cfg(feature = "otel")]
pub mod otel;
pub mod prepared;
pub mod publisher;
pub mod redact;
mod registry;
pub mod relay;
mod signal;
pub mod storage;
mod transaction;

pub use atomic::{Atomic, AtomicOptions, BlockError, Isolation, Record, RowLock};
pub use bus::{SignalBus, SignalBusBuilder};
pub use error::{Error, InnerError, PublishError, PublishErrorKind, Result};
pub use flush::Progress;
pub use flush::explicit::{DEFAULT_FLUSH_WAIT, FlushProgress};
pub use ident::Ident;
pub use message::{Headers, Message, ORDERING_KEY_HEADER};
pub use prepared::{InsertParam, PreparedSignal};
pub use publisher::{BatchOutcome, BoxPublisher, Publisher, PublisherExt, Refused};
pub use registry::Selection;
pub use relay::{Readiness, ReadinessCheck, Relay, RelayBuilder};
pub use signal::{DEFAULT_BURST, OrderColumn, RetryPolicy, Signal, SignalType, json_body};
pub use storage::{Backend, Holdback, ParkedRows, ParkedSignal, PendingStats};
pub use transaction::{Delivery, DeliveryReport, Recorder, SignalId, Transaction};
