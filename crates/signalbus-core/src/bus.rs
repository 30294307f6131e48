//! The signal bus: the registered signal types, the database pool, the publisher and the
//! auto-flush task, behind one cheaply cloned handle.

use crate::error::{Error, Result};
use crate::flush::auto::{self, FlushRequest};
use crate::publisher::{BoxPublisher, Publisher, PublisherExt};
use crate::registry::{Registry, Selection};
use crate::signal::{Signal, SignalType};
use crate::storage::{Backend, PendingStats};
use crate::transaction::{Recorder, Transaction};
use sqlx::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

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
}

impl Config {
    fn new<DB: Backend>() -> Self {
        Config {
            publish_timeout: DB::DEFAULT_PUBLISH_TIMEOUT,
            max_batch: 1000,
            flush_workers: 2,
            failure_pause: Duration::from_secs(1),
        }
    }
}

/// Most auto-flush rounds at once (each holds a pooled connection).
const MAX_FLUSH_WORKERS: usize = 64;

/// What the bus and its auto-flush task share.
pub(crate) struct Shared<DB: Backend> {
    pub pool: Pool<DB>,
    pub publisher: BoxPublisher,
    pub registry: Registry,
    pub autoflush: AtomicBool,
    pub config: Config,
}

/// The transactional outbox: signals written in database transactions, sent over the bus
/// after commit.
///
/// Cheap to clone; clones share everything. Create it with [`SignalBus::builder`] inside a
/// tokio runtime (it starts the auto-flush task).
pub struct SignalBus<DB: Backend> {
    pub(crate) shared: Arc<Shared<DB>>,
    pub(crate) autoflush_tx: mpsc::UnboundedSender<FlushRequest>,
}

impl<DB: Backend> Clone for SignalBus<DB> {
    fn clone(&self) -> Self {
        SignalBus {
            shared: self.shared.clone(),
            autoflush_tx: self.autoflush_tx.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for SignalBus<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalBus")
            .field("database", &DB::NAME)
            .field("signals", &self.shared.registry.known_names())
            .field("autoflush", &self.autoflush_enabled())
            .finish()
    }
}

impl<DB: Backend> SignalBus<DB> {
    /// Start building a bus over `pool`.
    pub fn builder(pool: Pool<DB>) -> SignalBusBuilder<DB> {
        SignalBusBuilder {
            pool,
            publisher: None,
            types: Vec::new(),
            autoflush: true,
            config: Config::new::<DB>(),
        }
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.shared.pool
    }

    /// Begin a database transaction in which signals can be sent; business queries run in it
    /// too (it derefs to the connection).
    pub async fn begin(&self) -> Result<Transaction<'static, DB>> {
        Ok(self.wrap(DB::begin_write(&self.shared.pool).await?))
    }

    /// Use a transaction the caller began (e.g. with a chosen isolation level). Wrap an
    /// outermost transaction: committing a nested one (a savepoint) is not a database commit,
    /// so its signals would be handed to the auto-flush too early and left pending.
    pub fn wrap<'c>(&self, tx: sqlx::Transaction<'c, DB>) -> Transaction<'c, DB> {
        Transaction::new(tx, self.recorder())
    }

    /// A recorder for signals written through the caller's own connection or transaction;
    /// call [`Recorder::after_commit`] once that transaction has committed.
    pub fn recorder(&self) -> Recorder<DB> {
        Recorder::new(self.clone())
    }

    /// Create the tables of all registered signal types, if they do not exist.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.shared.pool.acquire().await?;
        for (_, reg) in self.shared.registry.iter() {
            DB::create_table(&mut conn, &reg.table).await?;
        }
        Ok(())
    }

    /// The registered signal types, in registration order.
    pub fn signal_types(&self) -> impl Iterator<Item = &SignalType> {
        self.shared.registry.iter().map(|(_, r)| &r.ty)
    }

    /// The registered signal type called `name`.
    pub fn signal_type(&self, name: &str) -> Option<&SignalType> {
        self.shared
            .registry
            .index_of(name)
            .map(|i| &self.shared.registry.get(i).ty)
    }

    /// Turn auto-flush on or off for the whole bus. While off, committed signals stay pending.
    pub fn set_autoflush(&self, on: bool) {
        self.shared.autoflush.store(on, Ordering::Relaxed);
    }

    /// Whether auto-flush is on for the whole bus.
    pub fn autoflush_enabled(&self) -> bool {
        self.shared.autoflush.load(Ordering::Relaxed)
    }

    /// Pending signals per selected type: how many, and how old the oldest is.
    pub async fn pending(&self, selection: &Selection) -> Result<Vec<(String, PendingStats)>> {
        let types = self.shared.registry.select(selection)?;
        let mut conn = self.shared.pool.acquire().await?;
        let mut out = Vec::with_capacity(types.len());
        for idx in types {
            let reg = self.shared.registry.get(idx);
            out.push((
                reg.name.to_string(),
                DB::pending_stats(&mut conn, &reg.table).await?,
            ));
        }
        Ok(out)
    }
}

