//! Ordered bursts (`flush_ordered`, the ordered relay): the keys of a signal type are hashed
//! into lanes; a flusher holds a lane while it sends a burst of it ([`LaneHold`]), so that no
//! two flushers send one key at the same time, and the ordered tasks of one relay skip and
//! wait for the lanes their siblings hold ([`Siblings`]).

use super::bursts::{give_back, missed_turn};
use super::context::Shared;
use super::settle::{Entry, Fate, Settled, prepare, publish, settle};
use super::turns::{ClaimSlot, EarlyTurn, Turn, Turns, patience};
use crate::error::Result;
use crate::registry::{Registered, TypeIdx};
use crate::storage::{Backend, CloseOnDrop, begin_on, end_on};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The lanes of one signal type that the ordered tasks of one relay hold now (PostgreSQL,
/// where a type has 8 lanes), one bit each. A task skips a lane that a sibling sends without
/// asking the database, and when it finds nothing to send while siblings hold lanes with rows
/// it waits until one of those is given back ([`Siblings::wait_for_any`]) instead of going
/// idle: an idle lane has the writers notify at every commit (see
/// [`super::wake::IdleGate`]), and each notification woke every task of the type to look at
/// the lanes again.
#[derive(Debug)]
pub(crate) struct Siblings {
    held: watch::Sender<u64>,
}

/// A lane's bit in a set of lanes ([`Siblings`], a round's lanes).
fn bit(lane: u32) -> u64 {
    1 << (lane % 64)
}

impl Siblings {
    pub fn new() -> Arc<Self> {
        Arc::new(Siblings {
            held: watch::channel(0).0,
        })
    }

    /// Hold `lane` for this task until the guard drops; `None` when a sibling holds it.
    fn hold(self: &Arc<Self>, lane: u32) -> Option<SiblingHold> {
        let taken = self.held.send_if_modified(|held| {
            let free = *held & bit(lane) == 0;
            *held |= bit(lane);
            free
        });
        taken.then(|| SiblingHold {
            siblings: self.clone(),
            lane,
        })
    }

    /// Wait until a sibling holds at least one of the lanes in `lanes` (bits) no more. Only
    /// those: a task's own lanes, taken and given back while it looked, must not wake it.
    pub async fn wait_for_any(&self, lanes: u64) {
        let mut held = self.held.subscribe();
        // (Cannot fail: `self` keeps the sender.)
        let _ = held.wait_for(|held| held & lanes != lanes).await;
    }
}

/// A lane held among siblings, given back when it drops: after the database's lane lock
/// where the burst ends (`free_lane`); when the burst's future is dropped half-way, possibly
/// before the connection that holds it closes (a sibling's `try_lane` then finds the lane
/// busy, as another relay's).
struct SiblingHold {
    siblings: Arc<Siblings>,
    lane: u32,
}

impl Drop for SiblingHold {
    fn drop(&mut self) {
        self.siblings
            .held
            .send_modify(|held| *held &= !bit(self.lane));
    }
}

/// What an ordered flusher holds between bursts: a connection of its own whose session
/// holds the lane it sends (so that a flusher that dies, connection and all, frees its lane
/// at once) and on which its bursts run, and the lanes to look at next.
///
/// The flusher goes round the lanes that had rows when it last looked (one probe of the
/// lane index for all of them), a burst from each, and looks again when the round is over;
/// lanes that were not in the round go first in the next. So a lane that gets rows waits for
/// at most one burst of each other lane, and a flusher opens a transaction only on lanes that
/// had rows when it looked.
pub(crate) struct LaneHold<DB: Backend> {
    conn: Option<DB::Connection>,
    next: u32,
    /// The lanes left to look at in this round, in order, and the type they are of (a
    /// flush of several types goes from one to the next with the same hold).
    round: std::collections::VecDeque<u32>,
    round_of: TypeIdx,
    /// The lanes of the round, bit by bit.
    in_round: u64,
    /// The flusher's claim slot, where bursts claim ranges.
    slot: ClaimSlot,
    /// The lanes its siblings hold (an ordered relay's tasks of one type).
    siblings: Option<Arc<Siblings>>,
    /// The lanes with rows that the last look skipped because siblings held them (bits).
    skipped: u64,
}

impl<DB: Backend> LaneHold<DB> {
    pub fn new() -> Self {
        Self::taking_turns(None)
    }

    /// A hold whose bursts take turns in `turns` (when given), see [`ClaimSlot`].
    pub fn taking_turns(turns: Option<Turns>) -> Self {
        LaneHold {
            conn: None,
            // Flushers start at different lanes, so that they meet less.
            next: rand::random::<u32>(),
            round: std::collections::VecDeque::new(),
            round_of: 0,
            in_round: 0,
            slot: ClaimSlot::taking_turns(turns),
            siblings: None,
            skipped: 0,
        }
    }

    /// A hold that skips the lanes `siblings` hold (see [`Siblings`]).
    pub fn with_siblings(mut self, siblings: Arc<Siblings>) -> Self {
        self.siblings = Some(siblings);
        self
    }

    /// After an [`ordered_burst`] that found nothing: the lanes with rows that siblings held
    /// (bits; 0: none), to wait for ([`Siblings::wait_for_any`]).
    pub fn skipped_for_siblings(&self) -> u64 {
        self.skipped
    }

    /// Start a round: the lanes that have rows now, from the next one on (lane 0 alone
    /// where there are no lanes).
    async fn probe(&mut self, shared: &Shared<DB>, reg: &Registered, lanes: u32) -> Result<()> {
        if lanes <= 1 {
            self.round.push_back(0);
            return Ok(());
        }
        let conn = self.conn(shared).await?;
        let mut with_rows = match reg.sql.lanes_with_rows::<DB>(conn).await {
            Ok(with_rows) => with_rows,
            Err(e) => {
                self.conn = None; // closing it frees whatever it held
                return Err(e);
            }
        };
        let next = self.next % lanes;
        let was_in_round = |lane: u32| self.in_round & bit(lane) != 0;
        with_rows.sort_unstable_by_key(|&lane| (was_in_round(lane), (lane + lanes - next) % lanes));
        self.in_round = with_rows.iter().fold(0, |bits, &lane| bits | bit(lane));
        self.round.extend(with_rows);
        Ok(())
    }

    async fn conn(&mut self, shared: &Shared<DB>) -> Result<&mut DB::Connection> {
        if self.conn.is_none() {
            // Taken from the pool once (its options and connect hooks) and kept outside it.
            let mut conn = shared.pool().acquire().await?.detach();
            if let Some(lanes) = &DB::DIALECT.lanes {
                let session = sqlx::SqlSafeStr::into_sql_str(lanes.session);
                DB::execute_script(&mut conn, &session).await?;
            }
            self.conn = Some(conn);
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
    let reg = shared.registry().get(idx);
    let lanes = reg.sql.lanes();
    // A burst of another ordered flusher in flight lasts at most one publish.
    let give_up = std::time::Instant::now() + shared.config().publish_timeout * 2;
    hold.skipped = 0;
    let Some(mut early) = hold.slot.before_claim().await else {
        return Ok(None); // the relay stops
    };
    if hold.round_of != idx {
        hold.round.clear();
        hold.round_of = idx;
        hold.in_round = 0;
    }
    loop {
        let mut busy = false;
        let probed = hold.round.is_empty();
        if probed {
            // What a sibling holds is told by this look (a round left from an earlier one
            // may have skipped lanes that the look finds empty or free).
            hold.skipped = 0;
            hold.probe(shared, reg, lanes).await?;
        }
        while let Some(lane) = hold.round.pop_front() {
            // Held until the database's lane lock is given back (below, or with the
            // connection on the way out).
            let _sibling = match &hold.siblings {
                Some(siblings) if lanes > 1 => match siblings.hold(lane) {
                    Some(held) => Some(held),
                    None => {
                        hold.skipped |= bit(lane);
                        continue;
                    }
                },
                _ => None,
            };
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
            let result =
                lane_burst(shared, idx, lane, &hold.slot, &mut early, &mut hold.conn).await;
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
        if !probed {
            continue; // a round from an earlier probe ran out: look at the lanes now
        }
        if !wait || std::time::Instant::now() >= give_up {
            return Ok(None);
        }
        let others = busy || hold.skipped != 0 || {
            let mut conn = shared.pool().acquire().await?;
            reg.sql.claimed_now::<DB>(&mut conn).await?
        };
        if !others {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One ordered burst of `lane` (see [`ordered_burst`]); `None` when it has nothing to send.
/// Where the flusher holds its lane on a connection of its own (`own`, PostgreSQL), the
/// burst runs there too: it never queues for a pooled connection behind the application's
/// queries. A burst stopped half-way drops that connection (closes it: its lanes are free
/// once the server notices, and a statement it was running ends at the latest at its
/// timeout), as it does after a failure of the database.
async fn lane_burst<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    lane: u32,
    slot: &ClaimSlot,
    early: &mut EarlyTurn,
    own: &mut Option<DB::Connection>,
) -> Result<Option<Settled>> {
    let reg = shared.registry().get(idx);
    // A range claim goes in the flusher's slot, freed once the burst is settled (a row of the
    // lane that commits late inside the range must not wait for the lease).
    let ranges = reg.sql.claims_ranges();
    let token = slot.token(ranges);
    let lease = shared.config().lease();
    let burst = reg.ty.burst_size();
    let step = async |tx: &mut DB::Connection| {
        let rows = reg.sql.lock_ordered::<DB>(tx, lane, burst).await?;
        // Holding the lane (PostgreSQL's session lock, MySQL's turn) and the rows' locks.
        fail_point!("signalbus::ordered-locks");
        let picked = pick_per_key(rows, burst);
        if picked.is_empty() {
            return Ok::<_, crate::error::Error>(Vec::new());
        }
        reg.sql
            .claim_in_tx::<DB>(tx, picked, lane, lease, &token)
            .await
    };
    let rows = match own.take() {
        Some(mut conn) => {
            // (A failed begin drops the connection with the error.)
            begin_on::<DB>(&mut conn, DB::DIALECT.begin_flush).await?;
            let rows = step(&mut conn).await;
            let (rows, clean) = end_on::<DB, _>(&mut conn, rows).await;
            if clean {
                *own = Some(conn);
            }
            rows?
        }
        None => {
            let mut held = CloseOnDrop::acquire(shared.pool()).await?;
            held.begin().await?;
            let rows = step(held.conn()).await;
            held.end(rows).await?
        }
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let patience = patience(lease, shared.config().publish_timeout);
    let turn = match slot.after_claim(early, patience).await {
        Turn::Go(permit) => permit,
        Turn::Missed { stopping } => {
            let claimed: Vec<i64> = rows.iter().map(|r| r.id).collect();
            missed_turn(
                shared,
                idx,
                Some(slot).filter(|_| ranges),
                &claimed,
                stopping,
            )
            .await;
            return Ok(Some(Settled::default()));
        }
    };
    let result = match own.take() {
        Some(mut conn) => {
            let result = publish_in_rounds(shared, &mut conn, idx, rows, !ranges).await;
            if !matches!(result, Err(crate::error::Error::Database(_))) {
                *own = Some(conn);
            }
            result
        }
        None => {
            let mut conn = shared.pool().acquire().await?;
            publish_in_rounds(shared, &mut conn, idx, rows, !ranges).await
        }
    };
    drop(turn);
    if ranges {
        // On the lane's connection, which still holds the lane: a pooled one could keep the
        // lane (and every other flusher waiting for it) until the pool has one to give.
        match own.take() {
            Some(mut conn) => {
                if slot.free_on(shared, idx, &mut conn).await.is_ok() {
                    *own = Some(conn);
                }
            }
            None => slot.free(shared, idx).await,
        }
    }
    result.map(Some)
}

/// Publish an ordered burst's rows round after round, then settle them on `conn`. On a
/// failure of the bus the rounds that went out are settled and the others given back
/// (`give_back`: row leases; a range is freed by the caller).
pub(crate) async fn publish_in_rounds<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    idx: TypeIdx,
    rows: Vec<crate::storage::StoredRow>,
    give_back_rows: bool,
) -> Result<Settled> {
    let reg = shared.registry().get(idx);
    // Published round after round (each waits for the broker's answer to the one before),
    // settled once.
    let (mut entries, mut fates) = (Vec::new(), Vec::new());
    let mut stopped: std::collections::HashSet<Option<String>> = std::collections::HashSet::new();
    let mut rounds = in_rounds(rows).into_iter();
    while let Some(round) = rounds.next() {
        // A key with a refusal in an earlier round has nothing more published now.
        let (go, back): (Vec<_>, Vec<_>) = round
            .into_iter()
            .partition(|r| !stopped.contains(&r.ordering_key));
        for row in back {
            entries.push(Entry {
                idx,
                id: row.id,
                attempts: row.attempts,
                born: None,
            });
            fates.push(Fate::Untouched);
        }
        if go.is_empty() {
            continue;
        }
        let keys: std::collections::HashMap<i64, Option<String>> =
            go.iter().map(|r| (r.id, r.ordering_key.clone())).collect();
        let outgoing = prepare(shared, vec![(idx, go)]);
        match publish(shared, outgoing, true).await {
            Ok((published, outcome)) => {
                for (entry, fate) in published.iter().zip(&outcome) {
                    if !matches!(fate, Fate::Stored) {
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
                    settle(shared, conn, &entries, &fates, true).await?;
                }
                if give_back_rows {
                    give_back::<DB>(reg, conn, &ids).await;
                }
                return Err(e);
            }
        }
    }
    settle(shared, conn, &entries, &fates, true).await
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
fn pick_per_key(
    rows: Vec<crate::storage::StoredRow>,
    limit: usize,
) -> Vec<crate::storage::StoredRow> {
    let mut closed: std::collections::HashSet<Option<String>> = std::collections::HashSet::new();
    let mut picked = Vec::new();
    for row in rows {
        if picked.len() >= limit {
            break;
        }
        if closed.contains(&row.ordering_key) {
            continue;
        }
        if row.ready {
            picked.push(row);
        } else {
            closed.insert(row.ordering_key);
        }
    }
    picked
}
