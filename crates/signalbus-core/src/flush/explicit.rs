//! Explicit flushing: `flush`, `flushmany` and `flushordered`.

use super::{LockedRows, Progress, publish_and_delete, settle};
use crate::bus::{Shared, SignalBus};
use crate::error::{Error, Result};
use crate::registry::Selection;
use crate::storage::{Backend, begin_flush};
use std::ops::ControlFlow;
use std::time::Duration;

/// How long [`SignalBus::flush`] waits by default for in-flight auto-flushes.
pub const DEFAULT_FLUSH_WAIT: Duration = Duration::from_secs(3);

/// One committed burst of an explicit flush, as handed to a progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushProgress<'a> {
    /// The signal type of the burst.
    pub signal: &'a str,
    /// Signals sent (and deleted) by this burst.
    pub burst: usize,
    /// Signals sent so far by this flush call, all types together.
    pub sent: usize,
}

/// Which rows a draining loop locks next.
#[derive(Debug, Clone, Copy)]
enum Drain {
    /// Any rows no other flusher holds (`SKIP LOCKED`).
    Many,
    /// The next rows in gap-safe order, waiting for held ones.
    Ordered,
}

impl<DB: Backend> SignalBus<DB> {
    /// Send the signals pending now: list them, wait `wait` (so that auto-flushes already in
    /// flight can finish; [`DEFAULT_FLUSH_WAIT`] is a good value), then send and delete those
    /// still present, in bursts of each type's `burst`. Returns how many were sent.
    ///
    /// Rows an auto-flush still holds after the wait are skipped, never sent twice. Signals
    /// written after the listing are left for the next flush. For huge backlogs use
    /// [`SignalBus::flushmany`].
    pub async fn flush(&self, selection: &Selection, wait: Duration) -> Result<usize> {
        self.flush_with(selection, wait, &mut |_| ControlFlow::Continue(()))
            .await
    }

    /// [`SignalBus::flush`], calling `progress` after every committed burst; returning
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
        let mut invalid = None;
        'types: for (idx, ids) in listed {
            let reg = shared.registry.get(idx);
            for chunk in ids.chunks(reg.ty.burst_size()) {
                let mut tx = begin_flush(&shared.pool).await?;
                let rows = reg.sql.lock_ids::<DB>(&mut tx, chunk).await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    continue;
                }
                let result = publish_and_delete(shared, &mut tx, vec![(idx, rows)], false).await;
                let sent = settle(tx, result).await?;
                let burst = sent.count();
                total += burst;
                invalid = invalid.or(sent.invalid);
                if report(progress, &reg.name, burst, total).is_break() {
                    break 'types;
                }
            }
        }
        finish(total, invalid)
    }

    /// Send every pending signal, burst after burst, until none is left. Each burst is locked
    /// so that no other flusher takes it (`FOR UPDATE SKIP LOCKED` on PostgreSQL, a per-table
    /// lock on MySQL/MariaDB, the single write lock on SQLite), so many processes can drain
    /// the same backlog at once without sending a row twice. Returns how many this call sent.
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

    /// Send every pending signal in order: the type's `order_by` (default: insertion order),
    /// burst after burst, until none is left. The order is gap-safe: a signal whose
    /// transaction commits late is not overtaken by one after it (exactly on PostgreSQL and
    /// SQLite; see [`crate::storage`] for what MySQL/MariaDB guarantee). On PostgreSQL, rows of
    /// transactions still running are left for the next call.
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

/// Lock a burst, publish it, delete it, commit; until the selected tables are empty.
async fn drain<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    mode: Drain,
    progress: Progress<'_>,
) -> Result<usize> {
    let mut total = 0;
    let mut invalid = None;
    for idx in shared.registry.select(selection)? {
        let reg = shared.registry.get(idx);
        loop {
            let mut tx = begin_flush(&shared.pool).await?;
            let burst = reg.ty.burst_size();
            let rows = match mode {
                Drain::Many => reg.sql.lock_burst::<DB>(&mut tx, burst).await?,
                Drain::Ordered => reg.sql.lock_ordered::<DB>(&mut tx, burst).await?,
            };
            if rows.is_empty() {
                tx.commit().await?;
                break;
            }
            let locked: Vec<LockedRows> = vec![(idx, rows)];
            let ordered = matches!(mode, Drain::Ordered);
            let result = publish_and_delete(shared, &mut tx, locked, ordered).await;
            let sent = settle(tx, result).await?;
            total += sent.count();
            tracing::debug!(signal = %reg.name, burst = sent.count(), total, ?mode, "flushed a burst");
            let stop = report(progress, &reg.name, sent.count(), total).is_break();
            if let Some(e) = sent.invalid {
                // The invalid row stays first in line; stop rather than spin on it (and, in
                // order, nothing after it may go out first).
                invalid = Some(e);
                break;
            }
            if stop {
                return Ok(total);
            }
        }
        if invalid.is_some() && matches!(mode, Drain::Ordered) {
            break;
        }
    }
    finish(total, invalid)
}

fn report(progress: Progress<'_>, signal: &str, burst: usize, sent: usize) -> ControlFlow<()> {
    progress(&FlushProgress {
        signal,
        burst,
        sent,
    })
}

fn finish(total: usize, invalid: Option<Error>) -> Result<usize> {
    match invalid {
        Some(e) => {
            tracing::warn!(sent = total, "flush stopped at an invalid row");
            Err(e)
        }
        None => Ok(total),
    }
}
