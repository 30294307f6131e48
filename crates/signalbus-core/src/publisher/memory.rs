use super::Publisher;
use crate::error::PublishError;
use crate::message::Message;
use std::sync::{Arc, Mutex};

/// Keeps every published message in memory: for tests and benchmarks.
///
/// Clones share the same store. [`MemoryPublisher::fail_next`] and
/// [`MemoryPublisher::set_down`] simulate a broker that fails.
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Publisher for MemoryPublisher {
    async fn publish(&self, batch: &[Message]) -> Result<(), PublishError> {
        let mut state = self.lock();
        if state.down {
            return Err(PublishError::unavailable("memory publisher is set down"));
        }
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(PublishError::unavailable("memory publisher told to fail"));
        }
        state.messages.extend_from_slice(batch);
        state.batches += 1;
        Ok(())
    }
}
