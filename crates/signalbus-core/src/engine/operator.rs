//! What operators and `migrate` do to the signal tables: create and upgrade them, count what
//! is pending, list, unpark and purge parked signals, explain what ordered flushing holds
//! back.

use super::context::Shared;
use crate::contract::{Holdback, ParkedRows, ParkedSignal, PendingStats};
use crate::error::Result;
use crate::registry::{Registered, Selection};
use crate::storage::Backend;

/// Create the tables of all registered types, after checking that none of the existing
/// tables of those names is something else.
pub(crate) async fn migrate<DB: Backend>(shared: &Shared<DB>) -> Result<()> {
    let mut conn = shared.pool().acquire().await?;
    for (_, reg) in shared.registry().iter() {
        reg.sql
            .check_table::<DB>(&mut conn, reg.ty.table_name())
            .await?;
    }
    for (_, reg) in shared.registry().iter() {
        reg.sql.create_table::<DB>(&mut conn).await?;
    }
    Ok(())
}

/// Parked signals of the selected types, at most `limit` per type.
pub(crate) async fn parked<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    limit: usize,
) -> Result<Vec<(String, Vec<ParkedSignal>)>> {
    let (mut conn, types) = selected(shared, selection).await?;
    let mut out = Vec::with_capacity(types.len());
    for reg in types {
        out.push((
            reg.name.to_string(),
            reg.sql.parked::<DB>(&mut conn, limit).await?,
        ));
    }
    Ok(out)
}

/// Unpark (`delete` false) or purge parked signals of the selected types; how many.
pub(crate) async fn settle_parked<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    rows: ParkedRows<'_>,
    delete: bool,
) -> Result<u64> {
    let (mut conn, types) = selected(shared, selection).await?;
    let mut total = 0;
    for reg in types {
        total += reg.sql.settle_parked::<DB>(&mut conn, rows, delete).await?;
    }
    Ok(total)
}

/// Make the backing-off rows among `ids` due now, and wake the relays.
pub(crate) async fn retry_now<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
    ids: &[i64],
) -> Result<u64> {
    let (mut conn, types) = selected(shared, selection).await?;
    let mut total = 0;
    for reg in types {
        let n = reg.sql.retry_now::<DB>(&mut conn, ids).await?;
        if n > 0 {
            reg.sql.wake_relays::<DB>(&mut conn).await?;
        }
        total += n;
    }
    Ok(total)
}

/// What the gap-safe watermark holds back, per selected type.
pub(crate) async fn holdback<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
) -> Result<Vec<(String, Holdback)>> {
    let (mut conn, types) = selected(shared, selection).await?;
    let mut out = Vec::with_capacity(types.len());
    for reg in types {
        out.push((
            reg.name.to_string(),
            reg.sql.holdback::<DB>(&mut conn).await?,
        ));
    }
    Ok(out)
}

/// Pending signals per selected type.
pub(crate) async fn pending<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
) -> Result<Vec<(String, PendingStats)>> {
    let (mut conn, types) = selected(shared, selection).await?;
    let mut out = Vec::with_capacity(types.len());
    for reg in types {
        out.push((
            reg.name.to_string(),
            reg.sql.pending_stats::<DB>(&mut conn).await?,
        ));
    }
    Ok(out)
}

/// Refuse to start on a selected table that an older release made and nobody migrated
/// since (`Statements::check_migrated`).
pub(crate) async fn check_migrated<DB: Backend>(
    shared: &Shared<DB>,
    selection: &Selection,
) -> Result<()> {
    let (mut conn, types) = selected(shared, selection).await?;
    for reg in types {
        reg.sql
            .check_migrated::<DB>(&mut conn, &reg.table.to_string())
            .await?;
    }
    Ok(())
}

/// The selected types, in registration order, and a connection to read them through.
async fn selected<'s, DB: Backend>(
    shared: &'s Shared<DB>,
    selection: &Selection,
) -> Result<(sqlx::pool::PoolConnection<DB>, Vec<&'s Registered>)> {
    let types = shared.registry().select(selection)?;
    let conn = shared.pool().acquire().await?;
    Ok((
        conn,
        types
            .into_iter()
            .map(|i| shared.registry().get(i))
            .collect(),
    ))
}
