//! Every statement signalbus runs on one signal table, built once when the type is registered
//! (from the database's [`Dialect`], the validated table name and the type's order), so that
//! no SQL text is rebuilt per call.
//!
//! Statements are written once with named parameter tokens (`{Ids}`, `{Lease}`, …); building
//! one turns each token into the database's placeholder and records the order in which the
//! parameters are bound ([`Stmt::args`]), so the same text serves `$n` and `?` databases.

use super::dialect::{Dialect, OrderedRead as ReadKind};
use crate::ident::Ident;
use crate::signal::OrderColumn;
use sqlx::{AssertSqlSafe, SqlStr};
use std::sync::Arc;
use std::time::Duration;

/// A named parameter of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A list of row ids.
    Ids,
    /// A lease in milliseconds (NULL: none).
    Lease,
    /// The claim token of a flusher.
    Token,
    /// A row limit.
    Limit,
    /// A retry delay in milliseconds.
    Delay,
    /// The attempts after which a row is parked.
    Max,
    /// An error text.
    Error,
    /// The table's name (the flush lock row).
    Name,
    /// An ordered lane.
    Lane,
    /// The ordering keys held back by a refusal (an array on PostgreSQL, a JSON array
    /// elsewhere).
    Keys,
    /// 1 when the rows without a key are held back by a refusal, else 0.
    NullHeld,
    /// The attempts refused rows will have had, this refusal counted.
    Refusals,
    /// The highest id a claim may take.
    UpTo,
}

const ARGS: [(&str, Arg); 13] = [
    ("{Ids}", Arg::Ids),
    ("{Lease}", Arg::Lease),
    ("{Token}", Arg::Token),
    ("{Limit}", Arg::Limit),
    ("{Delay}", Arg::Delay),
    ("{Max}", Arg::Max),
    ("{Error}", Arg::Error),
    ("{Name}", Arg::Name),
    ("{Lane}", Arg::Lane),
    ("{Keys}", Arg::Keys),
    ("{NullHeld}", Arg::NullHeld),
    ("{Refusals}", Arg::Refusals),
    ("{UpTo}", Arg::UpTo),
];

/// A statement and the order of its parameters.
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    pub sql: SqlStr,
    pub args: Vec<Arg>,
}

impl Stmt {
    /// `text` with its parameter tokens turned into `dialect`'s placeholders.
    fn new(dialect: &Dialect, text: &str) -> Self {
        let mut sql = String::with_capacity(text.len());
        let mut args = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            sql.push_str(&rest[..start]);
            let tail = &rest[start..];
            match ARGS.iter().find(|(token, _)| tail.starts_with(token)) {
                Some((token, arg)) => {
                    args.push(*arg);
                    sql.push_str(&dialect.placeholder(args.len()));
                    rest = &tail[token.len()..];
                }
                None => {
                    sql.push('{');
                    rest = &tail[1..];
                }
            }
        }
        sql.push_str(rest);
        Stmt {
            sql: shared_for(dialect, sql),
            args,
        }
    }
}

/// What starts the text of a statement that must be sent unnamed
/// ([`Dialect::unnamed_statements`]): the drivers' helpers read it ([`is_unnamed`]).
const UNNAMED: &str = "/* signalbus: unnamed */ ";

/// Whether `sql` must be sent unnamed: prepared anew each time, never kept on the server's
/// session (behind a pooler in transaction mode).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn is_unnamed(sql: &SqlStr) -> bool {
    sql.as_str().starts_with(UNNAMED)
}

/// SQL text built once and shared by every call (cloning it is a reference-count increment).
fn shared(text: String) -> SqlStr {
    sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(Arc::<str>::from(text)))
}

/// [`shared`], marked to be sent unnamed when `dialect` says so.
fn shared_for(dialect: &Dialect, text: String) -> SqlStr {
    if dialect.unnamed_statements {
        shared(format!("{UNNAMED}{text}"))
    } else {
        shared(text)
    }
}

/// What an ordered flusher's own connection runs for the lanes of one table.
#[derive(Debug, Clone)]
pub(crate) struct LaneSql {
    /// Take the bound lane for the session (a session advisory lock): 1, or 0 when another
    /// flusher has it.
    pub take: Stmt,
    /// Give it back.
    pub free: Stmt,
    /// The lanes that have rows (one probe of the lane index each), so that a flusher looks
    /// only at those.
    pub with_rows: SqlStr,
}

