//! Which errors make an atomic block run again.

use super::AtomicBackend;
use crate::error::Error;

/// Whether `error` is a conflict with a concurrent transaction that running the whole
/// transaction again can resolve: a serialization failure, a deadlock, a lock that could not
/// be had in time, a busy SQLite database.
///
/// | database       | codes                                                              |
/// |----------------|--------------------------------------------------------------------|
/// | PostgreSQL     | 40001 serialization failure, 40P01 deadlock, 55P03 lock not available |
/// | MySQL/MariaDB  | 1213 deadlock, 1205 lock wait timeout, 3572 NOWAIT, 1020 record changed |
/// | SQLite         | SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes    |
///
/// Unique-constraint violations are not conflicts unless a block asks for it
/// ([`super::AtomicOptions::retry_on_unique_violation`],
/// [`crate::Transaction::retry_on_unique_violation`]).
pub fn is_conflict<DB: AtomicBackend>(error: &Error) -> bool {
    classify::<DB>(error, false)
}

/// Whether `error` is a conflict; with `unique_races`, a unique violation counts as one.
pub(crate) fn classify<DB: AtomicBackend>(error: &Error, unique_races: bool) -> bool {
    match error {
        Error::Database(sqlx::Error::Database(e)) => {
            (unique_races && e.is_unique_violation()) || DB::is_conflict_error(&**e)
        }
        _ => false,
    }
}
