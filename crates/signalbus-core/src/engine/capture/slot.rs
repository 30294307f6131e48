//! The replication slot and publication of a WAL-capturing relay: checks before streaming
//! (each failure has one message that says what to do), creating what is missing, and
//! reading a replication error's SQLSTATE.

use sqlx::PgPool;
use std::time::Duration;

/// Why a capture attempt ended without streaming.
#[derive(Debug)]
pub(super) enum Problem {
    /// It cannot work until an operator acts: the relay goes on in table mode.
    Fatal(String),
    /// It may work in a moment (a connection lost, a server restarting, a busy server).
    Retry(String),
}

/// How long a set-up statement may take: creating a slot waits for the transactions open on
/// the server.
const SETUP_TIMEOUT: &str = "30s";

fn retry(what: &str, e: &sqlx::Error) -> Problem {
    Problem::Retry(format!("{what}: {e}"))
}

/// A signal table: its schema when given, its name (validated identifiers).
pub(super) type Table = (Option<String>, String);

fn quoted((schema, name): &Table) -> String {
    match schema {
        Some(schema) => format!("\"{schema}\".\"{name}\""),
        None => format!("\"{name}\""),
    }
}

/// Check the server, then make sure the publication over `tables` and the slot exist (both
/// named `slot`). `known` says whether this relay streamed from the slot before: a slot that
/// is gone then was dropped by someone else, which is reported, not silently repaired.
pub(super) async fn prepare(
    pool: &PgPool,
    slot: &str,
    tables: &[Table],
    known: bool,
) -> Result<(), Problem> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| retry("cannot reach the database", &e))?;
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(SETUP_TIMEOUT)
        .execute(&mut *tx)
        .await
        .map_err(|e| retry("cannot set a statement timeout", &e))?;
    let (wal_level, can, keep, version): (String, Option<bool>, String, i32) = sqlx::query_as(
        "SELECT current_setting('wal_level'), \
         (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), \
         current_setting('max_slot_wal_keep_size'), \
         current_setting('server_version_num')::int",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| retry("cannot read the server's settings", &e))?;
    // The setting itself, not whether decoding happens to be on (PostgreSQL 19 turns it on
    // for a first slot under wal_level = replica).
    if wal_level != "logical" {
        return Err(Problem::Fatal(format!(
            "the server runs with wal_level = {wal_level}; WAL capture needs wal_level = logical \
             (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    if can != Some(true) {
        return Err(Problem::Fatal(
            "the database role may not stream the WAL: give it the REPLICATION attribute \
             (ALTER ROLE <role> REPLICATION) or connect as a superuser"
                .to_owned(),
        ));
    }
    if keep == "-1" {
        tracing::warn!(
            slot,
            "max_slot_wal_keep_size is unlimited: a relay stopped for long makes the server keep WAL until its disk fills; set a bound (ALTER SYSTEM SET max_slot_wal_keep_size = '10GB') — the signals stay in their tables whatever happens to the slot"
        );
    }
    ensure_publication(&mut tx, slot, tables, version >= 150_000).await?;
    tx.commit()
        .await
        .map_err(|e| retry("cannot create the publication", &e))?;
    ensure_slot(pool, slot, known).await
}

/// The publication of the slot: created over `tables` (with only the columns the relay reads
/// when `columns`: PostgreSQL 15 and later) when missing. One that exists gets the tables it
/// lacks (a table dropped and made again leaves its publications); one that covers other
/// tables belongs to relays of other signal types sharing the slot, and this one says so.
async fn ensure_publication(
    tx: &mut sqlx::PgConnection,
    name: &str,
    tables: &[Table],
    columns: bool,
) -> Result<(), Problem> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| retry("cannot read the publications", &e))?;
    if exists.is_some() {
        let covered: Vec<(String, String)> = sqlx::query_as(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| retry("cannot read the publication's tables", &e))?;
        let ours = |(s, t): &(String, String)| {
            tables
                .iter()
                .any(|(schema, table)| t == table && schema.as_ref().is_none_or(|x| x == s))
        };
        let foreign: Vec<String> = covered
            .iter()
            .filter(|c| !ours(c))
            .map(|(s, t)| format!("{s}.{t}"))
            .collect();
        if !foreign.is_empty() {
            return Err(Problem::Fatal(format!(
                "the publication `{name}` of this slot covers other tables ({}): relays that \
                 share a slot must relay the same signal types; give this relay a slot of its \
                 own (--slot), or drop the publication if nothing uses it any more",
                foreign.join(", ")
            )));
        }
        let missing: Vec<&Table> = tables
            .iter()
            .filter(|(schema, table)| {
                !covered
                    .iter()
                    .any(|(s, t)| t == table && schema.as_ref().is_none_or(|x| x == s))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = missing.into_iter().map(|t| listed(t, columns)).collect();
        return publication_ddl(
            tx,
            name,
            format!("ALTER PUBLICATION \"{name}\" ADD TABLE {}", list.join(", ")),
        )
        .await;
    }
    let list: Vec<String> = tables.iter().map(|t| listed(t, columns)).collect();
    let sql = format!(
        "CREATE PUBLICATION \"{name}\" FOR TABLE {} WITH (publish = 'insert')",
        list.join(", ")
    );
    publication_ddl(tx, name, sql).await
}

/// A table in a publication's list: quoted (validated identifiers), with the columns the
/// relay reads where the server takes column lists.
fn listed(table: &Table, columns: bool) -> String {
    if columns {
        format!("{} (id, ordering_key)", quoted(table))
    } else {
        quoted(table)
    }
}

/// Create or extend the publication `name` with `sql`.
async fn publication_ddl(
    tx: &mut sqlx::PgConnection,
    name: &str,
    sql: String,
) -> Result<(), Problem> {
    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .execute(&mut *tx)
        .await
        .map_err(|e| match sqlstate(&e).as_deref() {
            Some("42501") => Problem::Fatal(format!(
                "cannot create the publication `{name}`: the role must own the signal tables \
                 (or be a superuser), or an administrator runs: {sql}"
            )),
            _ => retry("cannot create the publication", &e),
        })?;
    Ok(())
}

/// A slot at rest this far behind is made anew at the server's current position: the rows
/// written meanwhile are in the tables, which the relay drains before streaming, so decoding
/// that WAL would only find rows already sent.
const FRESH_START_BYTES: i64 = 64 << 20;

/// A slot as `ensure_slot` reads it: plugin, in this database, wal_status, active, bytes
/// behind the server's position.
type SlotRow = (String, bool, Option<String>, bool, Option<i64>);

async fn ensure_slot(pool: &PgPool, slot: &str, known: bool) -> Result<(), Problem> {
    let found: Option<SlotRow> = sqlx::query_as(
        "SELECT plugin, database = current_database(), wal_status, active_pid IS NOT NULL, \
         (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots \
         WHERE slot_name = $1 AND slot_type = 'logical'",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| retry("cannot read the replication slots", &e))?;
    match found {
        Some((plugin, true, status, active, behind)) if plugin == "pgoutput" => {
            if status.as_deref() == Some("lost") {
                return Err(Problem::Fatal(invalidated(slot)));
            }
            let behind = behind.unwrap_or(0);
            if active || behind < FRESH_START_BYTES {
                return Ok(());
            }
            tracing::info!(
                slot,
                behind_mib = behind >> 20,
                "the slot is far behind; making it anew at the current position (the tables hold what was written meanwhile)"
            );
            match sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(slot)
                .execute(pool)
                .await
            {
                Ok(_) => create_slot(pool, slot).await,
                // Taken by another relay meanwhile: it streams, this one stands by.
                Err(e) if sqlstate(&e).as_deref() == Some("55006") => Ok(()),
                Err(e) => Err(retry("cannot drop the slot to make it anew", &e)),
            }
        }
        Some(_) => Err(Problem::Fatal(format!(
            "a replication slot named `{slot}` exists for another database or plugin: give this \
             relay a slot of its own (--slot)"
        ))),
        None if known => {
            // Made anew by another relay of the group (it was far behind)? Look once more.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let back: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(slot)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| retry("cannot read the replication slots", &e))?;
            match back {
                Some(_) => Ok(()),
                None => Err(Problem::Fatal(dropped(slot))),
            }
        }
        None => create_slot(pool, slot).await,
    }
}

async fn create_slot(pool: &PgPool, slot: &str) -> Result<(), Problem> {
    tracing::info!(
        slot,
        "creating the replication slot (it waits for the transactions open on the server)"
    );
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| retry("cannot reach the database", &e))?;
    let created = async {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET statement_timeout = '{SETUP_TIMEOUT}'"
        )))
        .execute(&mut *conn)
        .await?;
        let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(slot)
            .execute(&mut *conn)
            .await;
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
        created
    }
    .await;
    match created {
        Ok(_) => Ok(()),
        // Another relay made it first.
        Err(e) if sqlstate(&e).as_deref() == Some("42710") => Ok(()),
        Err(e) if sqlstate(&e).as_deref() == Some("57014") => Err(Problem::Retry(format!(
            "creating the replication slot waited {SETUP_TIMEOUT} for transactions open \
             on the server (see pg_stat_activity); trying again"
        ))),
        Err(e) => Err(retry("cannot create the replication slot", &e)),
    }
}

