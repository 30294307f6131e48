//! Sending what the stream brought: bursts claimed as ranges in a slot of the type, each
//! key's rows in commit order in ordered mode.

use super::stream::{Row, Streamer};
use crate::engine::bursts::{ClaimSlot, give_back};
use crate::engine::context::Shared;
use crate::engine::ordered::publish_in_rounds;
use crate::engine::settle::{publish_and_settle, retry_db};
use crate::error::Result;
use crate::registry::TypeIdx;
use sqlx::{PgConnection, Postgres};
use std::collections::{HashMap, HashSet};

type DB = Postgres;

/// A row to send: its id and ordering key.
pub(super) type Keyed = (i64, Option<String>);

impl Streamer {
    /// Send the batch, type by type, in stream order.
    pub(super) async fn flush(&mut self, shared: &Shared<Postgres>) -> Result<()> {
        // Its rows are looked for in the tables, where a row not found counts as sent: first
        // every transaction that wrote them must be visible (see `until_visible`).
        if !self.batch.is_empty() {
            let mut conn = self.conn.checkout(shared).await?;
            super::held::until_visible(&mut conn, &self.batch_xids).await?;
            self.conn.checkin(conn);
        }
        let mut order: Vec<TypeIdx> = Vec::new();
        for row in &self.batch {
            if !order.contains(&row.idx) {
                order.push(row.idx);
            }
        }
        let batch = std::mem::take(&mut self.batch);
        let result = async {
            for idx in order {
                let rows = batch.iter().filter(|r| r.idx == idx);
                if self.is_ordered(idx) {
                    self.flush_ordered(shared, idx, rows).await?;
                } else {
                    let rows: Vec<Keyed> = rows.map(|r| (r.id, r.key.clone())).collect();
                    let burst = shared.registry().get(idx).ty.burst_size();
                    for chunk in rows.chunks(burst) {
                        // Rows another flusher holds are tried again (as held rows, which
                        // hold back nothing in an unordered type); gone ones are forgotten.
                        let waiting = self.burst(shared, idx, chunk.to_vec(), false).await?;
                        self.hold_all(idx, waiting);
                    }
                }
            }
            Ok(())
        }
        .await;
        self.batch = batch;
        result
    }

    /// An ordered type's rows: those of held keys join their keys' waiting rows; the others
    /// are sent in stream (commit) order, a burst at a time.
    async fn flush_ordered<'r>(
        &mut self,
        shared: &Shared<Postgres>,
        idx: TypeIdx,
        rows: impl Iterator<Item = &'r Row>,
    ) -> Result<()> {
        let burst = shared.registry().get(idx).ty.burst_size();
        let mut chunk: Vec<Keyed> = Vec::with_capacity(burst);
        for row in rows {
            if self.is_held(idx, &row.key) {
                self.hold(idx, row.key.clone(), row.id);
                continue;
            }
            chunk.push((row.id, row.key.clone()));
            if chunk.len() >= burst {
                let left = self
                    .burst(shared, idx, std::mem::take(&mut chunk), true)
                    .await?;
                self.hold_all(idx, left);
            }
        }
        if !chunk.is_empty() {
            let left = self.burst(shared, idx, chunk, true).await?;
            self.hold_all(idx, left);
        }
        Ok(())
    }

    fn hold_all(&mut self, idx: TypeIdx, rows: Vec<Keyed>) {
        for (id, key) in rows {
            self.hold(idx, key, id);
        }
    }

    /// Claim the chunk's rows (a range in the type's slot), publish and settle them; in
    /// order (`ordered`), each key's rows only up to its first that cannot go. Returns the
    /// rows that did not go and are still there, in order (unordered: those not claimed;
    /// refused ones are retried by the table lanes).
    pub(super) async fn burst(
        &mut self,
        shared: &Shared<Postgres>,
        idx: TypeIdx,
        chunk: Vec<Keyed>,
        ordered: bool,
    ) -> Result<Vec<Keyed>> {
        let token = self.token(idx);
        let mut conn = self.conn.checkout(shared).await?;
        let result = send_burst(shared, &mut conn, idx, chunk, ordered, &token).await;
        self.conn.checkin_after(conn, &result);
        result
    }

    /// The token of the type's claim slot: each claim moves its range to the new burst.
    fn token(&mut self, idx: TypeIdx) -> String {
        self.slots
            .entry(idx)
            .or_insert_with(ClaimSlot::new)
            .token(true)
    }

    /// Free the claim slots (at the end): the rows of the last ranges are free for the
    /// others at once, not when the lease ends.
    pub(super) async fn free_ranges(&self, shared: &Shared<Postgres>) {
        for (&idx, slot) in &self.slots {
            slot.free(shared, idx).await;
        }
    }
}

