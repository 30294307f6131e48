//! What the console reads and does on one signal type ([`crate::inspection`]). Every read
//! and every batch runs in a flush transaction on a connection closed if its caller stops
//! (its statements bounded where the database has a statement timeout, and cancelled on the
//! server when the HTTP request that asked is dropped).

use super::context::Shared;
use crate::contract::ParkedRows;
use crate::error::{Error, Result};
use crate::inspection::{
    AuditEntry, AuditRecord, BulkAction, FailureGroup, Matched, SignalDetail, SignalFilter,
    SignalPage, SignalState, SignalSummary, TypeOverview, error_fingerprint, group_id,
};
use crate::registry::{Registered, Selection};
use crate::storage::inspect::{Audit, Inspect, MAX_GROUPS};
use crate::storage::{Backend, CloseOnDrop, GroupRow, InspectedRow, age};
use std::collections::{BTreeMap, BTreeSet};

/// Rows one list read takes while looking for a failure group's signals; a page stops after
/// [`SCAN_ROUNDS`] of them and says where to go on.
const SCAN_BATCH: usize = 500;
const SCAN_ROUNDS: usize = 20;
/// A failure group with at most this many distinct error texts is filtered by the database
/// (`last_error IN (…)`); a larger one by reading rows and comparing fingerprints.
const GROUP_ERRORS_IN_SQL: usize = 50;

/// The signal type `name` and the SQL of inspection of its table.
fn registered<'s, DB: Backend>(
    shared: &'s Shared<DB>,
    name: &str,
) -> Result<(&'s Registered, Inspect)> {
    let idx = shared.registry().select(&Selection::only([name]))?;
    let reg = shared.registry().get(idx[0]);
    Ok((reg, Inspect::new::<DB>(&reg.table)))
}

/// Run `body` in a transaction of its own: an operator's read, or (`write`) a flush
/// transaction for an action's batch.
macro_rules! in_tx {
    ($shared:expr, |$conn:ident| $body:expr) => {
        in_tx!(@begin begin_read, $shared, |$conn| $body)
    };
    (write, $shared:expr, |$conn:ident| $body:expr) => {
        in_tx!(@begin begin, $shared, |$conn| $body)
    };
    (@begin $begin:ident, $shared:expr, |$conn:ident| $body:expr) => {{
        let mut held = CloseOnDrop::acquire($shared.pool()).await?;
        let result = {
            let $conn = held.$begin().await?;
            if let Some(setup) = DB::DIALECT.inspect_setup {
                DB::execute_script($conn, &crate::storage::owned_sql(setup)).await?;
            }
            $body
        };
        held.end(result).await
    }};
}

pub(crate) async fn overview<DB: Backend>(shared: &Shared<DB>, name: &str) -> Result<TypeOverview> {
    let (reg, _) = registered(shared, name)?;
    in_tx!(shared, |conn| {
        async {
            Ok(TypeOverview {
                stats: reg.sql.pending_stats::<DB>(conn).await?,
                in_flight: reg.sql.in_flight::<DB>(conn).await?,
            })
        }
        .await
    })
}

fn seconds(us: Option<i64>) -> Option<u64> {
    age(us).map(|d| d.as_secs())
}

fn summary(row: InspectedRow) -> SignalSummary {
    let (
        id,
        message_id,
        destination,
        routing_key,
        ordering_key,
        content_type,
        attempts,
        last_error,
        written_age,
        parked_age,
        next_age,
        in_flight,
        body_len,
        _headers,
        attempted_age,
    ) = row;
    let parked_for = age(parked_age);
    // A negative age is a time still to come.
    let next_attempt_in = next_age
        .filter(|us| *us < 0)
        .and_then(|us| us.checked_neg())
        .and_then(|us| age(Some(us)));
    let state = if parked_age.is_some() {
        SignalState::Parked
    } else if attempts > 0 || last_error.is_some() {
        SignalState::BackingOff
    } else {
        SignalState::Pending
    };
    let group = last_error
        .as_deref()
        .map(|e| group_id(&error_fingerprint(e, &destination, routing_key.as_deref())));
    SignalSummary {
        id,
        message_id,
        destination,
        routing_key,
        ordering_key,
        content_type,
        attempts: u64::try_from(attempts).unwrap_or(0),
        last_error,
        age: age(written_age),
        last_attempt: age(attempted_age),
        parked_for,
        next_attempt_in,
        in_flight: in_flight != 0,
        body_bytes: body_len.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        state,
        group,
    }
}

