//! The operations of the flushing engine and of operators on one signal table, generic over
//! the database: every statement comes from [`Statements`], bound from [`Values`].

use super::backend::{Backend, NewRow, Param, StoredRow};
use super::dialect;
use super::statements::{Arg, IdleGate, Ordered, OrderedRead, Statements, Stmt};
use crate::contract::{Holdback, ParkedRows, ParkedSignal, PendingStats};
use crate::error::{Error, Result};
use sqlx::Connection as _;
use std::time::Duration;

/// Which rows a claim takes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClaimOf<'a> {
    /// The sendable rows among these ids.
    Ids(&'a [i64]),
    /// The next sendable rows, lowest ids first.
    Next,
    /// As `Next`, of the rows with ids up to this one: WAL capture's table scan, which
    /// leaves newer rows to the stream (a scan that took them would keep the stream waiting
    /// for its burst). Where bursts claim rows, as `Next`.
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    UpTo(i64),
}

/// The columns of the table contract's first version: every signal table has them (later
/// versions added columns that `migrate` adds), so a table without them is not one.
const FIRST_CONTRACT: &[&str] = &[
    "id",
    "message_id",
    "topic",
    "routing_key",
    "headers",
    "body",
    "content_type",
    "created_at",
];

/// Ids as a JSON array, bound as one parameter (`JSON_TABLE` on MySQL, `json_each` on
/// SQLite): one statement text whatever the number of ids.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn json_ids(ids: &[i64]) -> String {
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

/// Texts as a JSON array, bound as one parameter (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn json_texts(texts: &[String]) -> String {
    serde_json::to_string(texts).expect("a list of strings is JSON")
}

/// The values a statement's parameters ([`Arg`]) are bound from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Values<'a> {
    pub ids: &'a [i64],
    pub lease_ms: i64,
    pub token: &'a str,
    pub limit: usize,
    pub delay_ms: i64,
    pub max_attempts: u32,
    pub error: &'a str,
    pub name: &'a str,
    pub lane: u32,
    pub keys: &'a [String],
    pub null_held: bool,
    pub refusals: u32,
    pub up_to: i64,
}

impl<'a> Values<'a> {
    /// The parameters of `stmt`, in its order.
    pub(crate) fn bind(&self, stmt: &Stmt) -> Vec<Param<'a>> {
        stmt.args
            .iter()
            .map(|arg| match arg {
                Arg::Ids => Param::Ids(self.ids),
                Arg::Lease => Param::Int(self.lease_ms),
                Arg::Token => Param::Text(self.token),
                Arg::Limit => Param::Int(i64::try_from(self.limit).unwrap_or(i64::MAX)),
                Arg::Delay => Param::Int(self.delay_ms),
                Arg::Max => Param::Int(i64::from(self.max_attempts)),
                Arg::Error => Param::Text(self.error),
                Arg::Name => Param::Text(self.name),
                Arg::Lane => Param::Int(i64::from(self.lane)),
                Arg::Keys => Param::Texts(self.keys),
                Arg::NullHeld => Param::Int(i64::from(self.null_held)),
                Arg::Refusals => Param::Int(i64::from(self.refusals)),
                Arg::UpTo => Param::Int(self.up_to),
            })
            .collect()
    }
}

/// Milliseconds of a duration, as a bound integer.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An age the database measured in microseconds (one in the future, by clock skew, is 0).
pub(crate) fn age(micros: Option<i64>) -> Option<Duration> {
    micros.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
}

