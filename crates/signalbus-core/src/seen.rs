//! Database errors seen while an atomic block runs: noted where signalbus sees them (every
//! `sqlx::Error` that becomes a [`crate::Error`], in signalbus' own calls and in the caller's
//! `?`), so that a block whose error type says nothing of its cause (`anyhow::Error`, a plain
//! enum) is still run again after a conflict.

use sqlx::error::DatabaseError;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// What was seen in one block (and the blocks nested in it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// A conflict with a concurrent transaction (the database's own codes).
    pub conflict: bool,
    /// A unique or foreign-key violation (a conflict for blocks that retry integrity races).
    pub integrity: bool,
    /// The code of the last database error seen.
    pub code: Option<String>,
}

/// The watch over one block: which codes are conflicts (the database's dialect), and what
/// was seen.
struct Watch {
    is_conflict: fn(&dyn DatabaseError) -> bool,
    seen: Mutex<Seen>,
}

tokio::task_local! {
    static WATCH: Arc<Watch>;
}

/// Note `error` in the block running on this task, if any.
pub(crate) fn note(error: &sqlx::Error) {
    let sqlx::Error::Database(db) = error else {
        return;
    };
    let _ = WATCH.try_with(|watch| {
        let mut seen = watch.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.conflict |= (watch.is_conflict)(&**db);
        seen.integrity |= db.is_unique_violation() || db.is_foreign_key_violation();
        seen.code = db.code().map(|c| c.into_owned());
    });
}

/// Run `future` under a watch of its own. With `nested` (a block inside the caller's
/// transaction), what it saw is also noted in the enclosing block's watch, so that the outer
/// block knows of a conflict an inner one met; an outermost block (its own transaction, which
/// retries and commits by itself) is a boundary.
pub(crate) async fn watching<F: Future>(
    is_conflict: fn(&dyn DatabaseError) -> bool,
    nested: bool,
    future: F,
) -> (F::Output, Seen) {
    let watch = Arc::new(Watch {
        is_conflict,
        seen: Mutex::new(Seen::default()),
    });
    let output = WATCH.scope(watch.clone(), future).await;
    let seen = watch.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !nested {
        return (output, seen);
    }
    let _ = WATCH.try_with(|outer| {
        let mut outer = outer.seen.lock().unwrap_or_else(|p| p.into_inner());
        outer.conflict |= seen.conflict;
        outer.integrity |= seen.integrity;
        if seen.code.is_some() {
            outer.code.clone_from(&seen.code);
        }
    });
    (output, seen)
}