/// The failure groups of the rows `filter` matches (its group ignored), largest first, each
/// with its distinct error texts (at most [`GROUP_ERRORS_IN_SQL`] + 1 kept: beyond that many,
/// the group is matched row by row anyway).
async fn read_groups<DB: Backend>(
    conn: &mut DB::Connection,
    inspect: &Inspect,
    filter: &SignalFilter,
) -> Result<Vec<(FailureGroup, Vec<String>)>> {
    let mut filter = filter.clone();
    filter.group = None;
    let mut groups = GroupMerge::default();
    inspect
        .groups(&filter, None, false)
        .each_group::<DB>(conn, &mut |row| groups.add(row))
        .await?;
    Ok(groups.finish())
}

/// Aggregates of (error, destination, routing key) merged by fingerprint as they are read:
/// memory grows with the groups, not with the distinct errors behind them.
#[derive(Default)]
struct GroupMerge {
    groups: BTreeMap<String, (FailureGroup, BTreeSet<String>)>,
}

impl GroupMerge {
    fn add(&mut self, row: GroupRow) -> Result<()> {
        let (error, destination, key, n, parked, max_id, oldest, newest) = row;
        let Some(error) = error else { return Ok(()) };
        let fingerprint =
            error_fingerprint(&error, destination.as_deref().unwrap_or(""), key.as_deref());
        let id = group_id(&fingerprint);
        if !self.groups.contains_key(&id) && self.groups.len() >= MAX_GROUPS {
            return Err(Error::Config(format!(
                "more than {MAX_GROUPS} failure groups match: narrow the filter (signal type, \
                 state, error text, age) to see them"
            )));
        }
        let n = u64::try_from(n).unwrap_or(0);
        let parked = u64::try_from(parked).unwrap_or(0);
        let (oldest, newest) = (seconds(oldest), seconds(newest));
        let entry = self.groups.entry(id.clone()).or_insert_with(|| {
            (
                FailureGroup {
                    id,
                    fingerprint,
                    example: error.clone(),
                    signals: 0,
                    parked: 0,
                    through_id: 0,
                    oldest_age_s: None,
                    newest_age_s: None,
                },
                BTreeSet::new(),
            )
        });
        let g = &mut entry.0;
        g.signals += n;
        g.parked += parked;
        g.through_id = g.through_id.max(max_id.unwrap_or(0));
        g.oldest_age_s = g.oldest_age_s.max(oldest);
        g.newest_age_s = match (g.newest_age_s, newest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if entry.1.len() <= GROUP_ERRORS_IN_SQL {
            entry.1.insert(error);
        }
        Ok(())
    }

    /// The groups, largest first.
    fn finish(self) -> Vec<(FailureGroup, Vec<String>)> {
        let mut out: Vec<_> = self
            .groups
            .into_values()
            .map(|(g, errors)| (g, errors.into_iter().collect()))
            .collect();
        out.sort_by(|a, b| b.0.signals.cmp(&a.0.signals).then(a.0.id.cmp(&b.0.id)));
        out
    }
}

pub(crate) async fn failure_groups<DB: Backend>(
    shared: &Shared<DB>,
    name: &str,
    filter: &SignalFilter,
) -> Result<Vec<FailureGroup>> {
    filter.validate()?;
    let (_, inspect) = registered(shared, name)?;
    let groups = in_tx!(shared, |conn| read_groups::<DB>(conn, &inspect, filter)
        .await)?;
    Ok(groups.into_iter().map(|(g, _)| g).collect())
}

/// How a filter with a group is narrowed in SQL: the group's error texts when few, and
/// whether the group can match anything at all.
enum GroupScope {
    /// No group in the filter.
    Any,
    /// The group has no rows under this filter.
    Empty,
    /// Its error texts (`None`: too many to list; rows are compared one by one).
    Errors(Option<Vec<String>>),
}

async fn group_scope<DB: Backend>(
    conn: &mut DB::Connection,
    inspect: &Inspect,
    filter: &SignalFilter,
) -> Result<GroupScope> {
    let Some(wanted) = &filter.group else {
        return Ok(GroupScope::Any);
    };
    let groups = read_groups::<DB>(conn, inspect, filter).await?;
    Ok(match groups.into_iter().find(|(g, _)| &g.id == wanted) {
        None => GroupScope::Empty,
        Some((_, errors)) if errors.len() <= GROUP_ERRORS_IN_SQL => {
            GroupScope::Errors(Some(errors))
        }
        Some(_) => GroupScope::Errors(None),
    })
}

pub(crate) async fn list<DB: Backend>(
    shared: &Shared<DB>,
    name: &str,
    filter: &SignalFilter,
    after: Option<i64>,
    limit: usize,
) -> Result<SignalPage> {
    filter.validate()?;
    let limit = limit.clamp(1, 500);
    let (_, inspect) = registered(shared, name)?;
    in_tx!(shared, |conn| {
        async {
            // A group is matched row by row (its fingerprint), not looked up first: reading
            // the groups aggregates the whole table, a page reads a few hundred rows.
            let mut page = SignalPage::default();
            let mut cursor = after;
            let batch = if filter.group.is_some() {
                SCAN_BATCH
            } else {
                limit
            };
            for _ in 0..SCAN_ROUNDS {
                let rows = inspect
                    .list(filter, None, cursor, None, batch)
                    .fetch_inspected::<DB>(conn)
                    .await?;
                let full = rows.len() == batch;
                for row in rows {
                    cursor = Some(row.0);
                    let s = summary(row);
                    if filter.group.is_none() || s.group == filter.group {
                        page.signals.push(s);
                        if page.signals.len() == limit {
                            page.next_after = cursor;
                            return Ok(page);
                        }
                    }
                }
                if !full {
                    // The table ends here.
                    return Ok(page);
                }
            }
            // Scanned enough for one request: the next one goes on from here.
            page.next_after = cursor;
            Ok(page)
        }
        .await
    })
}

pub(crate) async fn count<DB: Backend>(
    shared: &Shared<DB>,
    name: &str,
    filter: &SignalFilter,
) -> Result<Matched> {
    filter.validate()?;
    let (_, inspect) = registered(shared, name)?;
    in_tx!(shared, |conn| {
        async {
            if let Some(wanted) = &filter.group {
                let groups = read_groups::<DB>(conn, &inspect, filter).await?;
                return Ok(groups
                    .into_iter()
                    .find(|(g, _)| &g.id == wanted)
                    .map(|(g, _)| Matched {
                        signals: g.signals,
                        parked: g.parked,
                        through_id: Some(g.through_id),
                    })
                    .unwrap_or_default());
            }
            let rows = inspect
                .groups(filter, None, true)
                .fetch_groups::<DB>(conn)
                .await?;
            Ok(rows
                .into_iter()
                .next()
                .map(|(_, _, _, n, parked, max_id, _, _)| Matched {
                    signals: u64::try_from(n).unwrap_or(0),
                    parked: u64::try_from(parked).unwrap_or(0),
                    through_id: max_id,
                })
                .unwrap_or_default())
        }
        .await
    })
}

pub(crate) async fn detail<DB: Backend>(
    shared: &Shared<DB>,
    name: &str,
    id: i64,
    body_cap: usize,
) -> Result<Option<SignalDetail>> {
    let (_, inspect) = registered(shared, name)?;
    in_tx!(shared, |conn| {
        async {
            let Some(row) = inspect.one(id).fetch_inspected::<DB>(conn).await?.pop() else {
                return Ok(None);
            };
            let headers = row.13.clone();
            let summary = summary(row);
            let body = if body_cap == 0 {
                Vec::new()
            } else {
                inspect
                    .body(id, body_cap)
                    .fetch_rows::<DB>(conn)
                    .await?
                    .pop()
                    .map(|r| r.body)
                    .unwrap_or_default()
            };
            let held_behind = match (&summary.ordering_key, summary.state) {
                (Some(key), SignalState::Parked | SignalState::BackingOff) => inspect
                    .behind(key, id)
                    .fetch_ids::<DB>(conn)
                    .await?
                    .first()
                    .and_then(|n| u64::try_from(*n).ok())
                    .unwrap_or(0),
                _ => 0,
            };
            let body_truncated = u64::try_from(body.len()).unwrap_or(u64::MAX) < summary.body_bytes;
            Ok(Some(SignalDetail {
                summary,
                headers,
                body,
                body_truncated,
                held_behind,
            }))
        }
        .await
    })
}

/// Unpark or purge the parked signals `filter` matches, or retry the backing-off ones (see
/// [`BulkAction::acts_on`]), with ids up to `through` (`None`: no bound), `batch` rows per
/// transaction, lowest ids first; how many were changed. The relays are woken.
pub(crate) async fn act<DB: Backend>(
    shared: &Shared<DB>,
    name: &str,
    filter: &SignalFilter,
    action: BulkAction,
    through: Option<i64>,
    batch: usize,
) -> Result<u64> {
    filter.validate()?;
    let batch = batch.clamp(1, 10_000);
    let (reg, inspect) = registered(shared, name)?;
    let mut parked = filter.clone();
    parked.state = action.acts_on();
    let errors = match in_tx!(shared, |conn| group_scope::<DB>(conn, &inspect, &parked)
        .await)?
    {
        GroupScope::Empty => return Ok(0),
        GroupScope::Any => None,
        GroupScope::Errors(errors) => Some(errors),
    };
    let errors = errors.as_ref().and_then(|e| e.as_deref());
    let mut cursor = None;
    let mut changed = 0;
    loop {
        let (n, last, more) = in_tx!(write, shared, |conn| {
            async {
                let rows = inspect
                    .list(&parked, errors, cursor, through, batch)
                    .fetch_inspected::<DB>(conn)
                    .await?;
                let more = rows.len() == batch;
                let last = rows.last().map(|r| r.0);
                let ids: Vec<i64> = rows
                    .into_iter()
                    .map(summary)
                    .filter(|s| parked.group.is_none() || s.group == parked.group)
                    .map(|s| s.id)
                    .collect();
                let n = match action {
                    _ if ids.is_empty() => 0,
                    BulkAction::Retry => reg.sql.retry_now::<DB>(conn, &ids).await?,
                    _ => {
                        reg.sql
                            .settle_parked::<DB>(
                                conn,
                                ParkedRows::Ids(&ids),
                                action == BulkAction::Purge,
                            )
                            .await?
                    }
                };
                Ok((n, last, more))
            }
            .await
        })?;
        changed += n;
        cursor = last;
        if !more {
            if changed > 0 && action != BulkAction::Purge {
                let mut conn = shared.pool().acquire().await?;
                reg.sql.wake_relays::<DB>(&mut conn).await?;
            }
            return Ok(changed);
        }
    }
}

pub(crate) async fn record_audit<DB: Backend>(
    shared: &Shared<DB>,
    record: &AuditRecord<'_>,
) -> Result<()> {
    let mut conn = shared.pool().acquire().await?;
    let insert = Audit::insert::<DB>(record);
    if insert.execute::<DB>(&mut conn).await.is_err() {
        // The first line of this database: the table is made now (only then: creating needs
        // a right the console's role may lack once the table is there).
        create_audit::<DB>(&mut conn).await?;
        insert.execute::<DB>(&mut conn).await?;
    }
    Ok(())
}

pub(crate) async fn audit_log<DB: Backend>(
    shared: &Shared<DB>,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    let mut conn = shared.pool().acquire().await?;
    let newest = Audit::newest::<DB>(limit.clamp(1, 1000));
    let rows = match newest.fetch_audit::<DB>(&mut conn).await {
        Ok(rows) => rows,
        // No table: nobody has acted on this database yet.
        Err(e) if !audit_exists::<DB>(&mut conn).await => {
            tracing::debug!(error = %e, "no console audit table yet");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(rows
        .into_iter()
        .map(
            |(id, actor, role, action, signal, filter, matched, changed, age)| AuditEntry {
                id,
                actor,
                role,
                action,
                signal,
                filter,
                matched: u64::try_from(matched).unwrap_or(0),
                changed: u64::try_from(changed).unwrap_or(0),
                age_s: seconds(age),
            },
        )
        .collect())
}

/// Whether the audit table is there (a statement that reads no row of it).
async fn audit_exists<DB: Backend>(conn: &mut DB::Connection) -> bool {
    Audit::probe::<DB>().fetch_ids::<DB>(conn).await.is_ok()
}

/// The audit table, created on first use (outside any transaction: MySQL commits at DDL).
async fn create_audit<DB: Backend>(conn: &mut DB::Connection) -> Result<()> {
    let sql = crate::storage::owned_sql(&Audit::create::<DB>());
    DB::execute_script(conn, &sql).await
}
