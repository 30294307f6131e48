//! The auto-flush task: sends committed signals right after their transaction, coalescing
//! many transactions into one publish and one delete, with no transaction open while the bus
//! works.
//!
//! A signal meant for the auto-flush is written *leased* (so that no explicit flush takes it
//! meanwhile), and its message is kept in memory. Committing transactions hand their signals
//! over a bounded channel. A round takes everything queued (up to `max_batch` signals),
//! publishes the messages as one batch, then deletes the rows the broker stored and counts a
//! refusal for the others. Signals of a transaction the caller began itself are claimed
//! first, so that only committed rows go out. Up to `flush_workers` rounds run at once; while
//! they run, the next round's signals pile up, so the batches grow with the load.
//!
//! Backpressure: when the channel is full (the bus is slower than the commits), a committing
//! transaction is answered *pending* at once ([`Error::QueueFull`]) instead of waiting: its
//! rows are given back (their lease lifted) for the next explicit flush or the relay, and the
//! commit's latency stays bounded.

use super::context::{Engine, Shared};
use super::settle::{Entry, Outgoing, publish, retry_db, settle};
use crate::delivery::{Delivery, DeliveryReport};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::registry::TypeIdx;
use crate::storage::Backend;
use futures_util::FutureExt;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One committed signal for the auto-flush: its row and its message.
pub(crate) struct Item {
    pub idx: TypeIdx,
    pub id: i64,
    /// Written with a lease (auto-flush on when it was written): no other flusher takes the
    /// row until then. One written without (auto-flush off then, on at the commit) must be
    /// claimed before it is sent.
    pub leased: bool,
    /// Taken (not copied) by the round that publishes it.
    pub message: Option<Message>,
}

/// The committed signals of one transaction, and where to report what became of them.
pub(crate) struct FlushRequest {
    pub items: Vec<Item>,
    /// Whether the commit is known to be real (a transaction signalbus began as outermost):
    /// then the rows exist and the messages are sent as they are. Otherwise (the caller's
    /// own transaction) the rows are claimed first, and only those that exist are sent.
    pub verified: bool,
    pub reply: oneshot::Sender<DeliveryReport>,
    /// When the transaction committed.
    pub committed: Instant,
}

/// Open after a publish failure, until the pause (`failure_pause`) is over: requests
/// arriving meanwhile are answered at once as pending (their rows stay for the next flush)
/// instead of queueing up behind publish timeouts. The first round after the pause probes
/// the bus again.
pub(crate) struct Breaker {
    pause: Duration,
    state: Mutex<Option<(Instant, Arc<Error>)>>,
}

impl Breaker {
    pub fn new(pause: Duration) -> Self {
        Breaker {
            pause,
            state: Mutex::new(None),
        }
    }

    pub fn open(&self, error: Arc<Error>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now() + self.pause, error));
    }

    pub fn close(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The failure that opened it, while it is open.
    fn is_open(&self) -> Option<Arc<Error>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, e)| e.clone())
    }
}

/// A request to stop taking auto-flush work ([`crate::SignalBus::close`]).
pub(crate) struct CloseRequest {
    /// When the rounds still running are given up.
    pub deadline: Instant,
    /// How many signals were left pending.
    pub reply: oneshot::Sender<usize>,
}

/// The sizes the auto-flush loop works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoopConfig {
    pub max_batch: usize,
    pub flush_workers: usize,
}