/// The statements of one signal table.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// `CREATE TABLE IF NOT EXISTS …` and what goes with it (indexes, the lock table), in
    /// order.
    pub create: Vec<SqlStr>,
    /// Ordered lanes ([`super::Statements::lanes`]).
    pub lanes: u32,
    /// Where there are lanes: the statements of an ordered flusher's lane session.
    pub lane_sql: Option<LaneSql>,
    /// What `migrate` runs once the columns are in place: the held-rows index by key, and
    /// the trigger that wakes relays when rows are inserted (PostgreSQL).
    pub after_columns: Vec<SqlStr>,

    /// The table's column names: what `migrate` compares with the contract.
    pub columns: SqlStr,
    /// `ALTER TABLE … ADD COLUMN …` for each column added to the contract since its first
    /// version, by column name.
    pub add_columns: Vec<(&'static str, SqlStr)>,
    /// Insert one row; binds message_id, topic, routing_key, headers, body, content_type and
    /// the lease (NULL: none).
    pub insert: SqlStr,
    /// Claim the sendable rows among the bound ids; returns them (or, without `UPDATE …
    /// RETURNING`, [`Statements::read_claimed`] does).
    pub claim_ids: Stmt,
    /// Claim up to the bound limit of sendable rows, lowest ids first.
    pub claim_burst: Stmt,
    /// The rows a claim took, by its token.
    pub read_claimed: Option<Stmt>,
    /// Claim, for the auto-flush, the rows among the bound ids that no other flusher holds
    /// (rows written leased by this process count as free); returns their ids (or, without
    /// `UPDATE … RETURNING`, [`Statements::read_claimed_ids`] does).
    pub claim_own: Stmt,
    pub read_claimed_ids: Option<Stmt>,
    /// Count a refusal: one more attempt, the next one after the bound delay, or parked after
    /// the bound maximum of attempts.
    pub refuse: Stmt,
    /// Give claimed rows back at once (the bus failed as a whole: no attempt is spent).
    pub release: Stmt,
    /// Give claimed rows back, not to be sent before the bound delay, with the bound reason
    /// (their part of the bus is out: no attempt is spent).
    pub defer: Stmt,

    /// The statements of `flushordered`.
    pub ordered: OrderedRead,
    /// Delete the rows among the bound ids.
    pub delete_ids: Stmt,
    /// The ids of the rows that can be sent now, ascending.
    pub pending_ids: SqlStr,
    /// How many rows a flusher holds a live claim on (an ordered burst in flight).
    pub in_flight: SqlStr,
    /// Counts and ages: all rows, sendable or leased, backing off, parked.
    pub pending_stats: SqlStr,
    /// The parked rows: id, message id, attempts, last error, age.
    pub parked: Stmt,
    /// Unpark the parked rows among the bound ids, or every parked row.
    pub unpark_ids: Stmt,
    pub unpark_all: SqlStr,
    /// Make the backing-off rows among the bound ids due now (not those in flight).
    pub retry_ids: Stmt,
    /// Delete the parked rows among the bound ids, or every parked row.
    pub purge_ids: Stmt,
    pub purge_all: SqlStr,
    /// Take this table's turn among ordered flushers (MySQL); binds the table name.
    pub flush_lock: Option<FlushLock>,
    /// The rows the ordered watermark holds back, and the age of the transaction holding it
    /// ([`Dialect::watermark_held`]).
    pub watermark_held: Option<SqlStr>,
    /// Which transaction holds the watermark back ([`Dialect::watermark_holder`]).
    pub watermark_holder: Option<SqlStr>,
    /// Wake the relays of this table ([`Dialect::wake_relays`]).
    pub wake_relays: Option<SqlStr>,
    /// The table's idle lock ([`Dialect::idle_gate`]).
    pub idle_gate: Option<IdleGate>,
    /// Where bursts claim ranges of ids ([`Dialect::range_claims`]); `claim_burst` is then a
    /// range claim.
    pub range_claims: Option<RangeClaims>,
}

/// The statements of range claims ([`super::dialect::RangeClaimSql`]) besides the claim itself.
#[derive(Debug, Clone)]
pub(crate) struct RangeClaims {
    /// The claim turn, exclusive: a range claim.
    pub turn: SqlStr,
    /// Its shared side: the claims of single rows.
    pub shared_turn: SqlStr,
    /// An ordered burst's claim of the bound ids for the bound lane, in the transaction of
    /// its read (which took the turn).
    pub claim_lane: Stmt,
    /// A claim of the sendable rows among the bound ids (WAL capture's bursts): the range of
    /// those found, recorded in the slot of the bound token, whose own earlier range does not
    /// keep them away (run under the exclusive turn).
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub claim_listed: Stmt,
    /// WAL capture's table scan: a range claim of the next sendable rows with ids up to the
    /// bound one ([`super::repository::ClaimOf::UpTo`]).
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub claim_up_to: Stmt,
    /// The highest id given so far ([`super::dialect::RangeClaimSql::last_id`]).
    #[cfg_attr(not(feature = "wal"), allow(dead_code))]
    pub last_id: SqlStr,
    /// Free the slot of the bound token.
    pub free: Stmt,
}

/// The statements of a table's idle lock ([`crate::storage::dialect::IdleGateSql`]).
#[derive(Debug, Clone)]
pub(crate) struct IdleGate {
    pub setup: SqlStr,
    pub lock: SqlStr,
    pub unlock: SqlStr,
    pub held_elsewhere: SqlStr,
}

