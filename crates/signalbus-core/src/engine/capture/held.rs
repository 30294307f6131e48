//! Held rows. In an ordered type, a key whose signal could not go out at once (refused, held
//! by another flusher, or pending when the stream started) waits, with its later signals, in
//! the table; the capturing task sends those rows itself, in the order it learnt of them, and
//! releases the key when none is left. In an unordered type, rows the stream brought that
//! another flusher held are tried again the same way, holding nothing back.

use super::send::Keyed;
use super::stream::Streamer;
use crate::engine::bursts::drain_selected;
use crate::engine::context::Shared;
use crate::error::Result;
use crate::registry::{Selection, TypeIdx};
use sqlx::Postgres;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

/// Rows of held keys remembered at most, per type: beyond it, capture gives way to table
/// mode (memory stays bounded; the rows are in the table).
pub(super) const MOST_HELD: usize = 100_000;

/// The held keys of one type: each key's waiting rows, in the order they were learnt of.
#[derive(Debug, Default)]
pub(super) struct Held {
    keys: HashMap<Option<String>, Vec<i64>>,
    ids: HashSet<i64>,
}

/// Why capture gives way when too much waits.
pub(super) fn too_many(signal: &str) -> String {
    format!(
        "more than {MOST_HELD} signals of `{signal}` wait behind refused or held keys (a broker \
         refusing them?); the relay goes on from the tables, in table order (restart it to \
         capture again)"
    )
}

impl Streamer {
    pub(super) fn is_held(&self, idx: TypeIdx, key: &Option<String>) -> bool {
        self.held
            .get(&idx)
            .is_some_and(|held| held.keys.contains_key(key))
    }

    pub(super) fn hold(&mut self, idx: TypeIdx, key: Option<String>, id: i64) {
        let held = self.held.entry(idx).or_default();
        if held.ids.insert(id) {
            held.keys.entry(key).or_default().push(id);
            self.newly_held = true;
            if held.ids.len() > MOST_HELD {
                self.overflow = Some(idx);
            }
        }
    }

    pub(super) fn holds_any(&self) -> bool {
        self.held.values().any(|held| !held.keys.is_empty())
    }

