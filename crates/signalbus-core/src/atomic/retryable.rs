//! Which errors make an atomic block run again, found inside the caller's own error type.

use crate::error::{Error, database_error};
use crate::storage::Backend;

/// An error an atomic block may end with: the caller's own error type, as long as a
/// signalbus [`Error`] converts into it (so that `?` works on signalbus and sqlx calls inside
/// the block).
///
/// Implemented for every `E: std::error::Error + From<signalbus::Error>`, [`Error`] itself
/// included, so a domain error enum made with `thiserror` works as it is:
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// enum TransferError {
///     #[error("insufficient funds: {balance} < {amount}")]
///     InsufficientFunds { balance: i64, amount: i64 },
///     #[error(transparent)]
///     Db(#[from] signalbus_core::Error),
/// }
/// ```
///
/// A block is retried only when the error carries a database conflict
/// ([`is_conflict`]); it is found by walking the error's [sources](std::error::Error::source)
/// down to the [`sqlx::Error`], so a domain error (no database error inside) rolls the block
/// back and is returned as it is, at once.
pub trait BlockError: std::error::Error + From<Error> + Send + Sync + 'static {}

impl<E> BlockError for E where E: std::error::Error + From<Error> + Send + Sync + 'static {}

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
    match database_error(error) {
        Some(sqlx::Error::Database(e)) => {
            (integrity_races && (e.is_unique_violation() || e.is_foreign_key_violation()))
                || (DB::DIALECT.is_conflict)(&**e)
        }
        _ => false,
    }
}
