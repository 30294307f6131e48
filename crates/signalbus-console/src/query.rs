//! A filter, a page and an action as URLs and forms write them. Parsed by hand from the raw
//! query so that every mistake gets its own message (never a bare 400 or a 500): an unknown
//! parameter, a number that is not one, a header without its value. Empty fields (what an
//! HTML form sends for a box left empty) count as absent.

use crate::error::ConsoleError;
use signalbus_core::inspection::{BulkAction, SignalFilter, SignalState};
use std::time::Duration;

/// The parameters of a list: the filter, where the page starts, how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub filter: SignalFilter,
    pub after: Option<i64>,
    pub limit: usize,
}

/// The largest page.
pub(crate) const MAX_LIMIT: usize = 500;
/// A page's size when the request does not say.
pub(crate) const DEFAULT_LIMIT: usize = 50;

/// The filter's parameters, in the order the forms show them.
pub(crate) const FILTER_KEYS: &[&str] = &[
    "state",
    "key",
    "error",
    "header",
    "older_than",
    "newer_than",
    "group",
];

fn bad(message: String) -> ConsoleError {
    ConsoleError::BadRequest(message)
}

/// The `(name, value)` pairs of a query string; refused when it is not one.
pub(crate) fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ConsoleError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
        .map_err(|e| bad(format!("the query string cannot be read: {e}")))
}

fn seconds(name: &str, value: &str) -> Result<Duration, ConsoleError> {
    value.parse::<u64>().map(Duration::from_secs).map_err(|_| {
        bad(format!(
            "`{name}` must be a whole number of seconds, got {value:?}"
        ))
    })
}

/// Read the filter's parameters from `pairs`, and the others `extra` allows (their
/// values are returned in `extra`'s order); anything else is an error naming it.
pub(crate) fn parse(
    pairs: &[(String, String)],
    extra: &[&str],
) -> Result<(SignalFilter, Vec<Option<String>>), ConsoleError> {
    let mut filter = SignalFilter::new();
    let mut others: Vec<Option<String>> = vec![None; extra.len()];
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if seen.contains(&name.as_str()) {
            return Err(bad(format!("`{name}` is given twice")));
        }
        seen.push(name);
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "state" => {
                filter.state = SignalState::parse(value)
                    .map_err(|e| bad(e.to_string().replace("invalid configuration: ", "")))?
            }
            "key" => filter.ordering_key = Some(value.to_owned()),
            "error" => filter.error_contains = Some(value.to_owned()),
            "header" => {
                let Some((n, v)) = value.split_once(':') else {
                    return Err(bad(format!(
                        "`header` is written name:value (e.g. tenant:eu), got {value:?}"
                    )));
                };
                filter.header = Some((n.trim().to_owned(), v.trim().to_owned()));
            }
            "older_than" => filter.older_than = Some(seconds(name, value)?),
            "newer_than" => filter.newer_than = Some(seconds(name, value)?),
            "group" => filter.group = Some(value.to_owned()),
            other => match extra.iter().position(|e| *e == other) {
                Some(i) => others[i] = Some(value.to_owned()),
                None => {
                    let mut known: Vec<&str> = FILTER_KEYS.to_vec();
                    known.extend_from_slice(extra);
                    return Err(bad(format!(
                        "unknown parameter `{other}`; known: {}",
                        known.join(", ")
                    )));
                }
            },
        }
    }
    filter
        .validate()
        .map_err(|e| bad(e.to_string().replace("invalid configuration: ", "")))?;
    Ok((filter, others))
}

/// A list's parameters.
pub(crate) fn list(raw: Option<&str>) -> Result<ListQuery, ConsoleError> {
    let (filter, extra) = parse(&pairs(raw)?, &["after", "limit"])?;
    let after = extra[0]
        .as_deref()
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| bad(format!("`after` must be a row id, got {v:?}")))
        })
        .transpose()?;
    let limit = match extra[1].as_deref() {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "`limit` must be a number from 1 to {MAX_LIMIT}, got {v:?}"
                )));
            }
        },
    };
    Ok(ListQuery {
        filter,
        after,
        limit,
    })
}

/// `unpark`, `purge` or `retry`.
pub(crate) fn action(value: &str) -> Result<BulkAction, ConsoleError> {
    match value {
        "unpark" => Ok(BulkAction::Unpark),
        "purge" => Ok(BulkAction::Purge),
        "retry" => Ok(BulkAction::Retry),
        other => Err(bad(format!(
            "unknown action {other:?}: use unpark, purge or retry"
        ))),
    }
}

/// A filter as query parameters (for links and hidden form fields), empty ones left out.
pub(crate) fn filter_pairs(filter: &SignalFilter) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if filter.state != SignalState::Held {
        out.push(("state", filter.state.as_str().to_owned()));
    }
    if let Some(k) = &filter.ordering_key {
        out.push(("key", k.clone()));
    }
    if let Some(e) = &filter.error_contains {
        out.push(("error", e.clone()));
    }
    if let Some((n, v)) = &filter.header {
        out.push(("header", format!("{n}:{v}")));
    }
    if let Some(d) = filter.older_than {
        out.push(("older_than", d.as_secs().to_string()));
    }
    if let Some(d) = filter.newer_than {
        out.push(("newer_than", d.as_secs().to_string()));
    }
    if let Some(g) = &filter.group {
        out.push(("group", g.clone()));
    }
    out
}

/// A filter as a query string (`a=b&c=d`, no leading `?`).
pub(crate) fn filter_query(filter: &SignalFilter) -> String {
    serde_urlencoded::to_string(filter_pairs(filter)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> String {
        list(Some(raw)).unwrap_err().to_string()
    }

    #[test]
    fn every_mistake_says_what_is_wrong() {
        assert!(err("state=stuck").contains("unknown state"));
        assert!(err("older_than=an%20hour").contains("whole number of seconds"));
        assert!(err("header=tenant").contains("name:value"));
        assert!(err("limit=0").contains("from 1 to 500"));
        assert!(err("after=x").contains("row id"));
        assert!(err("colour=red").contains("unknown parameter `colour`"));
        assert!(err("key=a&key=b").contains("twice"));
        assert!(err("group=xyz").contains("failure group id"));
    }

    #[test]
    fn filters_round_trip_through_their_query() {
        let q = list(Some(
            "state=parked&key=k1&error=no+route&header=tenant%3Aeu&older_than=60&newer_than=&limit=20&after=5",
        ))
        .unwrap();
        assert_eq!((q.after, q.limit), (Some(5), 20));
        assert_eq!(q.filter.header, Some(("tenant".into(), "eu".into())));
        assert_eq!(q.filter.newer_than, None, "an empty field is absent");
        let again = list(Some(&filter_query(&q.filter))).unwrap();
        assert_eq!(again.filter, q.filter);
    }
}