/// Admission: hand a committed transaction's signals (`items`, plus `held_back` already left
/// pending) to the auto-flush task, or leave them pending at once when the switch is off,
/// the bus is closed or the queue is full. `verified`: the transaction is one signalbus
/// began itself as outermost, so its commit is known to be real.
pub(crate) fn admit<DB: Backend>(
    engine: &Engine<DB>,
    items: Vec<Item>,
    verified: bool,
    held_back: usize,
) -> Delivery {
    let shared = engine.shared();
    let mut report = DeliveryReport {
        pending: held_back,
        ..DeliveryReport::default()
    };
    if items.is_empty() {
        return Delivery::ready(report);
    }
    let count = items.len();
    if !shared.autoflush_on() {
        // Switched off by the time of the commit: left for an explicit flush, their
        // leases lifted before the delivery resolves.
        report.pending += count;
        let leased: Vec<Item> = items.into_iter().filter(|i| i.leased).collect();
        return given_back(shared, leased, report);
    }
    let refused = |report: &mut DeliveryReport, error: Error| {
        report.pending += count;
        report.error = Some(Arc::new(error));
    };
    if shared.is_closed() {
        refused(&mut report, Error::Closed);
        give_back(shared, items);
        return Delivery::ready(report);
    }
    let (reply, rx) = oneshot::channel();
    // Rows written without a lease may be taken by another flusher meanwhile: claimed
    // first, like the rows of a caller's own transaction.
    let verified = verified && items.iter().all(|i| i.leased);
    let request = FlushRequest {
        items,
        verified,
        reply,
        committed: Instant::now(),
    };
    match engine.queue().try_send(request) {
        Ok(()) => Delivery::waiting(rx, report, count),
        Err(TrySendError::Full(request)) => {
            let capacity = shared.config().queue_capacity;
            tracing::debug!(
                signals = count,
                capacity,
                "auto-flush queue full; signals left pending"
            );
            refused(&mut report, Error::QueueFull { capacity });
            give_back(shared, request.items);
            Delivery::ready(report)
        }
        Err(TrySendError::Closed(request)) => {
            let error = if shared.is_closed() {
                Error::Closed
            } else {
                Error::Stopped
            };
            refused(&mut report, error);
            give_back(shared, request.items);
            Delivery::ready(report)
        }
    }
}

/// [`give_back`], and a delivery that resolves with `report` once the leases are lifted (so
/// that a flush right after awaiting it takes the signals).
fn given_back<DB: Backend>(
    shared: &Arc<Shared<DB>>,
    items: Vec<Item>,
    report: DeliveryReport,
) -> Delivery {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Delivery::ready(report);
    };
    if items.is_empty() {
        return Delivery::ready(report);
    }
    let shared = shared.clone();
    let (reply, rx) = oneshot::channel();
    runtime.spawn(async move {
        release(&shared, items.iter().map(|i| (i.idx, i.id))).await;
        let _ = reply.send(DeliveryReport::default());
    });
    Delivery::waiting(rx, report, 0)
}

/// Lift the leases of signals written for an auto-flush that will not send them, so that the
/// next explicit flush (or relay) takes them at once. In the background and best effort: if
/// it fails, they come back when their lease expires.
fn give_back<DB: Backend>(shared: &Arc<Shared<DB>>, items: Vec<Item>) {
    if items.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = shared.clone();
    runtime.spawn(async move {
        release(&shared, items.iter().map(|i| (i.idx, i.id))).await;
    });
}

/// Runs until every handle of the bus is dropped (then finishes the rounds in flight) or the
/// bus is closed.
pub(crate) async fn run<DB: Backend>(
    shared: Arc<Shared<DB>>,
    rx: mpsc::Receiver<FlushRequest>,
    close_rx: mpsc::UnboundedReceiver<CloseRequest>,
) {
    let breaker = Arc::new(Breaker::new(shared.config().failure_pause));
    let config = LoopConfig {
        max_batch: shared.config().max_batch,
        flush_workers: shared.config().flush_workers,
    };
    let round_breaker = breaker.clone();
    // Requests the loop answers pending without a round: their rows are given back too, so
    // that the next flush takes them without waiting for their lease.
    let abandon_shared = shared.clone();
    let abandon = move |round: Vec<FlushRequest>, error: Arc<Error>| {
        abandon_later(&abandon_shared, &round);
        reply_pending(round, error);
    };
    let send = move |mut round: Vec<FlushRequest>, cancel: watch::Receiver<bool>| {
        let (shared, breaker) = (shared.clone(), round_breaker.clone());
        async move {
            // A panicking publisher must not leave the waiting transactions with a vague
            // "stopped": they get the panic as the reason their signals stay pending.
            let outcome = AssertUnwindSafe(flush_round(&shared, &breaker, &mut round, cancel))
                .catch_unwind()
                .await;
            if let Err(panic) = outcome {
                let message = panic_message(&*panic);
                tracing::error!(%message, "an auto-flush round panicked; its signals stay pending");
                abandon_later(&shared, &round);
                reply_pending(round, Arc::new(Error::Panicked(message)));
            }
        }
    };
    run_loop(config, &breaker, rx, close_rx, send, abandon).await;
}