/// [`Streamer::burst`] on `conn`, in the slot of `token`.
async fn send_burst(
    shared: &Shared<Postgres>,
    conn: &mut PgConnection,
    idx: TypeIdx,
    chunk: Vec<Keyed>,
    ordered: bool,
    token: &str,
) -> Result<Vec<Keyed>> {
    let reg = shared.registry().get(idx);
    let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
    let lease = shared.config().lease();
    let claimed = retry_db!(reg.sql.claim_listed::<DB>(conn, &ids, lease, token).await)?;
    // Of the rows not claimed, those still there wait (in a range of another flusher, or
    // leased by an auto-flush): they are tried again, and in order they hold their key.
    // The others are gone (sent already: a stream read again after a restart).
    let missing: Vec<i64> = {
        let claimed: HashSet<i64> = claimed.iter().map(|r| r.id).collect();
        ids.iter()
            .copied()
            .filter(|id| !claimed.contains(id))
            .collect()
    };
    let still: HashSet<i64> = if missing.is_empty() {
        HashSet::new()
    } else {
        super::held::existing(conn, &reg.table.quoted('"'), &missing).await?
    };
    if !ordered {
        let waiting: Vec<Keyed> = chunk
            .into_iter()
            .filter(|(id, _)| still.contains(id))
            .collect();
        if claimed.is_empty() {
            return Ok(waiting);
        }
        let sending: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        let settled = publish_and_settle(shared, conn, vec![(idx, claimed)], false).await;
        if settled.is_err() && !reg.sql.claims_ranges() {
            give_back::<DB>(reg, conn, &sending).await;
        }
        return settled.map(|_| waiting);
    }
    let mut claimed: HashMap<i64, _> = claimed.into_iter().map(|r| (r.id, r)).collect();
    let mut blocked: HashSet<Option<String>> = HashSet::new();
    let (mut send, mut keys, mut left) = (Vec::new(), Vec::new(), Vec::new());
    let mut blocked_rows = Vec::new();
    for (id, key) in chunk {
        let row = claimed.remove(&id);
        if blocked.contains(&key) || (row.is_none() && still.contains(&id)) {
            if row.is_some() {
                blocked_rows.push(id);
            }
            blocked.insert(key.clone());
            left.push((id, key));
        } else if let Some(row) = row {
            send.push(row);
            keys.push((id, key));
        }
    }
    // Row leases go back; a range's rows are free for the others once it is freed.
    if !blocked_rows.is_empty() && !reg.sql.claims_ranges() {
        retry_db!(reg.sql.release::<DB>(conn, &blocked_rows).await)?;
    }
    if send.is_empty() {
        return Ok(left);
    }
    // As an ordered burst of the tables: the n-th signal of each key in the n-th publish
    // call, nothing more of a key after a refusal. On a failure of the bus, row leases go
    // back (a range stays this relay's: it sends the same rows again).
    let settled = publish_in_rounds(shared, conn, idx, send, !reg.sql.claims_ranges()).await?;
    let sent: HashSet<i64> = settled
        .sent
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    // Refused (backing off, parked) or left untouched behind a refusal: the key waits.
    left.extend(keys.into_iter().filter(|(id, _)| !sent.contains(id)));
    let at: HashMap<i64, usize> = ids.iter().enumerate().map(|(n, id)| (*id, n)).collect();
    left.sort_by_key(|(id, _)| at.get(id).copied());
    Ok(left)
}
