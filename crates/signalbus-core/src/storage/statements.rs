//! Every statement signalbus runs on one signal table, built once when the type is registered
//! (from the database's [`Dialect`], the validated table name and the type's order), so that
//! no SQL text is rebuilt per call.

use super::dialect::{BurstRead, Dialect, OrderedRead};
use crate::ident::Ident;
use crate::signal::OrderColumn;
use sqlx::{AssertSqlSafe, SqlStr};
use std::sync::Arc;
use std::time::Duration;

/// SQL text built once and shared by every call (cloning it is a reference-count increment).
fn sql(text: String) -> SqlStr {
    sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(Arc::<str>::from(text)))
}

/// The statements of one signal table.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// `CREATE TABLE IF NOT EXISTS …` and what goes with it (indexes, the lock table), in
    /// order.
    pub create: Vec<SqlStr>,
    /// Insert one row; binds message_id, topic, routing_key, headers, body, content_type.
    pub insert: SqlStr,
    /// Claim (lock and read) the rows among the bound ids.
    pub lock_ids: SqlStr,
    /// Claim and delete the rows among the bound ids in one go, returning them.
    pub take_ids: Option<SqlStr>,
    /// Claim up to the bound limit of rows, lowest ids first (or just their ids, see
    /// [`BurstRead`]).
    pub burst: SqlStr,
    /// The statements of `flushordered`.
    pub ordered: Ordered,
    /// Delete the rows among the bound ids.
    pub delete_ids: SqlStr,
    /// The ids of all rows, ascending.
    pub pending_ids: SqlStr,
    /// Count of rows and age of the oldest in microseconds.
    pub pending_stats: SqlStr,
    /// Take this table's turn among flushers (MySQL); binds the table name.
    pub flush_lock: Option<FlushLock>,
}

/// `flushordered`'s statements.
#[derive(Debug, Clone)]
pub(crate) enum Ordered {
    /// PostgreSQL: take the table's ordered turn (bounded wait), then read rows restored from
    /// another cluster (`txid` ahead of this one), then settled rows.
    Watermark {
        turn: SqlStr,
        restored: SqlStr,
        settled: SqlStr,
    },
    /// A locking read in order.
    Locking(SqlStr),
}

/// The per-table lock row of `signalbus_flush_lock`.
#[derive(Debug, Clone)]
pub(crate) struct FlushLock {
    /// Lock the row; returns the table name when the row exists.
    pub take: SqlStr,
    /// Add the row (by `migrate`, and on first use for a table created by other means).
    pub add: SqlStr,
    /// The table's name in the lock table.
    pub name: String,
}

/// The lock table of [`FlushLock`], created by `migrate` outside any transaction (on MySQL any
/// DDL commits the open transaction).
const CREATE_FLUSH_LOCK_TABLE: &str = "CREATE TABLE IF NOT EXISTS signalbus_flush_lock \
     (table_name VARCHAR(255) NOT NULL PRIMARY KEY) ENGINE=InnoDB";

/// `ORDER BY` text for `order`, always ending with `id` as the tie-breaker; each column gets
/// `prefix` (e.g. `t.`). Columns were validated against [`super::ORDERABLE_COLUMNS`].
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

/// The columns read for sending, in [`super::StoredRow`] order, each with `prefix`.
fn select_columns(d: &Dialect, prefix: &str) -> String {
    let body = d.read_body.replace("{p}", prefix);
    format!(
        "{prefix}id, {prefix}message_id, {prefix}topic, {prefix}routing_key, {prefix}headers, \
         {body}, {prefix}content_type"
    )
}

