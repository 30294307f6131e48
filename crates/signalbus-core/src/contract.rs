//! The table contract as operators see it: how many signals wait, which are parked, what
//! ordered flushing holds back. Plain data, read by storage and shown by the command line.

use std::time::Duration;

/// How many signals a table holds, and how old the oldest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PendingStats {
    /// Pending signals: every row of the table, backing-off and parked ones included.
    pub count: u64,
    /// Age of the oldest pending signal, by the database's clock.
    pub oldest_age: Option<Duration>,
    /// Signals the bus refused at least once, or deferred (their part of the bus was out),
    /// waiting for their next attempt.
    pub backing_off: u64,
    /// Age of the oldest backing-off signal.
    pub oldest_backing_off_age: Option<Duration>,
    /// Parked signals: refused too often, never sent again until unparked.
    pub parked: u64,
    /// Age of the oldest parked signal.
    pub oldest_parked_age: Option<Duration>,
}

/// What the gap-safe watermark of ordered flushing holds back in one table now (PostgreSQL;
/// always nothing elsewhere): rows written after the oldest transaction still running on the
/// server began. They go out once it ends; a transaction left open (idle in transaction)
/// holds them back, with every ordered flush of the cluster, until it is ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Holdback {
    /// Rows held back.
    pub rows: u64,
    /// The oldest transaction still running on the server (with an id), which holds them:
    /// `pid … on database … (state, open for …)`.
    pub holder: Option<String>,
    /// How long that transaction has been open.
    pub holder_age: Option<Duration>,
}

/// A parked signal, as operators inspect it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedSignal {
    /// The row's id.
    pub id: i64,
    /// The message id it is sent with.
    pub message_id: String,
    /// Attempts the bus refused.
    pub attempts: u64,
    /// The bus' last reason.
    pub last_error: Option<String>,
    /// How long it has been parked, by the database's clock.
    pub parked_for: Option<Duration>,
    /// Its ordering key: in ordered flushing, the later signals of this key wait for it.
    pub ordering_key: Option<String>,
}

/// Which parked signals an operator command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedRows<'a> {
    /// Every parked signal of the selected types.
    All,
    /// The parked signals with these row ids.
    Ids(&'a [i64]),
}
