//! The signal bus: the one handle users hold. Every method is a short delegation to the
//! engine, the write path or atomic blocks below it.

use crate::atomic::{Atomic, AtomicFuture, BlockError};
use crate::contract::{Holdback, ParkedRows, ParkedSignal, PendingStats};
use crate::delivery::OnProgress;
use crate::engine::relay::RelayBuilder;
use crate::engine::{Config, Engine, bursts, inspect, operator};
use crate::error::{Error, Result};
use crate::inspection::{
    AuditEntry, AuditRecord, BulkAction, FailureGroup, Matched, SignalDetail, SignalFilter,
    SignalPage, TypeOverview,
};
use crate::publisher::{BoxPublisher, Publisher, PublisherExt};
use crate::registry::Selection;
use crate::signal::{Signal, SignalType};
use crate::storage::{Backend, begin_write};
use crate::transaction::{Recorder, Transaction};
use sqlx::Pool;
use std::ops::ControlFlow;
use std::time::Duration;

/// The transactional outbox: signals written in database transactions, sent over the bus
/// after commit.
///
/// Cheap to clone; clones share everything. Create it with [`SignalBus::builder`] inside a
/// tokio runtime (it starts the auto-flush task).
///
/// ```
/// use signalbus_core::publisher::MemoryPublisher;
/// use signalbus_core::{Result, Selection, Signal, SignalBus, SignalType};
/// use std::sync::OnceLock;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { id: i64 }
///
/// impl Signal for OrderPlaced {
///     fn signal_type() -> &'static SignalType {
///         static TYPE: OnceLock<SignalType> = OnceLock::new();
///         TYPE.get_or_init(|| SignalType::new("order_placed").destination("orders"))
///     }
///     fn body(&self) -> Result<Vec<u8>> {
///         signalbus_core::json_body(self)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let outbox = MemoryPublisher::new(); // a broker publisher in a service
/// let bus = SignalBus::builder(pool)
///     .publisher(outbox.clone())
///     .register::<OrderPlaced>()
///     .build()?;
/// bus.migrate().await?;
///
/// // The signal is a row of the business transaction: committed with it, or not at all.
/// let mut tx = bus.begin().await?;
/// sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(&mut *tx).await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (1)").execute(&mut *tx).await?;
/// tx.send(&OrderPlaced { id: 1 }).await?;
/// let report = tx.commit_and_wait().await?; // auto-flushed right after the commit
/// assert_eq!((report.sent, outbox.len()), (1, 1));
///
/// // With auto-flush off (a broker incident), signals stay pending until a flush.
/// bus.set_autoflush(false);
/// let mut tx = bus.begin().await?;
/// tx.send(&OrderPlaced { id: 2 }).await?;
/// tx.commit().await?.await;
/// assert_eq!(bus.pending(&Selection::all()).await?[0].1.count, 1);
/// assert_eq!(bus.flush_many(&Selection::all()).await?, 1);
/// # Ok(()) }
/// ```
pub struct SignalBus<DB: Backend> {
    engine: Engine<DB>,
}

impl<DB: Backend> Clone for SignalBus<DB> {
    fn clone(&self) -> Self {
        SignalBus {
            engine: self.engine.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for SignalBus<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalBus")
            .field("database", &DB::NAME)
            .field("signals", &self.engine.shared().registry().known_names())
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
        self.engine.shared().name()
    }

    /// The database pool.
    pub fn pool(&self) -> &Pool<DB> {
        self.engine.shared().pool()
    }

    /// Begin a database transaction in which signals can be sent; business queries run in it
    /// too (it derefs to the connection).
    pub async fn begin(&self) -> Result<Transaction<'static, DB>> {
        Ok(self.wrap(begin_write(self.pool()).await?).outermost())
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
        Recorder::new(self.engine.clone())
    }

    /// Create the tables of all registered signal types, if they do not exist, and bring
    /// older signal tables up to the current contract. A table of a registered name that
    /// exists and is not a signal table is refused before anything is changed.
    pub async fn migrate(&self) -> Result<()> {
        operator::migrate(self.engine.shared()).await
    }

