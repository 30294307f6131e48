//! What `signals` and `pending` print.

use crate::CliError;
use signalbus::{Backend, PendingStats, Selection, SignalBus, SignalType};
use std::fmt::Write as _;

/// One line per signal type: the name first (for scripts), then its table and options.
pub(crate) fn signals<'a>(types: impl Iterator<Item = &'a SignalType>) -> String {
    let mut out = String::new();
    for t in types {
        let order: Vec<String> = t
            .order_columns()
            .iter()
            .map(|c| format!("{}{}", c.column, if c.descending { " DESC" } else { "" }))
            .collect();
        let _ = writeln!(
            out,
            "{}\ttable={} burst={} autoflush={} order_by={}",
            t.name(),
            t.table_name(),
            t.burst_size(),
            t.is_autoflush(),
            if order.is_empty() {
                "id".to_owned()
            } else {
                order.join(",")
            }
        );
    }
    out
}

/// (name, table, stats) per type; an unreadable table fails with an error naming it.
pub(crate) async fn pending_stats<DB: Backend>(
    bus: &SignalBus<DB>,
    types: &[String],
) -> Result<Vec<(String, String, PendingStats)>, CliError> {
    let mut out = Vec::with_capacity(types.len());
    for name in types {
        let table = bus
            .signal_type(name)
            .map(|t| t.table_name().to_owned())
            .unwrap_or_default();
        let stats = bus
            .pending(&Selection::only([name.as_str()]))
            .await
            .map_err(|e| {
                CliError::caused(
                    format!(
                        "signal `{name}`: cannot read its table `{table}` (does it exist? \
                         `signalbus migrate` creates it)"
                    ),
                    e,
                )
            })?;
        let stats = stats.into_iter().next().map(|(_, s)| s).unwrap_or_default();
        out.push((name.clone(), table, stats));
    }
    Ok(out)
}

fn oldest(stats: &[(String, String, PendingStats)]) -> Option<f64> {
    stats
        .iter()
        .filter_map(|(_, _, s)| s.oldest_age)
        .max()
        .map(|d| d.as_secs_f64())
}

pub(crate) fn pending_text(stats: &[(String, String, PendingStats)]) -> String {
    let width = stats
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = String::new();
    let line = |out: &mut String, name: &str, count: u64, age: Option<f64>| {
        let _ = write!(out, "{name:<width$}  {count:>10}");
        if let Some(age) = age {
            let _ = write!(out, "  oldest {age:.1}s");
        }
        out.push('\n');
    };
    for (name, _, s) in stats {
        line(
            &mut out,
            name,
            s.count,
            s.oldest_age.map(|d| d.as_secs_f64()),
        );
    }
    let total = stats.iter().map(|(_, _, s)| s.count).sum();
    line(&mut out, "total", total, oldest(stats));
    out
}

pub(crate) fn pending_json(stats: &[(String, String, PendingStats)]) -> serde_json::Value {
    let signals: Vec<_> = stats
        .iter()
        .map(|(name, table, s)| {
            serde_json::json!({
                "name": name,
                "table": table,
                "pending": s.count,
                "oldest_age_seconds": s.oldest_age.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    serde_json::json!({
        "signals": signals,
        "total": stats.iter().map(|(_, _, s)| s.count).sum::<u64>(),
        "oldest_age_seconds": oldest(stats),
    })
}