/// The message of a slot dropped while the relay used it.
pub(super) fn dropped(slot: &str) -> String {
    format!(
        "the replication slot `{slot}` was dropped while this relay streamed from it; the relay \
         goes on from the tables (no signal is lost: they are rows until sent). Restart the \
         relay to stream again (it creates the slot anew)"
    )
}

/// The message of a slot whose WAL the server removed.
pub(super) fn invalidated(slot: &str) -> String {
    format!(
        "the replication slot `{slot}` is invalidated: the server removed WAL it still needed \
         (max_slot_wal_keep_size); the relay goes on from the tables (no signal is lost). To \
         stream again, drop it — SELECT pg_drop_replication_slot('{slot}') — and restart the relay"
    )
}

/// After the stream failed: the precise reason when the slot or the server's settings are
/// the cause (a dropped or invalidated slot, wal_level), else `None`.
pub(super) async fn explain(pool: &PgPool, slot: &str, known: bool) -> Option<String> {
    match ensure_slot_state(pool, slot).await {
        Ok(None) if known => Some(dropped(slot)),
        Ok(Some(status)) if status == "lost" => Some(invalidated(slot)),
        _ => None,
    }
}

async fn ensure_slot_state(pool: &PgPool, slot: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(s,)| s.unwrap_or_default()))
}

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// What a replication error means for the relay.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stream {
    /// Another session streams from the slot: this relay is a standby.
    Busy,
    /// The connection or the server went away: connect again.
    Transient,
    /// Anything else: check why, then go on in table mode.
    Fatal,
}