    /// The registered signal types, in registration order.
    pub fn signal_types(&self) -> impl Iterator<Item = &SignalType> {
        self.engine.shared().registry().iter().map(|(_, r)| &r.ty)
    }

    /// The registered signal type called `name`.
    pub fn signal_type(&self, name: &str) -> Option<&SignalType> {
        let registry = self.engine.shared().registry();
        registry.index_of(name).map(|i| &registry.get(i).ty)
    }

    /// Turn auto-flush on or off for the whole bus. It counts at each commit, as in the
    /// original: a transaction that commits while it is off leaves its signals pending (for an
    /// explicit flush or the relay, at once), one that commits while it is on has them sent,
    /// whatever the switch said when they were written. Switching it off is what an operator
    /// does during a broker incident.
    pub fn set_autoflush(&self, on: bool) {
        self.engine.set_autoflush(on)
    }

    /// Whether auto-flush is on for the whole bus.
    pub fn autoflush_enabled(&self) -> bool {
        self.engine.shared().autoflush_on()
    }

    /// Stop taking auto-flush work, then finish it within `deadline`: commits from now on
    /// leave their signals pending ([`Error::Closed`] in their report), transactions already
    /// handed to the auto-flush are still sent, and rounds still running when the deadline
    /// passes are given up (their transactions roll back, their rows stay pending). Returns
    /// how many signals the auto-flush left pending; an explicit flush or the relay sends
    /// them. Explicit flushes keep working after a close. Closing again returns 0.
    ///
    /// ```no_run
    /// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>) {
    /// // On shutdown: no new auto-flush work, 5 s for what is in flight.
    /// let left = bus.close(std::time::Duration::from_secs(5)).await;
    /// // Those `left` stay pending: the relay or `signalbus flushmany` sends them.
    /// # let _ = left; }
    /// ```
    pub async fn close(&self, deadline: Duration) -> usize {
        self.engine.close(deadline).await
    }

