//! The trait, its layers as methods, and the type-erased publisher.

use super::{Backoff, BatchOutcome, Retry, Timeout};
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

/// Composable layers on any publisher, as in tower: each wraps the one inside it.
///
/// ```
/// use signalbus_core::publisher::{Backoff, MemoryPublisher};
/// use signalbus_core::PublisherExt;
/// use std::time::Duration;
///
/// let publisher = MemoryPublisher::new()
///     .retry(Backoff::default()) // calls that fail as a whole are tried again …
///     .timeout(Duration::from_secs(5)) // … within 5 s in all
///     .boxed();
/// # let _ = publisher;
/// ```
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
