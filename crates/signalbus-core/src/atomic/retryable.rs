//! Which errors make an atomic block run again: found in the block's error when its type
//! shows its causes, otherwise in what the block was seen to meet ([`crate::seen`]).

use crate::error::{Error, InnerError, database_error};
use crate::seen::Seen;
use crate::storage::Backend;
use std::any::Any;
use std::fmt;

/// An error an atomic block may end with: the caller's own error type, as long as a
/// signalbus [`Error`] converts into it (so that `?` works on signalbus calls inside the
/// block, and a failed commit or an exhausted retry reaches the caller as `E`).
///
/// Implemented for every `E: From<signalbus::Error> + Debug + Send + Sync + 'static`:
/// [`Error`] itself, `anyhow::Error` and `eyre::Report` (enable the features `anyhow` /
/// `eyre`: without them a conflict in the caller's own query is not recognised in them),
/// `Box<dyn std::error::Error + Send + Sync>`, a `thiserror` enum, or a plain domain enum:
///
/// ```
/// #[derive(Debug)]
/// enum TransferError {
///     InsufficientFunds { balance: i64, amount: i64 },
///     Db(signalbus_core::Error),
/// }
///
/// impl From<signalbus_core::Error> for TransferError {
///     fn from(e: signalbus_core::Error) -> Self {
///         TransferError::Db(e)
///     }
/// }
/// // Lets `?` take sqlx errors too; through signalbus' error, so that a conflict is seen.
/// impl From<sqlx::Error> for TransferError {
///     fn from(e: sqlx::Error) -> Self {
///         TransferError::Db(e.into())
///     }
/// }
/// ```
///
/// A block runs again only after a database conflict ([`is_conflict`]); a domain error rolls
/// it back and is returned as it is, at once. The conflict is found
/// * in the error itself when its type shows its causes: [`Error`], [`sqlx::Error`],
///   `Box<dyn std::error::Error + Send + Sync>`, and with the features of the same names
///   `anyhow::Error` and `eyre::Report` (their sources are walked down to the database
///   error);
/// * otherwise, where signalbus saw the database error: in its own calls in the block, and
///   in every [`sqlx::Error`] converted into a signalbus [`Error`] there (what `?` does when
///   the error type converts sqlx errors through signalbus' error, as above). A block whose
///   error has no cause to show runs again when it met a conflict on its way, even one it
///   handled: after a conflict, PostgreSQL and MySQL have aborted or rolled back the
///   transaction anyway.
///
/// A type that holds `sqlx::Error` itself (`#[from] sqlx::Error` with `thiserror`) hides the
/// conflicts of the caller's own queries from both: hold `signalbus::Error` instead (it
/// converts from `sqlx::Error`), or, when the type implements `std::error::Error`, have its
/// sources walked with [`Atomic::conflicts_in_sources`](super::Atomic::conflicts_in_sources).
pub trait BlockError: From<Error> + fmt::Debug + Send + Sync + 'static {}

impl<E> BlockError for E where E: From<Error> + fmt::Debug + Send + Sync + 'static {}

/// The block's error as a standard error whose sources can be walked, when its type is one
/// of those that show their causes.
fn as_std_error<E: BlockError>(error: &E) -> Option<&(dyn std::error::Error + 'static)> {
    let any: &dyn Any = error;
    if let Some(e) = any.downcast_ref::<Error>() {
        return Some(e);
    }
    if let Some(e) = any.downcast_ref::<sqlx::Error>() {
        return Some(e);
    }
    if let Some(e) = any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
        return Some(&**e);
    }
    #[cfg(feature = "anyhow")]
    if let Some(e) = any.downcast_ref::<anyhow::Error>() {
        return Some(&**e);
    }
    #[cfg(feature = "eyre")]
    if let Some(e) = any.downcast_ref::<eyre::Report>() {
        return Some(&**e);
    }
    None
}

/// How the block's error reads in logs and in [`Error::RetriesExhausted`]: its message when
/// its type has one we know, its `Debug` form otherwise.
pub(crate) fn describe<E: BlockError>(error: &E) -> String {
    match as_std_error(error) {
        Some(e) => e.to_string(),
        None => format!("{error:?}"),
    }
}