impl Statements {
    /// Build the statements of `table` for `dialect`. `order` is the type's `order_by`,
    /// `lock_wait` bounds the ordered flush's waits where the database lets us.
    pub fn new(
        dialect: &Dialect,
        table: &Ident,
        order: &[OrderColumn],
        lock_wait: Duration,
    ) -> Self {
        let d = dialect;
        let t = table.quoted(d.quote);
        let p1 = d.placeholder(1);
        let cols = select_columns(d, "t.");
        let by_ids = d.rows_by_ids.replace("{t}", &t).replace("{p}", &p1);
        let order_sql = order_clause(order, "t.", d.quote);

        let c = &d.columns;
        let mut create = vec![sql(format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             id {}, message_id {}, topic {} NOT NULL, routing_key {} NULL, headers {} NULL, \
             body {} NOT NULL, content_type {} NULL, created_at {}{}){}",
            c.id,
            c.message_id,
            c.short_text,
            c.short_text,
            c.long_text,
            c.bytes,
            c.short_text,
            c.created_at,
            c.extra_columns,
            c.table_options,
        ))];
        if d.ordered_read == OrderedRead::TxidWatermark {
            // flushordered reads in (txid, id) order: an index scan instead of a sort of the
            // whole table per burst.
            create.push(sql(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (txid, id)",
                table.derived("txid_id", d.quote)
            )));
        }
        let flush_lock = d.flush_lock_table.then(|| {
            create.push(sql(CREATE_FLUSH_LOCK_TABLE.to_owned()));
            FlushLock {
                take: sql(format!(
                    "SELECT table_name FROM signalbus_flush_lock WHERE table_name = {p1} FOR UPDATE"
                )),
                add: sql(format!(
                    "INSERT IGNORE INTO signalbus_flush_lock (table_name) VALUES ({p1})"
                )),
                name: table.to_string(),
            }
        });

        let values: Vec<String> = (1..=6).map(|n| d.placeholder(n)).collect();
        let returning = if d.insert_returning {
            " RETURNING id"
        } else {
            ""
        };
        let insert = sql(format!(
            "INSERT INTO {t} (message_id, topic, routing_key, headers, body, content_type) \
             VALUES ({}){returning}",
            values.join(", ")
        ));

        let lock_ids = sql(format!(
            "SELECT {cols} FROM {by_ids} ORDER BY t.id{}",
            d.claim_lock
        ));
        let take_ids = d.delete_returning.then(|| {
            // Claim (skipping rows another flusher holds) and delete in one statement.
            let plain_cols = select_columns(d, "");
            sql(format!(
                "DELETE FROM {t} WHERE id IN (SELECT t.id FROM {by_ids}{}) RETURNING {plain_cols}",
                d.claim_lock
            ))
        });
        let burst = match d.burst_read {
            BurstRead::Select => sql(format!(
                "SELECT {cols} FROM {t} AS t ORDER BY t.id LIMIT {p1}{}",
                d.claim_lock
            )),
            BurstRead::IdsThenRows => sql(format!("SELECT id FROM {t} ORDER BY id LIMIT {p1}")),
        };
        let ordered = match d.ordered_read {
            OrderedRead::TxidWatermark => {
                let ms = lock_wait.as_millis().clamp(1, i32::MAX as u128);
                // The table name is a validated identifier (letters, digits, `_`, `.`), safe
                // inside the literal.
                let turn = sql(format!(
                    "SET LOCAL lock_timeout = {ms}; \
                     SELECT pg_advisory_xact_lock(hashtextextended('signalbus.ordered.{table}', 0))"
                ));
                let read = |condition: &str| {
                    sql(format!(
                        "SELECT {cols} FROM {t} AS t WHERE {condition} \
                         ORDER BY t.txid, {order_sql} LIMIT {p1}{}",
                        d.ordered_lock
                    ))
                };
                Ordered::Watermark {
                    turn,
                    restored: read("t.txid >= pg_snapshot_xmax(pg_current_snapshot())"),
                    settled: read("t.txid < pg_snapshot_xmin(pg_current_snapshot())"),
                }
            }
            OrderedRead::Locking => Ordered::Locking(sql(format!(
                "SELECT {cols} FROM {t} AS t ORDER BY {order_sql} LIMIT {p1}{}",
                d.ordered_lock
            ))),
        };
        Statements {
            create,
            insert,
            lock_ids,
            take_ids,
            burst,
            ordered,
            delete_ids: sql(d.delete_by_ids.replace("{t}", &t).replace("{p}", &p1)),
            pending_ids: sql(format!("SELECT id FROM {t} ORDER BY id")),
            pending_stats: sql(format!(
                "SELECT COUNT(*), {} FROM {t} AS t",
                d.oldest_age_micros
            )),
            flush_lock,
        }
    }
}
