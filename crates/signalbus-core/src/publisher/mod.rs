//! The publisher: the one small trait that delivers messages to a bus.
//!
//! A publisher gets a batch of messages and says what the broker did with each: a
//! [`BatchOutcome`] lists the messages it *refused* (unroutable, too large, no such stream);
//! every other message was stored, and its row is deleted. A refused message stays and is
//! retried with backoff, then parked, without holding back the others. A failure of the whole
//! call (an error, a timeout: the broker is down or the connection broke) leaves the whole
//! batch pending, to be sent again later, and consumes none of the messages' attempts.
//! Timeouts and retries are separate, composable layers ([`PublisherExt`]), as in tower.
//!
//! A publisher that can only say "all or nothing" still works: it returns
//! [`BatchOutcome::all_stored`] or an error. When such an error says the broker *refused*
//! ([`PublishErrorKind::Rejected`](crate::PublishErrorKind::Rejected)) a batch of several
//! messages, the flush engine sends them again one by one to find the refused one.
//!
//! A custom publisher is a few lines (a complete one that POSTs to an HTTP webhook is the
//! `webhook` example of the `signalbus` crate):
//!
//! ```
//! use signalbus_core::{BatchOutcome, Message, PublishError, Publisher};
//!
//! struct Webhook { url: String }
//!
//! impl Publisher for Webhook {
//!     async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
//!         let mut outcome = BatchOutcome::all_stored();
//!         for (i, message) in batch.iter().enumerate() {
//!             // e.g. POST message.body to self.url: a 4xx refuses this message,
//!             // `outcome.refuse(i, "HTTP 422: ...")`; a connection failure fails the call,
//!             // `return Err(PublishError::unavailable("webhook down: ..."))`
//!             let _ = (&self.url, message, i);
//!         }
//!         Ok(outcome)
//!     }
//! }
//! ```

mod file;
mod memory;
mod outcome;
mod retry;
mod stdout;
mod timeout;

pub use file::FilePublisher;
pub use memory::MemoryPublisher;
pub use outcome::{BatchOutcome, Refused};
pub use retry::{Backoff, Retry};
pub use stdout::StdoutPublisher;
pub use timeout::Timeout;

use crate::error::PublishError;
use crate::message::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Delivers batches of messages to a message bus and says what the broker stored.
pub trait Publisher: Send + Sync + 'static {
    /// Deliver the messages of `batch`; return once the broker has answered for each of them:
    /// which ones it refused ([`BatchOutcome`]; the others were stored), or an error when the
    /// call as a whole failed (then nothing counts as stored).
    fn publish(
        &self,
        batch: &[Message],
    ) -> impl Future<Output = Result<BatchOutcome, PublishError>> + Send;

    /// Whether the broker can be reached now, for readiness checks (the relay's `/readyz`):
    /// `Ok` by default; the broker publishers check (or re-open) their connection. It
    /// publishes nothing.
    fn check(&self) -> impl Future<Output = Result<(), PublishError>> + Send {
        async { Ok(()) }
    }
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
    fn publish_dyn<'a>(
        &'a self,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<BatchOutcome, PublishError>>;

    fn check_dyn(&self) -> BoxFuture<'_, Result<(), PublishError>>;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(
        &'a self,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<BatchOutcome, PublishError>> {
        Box::pin(self.publish(batch))
    }

    fn check_dyn(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(self.check())
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
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        self.0.publish_dyn(batch).await
    }

    async fn check(&self) -> Result<(), PublishError> {
        self.0.check_dyn().await
    }
}

impl<P: Publisher> Publisher for Arc<P> {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        (**self).publish(batch).await
    }

    async fn check(&self) -> Result<(), PublishError> {
        (**self).check().await
    }
}
