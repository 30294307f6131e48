//! Explicit flushing: `flush` and `flushmany`.

use super::{LockedRows, publish_and_delete};
use crate::bus::SignalBus;
use crate::error::{Error, Result};
use crate::registry::Selection;
use crate::storage::Backend;
use std::time::Duration;

/// How long [`SignalBus::flush`] waits by default for in-flight auto-flushes.
pub const DEFAULT_FLUSH_WAIT: Duration = Duration::from_secs(3);

impl<DB: Backend> SignalBus<DB> {
    /// Send the signals pending now: list them, wait `wait` (so that auto-flushes already in
    /// flight can finish; [`DEFAULT_FLUSH_WAIT`] is a good value), then send and delete those
    /// still present, in bursts of each type's `burst`. Returns how many were sent.
    ///
    /// Signals written after the listing are left for the next flush. For huge backlogs use
    /// [`SignalBus::flushmany`].
    pub async fn flush(&self, selection: &Selection, wait: Duration) -> Result<usize> {
        let shared = &self.shared;
        let types = shared.registry.select(selection)?;
        let mut listed = Vec::with_capacity(types.len());
        {
            let mut conn = shared.pool.acquire().await?;
            for idx in types {
                let ids = DB::pending_ids(&mut conn, &shared.registry.get(idx).table).await?;
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
        for (idx, ids) in listed {
            let reg = shared.registry.get(idx);
            for chunk in ids.chunks(reg.ty.burst_size()) {
                let mut tx = DB::begin_flush(&shared.pool).await?;
                let rows = DB::lock_ids(&mut tx, &reg.table, chunk).await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    continue;
                }
                let sent = publish_and_delete(shared, &mut tx, vec![(idx, rows)]).await?;
                tx.commit().await?;
                total += sent.count();
                invalid = invalid.or(sent.invalid);
            }
        }
        finish(total, invalid)
    }

    /// Send every pending signal, burst after burst, until none is left. Each burst is locked
    /// with `FOR UPDATE SKIP LOCKED`, so many processes can drain the same backlog at once
    /// without sending a row twice. Returns how many this call sent.
    pub async fn flushmany(&self, selection: &Selection) -> Result<usize> {
        let shared = &self.shared;
        let mut total = 0;
        let mut invalid = None;
        for idx in shared.registry.select(selection)? {
            let reg = shared.registry.get(idx);
            loop {
                let mut tx = DB::begin_flush(&shared.pool).await?;
                let rows = DB::lock_burst(&mut tx, &reg.table, reg.ty.burst_size()).await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    break;
                }
                let locked: Vec<LockedRows> = vec![(idx, rows)];
                let sent = publish_and_delete(shared, &mut tx, locked).await?;
                tx.commit().await?;
                total += sent.count();
                if let Some(e) = sent.invalid {
                    // The invalid row stays first in line; stop rather than spin on it.
                    invalid = Some(e);
                    break;
                }
            }
        }
        finish(total, invalid)
    }
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