    /// Whether [`SignalBus::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.engine.shared().is_closed()
    }

    /// The parked signals of the selected types (at most `limit` per type), lowest ids first:
    /// messages the bus refused `max_attempts` times, or rows that are not valid signals.
    /// They stay in their tables and are never sent again until [`SignalBus::unpark`].
    ///
    /// ```no_run
    /// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>) -> signalbus_core::Result<()> {
    /// use signalbus_core::{ParkedRows, Selection};
    /// for (signal, parked) in bus.parked(&Selection::all(), 100).await? {
    ///     for p in &parked {
    ///         println!("{signal} #{}: {:?}", p.id, p.last_error);
    ///     }
    /// }
    /// // Once the cause is fixed (the queue exists, the consumer accepts them): send again.
    /// bus.unpark(&Selection::all(), ParkedRows::All).await?;
    /// # Ok(()) }
    /// ```
    pub async fn parked(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<Vec<(String, Vec<ParkedSignal>)>> {
        operator::parked(self.engine.shared(), selection, limit).await
    }

    /// Unpark parked signals of the selected types: their attempts start again from zero and
    /// the next flush sends them. Returns how many were unparked; ids that are not parked
    /// signals of these types change nothing.
    pub async fn unpark(&self, selection: &Selection, rows: ParkedRows<'_>) -> Result<u64> {
        operator::settle_parked(self.engine.shared(), selection, rows, false).await
    }

    /// Send backing-off signals of the selected types now, not when their backoff ends (their
    /// attempts are kept). Returns how many; ids of rows that are not backing off, or are in
    /// flight, change nothing.
    pub async fn retry_now(&self, selection: &Selection, ids: &[i64]) -> Result<u64> {
        operator::retry_now(self.engine.shared(), selection, ids).await
    }

    /// Delete parked signals of the selected types, for good. Returns how many.
    pub async fn purge_parked(&self, selection: &Selection, rows: ParkedRows<'_>) -> Result<u64> {
        operator::settle_parked(self.engine.shared(), selection, rows, true).await
    }

    /// What the gap-safe watermark of ordered flushing holds back now, per selected type
    /// ([`Holdback`]: on PostgreSQL, rows written after the oldest transaction still running
    /// on the server began, and which transaction that is; nothing elsewhere). What an
    /// ordered flush that sent nothing while rows are pending should tell its operator.
    pub async fn ordered_holdback(&self, selection: &Selection) -> Result<Vec<(String, Holdback)>> {
        operator::holdback(self.engine.shared(), selection).await
    }

    /// Counts and ages of one signal type, and how many of its rows are in flight: a row of
    /// the console's overview.
    pub async fn overview(&self, signal: &str) -> Result<TypeOverview> {
        inspect::overview(self.engine.shared(), signal).await
    }

    /// A page of the signals of type `signal` that `filter` matches, lowest ids first, after
    /// the row id `after` (`None`: from the start); at most `limit` (1 to 500) of them.
    /// Paged by id, so every page costs the same whatever the table's size.
    ///
    /// ```no_run
    /// # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>) -> signalbus_core::Result<()> {
    /// use signalbus_core::inspection::{SignalFilter, SignalState};
    /// let parked = SignalFilter::new().state(SignalState::Parked).error_contains("no route");
    /// let mut after = None;
    /// loop {
    ///     let page = bus.list_signals("order_placed", &parked, after, 100).await?;
    ///     for s in &page.signals {
    ///         println!("#{} {:?}", s.id, s.last_error);
    ///     }
    ///     match page.next_after {
    ///         Some(id) => after = Some(id),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_signals(
        &self,
        signal: &str,
        filter: &SignalFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<SignalPage> {
        inspect::list(self.engine.shared(), signal, filter, after, limit).await
    }

    /// How many signals of type `signal` `filter` matches now (a bulk action's dry run), and
    /// the highest id among them.
    pub async fn count_signals(&self, signal: &str, filter: &SignalFilter) -> Result<Matched> {
        inspect::count(self.engine.shared(), signal, filter).await
    }

    /// The failure groups of the signals of type `signal` that `filter` matches: held
    /// signals whose last errors have the same fingerprint
    /// ([`error_fingerprint`](crate::inspection::error_fingerprint)), largest first.
    pub async fn failure_groups(
        &self,
        signal: &str,
        filter: &SignalFilter,
    ) -> Result<Vec<FailureGroup>> {
        inspect::failure_groups(self.engine.shared(), signal, filter).await
    }

    /// One signal of type `signal` in full, its body cut at `body_cap` bytes (0: no body);
    /// `None` when there is no row `id` (sent, or purged).
    pub async fn signal_detail(
        &self,
        signal: &str,
        id: i64,
        body_cap: usize,
    ) -> Result<Option<SignalDetail>> {
        inspect::detail(self.engine.shared(), signal, id, body_cap).await
    }

    /// Unpark or purge the parked signals of type `signal` that `filter` matches, or retry
    /// the backing-off ones now ([`BulkAction::acts_on`]), with ids up to `through_id` (the
    /// dry run's [`Matched::through_id`], so that signals held after the operator saw the
    /// count are left alone; `None`: no bound), `batch` rows per transaction, lowest ids
    /// first. Returns how many it changed. Unparking a key's signals keeps their order: a
    /// key's later signals wait while an earlier one is still parked.
    pub async fn act_on_held(
        &self,
        signal: &str,
        filter: &SignalFilter,
        action: BulkAction,
        through_id: Option<i64>,
        batch: usize,
    ) -> Result<u64> {
        inspect::act(
            self.engine.shared(),
            signal,
            filter,
            action,
            through_id,
            batch,
        )
        .await
    }

    /// Write a line to the audit log (the table `signalbus_console_audit`, created on first
    /// use).
    pub async fn record_audit(&self, record: &AuditRecord<'_>) -> Result<()> {
        inspect::record_audit(self.engine.shared(), record).await
    }

    /// The newest `limit` lines of the audit log.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        inspect::audit_log(self.engine.shared(), limit).await
    }

    /// Pending signals per selected type: how many, and how old the oldest is.
    pub async fn pending(&self, selection: &Selection) -> Result<Vec<(String, PendingStats)>> {
        operator::pending(self.engine.shared(), selection).await
    }

    /// Send the signals pending now: list the sendable ones, wait `wait` (so that
    /// auto-flushes already in flight can finish; [`DEFAULT_FLUSH_WAIT`](crate::DEFAULT_FLUSH_WAIT) is a good value),
    /// then send those still there, in bursts of each type's `burst`. Returns how many were
    /// sent.
    ///
    /// Each burst is *claimed* first (a lease set by the database's clock, so that no other
    /// flusher takes it), then published with no transaction open, then settled: stored
    /// signals are deleted, refused ones are retried later with backoff or parked (see
    /// [`crate::RetryPolicy`]). Rows an auto-flush still holds after the wait are skipped,
    /// never sent twice. Signals written after the listing are left for the next flush. For
    /// huge backlogs use [`SignalBus::flush_many`].
    ///
    /// A refused or invalid signal does not fail the flush (the progress callback sees it);
    /// a failure of the bus as a whole does, and gives the burst back without spending an
    /// attempt.
    pub async fn flush(&self, selection: &Selection, wait: Duration) -> Result<usize> {
        self.flush_with(selection, wait, &mut |_| ControlFlow::Continue(()))
            .await
    }

    /// [`SignalBus::flush`], calling `progress` after every settled burst; returning
    /// `ControlFlow::Break` from it stops the flush there (the count so far is returned).
    pub async fn flush_with(
        &self,
        selection: &Selection,
        wait: Duration,
        progress: OnProgress<'_>,
    ) -> Result<usize> {
        bursts::flush_listed(self.engine.shared(), selection, wait, progress).await
    }

    /// Send every sendable signal, burst after burst, until none is left. Each burst is
    /// claimed with a lease so that no other flusher takes it, so many processes can drain
    /// the same backlog at once without sending a row twice; it is published with no
    /// transaction open, then settled (see [`SignalBus::flush`]). Refused signals come back
    /// after their backoff delay, to a later flush; parked ones wait for an operator.
    /// Returns how many this call sent.
    pub async fn flush_many(&self, selection: &Selection) -> Result<usize> {
        self.flush_many_with(selection, &mut |_| ControlFlow::Continue(()))
            .await
    }

    /// [`SignalBus::flush_many`] with a progress callback (see [`SignalBus::flush_with`]).
    pub async fn flush_many_with(
        &self,
        selection: &Selection,
        progress: OnProgress<'_>,
    ) -> Result<usize> {
        bursts::drain_selected(self.engine.shared(), selection, false, progress).await
    }

    /// Send every pending signal in order, burst after burst, until none is left. Order is
    /// kept **per ordering key** ([`crate::Signal::ordering_key`], the `ordering_key` column):
    /// the signals of one key go out one after the other, different keys in parallel; the
    /// signals without a key are one sequence of their own (so a type nobody writes keys for
    /// keeps one total order).
    ///
    /// The order is gap-safe: a signal whose transaction commits late is not overtaken by a
    /// later one of its key (exactly on PostgreSQL and SQLite; see [`crate::storage`] for
    /// MySQL/MariaDB). On PostgreSQL signals go in the order their transactions began
    /// writing, and the type's `order_by` (default: insertion order) orders the signals
    /// *within* one transaction; on MySQL/MariaDB and SQLite `order_by` orders the table. On
    /// PostgreSQL, rows of transactions still running are left for the next call.
    ///
    /// A signal the bus refuses **holds back the later signals of its key**, and only those:
    /// the other keys go on. It goes again once its backoff delay has passed; when it is
    /// parked, its key waits until an operator unparks or purges it (`signalbus parked`
    /// shows the key). A burst publishes the signals of a key in rounds (the n-th of every
    /// key in the n-th call, each after the broker answered the one before) and publishes
    /// nothing more of a key whose signal was refused. Signals without a key are published
    /// together; those published in the same burst before a refusal was known may have gone
    /// out behind it.
    ///
    /// Several ordered flushers (tasks, processes, relays in ordered mode) may run at once.
    /// On PostgreSQL keys are hashed into 8 lanes, and a burst comes from one lane that the
    /// flusher holds for it (a session advisory lock on a connection of its own): flushers
    /// split the keys and never send two signals of one key at the same time; one that dies
    /// frees its lanes with its connection, and its burst in flight is sent again after the
    /// lease. On MySQL/MariaDB and SQLite each burst is read and claimed in a short
    /// transaction that holds the table's ordered turn, skipping keys in flight. When
    /// nothing can be sent because other flushers hold lanes or rows, this one waits for them
    /// (at most twice the publish timeout), then returns what it sent.
    ///
    /// The order holds when auto-flush is off for the type (auto-flush sends as soon as
    /// transactions commit, in no particular order) and only ordered flushes send it.
    /// Messages can still be sent more than once (at-least-once).
    pub async fn flush_ordered(&self, selection: &Selection) -> Result<usize> {
        self.flush_ordered_with(selection, &mut |_| ControlFlow::Continue(()))
            .await
    }

    /// [`SignalBus::flush_ordered`] with a progress callback (see [`SignalBus::flush_with`]).
    pub async fn flush_ordered_with(
        &self,
        selection: &Selection,
        progress: OnProgress<'_>,
    ) -> Result<usize> {
        bursts::drain_selected(self.engine.shared(), selection, true, progress).await
    }

    /// A relay for this bus' signal types (all of them unless
    /// [selected](RelayBuilder::select)); see [`crate::relay`].
    pub fn relay(&self) -> RelayBuilder<DB> {
        RelayBuilder::new(self.engine.clone())
    }

    /// An atomic block: `block` runs in a transaction, which commits when it returns `Ok`, and
    /// runs again on a conflict; see the [module docs](crate::atomic). Set options on the
    /// returned [`Atomic`], then await it.
    pub fn atomic<'b, 'a, T, E, F>(&'b self, block: F) -> Atomic<'b, 'a, DB, T, E, F>
    where
        T: Send + 'b,
        E: BlockError,
        F: for<'t> FnMut(&'t mut Transaction<'a, DB>) -> AtomicFuture<'t, T, E> + Send + 'b,
        'a: 'b,
    {
        Atomic::new(&self.engine, block)
    }
}

