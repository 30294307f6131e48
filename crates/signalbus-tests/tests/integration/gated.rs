//! A broker whose publish calls wait at a gate until the test opens it: the messages are in
//! flight for as long as the test wants. It records the ids it was handed while closed and
//! says when a call has arrived.

use signalbus::publisher::MemoryPublisher;
use signalbus::{BatchOutcome, Message, PublishError, Publisher};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

#[derive(Clone)]
pub struct Gated {
    /// Where the messages go once the gate is open.
    pub outbox: MemoryPublisher,
    open: Arc<watch::Sender<bool>>,
    held: Arc<Mutex<Vec<String>>>,
    entered: Arc<Notify>,
}

impl Gated {
    pub fn new(outbox: MemoryPublisher) -> Self {
        Gated {
            outbox,
            open: Arc::new(watch::Sender::new(false)),
            held: Arc::default(),
            entered: Arc::new(Notify::new()),
        }
    }

    /// The ids of the messages waiting at the gate (and of those that waited).
    pub fn held(&self) -> Vec<String> {
        self.held.lock().unwrap().clone()
    }

    /// Let every call through, now and later.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Wait until a publish call has reached the gate.
    pub async fn entered(&self) {
        self.entered.notified().await;
    }
}

impl Publisher for Gated {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut open = self.open.subscribe();
        if !*open.borrow_and_update() {
            self.held
                .lock()
                .unwrap()
                .extend(batch.iter().map(|m| m.id.clone()));
            self.entered.notify_one();
            open.wait_for(|open| *open).await.unwrap();
        }
        self.outbox.publish(batch).await
    }
}
