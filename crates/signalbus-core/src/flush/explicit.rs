//! Explicit flushing: `flush`, `flushmany` and `flushordered`.

use super::{Progress, Settled, publish_and_settle, retry_db};
use crate::bus::{Shared, SignalBus};
use crate::error::Result;
use crate::registry::{Registered, Selection, TypeIdx};
use crate::storage::{Backend, CloseOnDrop};
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
    let mut hold = LaneHold::new();
    for idx in shared.registry.select(selection)? {
        let reg = shared.registry.get(idx);
        loop {
            let settled = match mode {
                Drain::Many => claimed_burst(shared, idx, None).await?,
                Drain::Ordered => ordered_burst(shared, idx, true, &mut hold).await?,
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

/// What an ordered flusher holds between bursts: a connection of its own whose session
/// holds the lane it sends (so that a flusher that dies, connection and all, frees its lane
/// at once), and the lane to look at next.
pub(crate) struct LaneHold<DB: Backend> {
    conn: Option<DB::Connection>,
    next: u32,
}

impl<DB: Backend> LaneHold<DB> {
    pub fn new() -> Self {
        LaneHold {
            conn: None,
            // Flushers start at different lanes, so that they meet less.
            next: rand::random::<u32>(),
        }
    }

    async fn conn(&mut self, shared: &Shared<DB>) -> Result<&mut DB::Connection> {
        if self.conn.is_none() {
            use sqlx::ConnectOptions as _;
            self.conn = Some(shared.pool.connect_options().connect().await?);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }
}

/// The next burst in order, from one lane: read and claimed in a short flush transaction
/// that holds the table's ordered turn, then published with no transaction open, then
/// settled.
///
/// Order is kept per ordering key. Keys are hashed into lanes (8 on PostgreSQL, one
/// elsewhere); an ordered flusher takes a free lane for the burst (a session lock), so
/// flushers split the keys and never send one key at the same time. The read skips every
/// key that has a row held back by a refusal (parked, backing off) and the pick every key
/// whose first row is in flight with a flusher that died; a key's signals in one burst are
/// published in rounds, the n-th of each key in the n-th publish call, and a key whose
/// signal is refused has nothing more published in that burst. The signals without a key
/// are one sequence, published together (the order of the type as a whole).
///
/// `None` when nothing can be sent now. With `wait`, when nothing can be sent because
/// another flusher holds lanes or rows, wait for it (at most twice the publish timeout), so
/// that a flush that runs to the end sends what the other one leaves.
pub(crate) async fn ordered_burst<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    wait: bool,
    hold: &mut LaneHold<DB>,
) -> Result<Option<Settled>> {
    let reg = shared.registry.get(idx);
    let lanes = reg.sql.lanes();
    // A burst of another ordered flusher in flight lasts at most one publish.
    let give_up = std::time::Instant::now() + shared.config.publish_timeout * 2;
    loop {
        let mut busy = false;
        for step in 0..lanes {
            let lane = hold.next.wrapping_add(step) % lanes;
            if lanes > 1 {
                let conn = hold.conn(shared).await?;
                match reg.sql.try_lane::<DB>(conn, lane).await {
                    Ok(true) => {}
                    Ok(false) => {
                        busy = true;
                        continue;
                    }
                    Err(e) => {
                        hold.conn = None; // closing it frees whatever it held
                        return Err(e);
                    }
                }
            }
            let result = lane_burst(shared, idx, lane).await;
            if lanes > 1
                && let Some(conn) = hold.conn.as_mut()
                && reg.sql.free_lane::<DB>(conn, lane).await.is_err()
            {
                hold.conn = None;
            }
            if let Some(settled) = result? {
                hold.next = (lane + 1) % lanes;
                return Ok(Some(settled));
            }
        }
        if !wait || std::time::Instant::now() >= give_up {
            return Ok(None);
        }
        let others = busy || {
            let mut conn = shared.pool.acquire().await?;
            reg.sql.claimed_now::<DB>(&mut conn).await?
        };
        if !others {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One ordered burst of `lane` (see [`ordered_burst`]); `None` when it has nothing to send.
async fn lane_burst<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    lane: u32,
) -> Result<Option<Settled>> {
    let reg = shared.registry.get(idx);
    let token = uuid::Uuid::new_v4().to_string();
    let lease = shared.config.lease();
    let burst = reg.ty.burst_size();
    let mut held = CloseOnDrop::acquire(&shared.pool).await?;
    held.begin().await?;
    let step = async {
        let tx = held.conn();
        let rows = reg.sql.lock_ordered::<DB>(tx, lane, burst).await?;
        // Holding the lane (PostgreSQL's session lock, MySQL's turn) and the rows' locks.
        fail_point!("signalbus::ordered-locks");
        let picked = pick_per_key(&rows, burst);
        if picked.is_empty() {
            return Ok::<_, crate::error::Error>(Vec::new());
        }
        let claimed = reg
            .sql
            .claim_in_tx::<DB>(tx, &picked, lease, &token)
            .await?;
        // Claimed in the order read; stop at a row that was not claimable after all.
        let mut by_id: std::collections::HashMap<i64, crate::storage::StoredRow> =
            claimed.into_iter().map(|r| (r.id, r)).collect();
        Ok(picked.iter().map_while(|id| by_id.remove(id)).collect())
    }
    .await;
    let rows = held.end(step).await?;
    drop(held);
    if rows.is_empty() {
        return Ok(None);
    }
    // Published round after round (each waits for the broker's answer to the one before),
    // settled once.
    let mut conn = shared.pool.acquire().await?;
    let (mut entries, mut fates) = (Vec::new(), Vec::new());
    let mut stopped: std::collections::HashSet<Option<String>> = std::collections::HashSet::new();
    let mut rounds = in_rounds(rows).into_iter();
    while let Some(round) = rounds.next() {
        // A key with a refusal in an earlier round has nothing more published now.
        let (go, back): (Vec<_>, Vec<_>) = round
            .into_iter()
            .partition(|r| !stopped.contains(&r.ordering_key));
        for row in back {
            entries.push(super::Entry {
                idx,
                id: row.id,
                attempts: row.attempts,
                born: None,
            });
            fates.push(super::Fate::Untouched);
        }
        if go.is_empty() {
            continue;
        }
        let keys: std::collections::HashMap<i64, Option<String>> =
            go.iter().map(|r| (r.id, r.ordering_key.clone())).collect();
        let outgoing = super::prepare(shared, vec![(idx, go)]);
        match super::publish(shared, outgoing, true).await {
            Ok((published, outcome)) => {
                for (entry, fate) in published.iter().zip(&outcome) {
                    if !matches!(fate, super::Fate::Stored) {
                        stopped.insert(keys.get(&entry.id).cloned().flatten());
                    }
                }
                entries.extend(published);
                fates.extend(outcome);
            }
            Err(e) => {
                // The earlier rounds went out: settle them; this one and the later ones
                // did not: give them back.
                let mut ids: Vec<i64> = keys.into_keys().collect();
                ids.extend(rounds.flatten().map(|r| r.id));
                if !entries.is_empty() {
                    super::settle(shared, &mut conn, &entries, &fates, true).await?;
                }
                give_back::<DB>(reg, &mut conn, &ids).await;
                return Err(e);
            }
        }
    }
    Ok(Some(
        super::settle(shared, &mut conn, &entries, &fates, true).await?,
    ))
}

/// Rows in order as publish rounds: the n-th row of each key in round n; the rows without a
/// key all in the first round, in their order.
fn in_rounds(rows: Vec<crate::storage::StoredRow>) -> Vec<Vec<crate::storage::StoredRow>> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<crate::storage::StoredRow>> = Vec::new();
    for row in rows {
        let round = match &row.ordering_key {
            None => 0,
            Some(key) => {
                let n = seen.entry(key.clone()).or_insert(0);
                *n += 1;
                *n - 1
            }
        };
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(row);
    }
    rounds
}

/// From rows in order (of keys with no row held back by a refusal), the ones a burst sends:
/// the rows of each key (and those without one) up to the first that cannot be sent now
/// (in flight with a flusher that died); at most `limit`.
fn pick_per_key(rows: &[crate::storage::StoredRow], limit: usize) -> Vec<i64> {
    let mut closed: std::collections::HashSet<Option<&str>> = std::collections::HashSet::new();
    let mut picked = Vec::new();
    for row in rows {
        if picked.len() >= limit {
            break;
        }
        let key = row.ordering_key.as_deref();
        if closed.contains(&key) {
            continue;
        }
        if row.ready {
            picked.push(row.id);
        } else {
            closed.insert(key);
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
