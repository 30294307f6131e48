use super::Publisher;
use crate::error::PublishError;
use crate::message::Message;
use rand::Rng;
use std::time::Duration;

/// Exponential backoff with full jitter: the wait before retry `n` (counting from 1) is random
/// in `[0, min(max, base * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// Whether the first retry waits (the original's transaction retries do not).
    pub wait_before_first_retry: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            max_attempts: 3,
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
            wait_before_first_retry: true,
        }
    }
}

impl Backoff {
    /// How long to wait before retry number `retry` (1 = the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        if retry == 0 || (retry == 1 && !self.wait_before_first_retry) {
            return Duration::ZERO;
        }
        let exp = if self.wait_before_first_retry {
            retry - 1
        } else {
            retry - 2
        };
        let ceiling = self.base.saturating_mul(1u32 << exp.min(20)).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Retries publish calls that failed with a retryable error (see
/// [`PublishError::is_retryable`]), waiting per [`Backoff`] between attempts.
#[derive(Debug, Clone)]
pub struct Retry<P> {
    inner: P,
    backoff: Backoff,
}

impl<P> Retry<P> {
    /// Wrap `inner`.
    pub fn new(inner: P, backoff: Backoff) -> Self {
        Retry { inner, backoff }
    }
}

impl<P: Publisher> Publisher for Retry<P> {
    async fn publish(&self, batch: &[Message]) -> Result<(), PublishError> {
        let mut attempt = 1;
        loop {
            match self.inner.publish(batch).await {
                Err(e) if e.is_retryable() && attempt < self.backoff.max_attempts.max(1) => {
                    tracing::debug!(attempt, error = %e, "publish failed, retrying");
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let b = Backoff {
            max_attempts: 10,
            base: Duration::from_millis(10),
            max: Duration::from_millis(40),
            wait_before_first_retry: false,
        };
        assert_eq!(b.delay(1), Duration::ZERO);
        for retry in 2..10 {
            assert!(b.delay(retry) <= Duration::from_millis(40));
        }
        let b = Backoff {
            wait_before_first_retry: true,
            ..b
        };
        assert!(b.delay(1) <= Duration::from_millis(10));
    }
}
