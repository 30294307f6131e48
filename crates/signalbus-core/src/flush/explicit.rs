//! Explicit flushing: `flush`, `flushmany` and `flushordered`.

use super::{Progress, Settled, publish_and_settle, retry_db, settle_tx};
use crate::bus::{Shared, SignalBus};
use crate::error::Result;
use crate::registry::{Registered, Selection, TypeIdx};
use crate::storage::{Backend, begin_flush};
use std::ops::ControlFlow;
use std::time::Duration;

/// How long [`SignalBus::flush`] waits by default for in-flight auto-flushes.
pub const DEFAULT_FLUSH_WAIT: Duration = Duration::from_secs(3);

/// One settled burst of an explicit flush, as handed to a progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushProgress<'a> {
    /// The signal type of the burst.
    pub signal: &'a str,
    /// Signals sent (and deleted) by this burst.
    pub burst: usize,
    /// Signals sent so far by this flush call, all types together.
    pub sent: usize,
    /// Signals the bus refused in this burst (kept: retried later, or parked).
    pub refused: usize,
    /// Of those, signals parked by this burst.
    pub parked: usize,
}

/// Which rows a draining loop takes next.
#[derive(Debug, Clone, Copy)]
enum Drain {
    /// Any sendable rows no other flusher holds (claimed with a lease).
    Many,
    /// The next rows in gap-safe order, waiting for held ones.
    Ordered,
}

impl<DB: Backend> SignalBus<DB> {
    /// Send the signals pending now: list the sendable ones, wait `wait` (so that
    /// auto-flushes already in flight can finish; [`DEFAULT_FLUSH_WAIT`] is a good value),
    /// then send those still there, in bursts of each type's `burst`. Returns how many were
    /// sent.
    ///
    /// Each burst is *claimed* first (a lease set by the database's clock, so that no other
    /// flusher takes it), then published with no transaction open, then settled: stored
    /// signals are deleted, refused ones are retried later with backoff or parked (see
    /// [`crate::RetryPolicy`]). Rows an auto-flush still holds after the wait are skipped,
    /// never sent twice. Signals written after the listing are left for the next flush. For
    /// huge backlogs use [`SignalBus::flushmany`].
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
        progress: Progress<'_>,
    ) -> Result<usize> {
        let shared = &self.shared;
        let types = shared.registry.select(selection)?;
        let mut listed = Vec::with_capacity(types.len());
        {
            let mut conn = shared.pool.acquire().await?;
            for idx in types {
                let ids = shared
                    .registry
                    .get(idx)
                    .sql
                    .pending_ids::<DB>(&mut conn)
                    .await?;
                if !ids.is_empty() {
                    listed.push((idx, ids));
                }
            }
        }
        if listed.is_empty() {
            return Ok(0);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut total = 0;
        for (idx, ids) in listed {
            let reg = shared.registry.get(idx);
            for chunk in ids.chunks(reg.ty.burst_size()) {
                let Some(settled) = claimed_burst(shared, idx, Some(chunk)).await? else {
                    continue;
                };
                total += settled.count();
                if report(progress, &reg.name, &settled, total).is_break() {
                    return Ok(total);
                }
            }
        }
        Ok(total)
    }

    /// Send every sendable signal, burst after burst, until none is left. Each burst is
    /// claimed with a lease so that no other flusher takes it, so many processes can drain
    /// the same backlog at once without sending a row twice; it is published with no
    /// transaction open, then settled (see [`SignalBus::flush`]). Refused signals come back
    /// after their backoff delay, to a later flush; parked ones wait for an operator.
    /// Returns how many this call sent.
    pub async fn flushmany(&self, selection: &Selection) -> Result<usize> {
        self.flushmany_with(selection, &mut |_| ControlFlow::Continue(()))
            .await
    }

    /// [`SignalBus::flushmany`] with a progress callback (see [`SignalBus::flush_with`]).
    pub async fn flushmany_with(
        &self,
        selection: &Selection,
        progress: Progress<'_>,
    ) -> Result<usize> {
        drain(&self.shared, selection, Drain::Many, progress).await
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
    /// shows the key). A burst takes at most one signal of each key, so no later signal of a
    /// key is ever published beside a refused one; signals without a key go many per burst,
    /// and those published in the same burst before a refusal was known may have gone out
    /// behind it.
    ///
    /// Several ordered flushers (tasks, processes, relays in ordered mode) may run at once:
    /// each burst is read and claimed in a short transaction that holds the table's ordered
    /// turn, skipping every key that has a signal in flight with another flusher, then
    /// published with no transaction open. So they split the keys and never send two signals
    /// of one key at the same time; a flusher that dies holding a burst delays its keys until
    /// the lease expires. When every remaining key is held by another flusher, this one waits
    /// for it (at most twice the publish timeout), then returns what it sent.
    ///
    /// The order holds when auto-flush is off for the type (auto-flush sends as soon as
    /// transactions commit, in no particular order) and only ordered flushes send it.
    /// Messages can still be sent more than once (at-least-once).
    pub async fn flushordered(&self, selection: &Selection) -> Result<usize> {
        self.flushordered_with(selection, &mut |_| ControlFlow::Continue(()))
            .await
    }

    /// [`SignalBus::flushordered`] with a progress callback (see [`SignalBus::flush_with`]).
    pub async fn flushordered_with(
        &self,
        selection: &Selection,
        progress: Progress<'_>,
    ) -> Result<usize> {
        drain(&self.shared, selection, Drain::Ordered, progress).await
    }
}

/// Claim rows of type `idx` (those among `ids`, or the next burst), publish and settle them;
/// `None` when there was nothing to claim. A failure of the bus as a whole gives the claimed
/// rows back at once, without spending an attempt.
pub(crate) async fn claimed_burst<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    ids: Option<&[i64]>,
) -> Result<Option<Settled>> {
    let reg = shared.registry.get(idx);
    let token = uuid::Uuid::new_v4().to_string();
    let lease = shared.config.lease();
    let rows = retry_db!({
        let mut conn = shared.pool.acquire().await?;
        reg.sql
            .claim::<DB>(&mut conn, ids, reg.ty.burst_size(), lease, &token)
            .await
    })?;
    if rows.is_empty() {
        return Ok(None);
    }
    let claimed: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut conn = shared.pool.acquire().await?;
    match publish_and_settle(shared, &mut conn, vec![(idx, rows)], false).await {
        Ok(settled) => Ok(Some(settled)),
        Err(e) => {
            give_back::<DB>(reg, &mut conn, &claimed).await;
            Err(e)
        }
    }
}

