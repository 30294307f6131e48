//! SQLite: one writer at a time. A flush takes the write lock up front (`BEGIN IMMEDIATE`),
//! so two flushers never read the same rows; there is no `SKIP LOCKED` and none is needed.

use super::dialect::{ColumnTypes, Dialect, InboxSql, OrderedRead, Placeholders};
use super::json_ids;
use crate::locking::{Isolation, SqliteBegin};
use sqlx::Sqlite;
use sqlx::error::DatabaseError;
use std::time::Duration;

/// Milliseconds since the Unix epoch, by the database's clock.
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

pub(crate) const DIALECT: Dialect = Dialect {
    quote: '"',
    placeholders: Placeholders::Question,
    columns: ColumnTypes {
        id: "INTEGER PRIMARY KEY AUTOINCREMENT",
        // A random (v4) UUID in canonical form, as on the other databases.
        message_id: "TEXT NOT NULL DEFAULT (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) \
                     || '-4' || substr(hex(randomblob(2)), 2) || '-' \
                     || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) \
                     || '-' || hex(randomblob(6))))",
        short_text: "TEXT",
        long_text: "TEXT",
        bytes: "BLOB",
        created_at: concat!("INTEGER NOT NULL DEFAULT (", now_ms!(), ")"),
        time: "INTEGER NULL",
        counter: "INTEGER NOT NULL DEFAULT 0",
        extra_columns: "",
        table_options: "",
    },
    // A BLOB even when a foreign writer stored the body as TEXT.
    read_body: "CAST({p}body AS BLOB)",
    now: now_ms!(),
    now_plus_ms: concat!("(", now_ms!(), " + {ms})"),
    flag: "({c})",
    int8: "({e})",
    header_value: "CASE WHEN json_valid(t.headers) THEN json_extract(t.headers, {name}) END",
    header_by_path: true,
    header_contains: None,
    inspect_setup: None,
    begin_read: "BEGIN",
    id_in: "t.id IN (SELECT value FROM json_each({Ids}))",
    picked: "id IN ({q})",
    update_by_ids: None,
    update_returning: true,
    columns_of: "SELECT name FROM pragma_table_info('{name}', {schema})",
    current_schema: "'main'",
    delete_by_ids: "DELETE FROM {t} WHERE id IN (SELECT value FROM json_each({Ids}))",
    // A claim is one statement, and SQLite runs one writer at a time.
    claim_lock: "",
    // Nobody is half-way: every row is committed, in commit order by id.
    ordered_lock: "",
    ordered_read: OrderedRead::Locking,
    insert_returning: true,
    flush_lock_table: false,
    age_micros: concat!("(", now_ms!(), " - {min}) * 1000"),
    key_index: "",
    unnamed_statements: false,
    lanes: None,
    own_connections: false,
    own_session: None,
    held_rows: "({index}) AND {held}",
    key_not_in: "t.ordering_key NOT IN (SELECT value FROM json_each({Keys}))",
    held_index: Some(
        "CREATE INDEX IF NOT EXISTS {name} ON {t} (ordering_key) WHERE parked_at IS NOT NULL OR (claim IS NULL AND next_attempt_at IS NOT NULL)",
    ),
    notify_trigger: None,
    claim_index: "",
    begin_async: None,
    connection_id: None,
    watermark_held: None,
    watermark_holder: None,
    wake_relays: None,
    idle_gate: None,
    range_claims: None,
    vacuum_settings: None,
    begin_flush: "BEGIN IMMEDIATE",
    // A signalbus transaction writes anyway, and taking the write lock up front waits
    // (busy_timeout) instead of failing with SQLITE_BUSY_SNAPSHOT when a flush committed
    // between this transaction's first read and its first write.
    begin_write: Some("BEGIN IMMEDIATE"),
    // Short, as in the days when a flush held the database's one write lock while it
    // published (no flush does now): the publish timeout also bounds a claim's lease.
    default_publish_timeout: Duration::from_secs(3),
    is_conflict,
    begin_atomic,
    // SQLite has no row locks: a write transaction locks the whole database.
    row_lock: |_| "",
    inbox: InboxSql {
        key: "TEXT",
        create: super::dialect::INBOX_CREATE,
        insert: "INSERT OR IGNORE INTO {t} (consumer, message_id) VALUES ({p1}, {p2})",
        prune: "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE consumer = {p1} \
                AND received_at < {older} LIMIT {limit})",
    },
};

/// SQLITE_BUSY and SQLITE_LOCKED with all their extended codes (e.g. 517, BUSY_SNAPSHOT: a
/// read transaction that cannot become a writer).
fn is_conflict(error: &dyn DatabaseError) -> bool {
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// SQLite transactions are always serializable; only the locking start differs.
fn begin_atomic(_: Isolation, begin: SqliteBegin) -> Option<&'static str> {
    Some(match begin {
        SqliteBegin::Deferred => "BEGIN DEFERRED",
        SqliteBegin::Immediate => "BEGIN IMMEDIATE",
        SqliteBegin::Exclusive => "BEGIN EXCLUSIVE",
    })
}

super::store!(Sqlite, DIALECT, ids: json_ids, texts: super::json_texts, insert: returning, listen: crate::storage::listen::no_listener, connect: crate::storage::database_url::sqlite_options, feature: "sqlite");
