//! What differs between the databases, described once per database: quoting, placeholders,
//! column types, locking clauses, how transactions begin and which errors are conflicts.
//! [`super::statements`] builds every statement of a signal table from one of these, so the
//! SQL of the table contract is written once, not once per database.

#[cfg(any(feature = "postgres", feature = "mysql"))]
use crate::locking::LockWait;
use crate::locking::{Isolation, RowLock, SqliteBegin};
use sqlx::error::DatabaseError;
use std::time::Duration;

/// How bound parameters are written.
// Which variants a build uses depends on its database features.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    /// `$1`, `$2`, … (PostgreSQL).
    Numbered,
    /// `?` (MySQL, SQLite).
    Question,
}

/// How `flushordered` finds the rows it may send.
// Which variants a build uses depends on its database features.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderedRead {
    /// Rows of transactions older than the snapshot's xmin, by `txid` first (PostgreSQL),
    /// one ordered flusher per table at a time (an advisory lock).
    TxidWatermark,
    /// A locking read in the declared order; the flush lock keeps other flushers out.
    Locking,
}

/// Ordered lanes: ordering keys hashed into `count` lanes, each sent by one ordered flusher
/// at a time, so that flushers (tasks, processes) split the keys.
#[derive(Debug, Clone)]
pub(crate) struct Lanes {
    pub count: u32,
    /// The lane of a row, `{p}` the column prefix (a stable hash: the one hash
    /// partitioning uses).
    pub expr: &'static str,
    /// Take lane `{Lane}` of `{table}` for the session: 1 when taken, 0 when another has it.
    pub take: &'static str,
    /// Give it back.
    pub free: &'static str,
    /// Run once on an ordered flusher's own connection (the one that holds its lanes):
    /// its lane probes plan on the lane index alone, and every statement is bounded.
    pub session: &'static str,
}

/// The SQL types of the table contract's columns, and what a new table gets besides.
#[derive(Debug, Clone)]
pub(crate) struct ColumnTypes {
    /// `id`: an auto-increment 64-bit primary key.
    pub id: &'static str,
    /// `message_id` with its default: a random UUID (v4) in canonical text form, so that rows
    /// written by other languages without an id get the same format on every database.
    pub message_id: &'static str,
    /// Short text columns (`topic`, `routing_key`, `content_type`).
    pub short_text: &'static str,
    /// `headers`.
    pub long_text: &'static str,
    /// `body`.
    pub bytes: &'static str,
    /// `created_at` with its default: now.
    pub created_at: &'static str,
    /// A nullable point in time (`next_attempt_at`, `parked_at`), in the type `now` has.
    pub time: &'static str,
    /// `attempts`: a count, 0 by default.
    pub counter: &'static str,
    /// Columns only this database has (PostgreSQL's `txid`), each starting with `,`.
    pub extra_columns: &'static str,
    /// After the closing parenthesis (MySQL's `ENGINE=InnoDB`).
    pub table_options: &'static str,
}