/// `flushordered`'s statements.
#[derive(Debug, Clone)]
pub(crate) struct OrderedRead {
    /// The distinct ordering keys (NULL: the rows without one) that have a row held back by
    /// a refusal (parked, or backing off): read once per burst, from the index of held rows
    /// where the database has partial indexes, so that the read below checks each row
    /// against a set instead of probing the table once per row (which, planned on stale
    /// statistics, was a scan of the whole table per row: quadratic).
    pub held_keys: Stmt,
    pub read: Ordered,
}

/// How the rows are read.
#[derive(Debug, Clone)]
pub(crate) enum Ordered {
    /// PostgreSQL: take the table's ordered turn (bounded wait), then read rows restored from
    /// another cluster (`txid` ahead of this one), then settled rows.
    Watermark {
        turn: SqlStr,
        restored: Stmt,
        settled: Stmt,
    },
    /// A locking read in order.
    Locking(Stmt),
}

/// The per-table lock row of `signalbus_flush_lock`.
#[derive(Debug, Clone)]
pub(crate) struct FlushLock {
    /// Lock the row; returns the table name when the row exists.
    pub take: Stmt,
    /// Add the row (by `migrate`, and on first use for a table created by other means).
    pub add: Stmt,
    /// The table's name in the lock table.
    pub name: String,
}

/// The predicate of the partial index of held rows ([`Dialect::held_index`]): a query that
/// repeats it word for word is planned on that index.
pub(crate) const HELD_INDEX_PREDICATE: &str =
    "parked_at IS NOT NULL OR (claim IS NULL AND next_attempt_at IS NOT NULL)";

/// The lock table of [`FlushLock`], created by `migrate` outside any transaction (on MySQL any
/// DDL commits the open transaction).
const CREATE_FLUSH_LOCK_TABLE: &str = "CREATE TABLE IF NOT EXISTS signalbus_flush_lock \
     (table_name VARCHAR(255) NOT NULL PRIMARY KEY) ENGINE=InnoDB";

/// The lanes of table `t` (`count` of them, `lane` the lane of a row `t`) that have rows a
/// lane's read can find: a nested loop over the lanes (LATERAL), each two index probes that
/// stop at the watermark as the reads do (the settled rows, and those restored from another
/// cluster), so that a large insert still running is not walked. Planned on the lane index
/// by the flusher's session, which has sorts off ([`super::dialect::Lanes::session`]).
fn lanes_with_rows(t: &str, lane: &str, count: u32) -> String {
    let probe = |condition: &str| {
        format!(
            "(SELECT 1 FROM {t} AS t WHERE {lane} = ANY(ARRAY[l::bigint]) AND {condition} \
             ORDER BY {lane}, t.txid, t.id LIMIT 1)"
        )
    };
    format!(
        "SELECT l::bigint FROM generate_series(0, {}) AS l CROSS JOIN LATERAL \
         (SELECT 1 FROM ({} UNION ALL {}) AS found LIMIT 1) AS present",
        count - 1,
        probe("t.txid < pg_snapshot_xmin(pg_current_snapshot())"),
        probe("t.txid >= pg_snapshot_xmax(pg_current_snapshot())")
    )
}

/// `ORDER BY` text for `order`, always ending with `id` as the tie-breaker; each column gets
/// `prefix` (e.g. `t.`). Columns were validated against [`crate::signal::ORDERABLE_COLUMNS`].
fn order_clause(order: &[OrderColumn], prefix: &str, quote: char) -> String {
    let mut parts: Vec<String> = order
        .iter()
        .map(|c| {
            let dir = if c.descending { " DESC" } else { "" };
            format!("{prefix}{quote}{}{quote}{dir}", c.column)
        })
        .collect();
    if !order.iter().any(|c| c.column == "id") {
        parts.push(format!("{prefix}{quote}id{quote}"));
    }
    parts.join(", ")
}

/// The columns read for sending, in [`super::StoredRow`] order, each with `prefix`; `ready`
/// is the condition of the last column: whether the row can be sent now.
fn select_columns(d: &Dialect, prefix: &str, ready: &str) -> String {
    let body = d.read_body.replace("{p}", prefix);
    let ready = d.flag.replace("{c}", ready);
    // The row's age, for the commit-to-acknowledgement latency.
    let age = d
        .age_micros
        .replace("{min}", &format!("{prefix}created_at"));
    format!(
        "{prefix}id, {prefix}message_id, {prefix}topic, {prefix}routing_key, {prefix}headers, \
         {body}, {prefix}content_type, {prefix}attempts, {ready}, {age}, {prefix}ordering_key"
    )
}

