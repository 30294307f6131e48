//! The burst engine of explicit flushes and the relay: claimed bursts (`flush`,
//! `flush_many`, the relay) and the draining loop around them and around ordered bursts
//! ([`super::ordered`]).

use super::context::Shared;
use super::ordered::{LaneHold, ordered_burst};
use super::own_conn::Conns;
use super::settle::{Settled, publish_and_settle, retry_db};
pub(crate) use super::turns::ClaimSlot;
use super::turns::{EarlyTurn, Turn, patience};
use crate::delivery::{FlushProgress, OnProgress};
use crate::error::Result;
use crate::registry::{Registered, Selection, TypeIdx};
use crate::storage::{Backend, ClaimOf};
use std::ops::ControlFlow;
use std::time::Duration;

/// Which rows a draining loop takes next.
#[derive(Debug, Clone, Copy)]
enum Drain {
    /// Any sendable rows no other flusher holds (claimed with a lease).
    Many,
    /// The next rows in gap-safe order, waiting for held ones.
    Ordered,
}

/// The explicit `flush`: list the sendable rows of the selected types, wait `wait` for the
/// auto-flushes in flight, then claim and send those still there, burst by burst.
pub(crate) async fn flush_listed<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    wait: Duration,
    progress: OnProgress<'_>,
) -> Result<usize> {
    let types = shared.registry().select(selection)?;
    let mut listed = Vec::with_capacity(types.len());
    {
        let mut conn = shared.pool().acquire().await?;
        for idx in types {
            let ids = shared
                .registry()
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
        let reg = shared.registry().get(idx);
        for chunk in ids.chunks(reg.ty.burst_size()) {
            let Some(settled) =
                claimed_burst(shared, idx, Pick::Listed(chunk), &mut Conns::Pool).await?
            else {
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

/// `flush_many` (`ordered` false) or `flush_ordered`: drain the selected types.
pub(crate) async fn drain_selected<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    ordered: bool,
    progress: OnProgress<'_>,
) -> Result<usize> {
    let mode = if ordered { Drain::Ordered } else { Drain::Many };
    drain(shared, selection, mode, progress).await
}

/// Which rows a claimed burst takes.
#[derive(Clone, Copy)]
pub(crate) enum Pick<'a> {
    /// The sendable rows among these ids.
    Listed(&'a [i64]),
    /// The next burst of sendable rows, lowest ids first, claimed through this slot where
    /// the database claims ranges.
    Next(&'a ClaimSlot),
    /// As `Next`, of the rows with ids up to this one (see [`ClaimOf::UpTo`]).
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    UpTo(&'a ClaimSlot, i64),
}

impl<'a> Pick<'a> {
    /// The slot of a burst of the next rows.
    fn slot(self) -> Option<&'a ClaimSlot> {
        match self {
            Pick::Listed(_) => None,
            Pick::Next(slot) | Pick::UpTo(slot, _) => Some(slot),
        }
    }
}

/// Claim rows of type `idx` (see [`Pick`]), publish and settle them, on connections from
/// `conns`; `None` when there was nothing to claim. A failure of the bus as a whole gives the
/// claimed rows back at once, without spending an attempt.
pub(crate) async fn claimed_burst<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    pick: Pick<'_>,
    conns: &mut Conns<'_, DB>,
) -> Result<Option<Settled>> {
    let reg = shared.registry().get(idx);
    let which = match pick {
        Pick::Listed(ids) => ClaimOf::Ids(ids),
        Pick::Next(_) => ClaimOf::Next,
        Pick::UpTo(_, id) => ClaimOf::UpTo(id),
    };
    let slot = pick.slot().filter(|_| reg.sql.claims_ranges());
    let token = match slot {
        Some(slot) => slot.token(true),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let lease = shared.config().lease();
    let mut early = match pick.slot() {
        Some(slot) => match slot.before_claim().await {
            Some(early) => early,
            None => return Ok(None), // the relay stops
        },
        None => EarlyTurn::none(),
    };
    let token = token.as_str();
    let claim = async |conns: &mut Conns<'_, DB>| {
        let mut conn = conns.take(shared).await?;
        let rows = reg
            .sql
            .claim::<DB>(&mut conn, which, reg.ty.burst_size(), lease, token)
            .await;
        conns.give(conn, &rows);
        rows
    };
    // With a turn taken early, one attempt: on a failure the turn goes (a lane that cannot
    // reach its database holds none) and the step is retried as usual.
    let first = if early.holds() {
        Some(claim(conns).await)
    } else {
        None
    };
    let rows = match first {
        Some(Ok(rows)) => rows,
        Some(Err(_)) | None => {
            early = EarlyTurn::none();
            retry_db!(claim(conns).await)?
        }
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let claimed: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let _turn = match pick.slot() {
        Some(turns) => match turns
            .after_claim(&mut early, patience(lease, shared.config().publish_timeout))
            .await
        {
            Turn::Go(permit) => permit,
            Turn::Missed { stopping } => {
                missed_turn(shared, idx, slot, &claimed, stopping).await;
                return Ok(Some(Settled::default()));
            }
        },
        None => None,
    };
    let published = async {
        let mut conn = conns.take(shared).await?;
        let result = publish_and_settle(shared, &mut conn, vec![(idx, rows)], false).await;
        if result.is_err() && slot.is_none() {
            give_back::<DB>(reg, &mut conn, &claimed).await;
        }
        conns.give(conn, &result);
        result
    }
    .await;
    // A range is given back whatever failed (on a connection of its own: the one above may
    // be broken).
    if published.is_err()
        && let Some(slot) = slot
    {
        slot.free(shared, idx).await;
    }
    published.map(Some)
}

/// A claimed burst that missed its turn (waited past its patience, or its relay stops) gives
/// its rows back unsent: its range (`slot`) or its rows' leases.
pub(super) async fn missed_turn<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    slot: Option<&ClaimSlot>,
    claimed: &[i64],
    stopping: bool,
) {
    let reg = shared.registry().get(idx);
    if !stopping {
        metrics::counter!("signalbus_turns_missed_total", "bus" => shared.name().to_owned(), "signal" => reg.name.to_string())
            .increment(1);
    }
    tracing::debug!(bus = %shared.name(), signal = %reg.name, rows = claimed.len(), "no turn to publish in time; the claimed rows go back");
    match slot {
        Some(slot) => slot.free(shared, idx).await,
        None => match shared.pool().acquire().await {
            Ok(mut conn) => give_back::<DB>(reg, &mut conn, claimed).await,
            Err(e) => {
                tracing::warn!(signal = %reg.name, error = %e, "could not give claimed signals back; they come back when their lease expires")
            }
        },
    }
}

/// Give claimed rows back after a failure of the bus (best effort: if it fails too, their
/// lease expires and they come back then).
pub(crate) async fn give_back<DB: Backend>(
    reg: &Registered,
    conn: &mut DB::Connection,
    ids: &[i64],
) {
    if let Err(e) = reg.sql.release::<DB>(conn, ids).await {
        tracing::warn!(signal = %reg.name, error = %e, "could not give claimed signals back; they come back when their lease expires");
    }
}

/// Take a burst, publish it, settle it; until the selected tables have nothing left to send.
async fn drain<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    mode: Drain,
    progress: OnProgress<'_>,
) -> Result<usize> {
    let mut total = 0;
    let mut hold = LaneHold::new();
    for idx in shared.registry().select(selection)? {
        let slot = ClaimSlot::new();
        let drained = drain_type(shared, idx, mode, &slot, &mut hold, progress, &mut total).await;
        if !matches!(drained, Ok(ControlFlow::Continue(()))) {
            // Stopped early: the last burst's range goes now, not when its lease ends.
            slot.free(shared, idx).await;
        }
        if drained?.is_break() {
            return Ok(total);
        }
    }
    Ok(total)
}

/// [`drain`] of one type; `Break` when the progress callback says stop.
async fn drain_type<DB: Backend>(
    shared: &Shared<DB>,
    idx: TypeIdx,
    mode: Drain,
    slot: &ClaimSlot,
    hold: &mut LaneHold<DB>,
    progress: OnProgress<'_>,
    total: &mut usize,
) -> Result<ControlFlow<()>> {
    let reg = shared.registry().get(idx);
    // Whether the last claim of this type took rows.
    let mut took = false;
    loop {
        let settled = match mode {
            Drain::Many => claimed_burst(shared, idx, Pick::Next(slot), &mut Conns::Pool).await?,
            Drain::Ordered => ordered_burst(shared, idx, true, hold).await?,
        };
        let Some(settled) = settled else {
            // A range claim that finds nothing frees the slot; rows that committed late
            // inside the last burst's range were hidden by it until then: one more look.
            if matches!(mode, Drain::Many) && reg.sql.claims_ranges() && took {
                took = false;
                continue;
            }
            return Ok(ControlFlow::Continue(()));
        };
        took = true;
        *total += settled.count();
        tracing::debug!(signal = %reg.name, burst = settled.count(), refused = settled.refused, total = *total, ?mode, "flushed a burst");
        if report(progress, &reg.name, &settled, *total).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
}

fn report(
    progress: OnProgress<'_>,
    signal: &str,
    settled: &Settled,
    sent: usize,
) -> ControlFlow<()> {
    progress(&FlushProgress {
        signal,
        burst: settled.count(),
        sent,
        refused: settled.refused,
        parked: settled.parked,
    })
}