/// Give claimed rows back after a failure of the bus (best effort: if it fails too, their
/// lease expires and they come back then).
async fn give_back<DB: Backend>(reg: &Registered, conn: &mut DB::Connection, ids: &[i64]) {
    if let Err(e) = reg.sql.release::<DB>(conn, ids).await {
        tracing::warn!(signal = %reg.name, error = %e, "could not give claimed signals back; they come back when their lease expires");
    }
}

/// Take a burst, publish it, settle it; until the selected tables have nothing left to send.
async fn drain<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    mode: Drain,
    progress: Progress<'_>,
) -> Result<usize> {
    let mut total = 0;
    for idx in shared.registry.select(selection)? {
        let reg = shared.registry.get(idx);
        loop {
            let settled = match mode {
                Drain::Many => claimed_burst(shared, idx, None).await?,
                Drain::Ordered => ordered_burst(shared, idx, true).await?,
            };
            let Some(settled) = settled else {
                break;
            };
            total += settled.count();
            tracing::debug!(signal = %reg.name, burst = settled.count(), refused = settled.refused, total, ?mode, "flushed a burst");
            if report(progress, &reg.name, &settled, total).is_break() {
                return Ok(total);
            }
        }
    }
    Ok(total)
}

/// The next burst in order: read and claimed in a short flush transaction that holds the
/// table's ordered turn, then published with no transaction open, then settled.
///
/// Order is kept per ordering key: the read skips every key that has a held row (parked,
/// backing off, or in flight with another flusher), and a burst takes at most one signal of
/// each key, so that a refusal never has a later signal of its key published beside it. The
/// signals without a key are one sequence, taken many per burst (the order of the type as a
/// whole, as before keys existed). So several ordered flushers (tasks or processes) send
/// different keys at once, and never two signals of one key at the same time.
///
/// `None` when nothing can be sent now. With `wait`, when nothing can be sent because every
/// key is held by another flusher, wait for it (at most twice the publish timeout), so that
/// a flush that runs to the end sends what the other one leaves.
pub(crate) async fn ordered_burst<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    wait: bool,
) -> Result<Option<Settled>> {
    let reg = shared.registry.get(idx);
    let token = uuid::Uuid::new_v4().to_string();
    let lease = shared.config.lease();
    let burst = reg.ty.burst_size();
    // A burst of another ordered flusher in flight lasts at most one publish.
    let give_up = std::time::Instant::now() + shared.config.publish_timeout * 2;
    let rows = loop {
        let mut tx = begin_flush(&shared.pool).await?;
        let step = async {
            let rows = reg.sql.lock_ordered::<DB>(&mut tx, burst).await?;
            let picked = pick_per_key(&rows, burst);
            if picked.is_empty() {
                let others = wait && reg.sql.claimed_now::<DB>(&mut tx).await?;
                return Ok::<_, crate::error::Error>((!others, Vec::new()));
            }
            let claimed = reg
                .sql
                .claim_in_tx::<DB>(&mut tx, &picked, lease, &token)
                .await?;
            // Claimed in the order read; stop at a row that was not claimable after all.
            let mut by_id: std::collections::HashMap<i64, crate::storage::StoredRow> =
                claimed.into_iter().map(|r| (r.id, r)).collect();
            let burst: Vec<_> = picked.iter().map_while(|id| by_id.remove(id)).collect();
            Ok((true, burst))
        }
        .await;
        let (done, burst) = settle_tx(tx, step).await?;
        if done || std::time::Instant::now() >= give_up {
            break burst;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let claimed: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut conn = shared.pool.acquire().await?;
    match publish_and_settle(shared, &mut conn, vec![(idx, rows)], true).await {
        Ok(settled) => Ok(Some(settled)),
        Err(e) => {
            give_back::<DB>(reg, &mut conn, &claimed).await;
            Err(e)
        }
    }
}

/// From rows in order (of keys none of whose rows is held), the ones a burst sends: every
/// row without a key up to the first that cannot be sent now, and the first row of each key;
/// at most `limit`.
fn pick_per_key(rows: &[crate::storage::StoredRow], limit: usize) -> Vec<i64> {
    let mut taken_keys = std::collections::HashSet::new();
    let mut unkeyed_open = true;
    let mut picked = Vec::new();
    for row in rows {
        if picked.len() >= limit {
            break;
        }
        match &row.ordering_key {
            None => {
                unkeyed_open &= row.ready;
                if unkeyed_open {
                    picked.push(row.id);
                }
            }
            Some(key) => {
                // Later rows of a key wait for the next burst, the first one taken or not.
                if taken_keys.insert(key.as_str()) && row.ready {
                    picked.push(row.id);
                }
            }
        }
    }
    picked
}

fn report(progress: Progress<'_>, signal: &str, settled: &Settled, sent: usize) -> ControlFlow<()> {
    progress(&FlushProgress {
        signal,
        burst: settled.count(),
        sent,
        refused: settled.refused,
        parked: settled.parked,
    })
}