/// One database's SQL, as signalbus needs it.
/// The SQL of the consumer inbox ([`crate::inbox`]); `{t}` is the quoted table, `{index}` its
/// index, `{key}` the id columns' type, `{received}` the time column, `{options}` the table
/// options, `{p1}`… the placeholders, `{older}` the cut-off time, `{limit}` the batch size.
/// The inbox table and its index by time, where `CREATE INDEX IF NOT EXISTS` exists
/// (PostgreSQL, SQLite).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const INBOX_CREATE: &str = "CREATE TABLE IF NOT EXISTS {t} (consumer {key} NOT NULL, \
     message_id {key} NOT NULL, received_at {received}, PRIMARY KEY (consumer, message_id)); \
     CREATE INDEX IF NOT EXISTS {index} ON {t} (consumer, received_at)";

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "inbox"), allow(dead_code))]
pub(crate) struct InboxSql {
    /// The type of the consumer and message id columns.
    pub key: &'static str,
    /// Create the table and its index by time, if they are not there.
    pub create: &'static str,
    /// Insert one id, doing nothing when it is there.
    pub insert: &'static str,
    /// Delete at most `{limit}` ids of consumer `{p1}` recorded before `{older}`.
    pub prune: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct Dialect {
    /// The character that quotes identifiers.
    pub quote: char,
    pub placeholders: Placeholders,
    pub columns: ColumnTypes,
    /// How `body` is read (`{p}`: the table alias and dot, or nothing): always as bytes,
    /// also where a foreign writer stored text.
    pub read_body: &'static str,
    /// The database's clock now, in the type of the time columns.
    pub now: &'static str,
    /// Now plus the milliseconds of a bound parameter (`{ms}`: its token).
    pub now_plus_ms: &'static str,
    /// A 64-bit integer of a boolean condition (`{c}`).
    pub flag: &'static str,
    /// An integer expression (`{e}`) as a 64-bit integer.
    pub int8: &'static str,
    /// The text value of a header of `t.headers` (a JSON object), `{name}` the bound key
    /// (PostgreSQL) or JSON path (`$."name"`, where [`Self::header_by_path`]).
    pub header_value: &'static str,
    /// Whether [`Self::header_value`] takes a JSON path rather than the key.
    pub header_by_path: bool,
    /// A cheap test that `t.headers` holds the text `{needle}` (a bound parameter), checked
    /// before [`Self::header_value`] where that is costly: rows without the value's JSON text
    /// are passed over unparsed.
    pub header_contains: Option<&'static str>,
    /// Run at the start of an operator's read ([`super::inspect`]): PostgreSQL gives the
    /// failure-group aggregate the memory to hash its groups instead of sorting a million
    /// rows on disk (4 MB of `work_mem` by default: 0.9 s against 0.35 s on a million rows).
    pub inspect_setup: Option<&'static str>,
    /// How an operator's read begins: bounded like a flush where the database bounds
    /// statements, but without SQLite's write lock (`BEGIN IMMEDIATE` would stall the
    /// application's writers for the length of a console page).
    pub begin_read: &'static str,
    /// The condition "`t.id` is one of the bound ids" (`{Ids}`: the parameter's token).
    pub id_in: &'static str,
    /// Where an `UPDATE` of the rows among the bound ids names its table as a join of the
    /// id list with it (`{t}`: the table, aliased `t`): MySQL/MariaDB, whose single-table
    /// `UPDATE … WHERE id IN (subquery)` runs the subquery once per row of the table (a scan
    /// of the whole table per claim: quadratic over a backlog). `None`: `UPDATE {t} AS t …
    /// WHERE` [`Self::id_in`].
    pub update_by_ids: Option<&'static str>,
    /// Whether `UPDATE … RETURNING` exists; without it a claim is read back by its token.
    pub update_returning: bool,
    /// "`id` is one of the ids the subquery `{q}` picks", for a claim's `UPDATE … RETURNING`:
    /// on PostgreSQL an array computed once (`= ANY(ARRAY(…))`), which keeps the update an
    /// index scan; a plain `IN (…)` there is planned as a hash join over the whole table.
    pub picked: &'static str,
    /// The query of the column names of table `{name}` in schema `{schema}` (a quoted
    /// literal, or the current schema when the table has none): what `migrate` upgrades.
    pub columns_of: &'static str,
    /// The current schema, when a table name has none.
    pub current_schema: &'static str,
    /// `DELETE` of the rows whose ids are in the bound id list.
    pub delete_by_ids: &'static str,
    /// Appended to the subquery that picks the rows a claim takes, so that two claims never
    /// wait for each other (empty where the claim's `UPDATE` itself skips or serializes).
    pub claim_lock: &'static str,
    /// Appended to the ordered read: locks the rows, waiting for held ones (never skipping:
    /// that would break the order).
    pub ordered_lock: &'static str,
    pub ordered_read: OrderedRead,
    /// Whether an insert returns the new id (`RETURNING id`) rather than through the
    /// driver's last insert id.
    pub insert_returning: bool,
    /// Whether flushers of one table take turns through a lock row in `signalbus_flush_lock`.
    pub flush_lock_table: bool,
    /// The age in microseconds of the point in time `{min}` (of `created_at`'s type).
    pub age_micros: &'static str,
    /// Added to `ALTER TABLE … ADD COLUMN claim …` (MySQL: the index a claim is read back
    /// by; `{t}` is the table's name).
    pub claim_index: &'static str,
    /// Added to `ALTER TABLE … ADD COLUMN ordering_key …` (MySQL: its index).
    pub key_index: &'static str,
    /// Ordered lanes, where the database has session locks to hold them by.
    pub lanes: Option<Lanes>,
    /// Whether a relay lane that finds signals keeps a connection of its own (see
    /// `engine::own_conn`): on database servers, where the application's queries queue for
    /// the pool's connections; not on SQLite, where a connection taken out of a pool of a
    /// private in-memory database would take the database with it.
    pub own_connections: bool,
    /// Set up a connection that a relay keeps for itself (see `engine::own_conn`), where the
    /// database has session settings for it (not behind a transaction pooler).
    pub own_session: Option<&'static str>,
    /// Statements are sent unnamed (prepared anew each time, never cached on the server's
    /// session): behind a pooler in transaction mode, the next transaction may run on
    /// another server session ([`Dialect::behind_transaction_pooler`]).
    pub unnamed_statements: bool,
    /// The condition of the held-keys read ([`super::statements::OrderedRead::held_keys`]):
    /// `{held}` is the exact condition, `{index}` the predicate of the partial index of held
    /// rows, repeated where there is that index so that the read is planned on it.
    pub held_rows: &'static str,
    /// "`t.ordering_key` is not one of the bound held keys `{Keys}`" (checked against the
    /// set once built, not per element).
    pub key_not_in: &'static str,
    /// Creates the partial index of held rows by key (`{t}` the table, `{name}` the
    /// index), where the database has partial indexes.
    pub held_index: Option<&'static str>,
    /// Installs (or replaces) the statement-level trigger on `{t}` that notifies the
    /// `signalbus` channel with the table's name when rows are inserted, so that a relay
    /// wakes at once; `None` where the database has no notifications (the relay polls).
    pub notify_trigger: Option<&'static str>,
    /// The query of the connection's server-side id, where a statement goes on running
    /// after its client closed the connection and must be stopped by id (`KILL QUERY`).
    pub connection_id: Option<&'static str>,
    /// Where ordered flushing waits for a watermark (PostgreSQL): the rows of table `{t}`
    /// that it holds back now (written after the oldest transaction still running began),
    /// and that transaction's age in milliseconds, as one row of two integers.
    pub watermark_held: Option<&'static str>,
    /// Who holds the watermark back: one line naming the oldest transaction still running
    /// (pid, database, state, how long), or no row.
    pub watermark_holder: Option<&'static str>,
    /// Wakes the relays of table `{name}` (its name without schema, as the insert trigger
    /// sends it): for rows that become sendable by an update (a lease lifted).
    pub wake_relays: Option<&'static str>,
    /// Where the insert trigger notifies only while a relay is idle: the statements of the
    /// relay's idle lock ([`IdleGateSql`]).
    pub idle_gate: Option<IdleGateSql>,
    /// Run by `migrate` on each signal table: per-table vacuum settings (`{t}` the table),
    /// where the database has them.
    pub vacuum_settings: Option<&'static str>,
    /// Where a burst claims a range of ids (one row of its own) instead of writing a lease
    /// into every row it takes ([`RangeClaimSql`]); `None`: row leases.
    pub range_claims: Option<RangeClaimSql>,
    /// How a flush transaction begins.
    pub begin_flush: &'static str,
    /// Where the database lets one transaction commit without waiting for its log to reach
    /// the disk: how such a transaction begins. Claims and deletes of sent rows run in one:
    /// a claim or delete lost in a crash only makes a row go out again (at-least-once),
    /// never lost, and the flush saves a disk flush per step.
    pub begin_async: Option<&'static str>,
    /// How a signalbus write transaction ([`crate::SignalBus::begin`]) begins; `None`: the
    /// driver's default `BEGIN`.
    pub begin_write: Option<&'static str>,
    /// The publish timeout a bus uses unless told otherwise.
    pub default_publish_timeout: Duration,
    /// Whether a database error is a conflict that running the transaction again resolves.
    pub is_conflict: fn(&dyn DatabaseError) -> bool,
    /// How one attempt of an atomic block begins; `None`: the driver's default `BEGIN`.
    pub begin_atomic: fn(Isolation, SqliteBegin) -> Option<&'static str>,
    /// The clause that locks the rows a `SELECT` returns.
    pub row_lock: fn(RowLock) -> &'static str,
    #[cfg_attr(not(feature = "inbox"), allow(dead_code))]
    pub inbox: InboxSql,
}

impl Dialect {
    /// The placeholder of the `n`-th bound parameter (counting from 1).
    pub fn placeholder(&self, n: usize) -> String {
        match self.placeholders {
            Placeholders::Numbered => format!("${n}"),
            Placeholders::Question => "?".to_owned(),
        }
    }
}

/// `FOR UPDATE` and friends, as PostgreSQL and MySQL 8 write them; `share` is the shared
/// form (`FOR SHARE` on PostgreSQL, `LOCK IN SHARE MODE` on MySQL/MariaDB, which MariaDB
/// needs; MySQL 8 accepts NOWAIT / SKIP LOCKED after it too).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn lock_clause(lock: RowLock, share: [&'static str; 3]) -> &'static str {
    match (lock.shared, lock.wait) {
        (false, LockWait::Wait) => " FOR UPDATE",
        (false, LockWait::NoWait) => " FOR UPDATE NOWAIT",
        (false, LockWait::SkipLocked) => " FOR UPDATE SKIP LOCKED",
        (true, LockWait::Wait) => share[0],
        (true, LockWait::NoWait) => share[1],
        (true, LockWait::SkipLocked) => share[2],
    }
}

