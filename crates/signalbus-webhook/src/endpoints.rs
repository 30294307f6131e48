//! What is known of each endpoint: an endpoint that failed (no answer, 5xx, 429, …) is paused,
//! for its `Retry-After` or for a delay that doubles with each failure in a row, so that the
//! messages to it wait without a request each, while the other endpoints go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

/// The first pause after a failure; it doubles with each failure in a row.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Above this many endpoints remembered, the ones whose pause ended are forgotten.
const REMEMBERED: usize = 10_000;

#[derive(Clone)]
pub(crate) struct Endpoints {
    health: Arc<Mutex<HashMap<String, Health>>>,
    max_pause: Duration,
}

struct Health {
    failures: u32,
    until: Instant,
    reason: String,
}

/// Why an endpoint is paused, and for how much longer.
pub(crate) struct Failure {
    pub reason: String,
    pub remaining: Duration,
}

impl Endpoints {
    pub fn new(max_pause: Duration) -> Self {
        Endpoints {
            health: Arc::default(),
            max_pause,
        }
    }

    /// Whether `url` is paused now.
    pub fn paused(&self, url: &Url) -> Option<Failure> {
        let health = self.health.lock().expect("not poisoned");
        let h = health.get(url.as_str())?;
        let now = Instant::now();
        let remaining = (h.until > now).then(|| h.until - now)?;
        Some(Failure {
            reason: h.reason.clone(),
            remaining,
        })
    }

    /// `url` failed for `reason`: pause it for `asked` (its `Retry-After`) or the next delay,
    /// at most `max_pause`; returns the pause. Requests that were in flight together when it
    /// failed count once.
    pub fn failed(&self, url: &Url, reason: &str, asked: Option<Duration>) -> Duration {
        let now = Instant::now();
        let mut health = self.health.lock().expect("not poisoned");
        if health.len() > REMEMBERED {
            health.retain(|_, h| h.until > now);
        }
        let h = health.entry(url.to_string()).or_insert(Health {
            failures: 0,
            until: now,
            reason: String::new(),
        });
        if h.until > now && asked.is_none() {
            return h.until - now;
        }
        h.failures = h.failures.saturating_add(1);
        let doubled = FIRST_PAUSE.saturating_mul(1 << (h.failures - 1).min(20));
        // A `Retry-After` of 0 (or a date past) still pauses a little: never a hot loop.
        let pause = asked
            .map_or(doubled, |a| a.max(FIRST_PAUSE))
            .min(self.max_pause);
        h.until = now + pause;
        h.reason = reason.to_owned();
        pause
    }

    /// `url` answered: forget its failures.
    pub fn succeeded(&self, url: &Url) {
        self.health
            .lock()
            .expect("not poisoned")
            .remove(url.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_and_retry_after_wins() {
        let endpoints = Endpoints::new(Duration::from_secs(5));
        let url = Url::parse("https://h/x").unwrap();
        assert!(endpoints.paused(&url).is_none());
        assert_eq!(endpoints.failed(&url, "503", None), Duration::from_secs(1));
        // A sibling request that failed meanwhile does not double the pause.
        assert!(endpoints.failed(&url, "503", None) <= Duration::from_secs(1));
        assert_eq!(endpoints.paused(&url).unwrap().reason, "503");
        assert_eq!(
            endpoints.failed(&url, "429", Some(Duration::from_secs(60))),
            Duration::from_secs(5),
            "capped at max_pause"
        );
        endpoints.succeeded(&url);
        assert!(endpoints.paused(&url).is_none());
        // `Retry-After: 0` still pauses: never a hot loop.
        assert_eq!(
            endpoints.failed(&url, "429", Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
    }
}