/// Classify an error of the replication client: its server errors carry the SQLSTATE only
/// in their text, `"… (SQLSTATE 55006)"`.
pub(super) fn classify(e: &pgwire_replication::PgWireError) -> Stream {
    if e.is_transient() {
        return Stream::Transient;
    }
    let text = e.to_string();
    let code = text
        .rsplit_once("SQLSTATE ")
        .map(|(_, rest)| rest.chars().take(5).collect::<String>());
    match code.as_deref() {
        Some("55006") => Stream::Busy,
        // Shut down or restarting, connection trouble, insufficient resources (connections,
        // disk, memory): all pass.
        Some(c) if c.starts_with("57P") || c.starts_with("08") || c.starts_with("53") => {
            Stream::Transient
        }
        // The server going away mid-message, or a connection refused while it restarts.
        None if matches!(e, pgwire_replication::PgWireError::Protocol(_)) => Stream::Transient,
        _ => Stream::Fatal,
    }
}

/// The longest wait for the server to accept START_REPLICATION.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    #[test]
    fn reads_the_sqlstate_of_replication_errors() {
        let server = |t: &str| PgWireError::Server(t.to_owned());
        assert_eq!(
            classify(&server(
                "replication slot \"s\" is active for PID 7 (SQLSTATE 55006)"
            )),
            Stream::Busy
        );
        assert_eq!(
            classify(&server(
                "terminating connection due to administrator command (SQLSTATE 57P01)"
            )),
            Stream::Transient
        );
        assert_eq!(
            classify(&server(
                "replication slot \"s\" does not exist (SQLSTATE 42704)"
            )),
            Stream::Fatal
        );
        assert_eq!(
            classify(&server(
                "can no longer get changes from replication slot (SQLSTATE 55000)"
            )),
            Stream::Fatal
        );
    }
}
