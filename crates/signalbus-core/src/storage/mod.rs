//! Signal tables, one backend per database.
//!
//! Each database is described once (`dialect`: quoting, placeholders, column types, locking
//! clauses, conflict codes); every statement of a signal table is built from that description
//! when its type is registered (`statements`). [`Backend`] is sealed: it is implemented for
//! [`sqlx::Postgres`], [`sqlx::MySql`] and [`sqlx::Sqlite`] (features `postgres`, `mysql`,
//! `sqlite`) and names the database in `SignalBus<DB>`; its methods are signalbus' own.
//!
//! Every signal type has its own table with the same columns, the *table contract*, so that
//! the flushing code never needs the Rust type, and services in other languages can write
//! signals that the `signalbus` command line sends:
//!
//! | column         | type                          | meaning                                      |
//! |----------------|-------------------------------|----------------------------------------------|
//! | `id`           | auto-increment integer, PK    | insertion order                              |
//! | `message_id`   | text, default: a random UUID  | stable message id, the same on every re-send |

//! | `topic`        | text, not null                | destination: exchange / subject / topic      |
//! | `routing_key`  | text, nullable                | routing key (AMQP) or key (Kafka)            |
//! | `headers`      | text, nullable                | a JSON object of string values               |
//! | `body`         | bytes, not null               | the payload                                  |
//! | `content_type` | text, nullable                | MIME type of the payload                     |
//! | `created_at`   | timestamp, default: now       | for the age of the oldest pending signal     |
//! | `ordering_key` | text, nullable                | order is kept per key (NULL: one sequence)   |
//!
//! PostgreSQL tables also have `txid xid8 DEFAULT pg_current_xact_id()`, the writing
//! transaction, used for gap-safe ordered flushing, and an index on `(txid, id)`.
//!
//! # What `flushordered` guarantees, per database
//!
//! *Gap-safe* means: a signal whose transaction commits late is never overtaken by one that
//! comes after it in the order. Order is per ordering key (`ordering_key`; rows without one
//! are one sequence): everything below holds for the signals of one key, and keys whose
//! earliest pending signal is held (parked, backing off, in flight) are skipped by the read.
//!
//! * **PostgreSQL** — gap-safe. Only rows whose `txid` is older than the snapshot's xmin
//!   (`pg_snapshot_xmin(pg_current_snapshot())`) are sent: every transaction that could still
//!   add a row before them has ended. They go out ordered by `(txid, order_by…, id)`, so the
//!   order is the order in which the writing transactions *started writing*, and within one
//!   transaction the type's `order_by` (default: `id`). A row written by a transaction still
//!   open waits for the next round. xmin is cluster-wide: *any* transaction still open on
//!   the server (any database, also one idle in transaction) holds back the rows written
//!   after it began, until it ends; watch for long transactions. Ordering keys are hashed into 8 lanes
//!   (`hashtextextended`, the hash of hash partitioning, stable across versions; an index on
//!   the lane, `txid`, `id`); an ordered flusher holds the lane it sends with a session
//!   advisory lock, and lock waits are bounded (`SET LOCAL lock_timeout`). An
//!   index on `(txid, id)`, created with the table, keeps each burst an index scan. The keys
//!   held back by a refusal are read once per burst from the partial index of held rows and
//!   each row is checked against that set; the read runs with sequential and bitmap scans
//!   off, so that its plan does not depend on the table's statistics (stale right after a
//!   bulk insert, and never refreshed where autovacuum is off).
//!   *Restored dumps:* `txid` values copied from another cluster may be ahead of this
//!   cluster's counter. A visible row with `txid ≥ pg_snapshot_xmax(...)` cannot belong to a
//!   transaction of this cluster that is running or yet to run, so it is treated as settled
//!   and sent *first* (it was written before the dump, hence before anything written since).
//!   Such rows never stall the flush. Once the counter passes them they sort by `txid` like
//!   any settled row. To drop the question entirely, run `UPDATE <table> SET txid = '0'`
//!   right after restoring (it marks the restored rows as the oldest).
//! * **SQLite** — gap-safe. SQLite has one writer: a transaction holds the write lock from
//!   its first write to its commit, so ids (`AUTOINCREMENT`, assigned at insert) are in
//!   commit order, and a flush (`BEGIN IMMEDIATE`) never sees a half-written set.
//! * **MySQL / MariaDB** — ordered by `order_by` (default `id`), *almost* gap-safe.
//!   `AUTO_INCREMENT` ids are assigned at insert, not at commit. The ordered read is a locking
//!   read in primary-key order (`ORDER BY id LIMIT n FOR UPDATE`), and InnoDB makes a locking
//!   read *wait* for a row whose inserting transaction is still open; so a late committer
//!   whose row is already inserted is not overtaken (the flush waits for it, bounded by
//!   `innodb_lock_wait_timeout`, default 50 s). What remains: an id that is allocated but not
//!   yet in the index while the flush reads (a window of microseconds inside one INSERT) can
//!   be overtaken. Services that need strict order on MySQL should write signals of one
//!   ordered type from one transaction at a time.

mod backend;
pub(crate) mod database_url;
pub(crate) mod dialect;
pub(crate) mod inspect;
pub(crate) mod listen;
mod repository;
mod session;
pub(crate) mod statements;

#[cfg(all(test, feature = "postgres"))]
mod lane_plans;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(all(test, feature = "postgres"))]
mod scan_claims;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(all(test, feature = "postgres"))]
mod test_database;

pub use crate::contract::{Holdback, ParkedRows, ParkedSignal, PendingStats};
pub use crate::signal::ORDERABLE_COLUMNS;
pub use backend::Backend;
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "inbox"
))]
pub(crate) use backend::Param;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use backend::store;
pub(crate) use backend::{AuditRow, GroupRow, InspectedRow, NewRow, StoredRow};
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use backend::{ParkedRow, sealed};
#[doc(hidden)]
pub use database_url::__backends;
pub use database_url::{DatabaseKind, PoolSettings, UnknownDatabase, open_pool};
pub(crate) use repository::{ClaimOf, age, millis};
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use repository::{json_ids, json_texts};
pub(crate) use session::{CloseOnDrop, begin, begin_on, begin_write, end_on, owned_sql};
