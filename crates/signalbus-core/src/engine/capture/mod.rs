//! WAL capture (PostgreSQL): a relay that learns of new signals from the write-ahead log
//! instead of looking for them in the tables.
//!
//! The relay holds a logical replication slot and a publication over its signal tables
//! (inserts only), both named after the slot. The server streams every committed insert in
//! commit order; the relay claims those rows by id, publishes them, deletes them, and tells
//! the server it may forget a transaction (confirms its end position) only once all its rows
//! are settled. The rows stay the durable truth: a relay killed at any point re-reads from
//! the last confirmed position and sends again at most what was in flight; rows that are
//! gone by then are skipped.
//!
//! * **Order.** An ordered type's signals go out in commit order per key, keys in parallel,
//!   with no watermark wait. A key whose signal could not go out at once (refused by the
//!   broker, held by an auto-flush or another flusher) is *held*: its later signals are left
//!   in the table, and a table pass (in id order, as in table mode) sends them once the first
//!   can go; then the stream takes the key again.
//! * **The table scan keeps running**, at a low rate: rows written before the slot existed,
//!   rows an auto-flush gave up, retries. Unordered types keep their table lanes, polling every
//!   `scan_every` with no NOTIFY in writers' transactions; ordered types are read from the
//!   table by the capturing task itself, so that the two never race on one key: every row in
//!   the table when it starts streaming is held under its key, and held keys are looked at
//!   again (soon after a change, then less often, up to `scan_every`).
//! * **A row the stream brings but the table lacks was sent already** (by an auto-flush, or
//!   before a restart): true only once the transaction that wrote it is visible, which comes
//!   a moment after the stream has its commit; each batch waits for that first.
//! * **One streaming relay per slot.** The slot is the lock: a second relay with the same slot
//!   stands by and takes over within about a second of the first one's connection closing
//!   (a killed process's socket closes at once; a network partition takes up to the server's
//!   `wal_sender_timeout`).
//! * **When capture cannot work** (wal_level is not logical, the role lacks REPLICATION, the
//!   slot was dropped or invalidated while streaming), the relay says why once and goes on in
//!   table mode; nothing is lost, since the rows are still in their tables.
//!
//! Decommissioning: stop the relays, then `SELECT pg_drop_replication_slot('<slot>')` and
//! `DROP PUBLICATION "<slot>"` — a slot nobody reads keeps WAL on the server.

mod decode;
mod held;
mod send;
mod server_waits;
mod slot;
mod stream;

use super::context::Shared;
use crate::error::{Error, Result};
use crate::registry::TypeIdx;
use crate::storage::Backend;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where a relay streams the WAL from (see [`RelayBuilder::capture_wal`](crate::RelayBuilder::capture_wal)).
#[derive(Clone)]
pub struct WalCapture {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    slot: Option<String>,
    scan_every: Duration,
}

impl std::fmt::Debug for WalCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("WalCapture")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("slot", &self.slot)
            .field("scan_every", &self.scan_every)
            .finish_non_exhaustive()
    }
}

impl WalCapture {
    /// A plain connection to the server the stream comes from (whether it shuts down).
    pub(super) fn probe_options(&self) -> sqlx::postgres::PgConnectOptions {
        sqlx::postgres::PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .password(&self.password)
            .database(&self.database)
            .application_name("signalbus relay (shutdown probe)")
    }
}

