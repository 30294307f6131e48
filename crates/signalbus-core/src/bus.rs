//! The signal bus: the registered signal types, the database pool, the publisher and the
//! auto-flush task, behind one cheaply cloned handle.

use crate::error::{Error, Result};
use crate::flush::auto::{self, CloseRequest, FlushRequest};
use crate::publisher::{BoxPublisher, Publisher, PublisherExt};
use crate::registry::{Registry, Selection};
use crate::signal::{Signal, SignalType};
use crate::storage::{Backend, Holdback, ParkedRows, ParkedSignal, PendingStats, begin_write};
use crate::transaction::{Recorder, Transaction};
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
}

impl Config {
    /// The claim lease: as set, or twice the publish timeout plus 10 s.
    pub fn lease(&self) -> Duration {
        self.lease
            .unwrap_or(self.publish_timeout * 2 + Duration::from_secs(10))
    }

    /// Every setting is checked the same way: a value that cannot work is an error at
    /// `build()`, never silently changed.
    fn validate(&self) -> Result<()> {
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

    fn new<DB: Backend>() -> Self {
        Config {
            publish_timeout: DB::DIALECT.default_publish_timeout,
            max_batch: 1000,
            flush_workers: 2,
            failure_pause: Duration::from_secs(1),
            queue_capacity: 4096,
            lease: None,
            name: "default".to_owned(),
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
    /// Set by [`SignalBus::close`]: commits no longer hand signals to the auto-flush.
    pub closed: AtomicBool,
    pub config: Config,
}

/// The transactional outbox: signals written in database transactions, sent over the bus
/// after commit.
///
/// Cheap to clone; clones share everything. Create it with [`SignalBus::builder`] inside a
/// tokio runtime (it starts the auto-flush task).
pub struct SignalBus<DB: Backend> {
    pub(crate) shared: Arc<Shared<DB>>,
    pub(crate) autoflush_tx: mpsc::Sender<FlushRequest>,
    close_tx: mpsc::UnboundedSender<CloseRequest>,
}

impl<DB: Backend> Clone for SignalBus<DB> {
    fn clone(&self) -> Self {
        SignalBus {
            shared: self.shared.clone(),
            autoflush_tx: self.autoflush_tx.clone(),
            close_tx: self.close_tx.clone(),
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

    /// The bus' name ([`SignalBusBuilder::name`]).
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.shared.pool
    }

    /// Begin a database transaction in which signals can be sent; business queries run in it
    /// too (it derefs to the connection).
    pub async fn begin(&self) -> Result<Transaction<'static, DB>> {
        Ok(self.wrap(begin_write(&self.shared.pool).await?).outermost())
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

    /// Create the tables of all registered signal types, if they do not exist, and bring
    /// older signal tables up to the current contract. A table of a registered name that
    /// exists and is not a signal table is refused before anything is changed.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.shared.pool.acquire().await?;
        for (_, reg) in self.shared.registry.iter() {
            reg.sql
                .check_table::<DB>(&mut conn, reg.ty.table_name())
                .await?;
        }
        for (_, reg) in self.shared.registry.iter() {
            reg.sql.create_table::<DB>(&mut conn).await?;
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

    /// Turn auto-flush on or off for the whole bus. It counts at each commit, as in the
    /// original: a transaction that commits while it is off leaves its signals pending (for an
    /// explicit flush or the relay, at once), one that commits while it is on has them sent,
    /// whatever the switch said when they were written. Switching it off is what an operator
    /// does during a broker incident.
    pub fn set_autoflush(&self, on: bool) {
        self.shared.autoflush.store(on, Ordering::Relaxed);
    }

    /// Whether auto-flush is on for the whole bus.
    pub fn autoflush_enabled(&self) -> bool {
        self.shared.autoflush.load(Ordering::Relaxed)
    }

    /// Stop taking auto-flush work, then finish it within `deadline`: commits from now on
    /// leave their signals pending ([`Error::Closed`] in their report), transactions already
    /// handed to the auto-flush are still sent, and rounds still running when the deadline
    /// passes are given up (their transactions roll back, their rows stay pending). Returns
    /// how many signals the auto-flush left pending; an explicit flush or the relay sends
    /// them. Explicit flushes keep working after a close. Closing again returns 0.
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

    /// Whether [`SignalBus::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The parked signals of the selected types (at most `limit` per type), lowest ids first:
    /// messages the bus refused `max_attempts` times, or rows that are not valid signals.
    /// They stay in their tables and are never sent again until [`SignalBus::unpark`].
    pub async fn parked(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<Vec<(String, Vec<ParkedSignal>)>> {
        let types = self.shared.registry.select(selection)?;
        let mut conn = self.shared.pool.acquire().await?;
        let mut out = Vec::with_capacity(types.len());
        for idx in types {
            let reg = self.shared.registry.get(idx);
            let rows = reg.sql.parked::<DB>(&mut conn, limit).await?;
            out.push((reg.name.to_string(), rows));
        }
        Ok(out)
    }

    /// Unpark parked signals of the selected types: their attempts start again from zero and
    /// the next flush sends them. Returns how many were unparked; ids that are not parked
    /// signals of these types change nothing.
    pub async fn unpark(&self, selection: &Selection, rows: ParkedRows<'_>) -> Result<u64> {
        self.settle_parked(selection, rows, false).await
    }

    /// Delete parked signals of the selected types, for good. Returns how many.
    pub async fn purge_parked(&self, selection: &Selection, rows: ParkedRows<'_>) -> Result<u64> {
        self.settle_parked(selection, rows, true).await
    }

    async fn settle_parked(
        &self,
        selection: &Selection,
        rows: ParkedRows<'_>,
        delete: bool,
    ) -> Result<u64> {
        let types = self.shared.registry.select(selection)?;
        let mut conn = self.shared.pool.acquire().await?;
        let mut total = 0;
        for idx in types {
            let reg = self.shared.registry.get(idx);
            total += reg.sql.settle_parked::<DB>(&mut conn, rows, delete).await?;
        }
        Ok(total)
    }

    /// What the gap-safe watermark of ordered flushing holds back now, per selected type
    /// ([`Holdback`]: on PostgreSQL, rows written after the oldest transaction still running
    /// on the server began, and which transaction that is; nothing elsewhere). What an
    /// ordered flush that sent nothing while rows are pending should tell its operator.
    pub async fn ordered_holdback(&self, selection: &Selection) -> Result<Vec<(String, Holdback)>> {
        let types = self.shared.registry.select(selection)?;
        let mut conn = self.shared.pool.acquire().await?;
        let mut out = Vec::with_capacity(types.len());
        for idx in types {
            let reg = self.shared.registry.get(idx);
            out.push((
                reg.name.to_string(),
                reg.sql.holdback::<DB>(&mut conn).await?,
            ));
        }
        Ok(out)
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
                reg.sql.pending_stats::<DB>(&mut conn).await?,
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

    /// Limit of one publish call (default 30 s; 3 s on SQLite). A batch not confirmed in time
    /// stays pending, and its rows are given back.
    pub fn publish_timeout(mut self, limit: Duration) -> Self {
        self.config.publish_timeout = limit;
        self
    }

    /// Most signals one auto-flush round sends in one batch (default 1000, at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n;
        self
    }

    /// Auto-flush rounds that may run at the same time (default 2, from 1 to 64).
    pub fn flush_workers(mut self, n: usize) -> Self {
        self.config.flush_workers = n;
        self
    }

    /// How long a flush's claim on its rows keeps other flushers away (default: twice the
    /// publish timeout plus 10 s; longer than the publish timeout). A flusher that dies
    /// holding rows delays them by at most this much: then another flush sends them.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = Some(lease);
        self
    }

    /// The bus' name in metrics (the label `bus` of every `signalbus_*` metric) and in the
    /// relay's logs (default `default`): name each bus of a process that serves several
    /// databases, e.g. after its tenant.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How many committed transactions may wait for the auto-flush (default 4096, at least
    /// 1). When that many wait (a slow bus), a commit is answered at once with its signals
    /// pending ([`Error::QueueFull`] in its report) rather than waiting for room: the rows
    /// stay in the table for the next explicit flush or the relay, so a slow broker never
    /// slows the commits down and nothing piles up in memory.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
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
        self.config.validate()?;
        let mut registry = Registry::default();
        for ty in self.types {
            // A wait for another flusher's rows lasts at most one of its publish calls, plus
            // slack.
            registry.add::<DB>(ty, self.config.publish_timeout * 2)?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("SignalBus::build must be called inside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            pool: self.pool,
            publisher: publisher.timeout(self.config.publish_timeout).boxed(),
            registry,
            autoflush: AtomicBool::new(self.autoflush),
            closed: AtomicBool::new(false),
            config: self.config,
        });
        let (autoflush_tx, autoflush_rx) = mpsc::channel(shared.config.queue_capacity);
        let (close_tx, close_rx) = mpsc::unbounded_channel();
        runtime.spawn(auto::run(shared.clone(), autoflush_rx, close_rx));
        Ok(SignalBus {
            shared,
            autoflush_tx,
            close_tx,
        })
    }
}
