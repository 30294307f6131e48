//! The parked signals: `parked` lists them, `unpark` sends them again, `purge-parked`
//! deletes them.
//!
//! Row ids are per table, so `--id` acts on one signal type, which must be named. Every id is
//! checked first against the parked rows of that type: if any is not one of them, the
//! command fails naming them and changes nothing, not even for the ids that are.

use crate::args::{ParkedArgs, PurgeArgs, SettleArgs};
use crate::error::CliError;
use crate::outcome::Outcome;
use crate::report::{self, seconds, unreadable};
use crate::selection::select;
use signalbus::{Backend, ParkedRows, ParkedSignal, Selection, SignalBus};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The parked signals of one type: how many there are, and the first ones.
struct Listed {
    name: String,
    table: String,
    parked: u64,
    rows: Vec<ParkedSignal>,
}

/// `parked`: a table (or one JSON document) on standard output; on standard error, that
/// nothing is parked, or that `--limit` left some out.
pub(crate) async fn list<DB: Backend>(
    bus: &SignalBus<DB>,
    args: &ParkedArgs,
) -> Result<Outcome, CliError> {
    let types = select(bus, &args.names, &args.exclude)?;
    // Counting first checks every table (with an error naming it) and gives the totals.
    let stats = report::pending_stats(bus, &types).await?;
    let mut listed = Vec::with_capacity(stats.len());
    for (name, table, s) in stats {
        let rows = parked_of(bus, &name, args.limit).await?;
        listed.push(Listed {
            parked: s.parked.max(len(&rows)),
            name,
            table,
            rows,
        });
    }
    if args.json {
        println!("{}", json(&listed));
    } else if listed.iter().any(|l| !l.rows.is_empty()) {
        print!("{}", text(&listed));
    }
    if listed.iter().all(|l| l.rows.is_empty()) {
        eprintln!("signalbus parked: nothing parked ({})", types.join(", "));
    }
    for l in &listed {
        if l.parked > len(&l.rows) {
            eprintln!(
                "signalbus parked: `{}`: listed the first {} of {} parked signal(s); \
                 --limit N lists more",
                l.name,
                l.rows.len(),
                l.parked
            );
        }
    }
    Ok(Outcome::Completed)
}

/// `unpark`: resets the attempts of the chosen parked signals, so the next flush sends them.
pub(crate) async fn unpark<DB: Backend>(
    bus: &SignalBus<DB>,
    args: &SettleArgs,
) -> Result<Outcome, CliError> {
    match target(bus, args, "nothing unparked").await? {
        Target::Ids { name, ids } => {
            let n = bus
                .unpark(&Selection::only([name.as_str()]), ParkedRows::Ids(&ids))
                .await
                .map_err(|e| unreadable(bus, &name, e))?;
            eprintln!(
                "signalbus unpark: unparked {n} signal(s) of `{name}`{}; the next flush sends them",
                gone(n, &ids)
            );
        }
        Target::All(types) => {
            let mut counts = Vec::with_capacity(types.len());
            for name in types {
                let n = bus
                    .unpark(&Selection::only([name.as_str()]), ParkedRows::All)
                    .await
                    .map_err(|e| unreadable(bus, &name, e))?;
                counts.push((name, n));
            }
            if counts.iter().all(|(_, n)| *n == 0) {
                eprintln!("signalbus unpark: nothing parked ({})", names(&counts));
            } else {
                eprintln!(
                    "signalbus unpark: unparked {}; the next flush sends them",
                    per_type(&counts, "signal(s)")
                );
            }
        }
    }
    Ok(Outcome::Completed)
}

/// `purge-parked`: deletes the chosen parked signals, only with `--yes`; without it, fails
/// saying how many it would delete.
pub(crate) async fn purge<DB: Backend>(
    bus: &SignalBus<DB>,
    args: &PurgeArgs,
) -> Result<Outcome, CliError> {
    let refuse = |what: String| {
        CliError::msg(format!(
            "would delete {what} for good; add --yes to delete them (nothing deleted)"
        ))
    };
    match target(bus, &args.which, "nothing deleted").await? {
        Target::Ids { name, ids } => {
            if !args.yes {
                return Err(refuse(format!(
                    "{} parked signal(s) of `{name}`",
                    ids.len()
                )));
            }
            let n = bus
                .purge_parked(&Selection::only([name.as_str()]), ParkedRows::Ids(&ids))
                .await
                .map_err(|e| unreadable(bus, &name, e))?;
            eprintln!(
                "signalbus purge-parked: deleted {n} parked signal(s) of `{name}`{}",
                gone(n, &ids)
            );
        }
        Target::All(types) => {
            if !args.yes {
                let counts: Vec<(String, u64)> = report::pending_stats(bus, &types)
                    .await?
                    .into_iter()
                    .map(|(name, _, s)| (name, s.parked))
                    .collect();
                if counts.iter().all(|(_, n)| *n == 0) {
                    eprintln!(
                        "signalbus purge-parked: nothing parked ({}); nothing to delete",
                        names(&counts)
                    );
                    return Ok(Outcome::Completed);
                }
                return Err(refuse(per_type(&counts, "parked signal(s)")));
            }
            let mut counts = Vec::with_capacity(types.len());
            for name in types {
                let n = bus
                    .purge_parked(&Selection::only([name.as_str()]), ParkedRows::All)
                    .await
                    .map_err(|e| unreadable(bus, &name, e))?;
                counts.push((name, n));
            }
            eprintln!(
                "signalbus purge-parked: deleted {}",
                per_type(&counts, "parked signal(s)")
            );
        }
    }
    Ok(Outcome::Completed)
}

