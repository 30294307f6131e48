//! The consumer's side: an inbox that turns at-least-once delivery into effectively-once
//! effects.
//!
//! signalbus delivers every signal at least once. A copy can arrive again after a crash
//! between the broker's confirm and the delete, or after a consumer dies before its ack.
//! Every copy carries the same message id. A receiving service records that id in an
//! [`Inbox`], **inside the same database transaction as the effects** of the message:
//!
//! - the first time, [`Inbox::receive`] returns [`Receipt::First`]: apply the effects, commit,
//!   then acknowledge the message;
//! - every later copy returns [`Receipt::Duplicate`]: apply nothing, acknowledge it.
//!
//! A crash between the commit and the ack makes the broker deliver again. The inbox then
//! answers `Duplicate`, so the effects are never applied twice.
//!
//! Two consumers that receive the same message at once are serialised by the table's primary
//! key, `(consumer, message_id)`. The second insert waits for the first transaction: when that
//! one commits, the second gets `Duplicate`; when it rolls back, the second gets `First`.
//!
//! Ids are kept per consumer name, so two services (or two handlers) sharing a database each
//! see every message once. [`Inbox::prune`] removes ids older than a retention, in bounded
//! batches. Keep them longer than any redelivery can take.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> signalbus_core::Result<()> {
//! use signalbus_core::inbox::{Inbox, Receipt};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE credits (amount INTEGER NOT NULL)").execute(&pool).await?;
//! let inbox = Inbox::<sqlx::Sqlite>::new("billing")?;
//! inbox.migrate(&pool).await?;
//!
//! // The same message, delivered three times.
//! for _ in 0..3 {
//!     let mut tx = pool.begin().await?;
//!     if inbox.receive(&mut tx, "0190b6c4-message-id").await? == Receipt::First {
//!         sqlx::query("INSERT INTO credits VALUES (5)").execute(&mut *tx).await?;
//!     }
//!     tx.commit().await?; // then acknowledge the message to the broker
//! }
//! let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM credits").fetch_one(&pool).await?;
//! assert_eq!(n, 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::storage::Backend;
use crate::storage::Param;
use crate::storage::dialect::Dialect;
use sqlx::{AssertSqlSafe, SqlStr};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// The default table of [`Inbox`].
pub const DEFAULT_INBOX_TABLE: &str = "signalbus_inbox";

/// The longest message id an inbox takes (the width of its key column on MySQL).
pub const MAX_MESSAGE_ID_LEN: usize = 191;

/// What [`Inbox::receive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "apply the message's effects only for `Receipt::First`"]
pub enum Receipt {
    /// The first copy this consumer records: apply its effects in this transaction.
    First,
    /// Recorded before (committed by an earlier or concurrent transaction): apply nothing,
    /// acknowledge it.
    Duplicate,
}

impl Receipt {
    /// Whether this copy was recorded before.
    pub fn is_duplicate(self) -> bool {
        self == Receipt::Duplicate
    }
}

/// The message ids one consumer has processed, in a table of the consumer's database; see
/// the [module documentation](self).
#[derive(Debug)]
pub struct Inbox<DB: Backend> {
    consumer: Arc<str>,
    create: SqlStr,
    insert: SqlStr,
    prune: SqlStr,
    _db: PhantomData<fn() -> DB>,
}

// Not derived: that would ask `DB: Clone`.
impl<DB: Backend> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Inbox {
            consumer: self.consumer.clone(),
            create: self.create.clone(),
            insert: self.insert.clone(),
            prune: self.prune.clone(),
            _db: PhantomData,
        }
    }
}

impl<DB: Backend> Inbox<DB> {
    /// The inbox of consumer `consumer` in the table [`DEFAULT_INBOX_TABLE`].
    pub fn new(consumer: &str) -> Result<Self> {
        Self::with_table(consumer, DEFAULT_INBOX_TABLE)
    }

    /// The inbox of consumer `consumer` in `table` (validated: letters, digits, `_`, one
    /// optional schema prefix).
    pub fn with_table(consumer: &str, table: &str) -> Result<Self> {
        if consumer.is_empty() || consumer.len() > MAX_MESSAGE_ID_LEN {
            return Err(Error::Config(format!(
                "inbox: the consumer name must have 1 to {MAX_MESSAGE_ID_LEN} characters"
            )));
        }
        let table = Ident::new(table)?;
        let d: &Dialect = DB::DIALECT;
        let sql = &d.inbox;
        let t = table.quoted(d.quote);
        let index = table.derived("received_at", d.quote);
        let fill = |text: &str| {
            let older = d
                .now_plus_ms
                .replace("{ms}", &format!("(-1 * {})", d.placeholder(2)));
            let text = text
                .replace("{t}", &t)
                .replace("{index}", &index)
                .replace("{key}", sql.key)
                .replace("{received}", d.columns.created_at)
                .replace("{options}", d.columns.table_options)
                .replace("{older}", &older)
                .replace("{p1}", &d.placeholder(1))
                .replace("{p2}", &d.placeholder(2))
                .replace("{limit}", &d.placeholder(3));
            sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(text))
        };
        Ok(Inbox {
            consumer: Arc::from(consumer),
            create: fill(sql.create),
            insert: fill(sql.insert),
            prune: fill(sql.prune),
            _db: PhantomData,
        })
    }

    /// The consumer name this inbox records ids for.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Create the table if it is not there.
    pub async fn migrate(&self, pool: &sqlx::Pool<DB>) -> Result<()> {
        let mut conn = pool.acquire().await?;
        DB::execute_script(&mut conn, &self.create).await
    }

    /// Record `message_id` in the transaction (or connection) `conn`: [`Receipt::First`]
    /// when this consumer has not recorded it before. Call it before applying the effects,
    /// in their transaction, and acknowledge the message only after the commit.
    pub async fn receive(&self, conn: &mut DB::Connection, message_id: &str) -> Result<Receipt> {
        if message_id.is_empty() || message_id.len() > MAX_MESSAGE_ID_LEN {
            return Err(Error::Config(format!(
                "inbox: a message id must have 1 to {MAX_MESSAGE_ID_LEN} characters (got {})",
                message_id.len()
            )));
        }
        let params = [Param::Text(&self.consumer), Param::Text(message_id)];
        let inserted = DB::execute(conn, &self.insert, &params).await?;
        Ok(if inserted == 1 {
            Receipt::First
        } else {
            Receipt::Duplicate
        })
    }

    /// Delete the ids of this consumer recorded more than `retention` ago, `batch` rows per
    /// statement (each its own short transaction), until none is left; returns how many.
    pub async fn prune(
        &self,
        pool: &sqlx::Pool<DB>,
        retention: Duration,
        batch: u32,
    ) -> Result<u64> {
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let batch = i64::from(batch.max(1));
        let mut total = 0;
        loop {
            let mut conn = pool.acquire().await?;
            let params = [
                Param::Text(&self.consumer),
                Param::Int(ms),
                Param::Int(batch),
            ];
            let deleted = DB::execute(&mut conn, &self.prune, &params).await?;
            total += deleted;
            if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
    }
}