    /// When streaming starts: every row of an ordered type already in its table holds its
    /// key (it predates the stream's position, or the stream brings it again and finds it
    /// held), in id order: the order of the inserts, which is the commit order when a key's
    /// writers take a lock before they write its signal (transaction ids are not: one is given
    /// before the lock is waited for). Overlapping writers of a key without such a lock may go
    /// out in another order than they committed. Beyond [`MOST_HELD`] rows, the oldest
    /// are first drained from the table in table order; `Some(why)` when more than that are
    /// left (capture gives way to table mode).
    pub(super) async fn seed(
        &mut self,
        shared: &Shared<Postgres>,
        types: &[TypeIdx],
    ) -> Result<Option<String>> {
        self.held.clear();
        let ordered: Vec<TypeIdx> = types
            .iter()
            .copied()
            .filter(|&i| self.is_ordered(i))
            .collect();
        for idx in ordered {
            let reg = shared.registry().get(idx);
            let table = reg.table.quoted('"');
            let count: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(shared.pool())
                    .await?;
            let over = usize::try_from(count)
                .unwrap_or(0)
                .saturating_sub(MOST_HELD);
            if over > 0 {
                let mut enough = |p: &crate::delivery::FlushProgress<'_>| {
                    if p.sent >= over {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                };
                let only = Selection::only([reg.name.to_string()]);
                drain_selected(shared, &only, true, &mut enough).await?;
            }
            // One more than the bound: whether more are left than can be remembered.
            let rows: Vec<Keyed> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, ordering_key FROM {table} ORDER BY id LIMIT {}",
                MOST_HELD + 1
            )))
            .fetch_all(shared.pool())
            .await?;
            for (id, key) in rows {
                self.hold(idx, key, id);
            }
            if self.overflow.take().is_some() {
                return Ok(Some(too_many(&reg.name)));
            }
        }
        Ok(None)
    }

    /// Send the held keys' rows that can go, each key's in order up to its first that
    /// cannot; forget rows that are gone; release keys with none left. Whether anything
    /// moved (then it is worth running again at once).
    pub(super) async fn drain_held(&mut self, shared: &Shared<Postgres>) -> Result<bool> {
        let mut moved = false;
        let types: Vec<TypeIdx> = self.held.keys().copied().collect();
        for idx in types {
            let reg = shared.registry().get(idx);
            let table = reg.table.quoted('"');
            let ordered = self.is_ordered(idx);
            let Some(held) = self.held.get(&idx) else {
                continue;
            };
            let mut gone = Vec::new();
            // Each key's first rows only: a key waiting on a parked row costs one id, not all
            // of its rows.
            let burst = reg.ty.burst_size();
            let ids: Vec<i64> = held
                .keys
                .values()
                .flat_map(|ids| ids.iter().take(burst))
                .copied()
                .collect();
            let mut conn = self.conn.checkout(shared).await?;
            let ready = ready_states(&mut conn, &table, &ids).await?;
            self.conn.checkin(conn);
            let Some(held) = self.held.get_mut(&idx) else {
                continue;
            };
            // Each key's rows up to its first that waits (backing off, parked, leased).
            let mut sendable: Vec<Keyed> = Vec::new();
            held.keys.retain(|key, ids| {
                // Of the rows looked at, those gone are forgotten.
                let looked = ids.len().min(burst);
                let before = ids.len();
                let mut at = 0;
                ids.retain(|id| {
                    at += 1;
                    let keep = at > looked || ready.contains_key(id);
                    if !keep {
                        gone.push(*id);
                    }
                    keep
                });
                moved |= ids.len() < before;
                for id in ids.iter().take(looked) {
                    if ready.get(id) != Some(&true) {
                        if ordered {
                            break;
                        }
                        continue;
                    }
                    sendable.push((*id, key.clone()));
                }
                !ids.is_empty()
            });
            for id in gone {
                held.ids.remove(&id);
            }
            let mut blocked: HashSet<Option<String>> = HashSet::new();
            let mut rest = sendable.into_iter().peekable();
            while rest.peek().is_some() {
                let chunk: Vec<Keyed> = rest
                    .by_ref()
                    .filter(|(_, key)| !blocked.contains(key))
                    .take(burst)
                    .collect();
                if chunk.is_empty() {
                    break;
                }
                let tried = chunk.len();
                let left = self.burst(shared, idx, chunk, ordered).await?;
                moved |= left.len() < tried;
                if ordered {
                    blocked.extend(left.into_iter().map(|(_, key)| key));
                }
            }
        }
        Ok(moved)
    }
}

