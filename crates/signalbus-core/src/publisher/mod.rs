//! The publisher: the one small trait that delivers messages to a bus.
//!
//! A publisher gets a batch of messages and returns `Ok` only when the broker has stored all
//! of them. Anything else (an error, a timeout) leaves the batch's rows pending, to be sent
//! again later. Timeouts and retries are separate, composable layers ([`PublisherExt`]), as in
//! tower.
//!
//! A custom publisher is a few lines (a complete one that POSTs to an HTTP webhook is the
//! `webhook` example of the `signalbus` crate):
//!
//! ```
//! use signalbus_core::{Message, PublishError, Publisher};
//!
//! struct Webhook { url: String }
//!
//! impl Publisher for Webhook {
//!     async fn publish(&self, batch: &[Message]) -> Result<(), PublishError> {
//!         for message in batch {
//!             // e.g. POST message.body to self.url; map a failure to
//!             // PublishError::unavailable("webhook down: ...")
//!             let _ = (&self.url, message);
//!         }
//!         Ok(())
//!     }
//! }
//! ```

mod file;
mod memory;
mod retry;
mod stdout;
mod timeout;

pub use file::FilePublisher;
pub use memory::MemoryPublisher;
pub use retry::{Backoff, Retry};
pub use stdout::StdoutPublisher;
pub use timeout::Timeout;

use crate::error::{Error, PublishError, Result};
use crate::message::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Delivers batches of messages to a message bus.
pub trait Publisher: Send + Sync + 'static {
    /// Deliver every message of `batch`; return only when the broker has stored all of them.
    fn publish(&self, batch: &[Message]) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// Composable layers on any publisher.
pub trait PublisherExt: Publisher + Sized {
    /// Fail a publish call that takes longer than `limit` (the rows stay pending).
    fn timeout(self, limit: Duration) -> Timeout<Self> {
        Timeout::new(self, limit)
    }

    /// Retry failed publish calls whose error is retryable, with exponential backoff.
    fn retry(self, backoff: Backoff) -> Retry<Self> {
        Retry::new(self, backoff)
    }

    /// Erase the type, e.g. to choose a publisher at run time.
    fn boxed(self) -> BoxPublisher {
        BoxPublisher(Arc::new(self))
    }
}

impl<P: Publisher> PublisherExt for P {}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe twin of [`Publisher`], implemented for every publisher.
trait DynPublisher: Send + Sync {
    fn publish_dyn<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Result<(), PublishError>>;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.publish(batch))
    }
}

/// A type-erased, cheaply cloned publisher.
#[derive(Clone)]
pub struct BoxPublisher(Arc<dyn DynPublisher>);

impl std::fmt::Debug for BoxPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxPublisher")
    }
}

impl Publisher for BoxPublisher {
    async fn publish(&self, batch: &[Message]) -> Result<(), PublishError> {
        self.0.publish_dyn(batch).await
    }
}

impl<P: Publisher> Publisher for Arc<P> {
    async fn publish(&self, batch: &[Message]) -> Result<(), PublishError> {
        (**self).publish(batch).await
    }
}

/// Builds a publisher from a bus URL.
///
/// Known here: `stdout:` (JSON lines on standard output), `file:PATH` (JSON lines appended to
/// PATH) and `memory:` (kept in memory, for tests and benchmarks). Broker URLs (`amqp://`,
/// `nats://`, `kafka://`) are handled by the `signalbus` crate when their feature is on.
pub async fn from_url(url: &str) -> Result<BoxPublisher> {
    let (scheme, rest) = url.split_once(':').ok_or_else(|| Error::Config(format!(
        "bus URL `{}` has no scheme; use e.g. `stdout:`, `file:/path/to/signals.jsonl` or `memory:`",
        crate::redact::redact_url(url)
    )))?;
    match scheme {
        "stdout" => Ok(StdoutPublisher::new().boxed()),
        "memory" => Ok(MemoryPublisher::new().boxed()),
        "file" => {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(Error::Config(
                    "bus URL `file:` needs a path, e.g. `file:/var/tmp/signals.jsonl`".into(),
                ));
            }
            Ok(FilePublisher::open(path).await?.boxed())
        }
        other => Err(Error::Config(format!(
            "unsupported bus URL scheme `{other}:` in `{}`; this build knows `stdout:`, \
             `file:PATH` and `memory:`",
            crate::redact::redact_url(url)
        ))),
    }
}