fn count(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The operations of the flushing engine on one table, generic over the database.
impl Statements {
    async fn run_rows<DB: Backend>(
        conn: &mut DB::Connection,
        stmt: &Stmt,
        values: Values<'_>,
    ) -> Result<Vec<StoredRow>> {
        DB::fetch_rows(conn, &stmt.sql, &values.bind(stmt)).await
    }

    async fn run<DB: Backend>(
        conn: &mut DB::Connection,
        stmt: &Stmt,
        values: Values<'_>,
    ) -> Result<u64> {
        DB::execute(conn, &stmt.sql, &values.bind(stmt)).await
    }

    /// Refuse a table of this name that exists and is not a signal table (a business table
    /// whose name a signal type happens to use): `migrate` must never add signalbus' columns,
    /// indexes or triggers to it. Runs before `migrate` changes anything.
    pub async fn check_table<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        table: &str,
    ) -> Result<()> {
        let present = DB::fetch_texts(conn, &self.columns, &[]).await?;
        if present.is_empty() {
            return Ok(()); // not there yet: `migrate` creates it
        }
        let extra: &[&str] = if DB::DIALECT.ordered_read == dialect::OrderedRead::TxidWatermark {
            &["txid"]
        } else {
            &[]
        };
        let missing: Vec<&str> = FIRST_CONTRACT
            .iter()
            .chain(extra)
            .copied()
            .filter(|column| !present.iter().any(|c| c.eq_ignore_ascii_case(column)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "table `{table}` exists but is not a signal table: it has no column{} {}; migrate \
             changed nothing. Give the signal type a table of its own (`#[signal(table = \"...\")]` \
             or `SignalType::table`), or rename the existing table",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Refuse a signal table that lacks columns this release writes (made by an older release
    /// and not migrated since): a relay on it would fail at its first refusal. A table that
    /// is not there at all is left to the caller's read, which says so.
    pub async fn check_migrated<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        table: &str,
    ) -> Result<()> {
        let present = DB::fetch_texts(conn, &self.columns, &[]).await?;
        let missing: Vec<String> = self
            .add_columns
            .iter()
            .map(|(column, _)| *column)
            .filter(|column| !present.iter().any(|c| c.eq_ignore_ascii_case(column)))
            .map(|column| format!("`{column}`"))
            .collect();
        if present.is_empty() || missing.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "signal table `{table}` lacks the column{} {} of this release: run `signalbus \
             migrate` (`SignalBus::migrate`) first; it only adds, and older relays keep working",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        )))
    }

    /// Create the table (and what goes with it) if it does not exist, and add the columns of
    /// the contract an older table lacks. Outside any transaction: on MySQL DDL commits.
    /// [`Self::check_table`] first.
    pub async fn create_table<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        for statement in &self.create {
            DB::execute_script(conn, statement).await?;
        }
        let present = DB::fetch_texts(conn, &self.columns, &[]).await?;
        for (column, add) in &self.add_columns {
            if !present.iter().any(|c| c.eq_ignore_ascii_case(column)) {
                DB::execute_script(conn, add).await?;
            }
        }
        if let Some(lock) = &self.flush_lock {
            let name = Values {
                name: &lock.name,
                ..Values::default()
            };
            Self::run::<DB>(conn, &lock.add, name).await?;
        }
        for statement in &self.after_columns {
            DB::execute_script(conn, statement).await?;
        }
        Ok(())
    }

    /// The insert statement (for [`crate::prepared::PreparedSignal`]).
    pub fn insert_sql(&self) -> sqlx::SqlStr {
        self.insert.clone()
    }

    /// Insert one signal; returns its id.
    pub async fn insert<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        row: NewRow<'_>,
    ) -> Result<i64> {
        DB::insert_row(conn, &self.insert, row).await
    }

    /// Take this table's turn among flushers where the database needs it (see
    /// [`dialect::Dialect::flush_lock_table`]); held until the transaction ends.
    async fn take_turn<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        let Some(lock) = &self.flush_lock else {
            return Ok(());
        };
        let name = Values {
            name: &lock.name,
            ..Values::default()
        };
        let params = name.bind(&lock.take);
        let found = DB::fetch_texts(conn, &lock.take.sql, &params)
            .await
            .map_err(missing_lock_table)?;
        if found.is_empty() {
            // A signal table created by other means: add its lock row, then take it.
            Self::run::<DB>(conn, &lock.add, name).await?;
            DB::fetch_texts(conn, &lock.take.sql, &params).await?;
        }
        Ok(())
    }

    /// Claim (lease for `lease`, with `token`) the rows `which` says, up to `limit`. No
    /// transaction is left open: the lease (or the range) alone keeps other flushers away
    /// until it is settled or expires.
    pub async fn claim<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        which: ClaimOf<'_>,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        match begin_async::<DB>() {
            Some(begin) => {
                let mut tx = conn.begin_with(begin).await?;
                let range = !matches!(which, ClaimOf::Ids(_));
                self.take_claim_turn::<DB>(&mut tx, range).await?;
                let rows = self
                    .claim_in::<DB>(&mut tx, which, limit, lease, token)
                    .await
                    .map_err(missing_claims_table)?;
                tx.commit().await?;
                Ok(rows)
            }
            None => self.claim_in::<DB>(conn, which, limit, lease, token).await,
        }
    }

    /// Where bursts claim ranges: take the claim turn in the open transaction, exclusive for
    /// a range claim (`range`), shared for a claim of single rows (see
    /// [`dialect::RangeClaimSql`]).
    async fn take_claim_turn<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        range: bool,
    ) -> Result<()> {
        if let Some(ranges) = &self.range_claims {
            let turn = if range {
                &ranges.turn
            } else {
                &ranges.shared_turn
            };
            DB::execute_script(conn, turn).await?;
        }
        Ok(())
    }

    /// An id at least as high as every row visible now has ([`dialect::RangeClaimSql::last_id`]:
    /// WAL capture's table scan takes rows up to the one read before its previous scan);
    /// `i64::MAX` where bursts claim rows.
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub async fn last_id<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<i64> {
        match &self.range_claims {
            Some(ranges) => Ok(DB::fetch_ids(conn, &ranges.last_id, &[])
                .await?
                .first()
                .copied()
                .unwrap_or(0)),
            None => Ok(i64::MAX),
        }
    }

    /// Free the range claim slot that `token` holds (a burst given back, a draining loop
    /// that ends); nothing where bursts claim rows.
    pub async fn free_range<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        token: &str,
    ) -> Result<()> {
        if let Some(ranges) = &self.range_claims {
            let values = Values {
                token,
                ..Values::default()
            };
            // Lost in a crash, a freed range only waits for its lease: no need to wait for
            // the disk.
            match begin_async::<DB>() {
                Some(begin) => {
                    let mut tx = conn.begin_with(begin).await?;
                    Self::run::<DB>(&mut tx, &ranges.free, values).await?;
                    tx.commit().await?;
                }
                None => {
                    Self::run::<DB>(conn, &ranges.free, values).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether a burst's claim is a range claim (the rows themselves are not written).
    pub fn claims_ranges(&self) -> bool {
        self.range_claims.is_some()
    }

    /// Claim `rows` (read in this order by the caller's open transaction: an ordered burst's
    /// short read-and-claim step, in `lane`) and give back those claimed, in that order.
    /// Where bursts claim ranges, the range of their ids in `lane`, recorded in the slot of
    /// `token`: all of them (the read took the claim turn, so no other claim took the rows it
    /// found sendable; a row deleted meanwhile by a writer that takes no turn, such as an
    /// auto-flush whose lease ran out, goes out again: a duplicate), sent as read. Elsewhere
    /// a row lease each, up to the first row that was not claimable after all, the rows as
    /// the claim wrote them.
    pub async fn claim_in_tx<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        rows: Vec<StoredRow>,
        lane: u32,
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        if let Some(ranges) = &self.range_claims {
            let values = Values {
                ids: &ids,
                lane,
                lease_ms: millis(lease),
                token,
                ..Values::default()
            };
            Self::run::<DB>(conn, &ranges.claim_lane, values).await?;
            return Ok(rows);
        }
        let claimed = self
            .claim_in::<DB>(conn, ClaimOf::Ids(&ids), ids.len(), lease, token)
            .await?;
        let mut by_id: std::collections::HashMap<i64, StoredRow> =
            claimed.into_iter().map(|r| (r.id, r)).collect();
        Ok(ids.iter().map_while(|id| by_id.remove(id)).collect())
    }

    /// Claim the sendable rows among `ids` as a range in the slot of `token` (WAL capture's
    /// bursts: the rows are not written; the slot's own earlier range does not keep them
    /// away). Where bursts claim rows (no range claims), a row lease with `token`.
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub async fn claim_listed<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        let (Some(ranges), Some(begin)) = (&self.range_claims, begin_async::<DB>()) else {
            return self
                .claim::<DB>(conn, ClaimOf::Ids(ids), ids.len(), lease, token)
                .await;
        };
        let mut tx = conn.begin_with(begin).await?;
        self.take_claim_turn::<DB>(&mut tx, true).await?;
        let values = Values {
            ids,
            lease_ms: millis(lease),
            token,
            ..Values::default()
        };
        let mut rows = Self::run_rows::<DB>(&mut tx, &ranges.claim_listed, values)
            .await
            .map_err(missing_claims_table)?;
        tx.commit().await?;
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }

    /// Ordered lanes of the table: ordering keys are hashed into this many lanes, and one
    /// ordered flusher at a time sends a lane ([`Self::try_lane`]); 1 where the database
    /// has none (its ordered flushers take turns per burst instead).
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// Take `lane` for the connection's session (until [`Self::free_lane`], or until the
    /// connection closes); `false` when another flusher has it. Always `true` without lanes.
    pub async fn try_lane<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        lane: u32,
    ) -> Result<bool> {
        match &self.lane_sql {
            Some(sql) => Ok(Self::lane_lock::<DB>(conn, &sql.take, lane).await?),
            None => Ok(true),
        }
    }

    /// The lanes that have rows now (sendable or not), in order; lane 0 alone without
    /// lanes. On the flusher's own connection (see [`Self::try_lane`]).
    pub async fn lanes_with_rows<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<u32>> {
        let Some(sql) = &self.lane_sql else {
            return Ok(vec![0]);
        };
        let mut lanes: Vec<u32> = DB::fetch_ids(conn, &sql.with_rows, &[])
            .await?
            .into_iter()
            .filter_map(|lane| u32::try_from(lane).ok())
            .collect();
        lanes.sort_unstable();
        Ok(lanes)
    }

    /// Give `lane` back.
    pub async fn free_lane<DB: Backend>(&self, conn: &mut DB::Connection, lane: u32) -> Result<()> {
        if let Some(sql) = &self.lane_sql {
            Self::lane_lock::<DB>(conn, &sql.free, lane).await?;
        }
        Ok(())
    }

    /// Run a lane lock statement; whether it answered 1 (taken, or given back).
    async fn lane_lock<DB: Backend>(
        conn: &mut DB::Connection,
        stmt: &Stmt,
        lane: u32,
    ) -> Result<bool> {
        let values = Values {
            lane,
            ..Values::default()
        };
        let answer = DB::fetch_ids(conn, &stmt.sql, &values.bind(stmt)).await?;
        Ok(answer.first().copied() == Some(1))
    }

    /// Rows being sent right now (leased rows and, on PostgreSQL, the rows of live ranges).
    pub async fn in_flight<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<u64> {
        let n = DB::fetch_ids(conn, &self.in_flight, &[]).await?;
        Ok(count(n.first().copied()))
    }

    /// Whether a flusher holds a live claim on rows of this table.
    pub async fn claimed_now<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<bool> {
        let n = DB::fetch_ids(conn, &self.in_flight, &[]).await?;
        Ok(n.first().copied().unwrap_or(0) > 0)
    }

    async fn claim_in<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        which: ClaimOf<'_>,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> Result<Vec<StoredRow>> {
        let mut values = Values {
            limit,
            lease_ms: millis(lease),
            token,
            ..Values::default()
        };
        let stmt = match which {
            ClaimOf::Ids(ids) => {
                values.ids = ids;
                &self.claim_ids
            }
            ClaimOf::Next => &self.claim_burst,
            ClaimOf::UpTo(id) => match &self.range_claims {
                Some(ranges) => {
                    values.up_to = id;
                    &ranges.claim_up_to
                }
                // (Only PostgreSQL captures; it claims ranges.)
                None => &self.claim_burst,
            },
        };
        let mut rows = match &self.read_claimed {
            None => Self::run_rows::<DB>(conn, stmt, values).await?,
            Some(read) => {
                Self::run::<DB>(conn, stmt, values).await?;
                Self::run_rows::<DB>(conn, read, values).await?
            }
        };
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }

    /// Claim for the auto-flush the rows among `ids` that exist and no other flusher holds;
    /// returns their ids.
    pub async fn claim_own<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        lease: Duration,
        token: &str,
    ) -> Result<Vec<i64>> {
        let values = Values {
            ids,
            lease_ms: millis(lease),
            token,
            ..Values::default()
        };
        if self.range_claims.is_some()
            && let Some(begin) = begin_async::<DB>()
        {
            let mut tx = conn.begin_with(begin).await?;
            // Read after the claim turn's shared side: never in a snapshot taken before a
            // range claim committed.
            self.take_claim_turn::<DB>(&mut tx, false).await?;
            let ids = DB::fetch_ids(&mut tx, &self.claim_own.sql, &values.bind(&self.claim_own))
                .await
                .map_err(missing_claims_table)?;
            tx.commit().await?;
            return Ok(ids);
        }
        match &self.read_claimed_ids {
            None => DB::fetch_ids(conn, &self.claim_own.sql, &values.bind(&self.claim_own)).await,
            Some(read) => {
                Self::run::<DB>(conn, &self.claim_own, values).await?;
                DB::fetch_ids(conn, &read.sql, &values.bind(read)).await
            }
        }
    }

    /// Count a refusal of the rows `ids`: one more attempt, the next after `delay`, or
    /// parked once they reach `max_attempts`. `refusals` is the attempts they will have had
    /// (the claim read them, and nobody else writes a claimed row): where the statement
    /// cannot read the old count reliably (MySQL's multi-table UPDATE), it decides.
    pub async fn refuse<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        delay: Duration,
        max_attempts: u32,
        refusals: u32,
        error: &str,
    ) -> Result<u64> {
        let values = Values {
            ids,
            delay_ms: millis(delay),
            max_attempts,
            refusals,
            error,
            ..Values::default()
        };
        Self::run::<DB>(conn, &self.refuse, values).await
    }

    /// Give claimed rows back at once, without spending an attempt.
    pub async fn release<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
    ) -> Result<u64> {
        let values = Values {
            ids,
            ..Values::default()
        };
        Self::run::<DB>(conn, &self.release, values).await
    }

    /// Give claimed rows back, not to be sent again before `delay`, without spending an
    /// attempt: their part of the bus is out (`error` says why).
    pub async fn defer<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        delay: Duration,
        error: &str,
    ) -> Result<u64> {
        let values = Values {
            ids,
            delay_ms: millis(delay),
            error,
            ..Values::default()
        };
        Self::run::<DB>(conn, &self.defer, values).await
    }

    /// Lock and read the next up to `n` rows in `flushordered` order (the type's `order_by`,
    /// then `id`), gap-safe as far as the database allows (see the module docs), whether
    /// they can be sent now or not (the caller stops at the first that cannot). It waits for
    /// held rows instead of skipping them (skipping would break the order); ordered flushers
    /// of one table take turns.
    pub async fn lock_ordered<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        lane: u32,
        n: usize,
    ) -> Result<Vec<StoredRow>> {
        let OrderedRead { held_keys, read } = &self.ordered;
        if let Ordered::Watermark { turn, .. } = read {
            DB::execute_script(conn, turn).await?;
        }
        // The keys held back by a refusal, once per burst (bounded by the held rows, read
        // from their index where there is one); the read then checks each row against them.
        let mut keys = DB::fetch_keys(conn, &held_keys.sql, &[]).await?;
        let null_held = keys.iter().any(Option::is_none);
        let mut keys: Vec<String> = keys.drain(..).flatten().collect();
        keys.sort_unstable();
        keys.dedup();
        let values = Values {
            limit: n,
            lane,
            keys: &keys,
            null_held,
            ..Values::default()
        };
        match read {
            Ordered::Watermark {
                restored, settled, ..
            } => {
                // Rows restored from another cluster first (usually none: an index probe),
                // then the settled ones.
                let rows = Self::run_rows::<DB>(conn, restored, values)
                    .await
                    .map_err(missing_claims_table)?;
                if !rows.is_empty() {
                    return Ok(rows);
                }
                Self::run_rows::<DB>(conn, settled, values).await
            }
            Ordered::Locking(read) => {
                // The turn keeps every other flusher out; the locking read in order then
                // waits for rows whose inserting transaction is still open instead of
                // passing them, bounded by the server's lock wait timeout.
                self.take_turn::<DB>(conn).await?;
                Self::run_rows::<DB>(conn, read, values).await
            }
        }
    }

    /// Delete the rows with these ids. Sent rows, outside a transaction (`alone`): without
    /// waiting for the disk where the database allows, see [`dialect::Dialect::begin_async`].
    pub async fn delete_ids<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
        alone: bool,
    ) -> Result<u64> {
        let values = Values {
            ids,
            ..Values::default()
        };
        if !alone {
            return Self::run::<DB>(conn, &self.delete_ids, values).await;
        }
        match begin_async::<DB>() {
            Some(begin) => {
                let mut tx = conn.begin_with(begin).await?;
                let deleted = Self::run::<DB>(&mut tx, &self.delete_ids, values).await?;
                tx.commit().await?;
                Ok(deleted)
            }
            None => Self::run::<DB>(conn, &self.delete_ids, values).await,
        }
    }

    /// The ids of the rows that can be sent now, ascending.
    pub async fn pending_ids<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<Vec<i64>> {
        DB::fetch_ids(conn, &self.pending_ids, &[])
            .await
            .map_err(missing_claims_table)
    }

    /// Counts and ages of all, backing-off and parked rows.
    pub async fn pending_stats<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<PendingStats> {
        let n = DB::fetch_numbers(conn, &self.pending_stats).await?;
        let at = |i: usize| n.get(i).copied().flatten();
        Ok(PendingStats {
            count: count(at(0)),
            oldest_age: age(at(1)),
            backing_off: count(at(2)),
            oldest_backing_off_age: age(at(3)),
            parked: count(at(4)),
            oldest_parked_age: age(at(5)),
        })
    }

    /// What the ordered watermark holds back in this table now ([`Holdback`]).
    pub async fn holdback<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<Holdback> {
        let Some(held) = &self.watermark_held else {
            return Ok(Holdback::default());
        };
        let n = DB::fetch_numbers(conn, held).await?;
        let rows = count(n.first().copied().flatten());
        let holder_age = n
            .get(1)
            .copied()
            .flatten()
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        let holder = match (rows, &self.watermark_holder) {
            (1.., Some(who)) => DB::fetch_keys(conn, who, &[])
                .await?
                .into_iter()
                .next()
                .flatten(),
            _ => None,
        };
        Ok(Holdback {
            rows,
            holder,
            holder_age,
        })
    }

    /// Wake the relays of this table, where the database has notifications.
    pub async fn wake_relays<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        if let Some(wake) = &self.wake_relays {
            DB::execute_script(conn, wake).await?;
        }
        Ok(())
    }

    /// Whether this table has an idle lock (PostgreSQL): then its insert trigger notifies
    /// only while a relay holds it.
    pub fn has_idle_gate(&self) -> bool {
        self.idle_gate.is_some()
    }

    /// Prepare a connection of its own for the idle lock (the bound of a lock wait).
    pub async fn idle_gate_setup<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        self.idle_gate_step::<DB>(conn, |g| &g.setup).await
    }

    /// Take the table's idle lock: waits (up to the setup's bound, then fails with a lock
    /// timeout) for the writers that skipped notifying to commit.
    pub async fn idle_lock<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        self.idle_gate_step::<DB>(conn, |g| &g.lock).await
    }

    /// Give the table's idle lock up.
    pub async fn idle_unlock<DB: Backend>(&self, conn: &mut DB::Connection) -> Result<()> {
        self.idle_gate_step::<DB>(conn, |g| &g.unlock).await
    }

    /// Whether another session (another relay, idle) holds the table's idle lock.
    pub async fn idle_held_elsewhere<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<bool> {
        match &self.idle_gate {
            Some(gate) => {
                let holders = DB::fetch_ids(conn, &gate.held_elsewhere, &[]).await?;
                Ok(holders.first().is_some_and(|&n| n > 0))
            }
            None => Ok(false),
        }
    }

    async fn idle_gate_step<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        step: fn(&IdleGate) -> &sqlx::SqlStr,
    ) -> Result<()> {
        if let Some(gate) = &self.idle_gate {
            DB::execute_script(conn, step(gate)).await?;
        }
        Ok(())
    }

    /// Up to `limit` parked rows, lowest ids first.
    pub async fn parked<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        limit: usize,
    ) -> Result<Vec<ParkedSignal>> {
        let values = Values {
            limit,
            ..Values::default()
        };
        let rows = DB::fetch_parked(conn, &self.parked.sql, &values.bind(&self.parked)).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, message_id, attempts, last_error, parked_us, ordering_key)| ParkedSignal {
                    id,
                    message_id,
                    attempts: count(Some(attempts)),
                    last_error,
                    parked_for: age(parked_us),
                    ordering_key,
                },
            )
            .collect())
    }

    /// Unpark (send again on the next pass, attempts reset) or delete parked rows; returns
    /// how many.
    /// Make the backing-off rows among `ids` due now: the next flush sends them; their
    /// attempts are kept. Returns how many.
    pub async fn retry_now<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        ids: &[i64],
    ) -> Result<u64> {
        let values = Values {
            ids,
            ..Values::default()
        };
        Self::run::<DB>(conn, &self.retry_ids, values).await
    }

    pub async fn settle_parked<DB: Backend>(
        &self,
        conn: &mut DB::Connection,
        rows: ParkedRows<'_>,
        delete: bool,
    ) -> Result<u64> {
        match (rows, delete) {
            (ParkedRows::All, false) => DB::execute(conn, &self.unpark_all, &[]).await,
            (ParkedRows::All, true) => DB::execute(conn, &self.purge_all, &[]).await,
            (ParkedRows::Ids(ids), delete) => {
                let stmt = if delete {
                    &self.purge_ids
                } else {
                    &self.unpark_ids
                };
                let values = Values {
                    ids,
                    ..Values::default()
                };
                Self::run::<DB>(conn, stmt, values).await
            }
        }
    }
}

