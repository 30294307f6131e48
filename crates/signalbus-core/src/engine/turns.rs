//! Bursts that take turns across relays ([`BurstShare`], a fleet's `--bursts-at-once`) and
//! the claim slot a draining loop keeps across its bursts ([`ClaimSlot`]).
//!
//! A burst takes its turn once it has claimed its rows (a lane that cannot reach its
//! database holds no turn), so the wait is bounded: past [`patience`] the rows go back
//! before their lease could end, and a relay that stops leaves the queue at once. A burst
//! that waited past its lease would publish rows another flusher may already have claimed.

use super::context::Shared;
use crate::registry::TypeIdx;
use crate::storage::Backend;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, watch};

/// Bursts in flight at once across every relay that holds a clone of it (a fleet of relays,
/// one per database): each burst, once it has claimed its rows, waits its turn to publish
/// and settle them, first come first served. A database draining a large backlog holds one
/// turn per lane (per signal type; ordered types: per ordered lane) and queues again after
/// each burst, so a quiet database's new signals wait for at most a burst of each lane ahead
/// of them; a lane that cannot reach its database holds no turn. A burst that waits longer
/// than its claim can safely last gives its rows back and claims again later.
///
/// ```no_run
/// # async fn demo(a: signalbus_core::SignalBus<sqlx::Postgres>, b: signalbus_core::SignalBus<sqlx::Postgres>) -> signalbus_core::Result<()> {
/// use signalbus_core::relay::BurstShare;
/// let share = BurstShare::new(4);
/// let ra = a.relay().share(share.clone()).start().await?;
/// let rb = b.relay().share(share).start().await?;
/// # let _ = (ra, rb); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BurstShare(Arc<tokio::sync::Semaphore>);

impl BurstShare {
    /// At most `bursts` bursts at once (at least 1).
    pub fn new(bursts: usize) -> Self {
        BurstShare(Arc::new(tokio::sync::Semaphore::new(bursts.max(1))))
    }

    /// Wait for a turn (tokio's semaphore queues waiters in order).
    async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }
}

/// The turns a relay lane's bursts take: the share, and the relay's stop, which ends a wait.
#[derive(Clone)]
pub(crate) struct Turns {
    pub share: BurstShare,
    pub stop: watch::Receiver<bool>,
}

impl Turns {
    /// Wait for a turn, at most `patience`, and not past the stop.
    async fn wait(&self, patience: Duration) -> Turn {
        let mut stop = self.stop.clone();
        let stopping = async move {
            // A relay dropped without a stop aborts its lanes itself.
            if stop.wait_for(|stopped| *stopped).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let patience = tokio::time::sleep(patience.min(Duration::from_secs(86_400 * 365)));
        tokio::select! {
            permit = self.share.turn() => Turn::Go(permit),
            () = patience => Turn::Missed { stopping: false },
            () = stopping => Turn::Missed { stopping: true },
        }
    }
}

/// What waiting for a turn gave.
pub(crate) enum Turn {
    /// Publish now (holding the permit, if the burst takes turns).
    Go(Option<OwnedSemaphorePermit>),
    /// No turn came in time (`stopping` false), or the relay is stopping: give the claimed
    /// rows back.
    Missed { stopping: bool },
}

/// A turn taken before a claim, kept for the burst (see [`ClaimSlot::before_claim`]).
pub(crate) struct EarlyTurn(Option<OwnedSemaphorePermit>);

impl EarlyTurn {
    /// No turn taken early (a burst that takes no turns, or waits for one after its claim).
    pub fn none() -> Self {
        EarlyTurn(None)
    }

    /// Whether a turn is held: the claim then gets one attempt, not the retries of a
    /// database step (a lane that cannot reach its database must not hold a turn).
    pub fn holds(&self) -> bool {
        self.0.is_some()
    }
}

/// How long a claimed burst may wait for its turn: its claim must still hold through the
/// publish (at most the publish timeout) and the settle after the wait, so half of what the
/// lease leaves beyond the publish timeout.
pub(crate) fn patience(lease: Duration, publish_timeout: Duration) -> Duration {
    lease.saturating_sub(publish_timeout) / 2
}

/// What a draining loop (a `flush_many`, a relay lane) keeps across its bursts where bursts
/// claim ranges of ids (PostgreSQL, [`crate::storage`]'s `signalbus_claims`): the token of
/// its slot. Each claim overwrites the slot's range (a claim that finds nothing frees it);
/// [`ClaimSlot::free`] when the loop stops early, else the range keeps the rows of its last
/// burst that committed late away from other flushers until its lease ends.
pub(crate) struct ClaimSlot {
    token: String,
    /// Turns its bursts take (a relay's lane in a [`BurstShare`]).
    turns: Option<Turns>,
    /// Whether its last burst missed its turn.
    missed: AtomicBool,
}

impl ClaimSlot {
    pub fn new() -> Self {
        Self::taking_turns(None)
    }

    /// A slot whose bursts take turns (when given) between claim and publish.
    pub fn taking_turns(turns: Option<Turns>) -> Self {
        ClaimSlot {
            token: uuid::Uuid::new_v4().to_string(),
            turns,
            missed: AtomicBool::new(false),
        }
    }