/// Builds a [`SignalBus`].
///
/// ```
/// use signalbus_core::publisher::MemoryPublisher;
/// use signalbus_core::{SignalBus, SignalType};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> signalbus_core::Result<()> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let bus = SignalBus::builder(pool)
///     .publisher(MemoryPublisher::new())
///     // a type described at run time, e.g. from a configuration file
///     .register_type(SignalType::new("audit_event").destination("audit").burst(500))
///     .name("billing") // the `bus` label of its metrics
///     .publish_timeout(Duration::from_secs(10))
///     .max_batch(500)
///     .build()?;
/// assert_eq!(bus.name(), "billing");
/// # Ok(()) }
/// ```
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

    /// The database is reached through a pooler in transaction mode, such as PgBouncer with
    /// `pool_mode = transaction` (default: off). Each transaction may then run on another
    /// server session, so nothing relies on one: statements are sent unnamed (prepared anew
    /// each time, never cached on the server), relays poll instead of listening for
    /// notifications (`poll_max` bounds a new signal's wait) and take no idle locks, and
    /// ordered flushers take turns per burst instead of holding lanes by session locks
    /// (order per key and no double send hold as without the pooler). Give the pool's
    /// connections the same URL as the writers'.
    pub fn transaction_pooler(mut self, on: bool) -> Self {
        self.config.transaction_pooler = on;
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
        let engine = Engine::start(
            self.pool,
            publisher,
            self.types,
            self.autoflush,
            self.config,
        )?;
        Ok(SignalBus { engine })
    }
}
