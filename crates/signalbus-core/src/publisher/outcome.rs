//! What the broker did with each message of a batch.

use std::time::Duration;

/// The result of a publish call that reached the broker: which messages it refused. Every
/// message not refused was stored (and is deleted from its table); a refused one stays, and is
/// retried with backoff, then parked (see the flush engine).
///
/// A refusal belongs to one message (unroutable, too large, no such stream, invalid). A
/// failure of the whole call (connection lost, timeout, broker down) is a
/// [`PublishError`](crate::PublishError) instead: then nothing counts as stored.
///
/// Between the two, a message can be *deferred*: not stored, because the part of the bus it
/// goes to is out (one webhook endpoint down or rate-limiting, while the others of the batch
/// took theirs). It spends no attempt and is not sent again before the given delay; the
/// messages stored beside it count as stored.
///
/// ```
/// use signalbus_core::BatchOutcome;
///
/// let mut outcome = BatchOutcome::all_stored();
/// outcome.refuse(2, "HTTP 429: slow down"); // tried again after its backoff delay
/// outcome.refuse_permanently(5, "HTTP 422: schema mismatch"); // parked at once
/// assert_eq!(outcome.refused().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    refused: Vec<Refused>,
    deferred: Vec<Deferred>,
}

/// One message of a batch that was not stored because its part of the bus is out for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// The message's position in the batch.
    pub index: usize,
    /// Why, as the bus said it (no message body, no credentials).
    pub reason: String,
    /// Not sent again before this delay (e.g. an HTTP `Retry-After`).
    pub retry_after: Duration,
}

/// One message of a batch that the broker refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The message's position in the batch.
    pub index: usize,
    /// Why, as the broker said it (no message body, no credentials).
    pub reason: String,
    /// The message can never be sent as it is (too large for the broker, a header or a
    /// subject it cannot carry): parked at once, with no retries that could not succeed.
    pub permanent: bool,
}

impl BatchOutcome {
    /// Every message of the batch was stored.
    pub fn all_stored() -> Self {
        Self::default()
    }

    /// The message at `index` of the batch was refused for `reason`.
    pub fn refuse(&mut self, index: usize, reason: impl Into<String>) {
        self.refused.push(Refused {
            index,
            reason: reason.into(),
            permanent: false,
        });
    }

    /// The message at `index` was refused for `reason`, and would be on every attempt (too
    /// large, a header the broker cannot carry): it is parked at once instead of retried.
    pub fn refuse_permanently(&mut self, index: usize, reason: impl Into<String>) {
        self.refused.push(Refused {
            index,
            reason: reason.into(),
            permanent: true,
        });
    }

    /// The message at `index` was not stored because the part of the bus it goes to is out
    /// (`reason`): it stays pending, spends no attempt, and is sent again after
    /// `retry_after`. Its signal's ordering key waits for it.
    pub fn defer(&mut self, index: usize, reason: impl Into<String>, retry_after: Duration) {
        self.deferred.push(Deferred {
            index,
            reason: reason.into(),
            retry_after,
        });
    }

    /// The deferred messages, in the order they were reported.
    pub fn deferred(&self) -> &[Deferred] {
        &self.deferred
    }

    /// [`BatchOutcome::refuse`] as a builder.
    pub fn with_refused(mut self, index: usize, reason: impl Into<String>) -> Self {
        self.refuse(index, reason);
        self
    }

    /// The refused messages, in the order they were reported.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// Whether every message was stored.
    pub fn is_all_stored(&self) -> bool {
        self.refused.is_empty() && self.deferred.is_empty()
    }

    /// Whether the message at `index` was refused.
    pub fn is_refused(&self, index: usize) -> bool {
        self.refused.iter().any(|r| r.index == index)
    }
}