/// Give the rows of `round` back in the background (see [`release`]).
fn abandon_later<DB: Backend>(shared: &Arc<Shared<DB>>, round: &[FlushRequest]) {
    let rows: Vec<(TypeIdx, i64)> = round
        .iter()
        .flat_map(|r| r.items.iter().map(|i| (i.idx, i.id)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move { release(&shared, rows).await });
}

/// The coalescing loop, apart from what a round does (`send`), so that it can be tested
/// without a database. A round is told to give up (and roll back) through its `watch`
/// receiver turning `true`: a close whose deadline passed.
pub(crate) async fn run_loop<S, Fut, A>(
    config: LoopConfig,
    breaker: &Breaker,
    mut rx: mpsc::Receiver<FlushRequest>,
    mut close_rx: mpsc::UnboundedReceiver<CloseRequest>,
    send: S,
    abandon: A,
) where
    S: Fn(Vec<FlushRequest>, watch::Receiver<bool>) -> Fut,
    A: Fn(Vec<FlushRequest>, Arc<Error>),
    Fut: Future<Output = ()> + Send + 'static,
{
    let workers = Arc::new(Semaphore::new(config.flush_workers));
    // Signals of the rounds running now: what a close that runs out of time leaves pending.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut rounds = JoinSet::new();
    let mut carry: Option<FlushRequest> = None;
    let (give_up, give_up_rx) = watch::channel(false);
    let spawn = |rounds: &mut JoinSet<()>, round: Vec<FlushRequest>, permit| {
        let count: usize = round.iter().map(|r| r.items.len()).sum();
        in_flight.fetch_add(count, Ordering::Relaxed);
        let (in_flight, work) = (in_flight.clone(), send(round, give_up_rx.clone()));
        rounds.spawn(async move {
            work.await;
            in_flight.fetch_sub(count, Ordering::Relaxed);
            drop(permit);
        });
    };
    let close = loop {
        // Wait for a free worker first: meanwhile requests queue up and the round gets bigger.
        let permit = tokio::select! {
            biased;
            close = close_rx.recv() => break close,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break None,
            },
        };
        while rounds.try_join_next().is_some() {}
        let first = match carry.take() {
            Some(request) => request,
            None => tokio::select! {
                biased;
                close = close_rx.recv() => break close,
                request = rx.recv() => match request {
                    Some(request) => request,
                    None => break None,
                },
            },
        };
        let round = gather(first, &mut rx, &mut carry, config.max_batch);
        if let Some(error) = breaker.is_open() {
            abandon(round, error);
            continue;
        }
        spawn(&mut rounds, round, permit);
    };
    let Some(close) = close else {
        // Every handle is gone: let the rounds in flight finish before the task ends.
        while rounds.join_next().await.is_some() {}
        return;
    };
    // Closing: no new requests; the ones queued already are still sent, until the deadline.
    rx.close();
    let mut left = 0;
    let drained = tokio::time::timeout_at(close.deadline, async {
        loop {
            // The worker first: a request taken off the queue is always in a round, so a
            // deadline that passes while waiting for a worker finds it still queued.
            let Ok(permit) = workers.clone().acquire_owned().await else {
                break;
            };
            let Some(first) = carry.take().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            let round = gather(first, &mut rx, &mut carry, config.max_batch);
            spawn(&mut rounds, round, permit);
        }
        while rounds.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Out of time: the rounds still running give up, roll back and answer their
        // transactions pending; their rows stay for the next flush. One that does not manage
        // even that within a second is dropped (its transaction rolls back when its
        // connection is next used).
        left += in_flight.load(Ordering::Relaxed);
        let _ = give_up.send(true);
        let rolled_back = tokio::time::timeout(GIVE_UP_GRACE, async {
            while rounds.join_next().await.is_some() {}
        })
        .await;
        if rolled_back.is_err() {
            rounds.abort_all();
            while rounds.join_next().await.is_some() {}
        }
        let closed = Arc::new(Error::Closed);
        let queued: Vec<FlushRequest> = carry
            .take()
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .collect();
        left += queued.iter().map(|r| r.items.len()).sum::<usize>();
        abandon(queued, closed);
    }
    let _ = close.reply.send(left);
}

/// How long rounds told to give up at a close's deadline have for their rollback.
const GIVE_UP_GRACE: Duration = Duration::from_secs(1);

/// `first` and whatever else is queued, up to `max_batch` ids; a request that would go past
/// it is carried over to the next round.
fn gather(
    first: FlushRequest,
    rx: &mut mpsc::Receiver<FlushRequest>,
    carry: &mut Option<FlushRequest>,
    max_batch: usize,
) -> Vec<FlushRequest> {
    let mut size = first.items.len();
    let mut round = vec![first];
    while size < max_batch {
        match rx.try_recv() {
            Ok(request) if size + request.items.len() > max_batch => {
                *carry = Some(request);
                break;
            }
            Ok(request) => {
                size += request.items.len();
                round.push(request);
            }
            Err(_) => break,
        }
    }
    round
}

/// Send one round and answer its requests (taken out of `round` only then, so that a panic
/// leaves them to the caller).
async fn flush_round<DB: Backend>(
    shared: &Shared<DB>,
    breaker: &Breaker,
    round: &mut Vec<FlushRequest>,
    give_up: watch::Receiver<bool>,
) {
    let result = send_round(shared, round, give_up).await;
    let round = std::mem::take(round);
    match result {
        Ok(outcome) => {
            breaker.close();
            let refusal = outcome
                .refusal
                .map(|why| Arc::new(Error::Publish(crate::error::PublishError::rejected(why))));
            for request in round {
                let total = request.items.len();
                let count = |set: &HashSet<(TypeIdx, i64)>| {
                    request
                        .items
                        .iter()
                        .filter(|item| set.contains(&(item.idx, item.id)))
                        .count()
                };
                let (sent, pending) = (count(&outcome.sent), count(&outcome.refused));
                let _ = request.reply.send(DeliveryReport {
                    sent,
                    pending,
                    elsewhere: total - sent - pending,
                    error: (pending > 0).then(|| refusal.clone()).flatten(),
                });
            }
        }
        Err(error) => {
            let count: usize = round.iter().map(|r| r.items.len()).sum();
            tracing::warn!(signals = count, %error, "auto-flush failed; the signals stay pending until the next flush");
            let error = Arc::new(error);
            if matches!(*error, Error::Publish(_)) {
                breaker.open(error.clone());
            }
            reply_pending(round, error);
        }
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Report every request of a round as left pending because of `error`.
fn reply_pending(round: Vec<FlushRequest>, error: Arc<Error>) {
    for request in round {
        let _ = request.reply.send(DeliveryReport {
            pending: request.items.len(),
            error: Some(error.clone()),
            ..DeliveryReport::default()
        });
    }
}

/// What a round did with its signals.
struct RoundOutcome {
    sent: HashSet<(TypeIdx, i64)>,
    /// Refused by the bus (kept for a later attempt, or parked).
    refused: HashSet<(TypeIdx, i64)>,
    refusal: Option<String>,
}

/// One round, with no transaction open while the bus works: check, for a transaction the
/// caller began, which rows exist (and claim them); publish the messages from memory; then
/// settle: delete the stored rows, count the refusals. When the bus fails as a whole (or a
/// close gives up on the round), the rows are given back at once and nothing is settled.
async fn send_round<DB: Backend>(
    shared: &Shared<DB>,
    round: &mut [FlushRequest],
    mut give_up: watch::Receiver<bool>,
) -> Result<RoundOutcome> {
    let mut conn = shared.pool().acquire().await?;
    // Unverified rows: those that exist and no other flusher holds.
    let mut unverified: BTreeMap<TypeIdx, Vec<i64>> = BTreeMap::new();
    for request in round.iter().filter(|r| !r.verified) {
        for item in &request.items {
            unverified.entry(item.idx).or_default().push(item.id);
        }
    }
    let mut claimed: HashSet<(TypeIdx, i64)> = HashSet::new();
    if !unverified.is_empty() {
        let token = uuid::Uuid::new_v4().to_string();
        let lease = shared.config().lease();
        for (idx, ids) in &unverified {
            let sql = &shared.registry().get(*idx).sql;
            let ids = retry_db!(sql.claim_own::<DB>(&mut conn, ids, lease, &token).await)?;
            claimed.extend(ids.into_iter().map(|id| (*idx, id)));
        }
    }
    let mut outgoing = Vec::new();
    for request in round.iter_mut() {
        let verified = request.verified;
        for item in &mut request.items {
            if !(verified || claimed.contains(&(item.idx, item.id))) {
                continue;
            }
            if let Some(message) = item.message.take() {
                outgoing.push(Outgoing {
                    entry: Entry {
                        idx: item.idx,
                        id: item.id,
                        attempts: 0,
                        born: Some(request.committed.into_std()),
                    },
                    message: Ok(message),
                });
            }
        }
    }
    if outgoing.is_empty() {
        return Ok(RoundOutcome {
            sent: HashSet::new(),
            refused: HashSet::new(),
            refusal: None,
        });
    }
    let held: Vec<(TypeIdx, i64)> = outgoing.iter().map(|o| (o.entry.idx, o.entry.id)).collect();
    let published = tokio::select! {
        published = publish(shared, outgoing, false) => published,
        _ = give_up.wait_for(|give_up| *give_up) => Err(Error::Closed),
    };
    let (entries, fates) = match published {
        Ok(published) => published,
        Err(e) => {
            release_on(shared, &mut conn, held.iter().copied()).await;
            return Err(e);
        }
    };
    let settled = settle(shared, &mut conn, &entries, &fates, true).await?;
    let sent: HashSet<(TypeIdx, i64)> = settled
        .sent
        .into_iter()
        .flat_map(|(idx, ids)| ids.into_iter().map(move |id| (idx, id)))
        .collect();
    let refused = held.into_iter().filter(|k| !sent.contains(k)).collect();
    Ok(RoundOutcome {
        sent,
        refused,
        refusal: settled.last_refusal,
    })
}

/// Lift the leases of rows the auto-flush will not send (best effort: if it fails, they
/// come back when their lease expires).
pub(crate) async fn release<DB: Backend>(
    shared: &Shared<DB>,
    rows: impl IntoIterator<Item = (TypeIdx, i64)>,
) {
    match shared.pool().acquire().await {
        Ok(mut conn) => release_on(shared, &mut conn, rows).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not give signals back; they come back when their lease expires")
        }
    }
}

async fn release_on<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    rows: impl IntoIterator<Item = (TypeIdx, i64)>,
) {
    if let Err(e) = release_and_wake(shared, conn, rows.into_iter().collect()).await {
        tracing::warn!(error = %e, "could not give signals back; they come back when their lease expires");
    }
}

/// Lift the leases of rows in the caller's open transaction (a commit while auto-flush is
/// switched off): they commit free for an explicit flush.
pub(crate) async fn release_in<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    rows: impl IntoIterator<Item = (TypeIdx, i64)>,
) -> crate::error::Result<()> {
    release_and_wake(shared, conn, rows.into_iter().collect()).await
}

