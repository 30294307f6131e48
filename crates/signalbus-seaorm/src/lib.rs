//! Signals written inside a sea-orm transaction.
//!
//! The signal row is inserted through sea-orm's own [`ConnectionTrait`], so it commits or rolls
//! back with the caller's `DatabaseTransaction`. No sqlx version needs to match: only the
//! SQL text and values cross over. After the commit, [`Recorder::after_commit`] hands the
//! signals to the bus' auto-flush, which sends them through the bus' own pool, on the same
//! database. The explicit flushes, the relay and the command line work on the same tables,
//! with no ORM.
//!
//! ```no_run
//! # async fn demo<DB: signalbus_core::Backend>(db: sea_orm::DatabaseConnection, bus: signalbus_core::SignalBus<DB>, s: impl signalbus_core::Signal) -> Result<(), Box<dyn std::error::Error>> {
//! use sea_orm::TransactionTrait;
//!
//! let txn = db.begin().await?;
//! // ... the business writes through `txn` ...
//! let mut signals = bus.recorder();
//! signalbus_seaorm::send(&txn, &mut signals, &s).await?;
//! txn.commit().await?;
//! let report = signals.after_commit().await; // sent and deleted, or pending for a flush
//! # Ok(()) }
//! ```
//!
//! As with any transaction the caller began, the auto-flush first claims the rows, so a
//! rolled-back transaction sends nothing, even if `after_commit` is called.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The sea-orm this crate is built against.
pub use sea_orm;

use sea_orm::{ConnectionTrait, Statement, Value};
use signalbus_core::{Backend, Error, InsertParam, Recorder, Result, Signal, SignalId};

/// Write `signal` through `conn` (a sea-orm `DatabaseTransaction`, usually) and record it in
/// `recorder`; call [`Recorder::after_commit`] once the transaction committed.
pub async fn send<C, DB, S>(conn: &C, recorder: &mut Recorder<DB>, signal: &S) -> Result<SignalId>
where
    C: ConnectionTrait,
    DB: Backend,
    S: Signal,
{
    let prepared = recorder.prepare(signal)?;
    let values: Vec<Value> = prepared.params().iter().map(value).collect();
    // The statement is the bus' own, for its database: `conn` must reach that database.
    let backend = conn.get_database_backend();
    let statement = Statement::from_sql_and_values(backend, prepared.sql(), values);
    let row_id = if prepared.returns_id() {
        let row = conn
            .query_one_raw(statement)
            .await
            .map_err(orm)?
            .ok_or_else(|| Error::Config("the signal insert returned no id".into()))?;
        row.try_get_by_index::<i64>(0).map_err(orm)?
    } else {
        let done = conn.execute_raw(statement).await.map_err(orm)?;
        i64::try_from(done.last_insert_id())
            .map_err(|_| Error::Config("the signal row's id does not fit 64 bits".into()))?
    };
    Ok(recorder.record(prepared, row_id))
}

fn value(param: &InsertParam<'_>) -> Value {
    match *param {
        InsertParam::Text(text) => text.map(str::to_owned).into(),
        InsertParam::Bytes(bytes) => bytes.to_vec().into(),
        InsertParam::Int(n) => n.into(),
        _ => unreachable!("every InsertParam is converted"),
    }
}

fn orm(e: sea_orm::DbErr) -> Error {
    Error::Orm {
        library: "sea-orm",
        source: Box::new(e),
    }
}
