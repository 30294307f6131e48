use super::{BatchOutcome, Publisher};
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
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
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

    /// Checked once: a readiness check reports the state now, it does not wait for a
    /// recovery.
    async fn check(&self) -> Result<(), PublishError> {
        self.inner.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: u32 = 2_000;
    const MS: Duration = Duration::from_millis(1);

    /// The largest and the mean of `SAMPLES` delays before retry `retry`, asserting each one
    /// stays within `[0, ceiling]`.
    fn sample(b: &Backoff, retry: u32, ceiling: Duration) -> (Duration, Duration) {
        let mut max = Duration::ZERO;
        let mut sum = Duration::ZERO;
        for _ in 0..SAMPLES {
            let d = b.delay(retry);
            assert!(
                d <= ceiling,
                "retry {retry}: {d:?} above its ceiling {ceiling:?}"
            );
            max = max.max(d);
            sum += d;
        }
        (max, sum / SAMPLES)
    }

    /// Full jitter: uniform in `[0, ceiling]`, so over `SAMPLES` draws the largest is close to
    /// the ceiling and the mean close to half of it (its standard deviation is
    /// `ceiling / sqrt(12 * SAMPLES)`, ~0.65% of the ceiling: the bounds below are ~15 of them).
    fn assert_full_jitter(b: &Backoff, retry: u32, ceiling: Duration) -> Duration {
        let (max, mean) = sample(b, retry, ceiling);
        assert!(
            max >= ceiling.mul_f64(0.9),
            "retry {retry}: largest of {SAMPLES} delays {max:?}, ceiling {ceiling:?}"
        );
        assert!(
            mean >= ceiling.mul_f64(0.4) && mean <= ceiling.mul_f64(0.6),
            "retry {retry}: mean delay {mean:?}, ceiling {ceiling:?}"
        );
        mean
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let b = Backoff {
            max_attempts: 10,
            base: 10 * MS,
            max: 40 * MS,
            wait_before_first_retry: false,
        };
        // Without a wait before the first retry it is immediate, every time.
        assert_eq!(
            sample(&b, 1, Duration::ZERO),
            (Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(b.delay(0), Duration::ZERO);
        // Then the ceiling doubles from `base` per retry (10, 20, 40 ms) up to `max`, and the
        // waits grow with it.
        let means: Vec<Duration> = [(2, 10 * MS), (3, 20 * MS), (4, 40 * MS)]
            .into_iter()
            .map(|(retry, ceiling)| assert_full_jitter(&b, retry, ceiling))
            .collect();
        assert!(
            means.windows(2).all(|w| w[1] > w[0].mul_f64(1.5)),
            "mean delays per retry do not grow: {means:?}"
        );
        // Capped at `max` from there on, also far past the point where 2^n would overflow.
        for retry in [5, 9, 40, u32::MAX] {
            assert_full_jitter(&b, retry, 40 * MS);
        }

        // With a wait before the first retry, the ceilings start at `base` on retry 1.
        let b = Backoff {
            wait_before_first_retry: true,
            ..b
        };
        assert_eq!(b.delay(0), Duration::ZERO);
        for (retry, ceiling) in [(1, 10 * MS), (2, 20 * MS), (3, 40 * MS), (4, 40 * MS)] {
            assert_full_jitter(&b, retry, ceiling);
        }
    }
}