/// Release `rows` type by type; the first failure, with the signal's name.
async fn release_rows<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    rows: impl IntoIterator<Item = (TypeIdx, i64)>,
) -> std::result::Result<(), (String, crate::error::Error)> {
    let mut by_type: BTreeMap<TypeIdx, Vec<i64>> = BTreeMap::new();
    for (idx, id) in rows {
        by_type.entry(idx).or_default().push(id);
    }
    for (idx, ids) in by_type {
        let reg = shared.registry().get(idx);
        reg.sql
            .release::<DB>(conn, &ids)
            .await
            .map_err(|e| (reg.name.to_string(), e))?;
    }
    Ok(())
}

/// [`release_rows`] in the caller's transaction, then the relay's wake-up for their tables
/// (PostgreSQL: the insert trigger notified nothing for rows written leased).
async fn release_and_wake<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    rows: Vec<(TypeIdx, i64)>,
) -> crate::error::Result<()> {
    let tables: std::collections::BTreeSet<TypeIdx> = rows.iter().map(|(idx, _)| *idx).collect();
    release_rows(shared, conn, rows).await.map_err(|(_, e)| e)?;
    for idx in tables {
        shared
            .registry()
            .get(idx)
            .sql
            .wake_relays::<DB>(conn)
            .await?;
    }
    Ok(())
}