    /// Before a claim: a slot whose last burst missed its turn takes one first, waiting until
    /// it comes (so that the next burst does not miss again and the rows given back are
    /// left alone meanwhile); once only, whatever the claim finds. `None` when the relay
    /// stops.
    pub(crate) async fn before_claim(&self) -> Option<EarlyTurn> {
        match &self.turns {
            Some(turns) if self.missed.swap(false, Ordering::Relaxed) => {
                match turns.wait(Duration::MAX).await {
                    Turn::Go(permit) => Some(EarlyTurn(permit)),
                    Turn::Missed { .. } => None,
                }
            }
            _ => Some(EarlyTurn::none()),
        }
    }

    /// After a claim: the turn taken early, if any, else wait for one, at most `patience`
    /// and not past the relay's stop.
    pub(crate) async fn after_claim(&self, early: &mut EarlyTurn, patience: Duration) -> Turn {
        let Some(turns) = &self.turns else {
            return Turn::Go(None);
        };
        let turn = match early.0.take() {
            Some(permit) => Turn::Go(Some(permit)),
            None => turns.wait(patience).await,
        };
        self.missed
            .store(matches!(turn, Turn::Missed { .. }), Ordering::Relaxed);
        turn
    }

    /// The token of a claim: the slot's for a range claim, a burst's own for row leases.
    pub(crate) fn token(&self, range: bool) -> String {
        if range {
            self.token.clone()
        } else {
            uuid::Uuid::new_v4().to_string()
        }
    }

    /// Free the slot (best effort: its lease ends anyway).
    pub async fn free<DB: Backend>(&self, shared: &Shared<DB>, idx: TypeIdx) {
        self.free_with(shared, idx, &mut super::own_conn::Conns::Pool)
            .await;
    }

    /// [`ClaimSlot::free`] on `conn` (a flusher's own: it does not queue for a pooled one);
    /// the database's error, if it failed.
    pub async fn free_on<DB: Backend>(
        &self,
        shared: &Shared<DB>,
        idx: TypeIdx,
        conn: &mut DB::Connection,
    ) -> crate::error::Result<()> {
        let reg = shared.registry().get(idx);
        if !reg.sql.claims_ranges() {
            return Ok(());
        }
        let freed = reg.sql.free_range::<DB>(conn, &self.token).await;
        if let Err(e) = &freed {
            self.not_freed(shared, idx, e);
        }
        freed
    }

    /// [`ClaimSlot::free`] on a connection from `conns` (a relay lane's own, when it has one).
    pub async fn free_with<DB: Backend>(
        &self,
        shared: &Shared<DB>,
        idx: TypeIdx,
        conns: &mut super::own_conn::Conns<'_, DB>,
    ) {
        if !shared.registry().get(idx).sql.claims_ranges() {
            return;
        }
        match conns.take(shared).await {
            Ok(mut conn) => {
                let freed = self.free_on(shared, idx, &mut conn).await;
                conns.give(conn, &freed);
            }
            Err(e) => self.not_freed(shared, idx, &e),
        }
    }

    fn not_freed<DB: Backend>(&self, shared: &Shared<DB>, idx: TypeIdx, e: &crate::error::Error) {
        let reg = shared.registry().get(idx);
        tracing::warn!(signal = %reg.name, error = %e, "could not free a claim; it ends with its lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_leaves_the_publish_and_the_settle_inside_the_lease() {
        let publish = Duration::from_secs(10);
        // The default lease: twice the publish timeout plus 10 s.
        assert_eq!(
            patience(publish * 2 + Duration::from_secs(10), publish),
            Duration::from_secs(10)
        );
        assert_eq!(
            patience(Duration::from_secs(12), publish),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn a_turn_not_given_in_time_is_missed_and_then_taken_before_the_next_claim() {
        let share = BurstShare::new(1);
        let (stop_tx, stop) = watch::channel(false);
        let slot = ClaimSlot::taking_turns(Some(Turns {
            share: share.clone(),
            stop,
        }));
        let held = share.turn().await.expect("a turn");
        // Nothing missed yet: the turn is waited for after the claim, for at most `patience`.
        let mut early = slot.before_claim().await.expect("not stopping");
        assert!(early.0.is_none());
        let started = tokio::time::Instant::now();
        let missed = slot
            .after_claim(&mut early, Duration::from_millis(50))
            .await;
        assert!(matches!(missed, Turn::Missed { stopping: false }));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Missed: the next burst waits for its turn before it claims, as long as it takes …
        let freeing = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
        };
        let (early, ()) = tokio::join!(slot.before_claim(), freeing);
        let mut early = early.expect("not stopping");
        assert!(early.0.is_some());
        // … and publishes in that turn.
        let turn = slot.after_claim(&mut early, Duration::ZERO).await;
        assert!(matches!(turn, Turn::Go(Some(_))));
        // The stop ends a wait that could last much longer.
        let waiting = slot.after_claim(&mut early, Duration::from_secs(3600));
        let stopping = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop_tx.send(true).unwrap();
        };
        let (stopped, ()) = tokio::join!(waiting, stopping);
        assert!(matches!(stopped, Turn::Missed { stopping: true }));
        assert!(slot.before_claim().await.is_none(), "stopping");
        drop(turn);
        // A slot without turns never waits.
        let mut none = EarlyTurn::none();
        assert!(matches!(
            ClaimSlot::new()
                .after_claim(&mut none, Duration::ZERO)
                .await,
            Turn::Go(None)
        ));
    }
}
