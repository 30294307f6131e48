use super::{BatchOutcome, Publisher};
use crate::error::{PublishError, PublishErrorKind};
use crate::message::Message;
use std::time::Duration;

/// Fails a publish call that takes longer than a limit, so that a hung broker never holds
/// database locks forever. The rows of a timed-out batch stay pending.
#[derive(Debug, Clone)]
pub struct Timeout<P> {
    inner: P,
    limit: Duration,
}

impl<P> Timeout<P> {
    /// Wrap `inner` with a time limit per publish call.
    pub fn new(inner: P, limit: Duration) -> Self {
        Timeout { inner, limit }
    }
}

impl<P: Publisher> Publisher for Timeout<P> {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        match tokio::time::timeout(self.limit, self.inner.publish(batch)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(
                PublishErrorKind::Timeout,
                format!(
                    "the bus did not confirm {} message(s) within {:?}; they stay pending \
                     and will be sent again (duplicates possible)",
                    batch.len(),
                    self.limit
                ),
            )),
        }
    }

    async fn check(&self) -> Result<(), PublishError> {
        match tokio::time::timeout(self.limit, self.inner.check()).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(
                PublishErrorKind::Timeout,
                format!("the bus did not answer a check within {:?}", self.limit),
            )),
        }
    }
}
