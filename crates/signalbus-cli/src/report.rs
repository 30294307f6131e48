//! What `signals` and `pending` print, and the errors of unreadable tables.

use crate::error::CliError;
use signalbus::{Backend, PendingStats, Selection, SignalBus, SignalType};
use std::fmt::Write as _;
use std::time::Duration;

/// One line per signal type: the name first (for scripts), then its table and options.
pub(crate) fn signals<'a>(types: impl Iterator<Item = &'a SignalType>) -> String {
    let mut out = String::new();
    for t in types {
        let _ = writeln!(
            out,
            "{}\ttable={} burst={} autoflush={} order_by={}",
            t.name(),
            t.table_name(),
            t.burst_size(),
            t.is_autoflush(),
            order_by(t).join(",")
        );
    }
    out
}

/// A type's `order_by` columns as written (`created_at DESC`); `id` when it has none.
fn order_by(t: &SignalType) -> Vec<String> {
    let order: Vec<String> = t
        .order_columns()
        .iter()
        .map(|c| format!("{}{}", c.column, if c.descending { " DESC" } else { "" }))
        .collect();
    if order.is_empty() {
        vec!["id".to_owned()]
    } else {
        order
    }
}

/// The signal types as one JSON array: name, table, burst, autoflush and order_by of each.
pub(crate) fn signals_json<'a>(types: impl Iterator<Item = &'a SignalType>) -> String {
    let list: Vec<serde_json::Value> = types
        .map(|t| {
            serde_json::json!({
                "name": t.name(),
                "table": t.table_name(),
                "burst": t.burst_size(),
                "autoflush": t.is_autoflush(),
                "order_by": order_by(t),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// (name, table, stats) per type; an unreadable table fails with an error naming it.
pub(crate) async fn pending_stats<DB: Backend>(
    bus: &SignalBus<DB>,
    types: &[String],
) -> Result<Vec<(String, String, PendingStats)>, CliError> {
    let mut out = Vec::with_capacity(types.len());
    for name in types {
        let stats = bus
            .pending(&Selection::only([name.as_str()]))
            .await
            .map_err(|e| unreadable(bus, name, e))?;
        let stats = stats.into_iter().next().map(|(_, s)| s).unwrap_or_default();
        out.push((name.clone(), table_of(bus, name), stats));
    }
    Ok(out)
}

/// The table of signal type `name` (empty if it is not registered).
pub(crate) fn table_of<DB: Backend>(bus: &SignalBus<DB>, name: &str) -> String {
    bus.signal_type(name)
        .map(|t| t.table_name().to_owned())
        .unwrap_or_default()
}

/// A failure on the table of signal type `name`, with the likely fix.
pub(crate) fn unreadable<DB: Backend>(
    bus: &SignalBus<DB>,
    name: &str,
    e: signalbus::Error,
) -> CliError {
    CliError::caused(
        format!(
            "signal `{name}`: cannot read its table `{}` (does it exist? \
             `signalbus migrate` creates it)",
            table_of(bus, name)
        ),
        e,
    )
}

/// Seconds, as the JSON outputs give ages.
pub(crate) fn seconds(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

/// The largest of the ages `age` picks from each type's stats.
fn oldest(
    stats: &[(String, String, PendingStats)],
    age: impl Fn(&PendingStats) -> Option<Duration>,
) -> Option<Duration> {
    stats.iter().filter_map(|(_, _, s)| age(s)).max()
}

/// The sum of the counts `count` picks from each type's stats.
fn total(stats: &[(String, String, PendingStats)], count: impl Fn(&PendingStats) -> u64) -> u64 {
    stats.iter().map(|(_, _, s)| count(s)).sum()
}

/// The stats of all the types together.
fn totals(stats: &[(String, String, PendingStats)]) -> PendingStats {
    PendingStats {
        count: total(stats, |s| s.count),
        oldest_age: oldest(stats, |s| s.oldest_age),
        backing_off: total(stats, |s| s.backing_off),
        oldest_backing_off_age: oldest(stats, |s| s.oldest_backing_off_age),
        parked: total(stats, |s| s.parked),
        oldest_parked_age: oldest(stats, |s| s.oldest_parked_age),
    }
}

/// One line per type and one for the total: the name, the count, the age of the oldest (when
/// there is one), then the backing-off and parked counts, each with the age of its oldest.
/// Columns are aligned; the words between the numbers make each line readable alone.
pub(crate) fn pending_text(stats: &[(String, String, PendingStats)]) -> String {
    let age = |label: &str, d: Option<Duration>| {
        d.map(|d| format!("{label} {:.1}s", d.as_secs_f64()))
            .unwrap_or_default()
    };
    let row = |name: &str, s: &PendingStats| {
        [
            name.to_owned(),
            format!("{:>10}", s.count),
            age("oldest", s.oldest_age),
            format!("backing-off {}", s.backing_off),
            age("oldest", s.oldest_backing_off_age),
            format!("parked {}", s.parked),
            age("oldest", s.oldest_parked_age),
        ]
    };
    let mut rows: Vec<[String; 7]> = stats.iter().map(|(n, _, s)| row(n, s)).collect();
    rows.push(row("total", &totals(stats)));
    let mut widths = [0; 7];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    widths[0] = widths[0].max(5);
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i > 0 && w > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The counts and ages of `s`, under the keys of `pending --json`.
fn insert_stats(object: &mut serde_json::Map<String, serde_json::Value>, s: &PendingStats) {
    object.insert("pending".into(), s.count.into());
    object.insert("oldest_age_seconds".into(), seconds(s.oldest_age).into());
    object.insert("backing_off".into(), s.backing_off.into());
    object.insert(
        "oldest_backing_off_age_seconds".into(),
        seconds(s.oldest_backing_off_age).into(),
    );
    object.insert("parked".into(), s.parked.into());
    object.insert(
        "oldest_parked_age_seconds".into(),
        seconds(s.oldest_parked_age).into(),
    );
}

/// `{"signals": [{"name", "table", "pending", …}, …], "total", "oldest_age_seconds", …}`:
/// per type and for all of them, the counts and ages of [`insert_stats`] (the sum of the
/// types' `pending` is `total`).
pub(crate) fn pending_json(stats: &[(String, String, PendingStats)]) -> serde_json::Value {
    let signals: Vec<_> = stats
        .iter()
        .map(|(name, table, s)| {
            let mut object = serde_json::Map::new();
            object.insert("name".into(), name.as_str().into());
            object.insert("table".into(), table.as_str().into());
            insert_stats(&mut object, s);
            serde_json::Value::Object(object)
        })
        .collect();
    let all = totals(stats);
    let mut object = serde_json::Map::new();
    object.insert("signals".into(), signals.into());
    insert_stats(&mut object, &all);
    // The sum is `total` at the top.
    object.remove("pending");
    object.insert("total".into(), all.count.into());
    serde_json::Value::Object(object)
}