/// The idle lock of a table, on a relay's connection of its own. An idle relay holds it;
/// the insert trigger notifies only when it cannot take its shared side (a relay is idle), so
/// that busy writers do not pay for a notification nobody waits for. `{t}` is the quoted
/// table.
#[derive(Debug, Clone, Copy)]
pub struct IdleGateSql {
    /// Run once per connection: how long taking the lock may wait.
    pub setup: &'static str,
    /// Take the lock: waits for the writers that skipped notifying to commit.
    pub lock: &'static str,
    /// Give it up.
    pub unlock: &'static str,
    /// How many other sessions hold it (another relay is idle: its notifications come).
    pub held_elsewhere: &'static str,
}

/// Claims of id ranges (PostgreSQL). A claim that writes a lease into every row it takes
/// rewrites each row once more before the delete that settles it: measured, that made a
/// drain a quarter of the raw `DELETE … RETURNING` loop and left two dead tuples per message.
/// Instead, each flusher of a table holds one slot row in `signalbus_claims`: the range of
/// ids of its burst (lowest, highest) and until when. Every read of sendable rows skips the
/// live ranges (read once per statement, then each row checked against that short list), and
/// the flusher's next claim overwrites its slot (an update in place), so nothing grows with
/// the traffic. Claims of one table take turns (a transaction-scoped advisory lock held from
/// the read to the commit), so two never take the same rows.
///
/// `{name}` is the table's name as a literal's content (a validated identifier), `{t}` the
/// quoted table, `{now}` and `{lease}` the database's clock and the lease's end.
#[derive(Debug, Clone, Copy)]
pub struct RangeClaimSql {
    /// Creates the table of claims (run by `migrate`).
    pub create: &'static str,
    /// The live ranges of the table, as one array (an uncorrelated subquery: evaluated once
    /// per statement, whatever the number of rows it checks).
    pub live: &'static str,
    /// Added to `live` (as `{of_lane}`) for an ordered read: only the ranges of all lanes
    /// and those of the bound `{Lane}`.
    pub of_lane: &'static str,
    /// Added to `live` (as `{of_lane}`) for a claim that may take rows of its own slot's
    /// range: the ranges of other tokens than the bound `{Token}`.
    pub not_token: &'static str,
    /// "row `{p}id` is in no live range", given the array `{live}`.
    pub outside: &'static str,
    /// Run first in a claim's transaction: its read planned on indexes only.
    pub plan: &'static str,
    /// Take the table's claim turn (held until the claim's transaction ends).
    pub turn: &'static str,
    /// Take its shared side: the claims of single rows, which run side by side.
    pub shared_turn: &'static str,
    /// The claim: `{picked}` is the query of the rows taken (ascending ids), `{lane}` the
    /// lane of an ordered burst (NULL: all); the statement records their range in the
    /// flusher's slot (the one its `{Token}` holds, else a free
    /// one, else a new one; a claim that takes nothing frees the flusher's slot) and returns
    /// the rows.
    pub claim: &'static str,
    /// The bound `{Ids}` as rows of one column `id`, for `{picked}`: an ordered burst's rows,
    /// which its read (same transaction, under the claim turn) has just found.
    pub listed: &'static str,
    /// Free the slot the bound `{Token}` holds.
    pub free: &'static str,
    /// An id at least as high as every row visible now has (WAL capture's table scan): the
    /// higher of the id sequence's position, which counts the rows of transactions still
    /// open, and the table's highest id.
    pub last_id: &'static str,
}

impl Dialect {
    /// This dialect behind a pooler in transaction mode (PgBouncer's `pool_mode =
    /// transaction`), which keeps no session state between transactions: no session locks
    /// (no ordered lanes: ordered flushers take turns per burst, as on databases without
    /// them; no idle locks: relays poll), and statements unnamed.
    pub fn behind_transaction_pooler(&self) -> Dialect {
        Dialect {
            lanes: None,
            idle_gate: None,
            unnamed_statements: true,
            ..self.clone()
        }
    }
}