impl Statements {
    /// Build the statements of `table` for `dialect`. `order` is the type's `order_by`,
    /// `lock_wait` bounds the ordered flush's waits where the database lets us;
    /// `transaction_pooler`: the database is reached through a pooler in transaction mode
    /// ([`Dialect::behind_transaction_pooler`]).
    pub fn new(
        dialect: &Dialect,
        table: &Ident,
        order: &[OrderColumn],
        lock_wait: Duration,
        transaction_pooler: bool,
    ) -> Self {
        let pooled;
        let d = if transaction_pooler {
            pooled = dialect.behind_transaction_pooler();
            &pooled
        } else {
            dialect
        };
        let shared = |text: String| shared_for(d, text);
        let t = table.quoted(d.quote);
        let now = d.now;
        let now_plus = |ms: &str| d.now_plus_ms.replace("{ms}", ms);
        // Range claims ([`super::dialect::RangeClaimSql`]): `outside` is "not in a live range" for `{p}`.
        let name = table.to_string();
        let ranges = d.range_claims.map(|r| {
            let on_table = |text: &str| {
                text.replace("{t}", &t)
                    .replace("{name}", &name)
                    .replace("{now}", now)
            };
            (r, on_table)
        });
        // "Row `t` is not in a live range" (of any lane, or — `of_lane` — of the bound lane
        // and of all), where there are range claims.
        let outside = |of_lane: bool| {
            ranges.as_ref().map(|(r, on_table)| {
                let live =
                    on_table(r.live).replace("{of_lane}", if of_lane { r.of_lane } else { "" });
                r.outside.replace("{live}", &live).replace("{p}", "t.")
            })
        };
        let outside_of_others = || {
            ranges.as_ref().map(|(r, on_table)| {
                let live = on_table(r.live).replace("{of_lane}", r.not_token);
                r.outside.replace("{live}", &live).replace("{p}", "t.")
            })
        };
        let and_outside = |of_lane: bool| {
            outside(of_lane)
                .map(|c| format!(" AND {c}"))
                .unwrap_or_default()
        };
        // A row can be sent now: not parked, and neither leased (a row lease or a live range
        // claim) nor backing off.
        let sendable = format!(
            "t.parked_at IS NULL AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= {now})"
        );
        let ready = format!("{sendable}{}", and_outside(false));
        // The same for an ordered read of one lane. Without lanes (behind a transaction
        // pooler) an ordered read is of every lane: every live range counts, the lanes' of
        // direct flushers of the same table too.
        let ready_in_lane = format!("{sendable}{}", and_outside(d.lanes.is_some()));
        // Held back by a refusal: parked, or backing off (no claim: a row in flight with
        // another flusher has one, and is met in order by the read, not found by this).
        let held =
            format!("(t.parked_at IS NOT NULL OR (t.claim IS NULL AND t.next_attempt_at > {now}))");
        let cols = select_columns(d, "t.", &ready);
        let claimed_cols = select_columns(d, "", "1 = 1");
        let id_in = d.id_in;
        // An UPDATE of the rows among the bound ids: `set` (columns prefixed with `{s}`, the
        // alias where the database takes one in SET) where `condition` holds.
        let s = if d.update_by_ids.is_some() { "t." } else { "" };
        let by_ids = |set: &str, condition: &str| match d.update_by_ids {
            Some(target) => format!(
                "UPDATE {} SET {set} WHERE {condition}",
                target.replace("{t}", &t)
            ),
            None => format!("UPDATE {t} AS t SET {set} WHERE {id_in} AND {condition}"),
        };
        let order_sql = order_clause(order, "t.", d.quote);
        let stmt = |text: String| Stmt::new(d, &text);

        let c = &d.columns;
        let mut create = vec![shared(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             id {}, message_id {}, topic {} NOT NULL, routing_key {} NULL, headers {} NULL, \
             body {} NOT NULL, content_type {} NULL, created_at {}, attempts {}, \
             next_attempt_at {}, last_error {} NULL, parked_at {}, claim {} NULL, \
             ordering_key {} NULL, last_attempt_at {}{}){}",
            c.id,
            c.message_id,
            c.short_text,
            c.short_text,
            c.long_text,
            c.bytes,
            c.short_text,
            c.created_at,
            c.counter,
            c.time,
            c.long_text,
            c.time,
            c.short_text,
            c.short_text,
            c.time,
            c.extra_columns,
            c.table_options,
        ))];
        if let Some((r, _)) = &ranges {
            create.push(shared(r.create.to_owned()));
        }
        if d.ordered_read == ReadKind::TxidWatermark {
            // flushordered reads in (txid, id) order: an index scan instead of a sort of the
            // whole table per burst.
            create.push(shared(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (txid, id)",
                table.derived("txid_id", d.quote)
            )));
        }
        let add = |column: &'static str, definition: String| {
            (
                column,
                shared(format!("ALTER TABLE {t} ADD COLUMN {column} {definition}")),
            )
        };
        let add_columns = vec![
            add("attempts", c.counter.to_owned()),
            add("next_attempt_at", c.time.to_owned()),
            add("last_error", format!("{} NULL", c.long_text)),
            add("parked_at", c.time.to_owned()),
            add("claim", format!("{} NULL{}", c.short_text, d.claim_index)),
            add(
                "ordering_key",
                format!("{} NULL{}", c.short_text, d.key_index),
            ),
            // When the bus last refused the row (the console's "last attempt").
            add("last_attempt_at", c.time.to_owned()),
        ];
        // Ordered flushing looks up, per key, whether a row of it is held (parked, backing
        // off or in flight): an index of the held rows by key, where the database has
        // partial indexes (MySQL indexes the column with the table, `key_index`).
        let mut after_columns: Vec<SqlStr> = d
            .held_index
            .map(|text| {
                shared(
                    text.replace("{t}", &t)
                        .replace("{name}", &table.derived("held_key", d.quote)),
                )
            })
            .into_iter()
            .collect();
        if let Some(lanes) = &d.lanes {
            after_columns.push(shared(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (({}), txid, id)",
                // Named after the lane count: another count is another expression.
                table.derived(&format!("lane{}", lanes.count), d.quote),
                lanes.expr.replace("{p}", "")
            )));
        }
        after_columns.extend(d.notify_trigger.map(|text| shared(text.replace("{t}", &t))));
        after_columns.extend(
            d.vacuum_settings
                .map(|text| shared(text.replace("{t}", &t))),
        );
        // A lane's rows are read from the lane index alone, whatever the statistics say. The
        // lane is matched with `= ANY(ARRAY[…])`: unlike `=`, which the planner would drop
        // from the order as a constant, it keeps the lane in the order, so that only the lane
        // index gives the rows in order without a sort (sorts are off for the read); and
        // unlike a range (`>=` and `<=`), it lets the index scan stop at the watermark
        // (before PostgreSQL 18, a condition on an index's second column ends a scan only
        // after an equality on the first). With `=` the planner could take the `(txid, id)`
        // index and filter out every other lane's rows: a scan of the whole backlog for each
        // look at an emptier lane.
        let lane_expr = d
            .lanes
            .as_ref()
            .map(|lanes| lanes.expr.replace("{p}", "t."));
        let (lane_filter, lane_order) = match &lane_expr {
            Some(lane) => (
                format!(" AND {lane} = ANY(ARRAY[CAST({{Lane}} AS bigint)])"),
                format!("{lane}, "),
            ),
            None => (String::new(), String::new()),
        };
        // The table's name is a validated identifier (letters, digits, `_`, `.`): safe in
        // the literal of the lane locks.
        let lane_sql = d
            .lanes
            .as_ref()
            .zip(lane_expr.as_ref())
            .map(|(lanes, lane)| LaneSql {
                take: stmt(lanes.take.replace("{table}", &table.to_string())),
                free: stmt(lanes.free.replace("{table}", &table.to_string())),
                with_rows: shared_for(d, lanes_with_rows(&t, lane, lanes.count)),
            });
        let schema = match table.schema() {
            Some(schema) => format!("'{schema}'"),
            None => d.current_schema.to_owned(),
        };
        let columns = shared(
            d.columns_of
                .replace("{schema}", &schema)
                .replace("{name}", table.name()),
        );
        let flush_lock = d.flush_lock_table.then(|| {
            create.push(shared(CREATE_FLUSH_LOCK_TABLE.to_owned()));
            FlushLock {
                take: stmt(
                    "SELECT table_name FROM signalbus_flush_lock WHERE table_name = {Name} FOR UPDATE"
                        .to_owned(),
                ),
                add: stmt(
                    "INSERT IGNORE INTO signalbus_flush_lock (table_name) VALUES ({Name})"
                        .to_owned(),
                ),
                name: table.to_string(),
            }
        });

        let values: Vec<String> = (1..=6).map(|n| d.placeholder(n)).collect();
        let returning = if d.insert_returning {
            " RETURNING id"
        } else {
            ""
        };
        let insert = shared(format!(
            "INSERT INTO {t} (message_id, topic, routing_key, headers, body, content_type, \
             next_attempt_at, ordering_key) VALUES ({}, {}, {}){returning}",
            values.join(", "),
            now_plus(&d.placeholder(7)),
            d.placeholder(8),
        ));

        // A claim: set a lease (the next attempt, should this flusher die) and its token.
        let lease = now_plus("{Lease}");
        let claim = |condition: &str, limit: &str| {
            if d.update_returning {
                let pick = format!(
                    "SELECT t.id FROM {t} AS t WHERE {condition} AND {ready}{limit}{}",
                    d.claim_lock
                );
                stmt(format!(
                    "UPDATE {t} SET next_attempt_at = {lease}, claim = {{Token}} \
                     WHERE {} RETURNING {claimed_cols}",
                    d.picked.replace("{q}", &pick)
                ))
            } else if condition == id_in {
                stmt(by_ids(
                    &format!("t.next_attempt_at = {lease}, t.claim = {{Token}}"),
                    &ready,
                ))
            } else {
                stmt(format!(
                    "UPDATE {t} AS t SET t.next_attempt_at = {lease}, t.claim = {{Token}} \
                     WHERE {condition} AND {ready}{limit}"
                ))
            }
        };
        let claim_ids = claim(id_in, "");
        // One slot row per flusher records a burst's range; the rows are only read.
        let range_claim = |picked: &str, lane: &str| {
            ranges.as_ref().map(|(r, on_table)| {
                stmt(
                    on_table(r.claim)
                        .replace("{lease}", &lease)
                        .replace("{lane}", lane)
                        .replace("{picked}", picked),
                )
            })
        };
        let claimed_all = select_columns(d, "t.", "1 = 1");
        // A range claim of the next sendable rows (and `also` true), lowest ids first.
        let next_rows = |also: &str| {
            range_claim(
                &format!(
                    "SELECT {claimed_all} FROM {t} AS t WHERE {ready}{also} \
                     ORDER BY t.id LIMIT {{Limit}}"
                ),
                "NULL",
            )
        };
        let claim_burst =
            next_rows("").unwrap_or_else(|| claim("1 = 1", " ORDER BY t.id LIMIT {Limit}"));
        // WAL capture's table scan: of the rows with ids up to the bound one.
        let claim_up_to = next_rows(" AND t.id <= {UpTo}");
        // An ordered burst's rows, read in the same transaction under the claim turn.
        // Sendable and outside every live range but the claimer's own.
        let ready_for_token = outside_of_others().map(|c| format!("{sendable} AND {c}"));
        let claim_listed = ready_for_token.as_ref().and_then(|ready| {
            range_claim(
                &format!(
                    "SELECT {claimed_all} FROM {t} AS t WHERE {id_in} AND {ready} ORDER BY t.id"
                ),
                "NULL",
            )
        });
        // Without lanes, an ordered burst's range is of all lanes (NULL), which every lane's
        // read counts: a pooled flusher and direct ones with lanes may share the table.
        // Only the ids: the burst's read (same transaction, under the claim turn) has the
        // rows.
        let claim_lane = range_claim(
            ranges.as_ref().map_or("", |(r, _)| r.listed),
            if d.lanes.is_some() {
                "CAST({Lane} AS integer)"
            } else {
                "NULL"
            },
        );
        // Free for the auto-flush: its own leased rows (no claim token), and rows no lease
        // holds; a live range matters only for a row that was sendable (a range claim takes
        // only those: a row the auto-flush wrote leased is never in one).
        let free = format!(
            "t.parked_at IS NULL AND (t.claim IS NULL OR t.next_attempt_at IS NULL \
             OR t.next_attempt_at <= {now}){}",
            outside(false)
                .map(|c| format!(" AND (t.next_attempt_at > {now} OR {c})"))
                .unwrap_or_default()
        );
        let claim_own = if d.update_returning {
            let pick = format!(
                "SELECT t.id FROM {t} AS t WHERE {id_in} AND {free}{}",
                d.claim_lock
            );
            stmt(format!(
                "UPDATE {t} SET next_attempt_at = {lease}, claim = {{Token}} WHERE {} RETURNING id",
                d.picked.replace("{q}", &pick)
            ))
        } else {
            stmt(by_ids(
                &format!("t.next_attempt_at = {lease}, t.claim = {{Token}}"),
                &free,
            ))
        };
        let read_claimed_ids = (!d.update_returning)
            .then(|| stmt(format!("SELECT id FROM {t} WHERE claim = {{Token}}")));
        let read_claimed = (!d.update_returning).then(|| {
            stmt(format!(
                "SELECT {claimed_cols} FROM {t} WHERE claim = {{Token}} ORDER BY id"
            ))
        });
        let refuse = if d.update_by_ids.is_some() {
            // MySQL: by primary key (a single-table UPDATE with `id IN (SELECT … JSON_TABLE)`
            // is run as a scan of the whole table per statement: quadratic in an incident).
            // A multi-table UPDATE evaluates its assignments in no given order, so whether
            // the rows park is decided by the bound `{Refusals}`, not by `t.attempts`.
            stmt(by_ids(
                &format!(
                    "{s}next_attempt_at = CASE WHEN {{Refusals}} >= {{Max}} THEN NULL ELSE {} END, \
                     {s}parked_at = CASE WHEN {{Refusals}} >= {{Max}} THEN {now} ELSE NULL END, \
                     {s}last_error = {{Error}}, {s}last_attempt_at = {now}, {s}claim = NULL, \
                     {s}attempts = t.attempts + 1",
                    now_plus("{Delay}")
                ),
                "1 = 1",
            ))
        } else {
            // Assignments in this order: a single-table UPDATE evaluates them left to right
            // (MySQL's rule; the others see old values anyway), so `attempts` comes last for
            // the others to see its old value.
            stmt(format!(
                "UPDATE {t} AS t SET \
                 next_attempt_at = CASE WHEN t.attempts + 1 >= {{Max}} THEN NULL ELSE {} END, \
                 parked_at = CASE WHEN t.attempts + 1 >= {{Max}} THEN {now} ELSE NULL END, \
                 last_error = {{Error}}, last_attempt_at = {now}, claim = NULL, \
                 attempts = t.attempts + 1 WHERE {id_in}",
                now_plus("{Delay}")
            ))
        };
        let release = stmt(by_ids(
            &format!("{s}next_attempt_at = NULL, {s}claim = NULL"),
            "1 = 1",
        ));
        let defer = stmt(by_ids(
            &format!(
                "{s}next_attempt_at = {}, {s}last_error = {{Error}}, {s}claim = NULL",
                now_plus("{Delay}")
            ),
            "1 = 1",
        ));
        // A key with a row held back by a refusal is skipped whole: nothing of it may overtake
        // that row, while the other keys go on. (A key with a row in flight is read, and
        // skipped from there on, by the burst's pick.) Rows without a key are one sequence.
        // The held keys are read first ({Keys}, {NullHeld}); each row is then checked against
        // that set, never by a probe of the table per row.
        // MySQL compares keys in the column's collation, which may fold distinct keys into
        // one (case, accents, trailing spaces): there every held row's key is read and the
        // set is made in Rust, byte for byte.
        let distinct = if d.update_by_ids.is_some() {
            ""
        } else {
            "DISTINCT "
        };
        let held_keys = stmt(format!(
            "SELECT {distinct}t.ordering_key FROM {t} AS t WHERE {}",
            d.held_rows
                .replace("{held}", &held)
                .replace("{index}", HELD_INDEX_PREDICATE)
        ));
        let unheld = format!(
            "(CASE WHEN t.ordering_key IS NULL THEN {{NullHeld}} = 0 ELSE {} END)",
            d.key_not_in
        );
        let read = match d.ordered_read {
            ReadKind::TxidWatermark => {
                let ms = lock_wait.as_millis().clamp(1, i32::MAX as u128);
                // The table name is a validated identifier (letters, digits, `_`, `.`), safe
                // inside the literal.
                // With lanes, a lane's session lock keeps other ordered flushers out of its
                // rows; without, they take turns per table.
                // Index scans only, and no sort: the read must not turn into a scan of the
                // whole table per burst because the statistics say the table is small (they
                // are stale right after a bulk insert, and never refreshed without
                // autovacuum); a lane's read has one index that gives its order (above).
                // No JIT: a plan costed with a path switched off looks expensive enough to
                // compile, which takes longer than the read.
                // Bounded: the lock wait plus a margin for the read itself; and the
                // client's socket checked while it runs (PostgreSQL 14+; skipped where the
                // server does not have it), so that a flusher that went away leaves no
                // statement holding its snapshot.
                let plan = format!(
                    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
                     SET LOCAL enable_sort = off; SET LOCAL enable_incremental_sort = on; \
                     SET LOCAL jit = off; \
                     SET LOCAL statement_timeout = {}; \
                     DO $check$ BEGIN PERFORM set_config('client_connection_check_interval', \
                     '1s', true); EXCEPTION WHEN OTHERS THEN NULL; END $check$",
                    ms + 30_000
                );
                // An ordered burst claims a range of its lane: the claim turn, taken before
                // the read's snapshot and held until the claim commits (see
                // [`super::dialect::RangeClaimSql`]); no other claim runs meanwhile, so the
                // read locks no row.
                let claim_turn = match &ranges {
                    Some((r, on_table)) => format!("; {}", on_table(r.turn)),
                    None => String::new(),
                };
                // (`plan` already plans the read on indexes, as the range claims' own `plan`
                // does.)
                let row_locks = if ranges.is_some() { "" } else { d.ordered_lock };
                let turn = shared(if d.lanes.is_some() {
                    format!("SET LOCAL lock_timeout = {ms}; {plan}{claim_turn}")
                } else {
                    format!(
                        "SET LOCAL lock_timeout = {ms}; {plan}; \
                         SELECT pg_advisory_xact_lock(hashtextextended('signalbus.ordered.{table}', 0)){claim_turn}"
                    )
                });
                // Whether each row can be sent: ranges of its lane count (the read is of one),
                // or every range without lanes (the read is of all).
                let cols = select_columns(d, "t.", &ready_in_lane);
                let read = |condition: &str| {
                    stmt(format!(
                        "SELECT {cols} FROM {t} AS t WHERE {condition} \
                         ORDER BY {lane_order}t.txid, {order_sql} LIMIT {{Limit}}{row_locks}"
                    ))
                };
                Ordered::Watermark {
                    turn,
                    restored: read(&format!(
                        "t.txid >= pg_snapshot_xmax(pg_current_snapshot()){lane_filter} AND {unheld}"
                    )),
                    settled: read(&format!(
                        "t.txid < pg_snapshot_xmin(pg_current_snapshot()){lane_filter} AND {unheld}"
                    )),
                }
            }
            ReadKind::Locking => Ordered::Locking(stmt(format!(
                "SELECT {cols} FROM {t} AS t WHERE {unheld} ORDER BY {order_sql} LIMIT {{Limit}}{}",
                d.ordered_lock
            ))),
        };
        let age = |condition: &str| {
            d.age_micros.replace(
                "{min}",
                &format!("MIN(CASE WHEN {condition} THEN t.created_at END)"),
            )
        };
        // Refused at least once, or deferred (given back with a due time, no attempt spent).
        // (`last_error` tells a deferred row from one written with the auto-flush's lease.)
        let backing_off = "t.parked_at IS NULL AND (t.attempts > 0 OR (t.claim IS NULL AND \
                           t.next_attempt_at IS NOT NULL AND t.last_error IS NOT NULL))";
        let parked = "t.parked_at IS NOT NULL";
        let pending_stats = shared(format!(
            "SELECT COUNT(*), {}, COUNT(CASE WHEN {backing_off} THEN 1 END), {}, \
             COUNT(CASE WHEN {parked} THEN 1 END), {} FROM {t} AS t",
            age("1 = 1"),
            age(backing_off),
            age(parked),
        ));
        Statements {
            create,
            columns,
            add_columns,
            insert,
            claim_ids,
            claim_burst,
            read_claimed,
            claim_own,
            read_claimed_ids,
            refuse,
            release,
            defer,
            ordered: OrderedRead { held_keys, read },
            delete_ids: stmt(d.delete_by_ids.replace("{t}", &t)),
            after_columns,
            lanes: d.lanes.as_ref().map_or(1, |l| l.count),
            lane_sql,

            pending_ids: shared(format!("SELECT id FROM {t} AS t WHERE {ready} ORDER BY id")),
            in_flight: shared(match &ranges {
                Some((r, on_table)) => format!(
                    "SELECT (SELECT COUNT(*) FROM {t} AS t WHERE t.claim IS NOT NULL \
                     AND t.next_attempt_at > {now}) + cardinality({})",
                    on_table(r.live).replace("{of_lane}", "")
                ),
                None => format!(
                    "SELECT COUNT(*) FROM {t} AS t WHERE t.claim IS NOT NULL AND t.next_attempt_at > {now}"
                ),
            }),
            range_claims: ranges
                .as_ref()
                .zip(claim_lane.zip(claim_listed.zip(claim_up_to)))
                .map(
                    |((r, on_table), (claim_lane, (claim_listed, claim_up_to)))| RangeClaims {
                        turn: shared(format!("{}; {}", r.plan, on_table(r.turn))),
                        shared_turn: shared(format!("{}; {}", r.plan, on_table(r.shared_turn))),
                        claim_lane,
                        claim_listed,
                        claim_up_to,
                        last_id: shared(on_table(r.last_id)),
                        free: stmt(on_table(r.free)),
                    },
                ),
            pending_stats,
            parked: stmt(format!(
                "SELECT t.id, t.message_id, t.attempts, t.last_error, {}, t.ordering_key \
                 FROM {t} AS t WHERE {parked} ORDER BY t.id LIMIT {{Limit}}",
                d.age_micros.replace("{min}", "t.parked_at")
            )),
            unpark_ids: stmt(by_ids(
                &format!(
                    "{s}parked_at = NULL, {s}next_attempt_at = NULL, {s}last_error = NULL, \
                     {s}claim = NULL, {s}attempts = 0"
                ),
                parked,
            )),
            unpark_all: shared(format!(
                "UPDATE {t} AS t SET parked_at = NULL, next_attempt_at = NULL, last_error = NULL, \
                 claim = NULL, attempts = 0 WHERE {parked}"
            )),
            // Backing off: refused before (an attempt or an error). A row claimed by a
            // flusher (a token in `claim`) is left to it; so is one an auto-flush is sending
            // (a lease in `next_attempt_at`, no attempt, no error). A row in a range claim
            // has no `claim`: made due, it changes nothing its burst's settle does not
            // overwrite.
            retry_ids: stmt(by_ids(
                &format!("{s}next_attempt_at = NULL"),
                "t.parked_at IS NULL AND t.claim IS NULL AND t.next_attempt_at IS NOT NULL \
                 AND (t.attempts > 0 OR t.last_error IS NOT NULL)",
            )),
            purge_ids: stmt(match d.update_by_ids {
                Some(target) => format!(
                    "DELETE t FROM {} WHERE t.parked_at IS NOT NULL",
                    target.replace("{t}", &t)
                ),
                None => format!(
                    "DELETE FROM {t} WHERE parked_at IS NOT NULL AND {}",
                    // DELETE takes no table alias everywhere: the condition on the bare name.
                    id_in.replacen("t.id", "id", 1)
                ),
            }),
            purge_all: shared(format!("DELETE FROM {t} WHERE parked_at IS NOT NULL")),
            flush_lock,
            watermark_held: d.watermark_held.map(|text| shared(text.replace("{t}", &t))),
            watermark_holder: d.watermark_holder.map(|text| shared(text.to_owned())),
            // The name is a validated identifier (letters, digits, `_`): safe in the literal.
            wake_relays: d
                .wake_relays
                .map(|text| shared(text.replace("{name}", table.name()))),
            // The quoted name inside a literal: validated identifiers hold no `'`.
            idle_gate: d.idle_gate.map(|g| {
                let on_table = |text: &str| shared(text.replace("{t}", &t));
                IdleGate {
                    setup: on_table(g.setup),
                    lock: on_table(g.lock),
                    unlock: on_table(g.unlock),
                    held_elsewhere: on_table(g.held_elsewhere),
                }
            }),
        }
    }
}
