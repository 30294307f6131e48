use super::{BatchOutcome, Publisher};
use crate::error::PublishError;
use crate::message::Message;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Keeps every published message in memory: for tests and benchmarks.
///
/// Clones share the same store. [`MemoryPublisher::fail_next`] and
/// [`MemoryPublisher::set_down`] simulate a broker that fails.
///
/// ```
/// use signalbus_core::publisher::MemoryPublisher;
/// use signalbus_core::{Message, Publisher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let outbox = MemoryPublisher::new();
/// let message = Message {
///     id: "0190b6c4-0000-7000-8000-000000000000".into(),
///     signal: "order_placed".into(),
///     destination: "orders".into(),
///     routing_key: None,
///     headers: Default::default(),
///     body: b"{}".to_vec(),
///     content_type: Some("application/json".into()),
/// };
/// let outcome = outbox.publish(std::slice::from_ref(&message)).await.unwrap();
/// assert!(outcome.is_all_stored());
/// outbox.set_down(true); // the broker is down: the whole call fails, nothing is stored
/// assert!(outbox.publish(&[message]).await.is_err());
/// assert_eq!(outbox.len(), 1);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryPublisher {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<Message>,
    batches: usize,
    fail_next: usize,
    down: bool,
    refused_destinations: BTreeSet<String>,
    calls: usize,
}

impl MemoryPublisher {
    /// An empty publisher.
    pub fn new() -> Self {
        Self::default()
    }

    /// All messages published so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// Number of messages published so far.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Whether nothing was published yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of successful publish calls so far.
    pub fn batches(&self) -> usize {
        self.lock().batches
    }

    /// Remove and return the published messages.
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut self.lock().messages)
    }

    /// Fail the next `n` publish calls.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// While `down`, every publish call fails as if the broker were unreachable.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Refuse every message to `destination` (as a broker refuses an unroutable message),
    /// storing the rest of each batch; until [`MemoryPublisher::accept_destination`].
    pub fn refuse_destination(&self, destination: impl Into<String>) {
        self.lock().refused_destinations.insert(destination.into());
    }

    /// Store messages to `destination` again.
    pub fn accept_destination(&self, destination: &str) {
        self.lock().refused_destinations.remove(destination);
    }

    /// Publish calls made so far, failed and partly refused ones included.
    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Publisher for MemoryPublisher {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut state = self.lock();
        state.calls += 1;
        if state.down {
            return Err(PublishError::unavailable("memory publisher is set down"));
        }
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(PublishError::unavailable("memory publisher told to fail"));
        }
        let mut outcome = BatchOutcome::all_stored();
        for (i, message) in batch.iter().enumerate() {
            if state.refused_destinations.contains(&message.destination) {
                outcome.refuse(i, format!("no route to `{}`", message.destination));
            } else {
                state.messages.push(message.clone());
            }
        }
        state.batches += 1;
        Ok(outcome)
    }
}
