//! MySQL 8 and MariaDB ≥ 10.6.
//!
//! Flush transactions run at READ COMMITTED (no gap locks, so writers are never blocked by a
//! flush) and take a per-table lock row in `signalbus_flush_lock` first, so flushers of one
//! table run one after the other. We do not rely on `SKIP LOCKED` here: under concurrent
//! flushers MariaDB 10.11 was seen to hand one row to two of them (a deadlock on the delete,
//! and a duplicate send), and to skip rows whose inserting transaction had already committed,
//! leaving them pending. Serialized flushers are exact; several `flushmany` processes are
//! still safe, they just take turns.
//!
//! Rows are addressed by id through `JSON_TABLE(?) STRAIGHT_JOIN table`: one primary-key
//! lookup per id, whatever the optimizer thinks of the table's size (a plain `id IN (...)`
//! may be run as a scan that locks rows it does not return).

use super::dialect::{ColumnTypes, Dialect, InboxSql, OrderedRead, Placeholders, lock_clause};
use super::json_ids;
use crate::locking::{Isolation, SqliteBegin};
use sqlx::MySql;
use sqlx::error::DatabaseError;
use std::time::Duration;

/// The bound JSON array of ids as a table `x(id)`, joined to the signal table.
macro_rules! by_ids {
    () => {
        "JSON_TABLE({Ids}, '$[*]' COLUMNS (id BIGINT PATH '$')) AS x STRAIGHT_JOIN {t} AS t ON t.id = x.id"
    };
}

pub(crate) const DIALECT: Dialect = Dialect {
    quote: '`',
    placeholders: Placeholders::Question,
    columns: ColumnTypes {
        id: "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        // A random (v4) UUID in canonical form, as on the other databases (`UUID()` is v1).
        message_id: "VARCHAR(64) NOT NULL DEFAULT (LOWER(CONCAT(HEX(RANDOM_BYTES(4)), '-', \
                     HEX(RANDOM_BYTES(2)), '-4', SUBSTR(HEX(RANDOM_BYTES(2)), 2), '-', \
                     HEX(ASCII(RANDOM_BYTES(1)) & 63 | 128), HEX(RANDOM_BYTES(1)), '-', \
                     HEX(RANDOM_BYTES(6)))))",
        short_text: "VARCHAR(255)",
        long_text: "TEXT",
        bytes: "LONGBLOB",
        created_at: "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        time: "DATETIME(6) NULL",
        counter: "BIGINT NOT NULL DEFAULT 0",
        // A claim is read back by its token (no UPDATE … RETURNING here).
        extra_columns: ", INDEX signalbus_claim (claim), INDEX signalbus_key (ordering_key)",
        table_options: " ENGINE=InnoDB",
    },
    read_body: "{p}body",
    now: "NOW(6)",
    now_plus_ms: "NOW(6) + INTERVAL ({ms} * 1000) MICROSECOND",
    flag: "CAST(({c}) AS SIGNED)",
    int8: "CAST({e} AS SIGNED)",
    header_value: "CASE WHEN JSON_VALID(t.headers) THEN JSON_UNQUOTE(JSON_EXTRACT(t.headers, {name})) END",
    header_by_path: true,
    header_contains: None,
    inspect_setup: None,
    begin_read: "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION",
    id_in: "t.id IN (SELECT x.id FROM JSON_TABLE({Ids}, '$[*]' COLUMNS (id BIGINT PATH '$')) AS x)",
    picked: "id IN ({q})",
    update_by_ids: Some(by_ids!()),
    update_returning: false,
    columns_of: "SELECT column_name FROM information_schema.columns \
                 WHERE table_schema = {schema} AND table_name = '{name}'",
    current_schema: "DATABASE()",
    delete_by_ids: concat!("DELETE t FROM ", by_ids!()),
    // A claim's UPDATE waits at most for another claim's (short, autocommitted) UPDATE, and
    // then passes the rows that one took (a semi-consistent read at READ COMMITTED).
    claim_lock: "",
    ordered_lock: " FOR UPDATE",
    ordered_read: OrderedRead::Locking,
    insert_returning: false,
    flush_lock_table: true,
    age_micros: "TIMESTAMPDIFF(MICROSECOND, {min}, NOW(6))",
    key_index: ", ADD INDEX signalbus_key (ordering_key)",
    unnamed_statements: false,
    lanes: None,
    own_connections: true,
    own_session: None,
    held_rows: "{held}",
    key_not_in: "CAST(t.ordering_key AS BINARY) NOT IN (SELECT CAST(h.k AS BINARY) FROM \
                 JSON_TABLE({Keys}, '$[*]' COLUMNS (k VARCHAR(255) PATH '$')) AS h)",
    held_index: None,
    notify_trigger: None,
    claim_index: ", ADD INDEX signalbus_claim (claim)",
    // One statement, so that a cancelled begin cannot leave READ COMMITTED pending for the
    // connection's next (business) transaction. READ COMMITTED takes no gap locks.
    begin_async: None,
    connection_id: Some("SELECT CAST(CONNECTION_ID() AS SIGNED)"),
    watermark_held: None,
    watermark_holder: None,
    wake_relays: None,
    idle_gate: None,
    range_claims: None,
    vacuum_settings: None,
    begin_flush: "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION",
    begin_write: None,
    default_publish_timeout: Duration::from_secs(30),
    is_conflict,
    begin_atomic,
    // `LOCK IN SHARE MODE` rather than `FOR SHARE`, which MariaDB does not know.
    row_lock: |lock| {
        lock_clause(
            lock,
            [
                " LOCK IN SHARE MODE",
                " LOCK IN SHARE MODE NOWAIT",
                " LOCK IN SHARE MODE SKIP LOCKED",
            ],
        )
    },
    // 191 characters: the two key columns fit InnoDB's index limit in utf8mb4. IGNORE only
    // meets duplicate keys here: ids longer than the column are refused before the insert.
    inbox: InboxSql {
        key: "VARCHAR(191)",
        create: "CREATE TABLE IF NOT EXISTS {t} (consumer {key} NOT NULL, message_id {key} NOT NULL, \
                 received_at {received}, PRIMARY KEY (consumer, message_id), \
                 KEY {index} (consumer, received_at)){options}",
        insert: "INSERT IGNORE INTO {t} (consumer, message_id) VALUES ({p1}, {p2})",
        prune: "DELETE FROM {t} WHERE consumer = {p1} AND received_at < {older} \
                ORDER BY received_at LIMIT {limit}",
    },
};

/// By error number (the SQLSTATE of 1205 is the generic HY000): 1213 deadlock, 1205 lock
/// wait timeout (also MariaDB's NOWAIT), 3572 MySQL's NOWAIT, 1020 MariaDB's
/// snapshot-isolation conflict (`innodb_snapshot_isolation=ON`).
fn is_conflict(error: &dyn DatabaseError) -> bool {
    error
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|e| matches!(e.number(), 1213 | 1205 | 3572 | 1020))
}

/// The level and the begin in one statement: a begin cancelled between two statements would
/// leave the level set for the connection's next transaction.
fn begin_atomic(level: Isolation, _: SqliteBegin) -> Option<&'static str> {
    match level {
        Isolation::DatabaseDefault => None,
        Isolation::ReadCommitted => {
            Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        }
        Isolation::RepeatableRead => {
            Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION")
        }
        Isolation::Serializable => {
            Some("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION")
        }
    }
}

super::store!(MySql, DIALECT, ids: json_ids, texts: super::json_texts, insert: last_insert_id, listen: crate::storage::listen::no_listener, connect: crate::storage::database_url::server_options, feature: "mysql");