/// What `--id` or `--all` chose.
enum Target {
    /// These ids (ascending, distinct; each a parked row) of the type `name`.
    Ids { name: String, ids: Vec<i64> },
    /// Every parked signal of these types.
    All(Vec<String>),
}

/// The signals `args` choose; with `--id`, checked to be parked signals of the one type
/// named (else an error ending in `unchanged`, e.g. "nothing unparked").
async fn target<DB: Backend>(
    bus: &SignalBus<DB>,
    args: &SettleArgs,
    unchanged: &str,
) -> Result<Target, CliError> {
    let types = select(bus, &args.names, &args.exclude)?;
    if args.all {
        return Ok(Target::All(types));
    }
    let named: BTreeSet<&String> = args.names.iter().collect();
    let name = match (named.len(), types.as_slice()) {
        (1, [name]) => name.clone(),
        (0, _) => {
            return Err(CliError::msg(
                "--id needs exactly one signal type named (ids are per table), got none",
            ));
        }
        (n, _) => {
            let names: Vec<&str> = named.iter().map(|s| s.as_str()).collect();
            return Err(CliError::msg(format!(
                "--id needs exactly one signal type named (ids are per table), got {n}: {}",
                names.join(", ")
            )));
        }
    };
    let mut ids = args.ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let parked: BTreeSet<i64> = parked_of(bus, &name, usize::MAX)
        .await?
        .iter()
        .map(|p| p.id)
        .collect();
    let unknown: Vec<String> = ids
        .iter()
        .filter(|id| !parked.contains(id))
        .map(i64::to_string)
        .collect();
    if !unknown.is_empty() {
        return Err(CliError::msg(format!(
            "signal `{name}` has no parked signal with id {} (`signalbus parked {name}` \
             lists them); {unchanged}",
            unknown.join(", ")
        )));
    }
    Ok(Target::Ids { name, ids })
}

/// Up to `limit` parked signals of type `name`, lowest ids first.
async fn parked_of<DB: Backend>(
    bus: &SignalBus<DB>,
    name: &str,
    limit: usize,
) -> Result<Vec<ParkedSignal>, CliError> {
    let parked = bus
        .parked(&Selection::only([name]), limit)
        .await
        .map_err(|e| unreadable(bus, name, e))?;
    Ok(parked
        .into_iter()
        .next()
        .map(|(_, p)| p)
        .unwrap_or_default())
}

fn len<T>(items: &[T]) -> u64 {
    u64::try_from(items.len()).unwrap_or(u64::MAX)
}

/// What to add when fewer than the checked `ids` were changed: another operator or flusher
/// got to the others between the check and the change.
fn gone(changed: u64, ids: &[i64]) -> String {
    match len(ids).saturating_sub(changed) {
        0 => String::new(),
        n => format!(" ({n} of the ids were no longer parked)"),
    }
}

/// "3 parked signal(s) (alpha 2, beta 1)": the total of `what`, and the types with any.
fn per_type(counts: &[(String, u64)], what: &str) -> String {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let some: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if some.is_empty() {
        format!("{total} {what}")
    } else {
        format!("{total} {what} ({})", some.join(", "))
    }
}

/// "alpha, beta": the types of `counts`.
fn names(counts: &[(String, u64)]) -> String {
    let names: Vec<&str> = counts.iter().map(|(name, _)| name.as_str()).collect();
    names.join(", ")
}

/// A table with a header: signal, id, attempts, parked for, key (the ordering key whose later
/// signals wait for this one in ordered flushing), message id, last error (last,
/// since it is the long one; on one line, `-` when there is none).
fn text(listed: &[Listed]) -> String {
    let mut rows = vec![[
        "signal".to_owned(),
        "id".to_owned(),
        "attempts".to_owned(),
        "parked for".to_owned(),
        "key".to_owned(),
        "message id".to_owned(),
        "last error".to_owned(),
    ]];
    for l in listed {
        for p in &l.rows {
            rows.push([
                l.name.clone(),
                p.id.to_string(),
                p.attempts.to_string(),
                p.parked_for
                    .map(|d| format!("{:.1}s", d.as_secs_f64()))
                    .unwrap_or_else(|| "-".to_owned()),
                p.ordering_key.clone().unwrap_or_else(|| "-".to_owned()),
                p.message_id.clone(),
                p.last_error
                    .as_deref()
                    .map(one_line)
                    .unwrap_or_else(|| "-".to_owned()),
            ]);
        }
    }
    let mut widths = [0; 7];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // The numbers right-aligned, the text left-aligned.
            if (1..=3).contains(&i) {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `{"signals": [{"name", "table", "parked": N, "rows": [{"id", "message_id", "attempts",
/// "last_error", "parked_for_seconds", "ordering_key"}, …]}, …], "total": N}`: `parked` counts them all,
/// `rows` lists at most `--limit`.
fn json(listed: &[Listed]) -> serde_json::Value {
    let signals: Vec<_> = listed
        .iter()
        .map(|l| {
            let rows: Vec<_> = l
                .rows
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "id": p.id,
                        "message_id": p.message_id,
                        "attempts": p.attempts,
                        "last_error": p.last_error,
                        "parked_for_seconds": seconds(p.parked_for),
                        "ordering_key": p.ordering_key,
                    })
                })
                .collect();
            serde_json::json!({
                "name": l.name,
                "table": l.table,
                "parked": l.parked,
                "rows": rows,
            })
        })
        .collect();
    serde_json::json!({
        "signals": signals,
        "total": listed.iter().map(|l| l.parked).sum::<u64>(),
    })
}

/// Errors of brokers may span lines; a table row is one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