/// How a transaction begins that commits without waiting for the disk
/// ([`dialect::Dialect::begin_async`]), where the database has one. Owned: a `&'static str`
/// held across `begin_with`'s await made the futures of a concrete database type fail
/// rustc's `Send` check.
fn begin_async<DB: Backend>() -> Option<sqlx::SqlStr> {
    DB::DIALECT.begin_async.map(sqlx::SqlSafeStr::into_sql_str)
}

/// PostgreSQL's "relation does not exist" (SQLSTATE 42P01) on the table of range claims, as
/// an error that says what to do.
fn missing_claims_table(e: Error) -> Error {
    let missing = matches!(&e, Error::Database(sqlx::Error::Database(db))
        if db.code().is_some_and(|code| code == "42P01")
            && db.message().contains("signalbus_claims"));
    if missing {
        Error::Config(
            "table `signalbus_claims` is missing (this version of signalbus claims ranges of \
             ids there): run `SignalBus::migrate` (or `signalbus migrate`) once on this database"
                .into(),
        )
    } else {
        e
    }
}

/// "Table doesn't exist" (SQLSTATE 42S02) on the flush lock table, as an error that says what
/// to do.
fn missing_lock_table(e: Error) -> Error {
    let missing = matches!(&e, Error::Database(sqlx::Error::Database(db))
        if db.code().is_some_and(|code| code == "42S02"));
    if missing {
        Error::Config(
            "table `signalbus_flush_lock` is missing: run `SignalBus::migrate` (or `signalbus migrate`) \
             once on this database"
                .into(),
        )
    } else {
        e
    }
}