/// Which of `ids` are still rows of `table`, and whether each can be sent now.
async fn ready_states(
    conn: &mut sqlx::PgConnection,
    table: &str,
    ids: &[i64],
) -> Result<HashMap<i64, bool>> {
    let sql = format!(
        "SELECT id, parked_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= now()) \
         FROM {table} WHERE id = ANY($1)"
    );
    let rows: Vec<(i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Which of `ids` are still rows of `table`.
pub(super) async fn existing(
    conn: &mut sqlx::PgConnection,
    table: &str,
    ids: &[i64],
) -> Result<HashSet<i64>> {
    let sql = format!("SELECT id FROM {table} WHERE id = ANY($1)");
    let rows: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Wait until the transactions `xids` (32-bit, as the stream's Begin messages give them) are
/// visible to a new snapshot. PostgreSQL writes a commit to the WAL, where the stream reads
/// it, before the committing session leaves the list of running transactions: for that
/// moment its rows cannot be seen, and a row that cannot be seen must not be taken for one
/// sent already. Fails when they stay invisible (a commit waiting for a synchronous standby):
/// the batch is then sent again after a pause.
pub(super) async fn until_visible(conn: &mut sqlx::PgConnection, xids: &[u32]) -> Result<()> {
    visible_within(conn, xids, VISIBLE_WITHIN).await
}

async fn visible_within(
    conn: &mut sqlx::PgConnection,
    xids: &[u32],
    within: std::time::Duration,
) -> Result<()> {
    if xids.is_empty() {
        return Ok(());
    }
    let xids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
    let sql = format!(
        "WITH s AS (SELECT pg_current_snapshot() AS snap, \
           pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS next) \
         SELECT COUNT(*) FROM s, unnest($1::int8[]) AS x(xid) \
         WHERE NOT pg_visible_in_snapshot(({})::text::xid8, s.snap)",
        FULL_XID
            .replace("{next}", "s.next")
            .replace("{xid}", "x.xid")
    );
    let mut pause = std::time::Duration::from_millis(1);
    let give_up = std::time::Instant::now() + within;
    loop {
        let invisible: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&xids)
            .fetch_one(&mut *conn)
            .await?;
        if invisible == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= give_up {
            return Err(crate::error::Error::Database(sqlx::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{invisible} transaction(s) the WAL stream brought are still not visible \
                     after {within:?} (a commit waiting for a synchronous standby?)"
                    ),
                ),
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// The full (64-bit) id of the 32-bit transaction id `{xid}`, near `{next}` (the snapshot's
/// xmax: one past the newest finished transaction, so a running one may be above it): the
/// id within 2^31 of it whose low 32 bits are `{xid}`.
const FULL_XID: &str = "GREATEST({next} + ((({xid} - ({next} & 4294967295) + 2147483648) \
    & 4294967295) - 2147483648), 0)";

/// How long a committed transaction may stay invisible before the batch is sent again.
const VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;

    /// The shared PostgreSQL the tests use (`SIGNALBUS_TEST_POSTGRES_URL`, else loopback).
    async fn connect() -> sqlx::PgConnection {
        let url = std::env::var("SIGNALBUS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        sqlx::PgConnection::connect(&url)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (see DEVELOPERS.md)")
    }

    #[tokio::test]
    async fn a_transaction_still_running_is_waited_for_until_it_is_visible() {
        let (mut writer, mut reader) = (connect().await, connect().await);
        let mut tx = writer.begin().await.unwrap();
        let full: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let xid = u32::try_from(full & 0xffff_ffff).unwrap();
        let short = std::time::Duration::from_millis(100);
        assert!(visible_within(&mut reader, &[xid], short).await.is_err());
        tx.commit().await.unwrap();
        visible_within(&mut reader, &[xid], short).await.unwrap();
        // Long finished ones, and none at all, are visible at once.
        visible_within(&mut reader, &[3, xid], short).await.unwrap();
        visible_within(&mut reader, &[], short).await.unwrap();
    }

    /// 64-bit ids from 32 bits in any epoch: above the snapshot's xmax (a transaction still
    /// running), below it, and across the wrap of the low 32 bits.
    #[tokio::test]
    async fn full_ids_are_found_in_the_right_epoch() {
        let mut conn = connect().await;
        let epoch = |e: i64| e << 32;
        for (next, xid, full) in [
            (epoch(5) + 100, 150_i64, epoch(5) + 150),
            (epoch(5) + 100, 40, epoch(5) + 40),
            (epoch(5) + 100, 4_294_967_290, epoch(4) + 4_294_967_290),
            (epoch(5) + 4_294_967_290, 3, epoch(6) + 3),
            (epoch(0) + 100, 150, 150),
            (epoch(0) + 100, 7, 7),
        ] {
            let sql = format!(
                "SELECT {}",
                FULL_XID
                    .replace("{next}", &format!("{next}::int8"))
                    .replace("{xid}", &format!("{xid}::int8"))
            );
            let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(got, full, "next {next}, xid {xid}");
        }
    }
}
