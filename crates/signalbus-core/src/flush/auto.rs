//! The auto-flush task: sends committed signals right after their transaction, coalescing
//! many transactions into one lock, one publish and one delete.
//!
//! Committing transactions hand their row ids over a bounded channel. A round takes
//! everything queued (up to `max_batch` ids), locks those rows (`SKIP LOCKED`, so a concurrent
//! explicit flush never sends them too), publishes them as one batch, deletes them and
//! commits. Up to `flush_workers` rounds run at once; while they run, the next round's ids
//! pile up, so the batches grow with the load.
//!
//! Backpressure: when the channel is full (the bus is slower than the commits), a committing
//! transaction is answered *pending* at once ([`Error::QueueFull`]) instead of waiting: its
//! rows stay in the table for the next explicit flush or the relay, and the commit's latency
//! stays bounded.

use super::{publish_and_settle, settle_tx};
use crate::bus::Shared;
use crate::error::{Error, Result};
use crate::registry::TypeIdx;
use crate::storage::{Backend, begin_flush};
use crate::transaction::DeliveryReport;
use futures_util::FutureExt;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The committed signals of one transaction, and where to report what became of them.
pub(crate) struct FlushRequest {
    pub items: Vec<(TypeIdx, i64)>,
    pub reply: oneshot::Sender<DeliveryReport>,
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

/// Runs until every handle of the bus is dropped (then finishes the rounds in flight) or the
/// bus is closed.
pub(crate) async fn run<DB: Backend>(
    shared: Arc<Shared<DB>>,
    rx: mpsc::Receiver<FlushRequest>,
    close_rx: mpsc::UnboundedReceiver<CloseRequest>,
) {
    let breaker = Arc::new(Breaker::new(shared.config.failure_pause));
    let config = LoopConfig {
        max_batch: shared.config.max_batch,
        flush_workers: shared.config.flush_workers,
    };
    let round_breaker = breaker.clone();
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
                reply_pending(round, Arc::new(Error::Panicked(message)));
            }
        }
    };
    run_loop(config, &breaker, rx, close_rx, send).await;
}

/// The coalescing loop, apart from what a round does (`send`), so that it can be tested
/// without a database. A round is told to give up (and roll back) through its `watch`
/// receiver turning `true`: a close whose deadline passed.
pub(crate) async fn run_loop<S, Fut>(
    config: LoopConfig,
    breaker: &Breaker,
    mut rx: mpsc::Receiver<FlushRequest>,
    mut close_rx: mpsc::UnboundedReceiver<CloseRequest>,
    send: S,
) where
    S: Fn(Vec<FlushRequest>, watch::Receiver<bool>) -> Fut,
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
            reply_pending(round, error);
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
        reply_pending(queued, closed);
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
    let mut by_type: BTreeMap<TypeIdx, Vec<i64>> = BTreeMap::new();
    for request in round.iter() {
        for &(idx, id) in &request.items {
            by_type.entry(idx).or_default().push(id);
        }
    }
    for ids in by_type.values_mut() {
        ids.sort_unstable();
    }
    let result = send_round(shared, by_type, give_up).await;
    let round = std::mem::take(round);
    match result {
        Ok(outcome) => {
            breaker.close();
            let refusal = outcome
                .refusal
                .map(|why| Arc::new(Error::Publish(crate::error::PublishError::rejected(why))));
            for request in round {
                let total = request.items.len();
                let sent = request
                    .items
                    .iter()
                    .filter(|item| outcome.sent.contains(item))
                    .count();
                let pending = request
                    .items
                    .iter()
                    .filter(|item| outcome.refused.contains(item))
                    .count();
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

/// One round in one database transaction: lock the round's rows (skipping rows another
/// flusher holds), publish them, settle them (delete the stored, count the refused), commit.
/// A failure of the bus as a whole rolls back: the rows stay as they were.
async fn send_round<DB: Backend>(
    shared: &Shared<DB>,
    by_type: BTreeMap<TypeIdx, Vec<i64>>,
    mut give_up: watch::Receiver<bool>,
) -> Result<RoundOutcome> {
    let mut tx = begin_flush(&shared.pool).await?;
    let result = tokio::select! {
        result = lock_and_send(shared, &mut tx, by_type) => result,
        _ = give_up.wait_for(|give_up| *give_up) => Err(Error::Closed),
    };
    settle_tx(tx, result).await
}

async fn lock_and_send<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    by_type: BTreeMap<TypeIdx, Vec<i64>>,
) -> Result<RoundOutcome> {
    let mut held = Vec::with_capacity(by_type.len());
    let mut all = HashSet::new();
    for (idx, ids) in by_type {
        let rows = shared
            .registry
            .get(idx)
            .sql
            .lock_ids::<DB>(conn, &ids)
            .await?;
        all.extend(rows.iter().map(|r| (idx, r.id)));
        if !rows.is_empty() {
            held.push((idx, rows));
        }
    }
    if held.is_empty() {
        return Ok(RoundOutcome {
            sent: HashSet::new(),
            refused: HashSet::new(),
            refusal: None,
        });
    }
    let settled = publish_and_settle(shared, conn, held, false).await?;
    let sent: HashSet<(TypeIdx, i64)> = settled
        .sent
        .into_iter()
        .flat_map(|(idx, ids)| ids.into_iter().map(move |id| (idx, id)))
        .collect();
    let refused = all.difference(&sent).copied().collect();
    Ok(RoundOutcome {
        sent,
        refused,
        refusal: settled.last_refusal,
    })
}