/// Builds a [`SignalBus`].
pub struct SignalBusBuilder<DB: Backend> {
    pool: Pool<DB>,
    publisher: Option<BoxPublisher>,
    types: Vec<SignalType>,
    autoflush: bool,
    config: Config,
}

impl<DB: Backend> SignalBusBuilder<DB> {
    /// Deliver messages with `publisher`.
    pub fn publisher(mut self, publisher: impl Publisher) -> Self {
        self.publisher = Some(publisher.boxed());
        self
    }

    /// Register the signal type `S`.
    pub fn register<S: Signal>(mut self) -> Self {
        self.types.push(S::signal_type().clone());
        self
    }

    /// Register a signal type described at run time (e.g. from a configuration file).
    pub fn register_type(mut self, ty: SignalType) -> Self {
        self.types.push(ty);
        self
    }

    /// Auto-flush on (the default) or off for the whole bus.
    pub fn autoflush(mut self, on: bool) -> Self {
        self.autoflush = on;
        self
    }

    /// Limit of one publish call (default 30 s; 3 s on SQLite, where a flush holds the write
    /// lock while it publishes: keep it below the pool's `busy_timeout`). A batch not
    /// confirmed in time stays pending.
    pub fn publish_timeout(mut self, limit: Duration) -> Self {
        self.config.publish_timeout = limit;
        self
    }

    /// Most signals one auto-flush round sends in one batch (default 1000).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n.max(1);
        self
    }

    /// Auto-flush rounds that may run at the same time (default 2, at most 64).
    pub fn flush_workers(mut self, n: usize) -> Self {
        self.config.flush_workers = n.clamp(1, MAX_FLUSH_WORKERS);
        self
    }

    /// How long auto-flush stops trying after a publish failed (default 1 s): transactions
    /// committed meanwhile are answered at once as pending, instead of each waiting for a
    /// publish timeout; the first round after the pause tries the bus again. Zero turns the
    /// pause off.
    pub fn failure_pause(mut self, pause: Duration) -> Self {
        self.config.failure_pause = pause;
        self
    }

    /// Check the configuration and start the auto-flush task. Must run inside a tokio runtime.
    pub fn build(self) -> Result<SignalBus<DB>> {
        let publisher = self.publisher.ok_or_else(|| {
            Error::Config("no publisher: call `.publisher(..)` on the SignalBus builder".into())
        })?;
        if self.config.publish_timeout.is_zero() {
            return Err(Error::Config(
                "publish_timeout must be longer than zero".into(),
            ));
        }
        let mut registry = Registry::default();
        for ty in self.types {
            registry.add(ty)?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("SignalBus::build must be called inside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            pool: self.pool,
            publisher: publisher.timeout(self.config.publish_timeout).boxed(),
            registry,
            autoflush: AtomicBool::new(self.autoflush),
            config: self.config,
        });
        let (autoflush_tx, autoflush_rx) = mpsc::unbounded_channel();
        runtime.spawn(auto::run(shared.clone(), autoflush_rx));
        Ok(SignalBus {
            shared,
            autoflush_tx,
        })
    }
}