/// The coalescing loop, the failure pause and closing, on tokio's paused clock: no database,
/// a fake round that records what it was given.
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    /// A round that records its requests' sizes, waits for `gate` when asked, and answers.
    #[derive(Clone, Default)]
    struct Rounds {
        sizes: Arc<Mutex<Vec<Vec<usize>>>>,
        gate: Arc<Notify>,
        hold: bool,
    }

    impl Rounds {
        #[allow(clippy::type_complexity)]
        fn send(
            &self,
        ) -> impl Fn(
            Vec<FlushRequest>,
            watch::Receiver<bool>,
        ) -> futures_util::future::BoxFuture<'static, ()>
        + use<> {
            let this = self.clone();
            move |round: Vec<FlushRequest>, mut give_up: watch::Receiver<bool>| {
                let this = this.clone();
                Box::pin(async move {
                    this.sizes
                        .lock()
                        .unwrap()
                        .push(round.iter().map(|r| r.items.len()).collect());
                    if this.hold {
                        tokio::select! {
                            _ = this.gate.notified() => {}
                            _ = give_up.wait_for(|g| *g) => {
                                return reply_pending(round, Arc::new(Error::Closed));
                            }
                        }
                    }
                    for request in round {
                        let sent = request.items.len();
                        let _ = request.reply.send(DeliveryReport {
                            sent,
                            ..DeliveryReport::default()
                        });
                    }
                })
            }
        }

        fn sizes(&self) -> Vec<Vec<usize>> {
            self.sizes.lock().unwrap().clone()
        }
    }

    fn request(n: usize) -> (FlushRequest, oneshot::Receiver<DeliveryReport>) {
        let (reply, rx) = oneshot::channel();
        let items = (0..n)
            .map(|i| Item {
                idx: 0,
                id: i64::try_from(i).unwrap(),
                leased: true,
                message: Some(Message {
                    id: i.to_string(),
                    signal: "test".into(),
                    destination: "test".into(),
                    routing_key: None,
                    headers: Default::default(),
                    body: Vec::new(),
                    content_type: None,
                }),
            })
            .collect();
        let request = FlushRequest {
            items,
            verified: true,
            reply,
            committed: Instant::now(),
        };
        (request, rx)
    }

    struct Harness {
        tx: mpsc::Sender<FlushRequest>,
        close: mpsc::UnboundedSender<CloseRequest>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(config: LoopConfig, breaker: Arc<Breaker>, rounds: &Rounds) -> Harness {
        let (tx, rx) = mpsc::channel(64);
        let (close, close_rx) = mpsc::unbounded_channel();
        let send = rounds.send();
        let task = tokio::spawn(async move {
            run_loop(config, &breaker, rx, close_rx, send, reply_pending).await
        });
        Harness { tx, close, task }
    }

    /// One worker, a one-second failure pause.
    fn start_one(rounds: &Rounds) -> Harness {
        start(
            ONE_WORKER,
            Arc::new(Breaker::new(Duration::from_secs(1))),
            rounds,
        )
    }

    const ONE_WORKER: LoopConfig = LoopConfig {
        max_batch: 100,
        flush_workers: 1,
    };

    /// Let every ready task run (the clock is paused, so nothing else moves).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_queued_behind_a_busy_worker_go_out_as_one_round() {
        let rounds = Rounds {
            hold: true,
            ..Rounds::default()
        };
        let h = start_one(&rounds);
        let (a, a_rx) = request(1);
        h.tx.send(a).await.unwrap();
        settle().await;
        assert_eq!(
            rounds.sizes(),
            vec![vec![1]],
            "the first round starts alone"
        );
        let mut replies = Vec::new();
        for n in [2, 3, 4] {
            let (r, rx) = request(n);
            h.tx.send(r).await.unwrap();
            replies.push(rx);
        }
        settle().await;
        assert_eq!(rounds.sizes().len(), 1, "the one worker is still busy");
        rounds.gate.notify_one();
        settle().await;
        assert_eq!(
            rounds.sizes(),
            vec![vec![1], vec![2, 3, 4]],
            "coalesced into one round"
        );
        rounds.gate.notify_one();
        assert_eq!(a_rx.await.unwrap().sent, 1);
        for (rx, n) in replies.into_iter().zip([2, 3, 4]) {
            assert_eq!(rx.await.unwrap().sent, n);
        }
        drop(h.tx);
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_stops_at_max_batch_and_carries_the_rest() {
        let rounds = Rounds {
            hold: true,
            ..Rounds::default()
        };
        let config = LoopConfig {
            max_batch: 100,
            flush_workers: 1,
        };
        let h = start(
            config,
            Arc::new(Breaker::new(Duration::from_secs(1))),
            &rounds,
        );
        let (first, _first_rx) = request(1);
        h.tx.send(first).await.unwrap();
        settle().await;
        let mut keep = Vec::new();
        for _ in 0..5 {
            let (r, rx) = request(40);
            h.tx.send(r).await.unwrap();
            keep.push(rx);
        }
        for _ in 0..3 {
            rounds.gate.notify_one();
            settle().await;
        }
        assert_eq!(
            rounds.sizes(),
            vec![vec![1], vec![40, 40], vec![40, 40], vec![40]],
            "no round over 100 ids; the request that would pass it waits for the next"
        );
        drop(h.tx);
        rounds.gate.notify_one();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_requests_are_answered_pending_until_the_pause_ends() {
        let rounds = Rounds::default();
        let pause = Duration::from_secs(1);
        let breaker = Arc::new(Breaker::new(pause));
        let h = start(ONE_WORKER, breaker.clone(), &rounds);
        breaker.open(Arc::new(Error::Config("the bus failed".into())));

        let (r, rx) = request(3);
        h.tx.send(r).await.unwrap();
        let report = rx.await.unwrap();
        assert_eq!(
            (report.sent, report.pending),
            (0, 3),
            "answered pending at once"
        );
        assert!(report.error.unwrap().to_string().contains("the bus failed"));
        assert!(
            rounds.sizes().is_empty(),
            "no round ran while the breaker was open"
        );

        tokio::time::advance(pause - Duration::from_millis(1)).await;
        let (r, rx) = request(1);
        h.tx.send(r).await.unwrap();
        assert_eq!(rx.await.unwrap().pending, 1, "still within the pause");

        tokio::time::advance(Duration::from_millis(2)).await;
        let (r, rx) = request(2);
        h.tx.send(r).await.unwrap();
        assert_eq!(
            rx.await.unwrap().sent,
            2,
            "the first request after the pause probes the bus"
        );
        assert_eq!(rounds.sizes(), vec![vec![2]]);
        drop(h.tx);
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn close_sends_what_was_queued_and_gives_up_at_the_deadline() {
        // Queued requests are still sent when the rounds finish in time.
        let rounds = Rounds::default();
        let h = start_one(&rounds);
        let (r, rx) = request(2);
        h.tx.send(r).await.unwrap();
        let (reply, left) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_secs(5);
        h.close.send(CloseRequest { deadline, reply }).unwrap();
        assert_eq!(left.await.unwrap(), 0);
        assert_eq!(rx.await.unwrap().sent, 2);
        h.task.await.unwrap();
        assert!(
            h.tx.try_send(request(1).0).is_err(),
            "closed for new requests"
        );

        // A round that does not finish by the deadline gives up; it and what waited behind it
        // are answered pending, and the count says how many signals were left.
        let rounds = Rounds {
            hold: true,
            ..Rounds::default()
        };
        let h = start_one(&rounds);
        let (running, running_rx) = request(3);
        h.tx.send(running).await.unwrap();
        settle().await;
        let (queued, queued_rx) = request(4);
        h.tx.send(queued).await.unwrap();
        let (reply, left) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_secs(2);
        h.close.send(CloseRequest { deadline, reply }).unwrap();
        assert_eq!(left.await.unwrap(), 3 + 4);
        let queued = queued_rx.await.unwrap();
        assert_eq!(queued.pending, 4);
        assert!(matches!(queued.error.as_deref(), Some(Error::Closed)));
        let running = running_rx.await.unwrap();
        assert_eq!(running.pending, 3, "the given-up round answered pending");
        assert!(matches!(running.error.as_deref(), Some(Error::Closed)));
        h.task.await.unwrap();
    }
}