/// Whether the block's `error` is a conflict worth another attempt, given what the block was
/// `seen` to meet; with `integrity_races`, unique and foreign-key violations count.
pub(crate) fn is_block_conflict<DB: Backend, E: BlockError>(
    error: &E,
    seen: &Seen,
    integrity_races: bool,
) -> bool {
    match as_std_error(error) {
        Some(e) => classify::<DB>(e, integrity_races),
        None => seen.conflict || (integrity_races && seen.integrity),
    }
}

/// Whether `error` is a conflict, found by walking its sources ([`Atomic::conflicts_in_sources`](super::Atomic::conflicts_in_sources)).
pub(crate) fn walk_sources<DB: Backend, E: std::error::Error + 'static>(
    error: &E,
    integrity_races: bool,
) -> bool {
    classify::<DB>(error, integrity_races)
}

/// The block's error kept in another error: the message and database code of a nested
/// block's failure.
pub(crate) fn inner_error<E: BlockError>(error: &E, seen: &Seen) -> InnerError {
    let code = as_std_error(error).map_or_else(
        || seen.code.clone(),
        |e| database_error(e).and_then(|db| db.code().map(|c| c.into_owned())),
    );
    InnerError::new(describe(error), code)
}

/// The last attempt's error as the source of [`Error::RetriesExhausted`]: itself when it is
/// a standard error we can hold, else its message and database code.
pub(crate) fn last_error<E: BlockError>(
    error: E,
    seen: &Seen,
) -> Box<dyn std::error::Error + Send + Sync> {
    let inner = inner_error(&error, seen);
    let any: Box<dyn Any + Send> = Box::new(error);
    let any = match any.downcast::<Error>() {
        Ok(e) => return e,
        Err(other) => other,
    };
    let any = match any.downcast::<sqlx::Error>() {
        Ok(e) => return e,
        Err(other) => other,
    };
    let any = match any.downcast::<Box<dyn std::error::Error + Send + Sync>>() {
        Ok(e) => return *e,
        Err(other) => other,
    };
    #[cfg(feature = "anyhow")]
    let any = match any.downcast::<anyhow::Error>() {
        Ok(e) => return (*e).into(),
        Err(other) => other,
    };
    #[cfg(feature = "eyre")]
    let any = match any.downcast::<eyre::Report>() {
        Ok(e) => return (*e).into(),
        Err(other) => other,
    };
    drop(any);
    Box::new(inner)
}

/// Whether `error` (or one of its sources) is a conflict with a concurrent transaction that
/// running the whole transaction again can resolve: a serialization failure, a deadlock, a
/// lock that could not be had in time, a busy SQLite database.
///
/// | database       | codes                                                              |
/// |----------------|--------------------------------------------------------------------|
/// | PostgreSQL     | 40001 serialization failure, 40P01 deadlock, 55P03 lock not available |
/// | MySQL/MariaDB  | 1213 deadlock, 1205 lock wait timeout, 3572 NOWAIT, 1020 record changed |
/// | SQLite         | SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes    |
///
/// Integrity errors (unique and foreign-key violations) are not conflicts unless a block asks
/// for it ([`super::Atomic::retry_on_integrity_error`],
/// [`crate::Transaction::atomic_retrying_races`]).
pub fn is_conflict<DB: Backend>(error: &(dyn std::error::Error + 'static)) -> bool {
    classify::<DB>(error, false)
}

/// Whether `error` is a conflict; with `integrity_races`, a unique or foreign-key violation
/// counts as one (the "insert if absent" race, and a child inserted against a parent that
/// another transaction is inserting or deleting).
pub(crate) fn classify<DB: Backend>(
    error: &(dyn std::error::Error + 'static),
    integrity_races: bool,
) -> bool {
    database_error(error).is_some_and(|e| {
        (integrity_races && (e.is_unique_violation() || e.is_foreign_key_violation()))
            || (DB::DIALECT.is_conflict)(e)
    })
}
