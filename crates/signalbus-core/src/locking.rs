//! How a transaction and its reads lock: isolation levels, SQLite's begin modes and row
//! locks. Plain option types, below storage (which turns them into SQL) and atomic blocks
//! (which take them as options).

/// Transaction isolation level of an atomic block (PostgreSQL and MySQL/MariaDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// Whatever the database or connection is configured with.
    DatabaseDefault,
    /// READ COMMITTED.
    ReadCommitted,
    /// REPEATABLE READ, the default (snapshot isolation on PostgreSQL).
    #[default]
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

/// How an atomic block begins its transaction on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteBegin {
    /// `BEGIN DEFERRED`: locks on first use; a reader that later writes may fail with
    /// SQLITE_BUSY (and be retried). Best for blocks that only read.
    Deferred,
    /// `BEGIN IMMEDIATE`, the default: takes the write lock at once, waiting up to the busy
    /// timeout.
    #[default]
    Immediate,
    /// `BEGIN EXCLUSIVE`.
    Exclusive,
}

/// A row lock taken by [`lock_row`](crate::atomic::lock_row): `FOR UPDATE` or shared, waiting or not.
///
/// SQLite has no row locks: there the row is just read, and the block's `BEGIN IMMEDIATE`
/// (the default) already holds the database's write lock, which is stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLock {
    /// A shared lock (`FOR SHARE` / `LOCK IN SHARE MODE`) instead of an exclusive one.
    pub shared: bool,
    /// What to do when another transaction holds a conflicting lock.
    pub wait: LockWait,
}

/// What [`lock_row`](crate::atomic::lock_row) does when another transaction holds the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockWait {
    /// Wait for it (up to the database's lock timeout).
    #[default]
    Wait,
    /// Fail at once (`NOWAIT`) with a lock-not-available error, which [`is_conflict`](crate::atomic::is_conflict)
    /// counts as a conflict: an atomic block runs again.
    NoWait,
    /// Return `None` as if the row did not exist (`SKIP LOCKED`).
    SkipLocked,
}

impl RowLock {
    /// `FOR UPDATE`, waiting.
    pub const UPDATE: RowLock = RowLock {
        shared: false,
        wait: LockWait::Wait,
    };
    /// A shared lock, waiting.
    pub const SHARE: RowLock = RowLock {
        shared: true,
        wait: LockWait::Wait,
    };

    /// Fail at once instead of waiting.
    pub fn nowait(self) -> Self {
        RowLock {
            wait: LockWait::NoWait,
            ..self
        }
    }

    /// Skip the row instead of waiting.
    pub fn skip_locked(self) -> Self {
        RowLock {
            wait: LockWait::SkipLocked,
            ..self
        }
    }
}