impl WalCapture {
    /// Stream from the database of this URL (`postgres://user:password@host:port/db`): the
    /// replication connection is a connection of its own, so it needs the URL, not a pool.
    /// TLS (`sslmode=require` and stricter) is not supported on the replication connection
    /// yet: such a URL is refused, never silently downgraded.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            Err(Error::Config(format!(
                "WAL capture: {why} (give a postgres://user:password@host:port/database URL)"
            )))
        };
        let Ok(parsed) = url::Url::parse(url) else {
            return bad("the database URL does not parse");
        };
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return bad("WAL capture needs a PostgreSQL database");
        }
        let mut host = parsed.host_str().unwrap_or("localhost").to_owned();
        for (k, v) in parsed.query_pairs() {
            match (&*k, &*v) {
                ("sslmode", "require" | "verify-ca" | "verify-full") => {
                    return bad(
                        "TLS on the replication connection is not supported yet; use table mode \
                         (leave out --capture wal) or a connection without sslmode=require",
                    );
                }
                ("host", h) => host = h.to_owned(),
                _ => {}
            }
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let database = parsed.path().trim_start_matches('/');
        Ok(WalCapture {
            host,
            port: parsed.port().unwrap_or(5432),
            user: if parsed.username().is_empty() {
                "postgres".to_owned()
            } else {
                decode(parsed.username())
            },
            password: parsed.password().map(decode).unwrap_or_default(),
            database: if database.is_empty() {
                "postgres".to_owned()
            } else {
                decode(database)
            },
            slot: None,
            scan_every: Duration::from_secs(2),
        })
    }

    /// The name of the replication slot and of the publication: lowercase letters, digits and
    /// `_`, at most 63. The default, `signalbus_<database>_<hash of the relayed tables>`, is
    /// the same for relays of the same signal types on the same database: they are one group,
    /// one streams and the others stand by. Relays given the same slot must relay the same
    /// types (another set of tables is refused, with a message).
    pub fn slot(mut self, name: &str) -> Self {
        self.slot = Some(name.to_owned());
        self
    }

    /// How often the tables are scanned for what the stream does not bring (default 2 s).
    pub fn scan_every(mut self, every: Duration) -> Self {
        self.scan_every = every;
        self
    }

    /// The slot's name for a relay of `tables`, checked.
    fn slot_name(&self, tables: &[String]) -> Result<String> {
        let name = self.slot.clone().unwrap_or_else(|| {
            let mut db: String = self
                .database
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            db.truncate(63 - "signalbus__".len() - 8);
            format!("signalbus_{db}_{:08x}", table_set_hash(tables))
        });
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(name)
        } else {
            Err(Error::Config(format!(
                "WAL capture: the slot name `{name}` must be 1 to 63 lowercase letters, digits or `_`"
            )))
        }
    }

    pub(crate) fn scan_interval(&self) -> Duration {
        self.scan_every
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.scan_every.is_zero() {
            return Err(Error::Config(
                "WAL capture: scan_every must be longer than zero".into(),
            ));
        }
        match &self.slot {
            Some(name) => self.slot_name(std::slice::from_ref(name)).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// A stable hash of a set of table names (FNV-1a, 32 bits, over the sorted names): the same
/// in every build and process, so relays of the same tables find the same slot.
fn table_set_hash(tables: &[String]) -> u32 {
    let mut sorted: Vec<&str> = tables.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in sorted.join(",").bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// What a relay's WAL capture is doing ([`Relay::capture`](crate::Relay::capture)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaptureState {
    /// Preparing the slot, or connecting.
    Starting,
    /// Streaming from the slot.
    Streaming,
    /// Another relay streams from the slot; this one takes over when it stops.
    Standby,
    /// Capture cannot work, for this reason; the relay sends from the tables.
    TableMode(String),
}

impl CaptureState {
    /// Whether table lanes should leave the work to the capture (anything but table mode).
    pub(crate) fn capturing(&self) -> bool {
        !matches!(self, CaptureState::TableMode(_))
    }
}

/// What the capturing task needs of its relay.
pub(crate) struct Capture<DB: Backend> {
    pub shared: Arc<Shared<DB>>,
    pub types: Vec<TypeIdx>,
    pub ordered: Vec<bool>,
    pub state: watch::Sender<CaptureState>,
    pub stop: watch::Receiver<bool>,
}

/// Run WAL capture for a relay until it stops (or falls back to table mode). Fails at once
/// when the database is not PostgreSQL.
pub(crate) fn start<DB: Backend>(
    wal: WalCapture,
    capture: Capture<DB>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let quoted: Vec<String> = capture
        .types
        .iter()
        .map(|&i| capture.shared.registry().get(i).table.quoted('"'))
        .collect();
    let slot = wal.slot_name(&quoted)?;
    // The relay is generic over the database; capture is PostgreSQL's alone.
    let any: Arc<dyn std::any::Any + Send + Sync> = capture.shared.clone();
    let Ok(shared) = any.downcast::<Shared<sqlx::Postgres>>() else {
        return Err(Error::Config(format!(
            "WAL capture needs PostgreSQL; this bus is on {}: leave capture out (table mode)",
            DB::NAME
        )));
    };
    let Capture {
        types,
        ordered,
        state,
        stop,
        ..
    } = capture;
    Ok(stream::run(stream::Setup {
        shared,
        wal,
        slot,
        types,
        ordered,
        state,
        stop,
    }))
}
