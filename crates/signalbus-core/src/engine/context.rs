//! The engine's context: what a bus, its transactions, flushes and relays share (the pool,
//! the registry, the publisher, the configuration and the auto-flush queue), behind private
//! fields.

use super::auto::{self, CloseRequest, FlushRequest};
use crate::error::{Error, Result};
use crate::publisher::{BoxPublisher, PublisherExt};
use crate::registry::Registry;
use crate::signal::SignalType;
use crate::storage::Backend;
use sqlx::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Tuning of a bus; every field has a sensible default.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Limit of one publish call.
    pub publish_timeout: Duration,
    /// Most signals one auto-flush round sends together.
    pub max_batch: usize,
    /// Auto-flush rounds that may run at the same time.
    pub flush_workers: usize,
    /// How long auto-flush stops trying after the bus failed.
    pub failure_pause: Duration,
    /// Transactions that may wait for auto-flush before commits are answered "pending".
    pub queue_capacity: usize,
    /// How long a claim keeps other flushers away from its rows: past it, a flusher that died
    /// while holding them no longer does.
    pub lease: Option<Duration>,
    /// The bus' name in metrics (label `bus`) and logs.
    pub name: String,
    /// The database is reached through a pooler in transaction mode (PgBouncer): no session
    /// state is relied on.
    pub transaction_pooler: bool,
}

impl Config {
    /// The claim lease: as set, or twice the publish timeout plus 10 s.
    pub fn lease(&self) -> Duration {
        self.lease
            .unwrap_or(self.publish_timeout * 2 + Duration::from_secs(10))
    }

    /// Every setting is checked the same way: a value that cannot work is an error at
    /// `build()`, never silently changed.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("SignalBus builder: {what}")));
        if self.publish_timeout.is_zero() {
            return bad("publish_timeout must be longer than zero");
        }
        if self.max_batch == 0 {
            return bad("max_batch must be at least 1");
        }
        if !(1..=MAX_FLUSH_WORKERS).contains(&self.flush_workers) {
            return bad(&format!(
                "flush_workers must be from 1 to {MAX_FLUSH_WORKERS} (each holds a pooled connection), not {}",
                self.flush_workers
            ));
        }
        if self.name.is_empty() {
            return bad("name must not be empty");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if self
            .lease
            .is_some_and(|lease| lease <= self.publish_timeout)
        {
            return bad(
                "lease must be longer than publish_timeout (a claim must outlive its publish)",
            );
        }
        Ok(())
    }

    pub fn new<DB: Backend>() -> Self {
        Config {
            publish_timeout: DB::DIALECT.default_publish_timeout,
            max_batch: 1000,
            flush_workers: 2,
            failure_pause: Duration::from_secs(1),
            queue_capacity: 4096,
            lease: None,
            name: "default".to_owned(),
            transaction_pooler: false,
        }
    }
}

/// Most auto-flush rounds at once (each holds a pooled connection).
const MAX_FLUSH_WORKERS: usize = 64;

/// What the engine's tasks share: read through its methods.
pub(crate) struct Shared<DB: Backend> {
    pool: Pool<DB>,
    publisher: BoxPublisher,
    registry: Registry,
    autoflush: AtomicBool,
    /// Set by a close: commits no longer hand signals to the auto-flush.
    closed: AtomicBool,
    config: Config,
}

impl<DB: Backend> Shared<DB> {
    /// The database pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The publisher, with the publish timeout applied.
    pub fn publisher(&self) -> &BoxPublisher {
        &self.publisher
    }

    /// The registered signal types.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The bus' tuning.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bus' name, the label `bus` of its metrics.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether auto-flush is on for the whole bus.
    pub fn autoflush_on(&self) -> bool {
        self.autoflush.load(Ordering::Relaxed)
    }

    /// Whether the bus was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A handle on the engine: its shared context and the auto-flush task's queues. Cheap to
/// clone; the auto-flush task ends when the last handle is dropped.
pub(crate) struct Engine<DB: Backend> {
    shared: Arc<Shared<DB>>,
    queue: mpsc::Sender<FlushRequest>,
    close_tx: mpsc::UnboundedSender<CloseRequest>,
}

impl<DB: Backend> Clone for Engine<DB> {
    fn clone(&self) -> Self {
        Engine {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            close_tx: self.close_tx.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Engine<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("database", &DB::NAME)
            .field("bus", &self.shared.config.name)
            .finish()
    }
}

impl<DB: Backend> Engine<DB> {
    /// Check the configuration, register the signal types and start the auto-flush task on
    /// the current tokio runtime.
    pub fn start(
        pool: Pool<DB>,
        publisher: BoxPublisher,
        types: Vec<SignalType>,
        autoflush: bool,
        config: Config,
    ) -> Result<Self> {
        config.validate()?;
        let mut registry = Registry::default();
        for ty in types {
            // A wait for another flusher's rows lasts at most one of its publish calls, plus
            // slack.
            registry.add::<DB>(ty, config.publish_timeout * 2, config.transaction_pooler)?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("SignalBus::build must be called inside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            pool,
            publisher: publisher.timeout(config.publish_timeout).boxed(),
            registry,
            autoflush: AtomicBool::new(autoflush),
            closed: AtomicBool::new(false),
            config,
        });
        let (queue, autoflush_rx) = mpsc::channel(shared.config.queue_capacity);
        let (close_tx, close_rx) = mpsc::unbounded_channel();
        runtime.spawn(auto::run(shared.clone(), autoflush_rx, close_rx));
        Ok(Engine {
            shared,
            queue,
            close_tx,
        })
    }

    /// The shared context.
    pub fn shared(&self) -> &Arc<Shared<DB>> {
        &self.shared
    }

    /// The auto-flush task's queue of committed transactions.
    pub(super) fn queue(&self) -> &mpsc::Sender<FlushRequest> {
        &self.queue
    }

    /// Turn auto-flush on or off for the whole bus.
    pub fn set_autoflush(&self, on: bool) {
        self.shared.autoflush.store(on, Ordering::Relaxed);
    }

    /// Stop taking auto-flush work and finish it within `deadline`; how many signals it
    /// left pending (0 when already closed).
    pub async fn close(&self, deadline: Duration) -> usize {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return 0;
        }
        let (reply, left) = oneshot::channel();
        let request = CloseRequest {
            deadline: tokio::time::Instant::now() + deadline,
            reply,
        };
        if self.close_tx.send(request).is_err() {
            return 0; // the auto-flush task is already gone (its runtime shut down)
        }
        left.await.unwrap_or(0)
    }
}
