//! What an operator reads and does through the console (`signalbus-console`) and scripts:
//! filters over the signal tables, one signal's detail, failure groups (held signals grouped
//! by a normalised fingerprint of their last error), bulk actions, and the audit log.
//!
//! The reads are paged on the server by row id, so that a table of a million rows answers a
//! page as fast as a table of ten; the actions run in bounded batches.

use crate::contract::PendingStats;
use crate::error::{Error, Result};
use std::time::Duration;

/// Which rows of a signal table a filter looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalState {
    /// Backing off or parked: what the bus refused or deferred.
    #[default]
    Held,
    /// Refused at least once (or deferred) and waiting for the next attempt.
    BackingOff,
    /// Refused too often: never sent again until unparked.
    Parked,
    /// Every row of the table.
    Pending,
}

impl SignalState {
    /// The state's name in URLs and JSON (`held`, `backing_off`, `parked`, `pending`).
    pub fn as_str(self) -> &'static str {
        match self {
            SignalState::Held => "held",
            SignalState::BackingOff => "backing_off",
            SignalState::Parked => "parked",
            SignalState::Pending => "pending",
        }
    }

    /// The state named `text` ([`Self::as_str`]).
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "held" => SignalState::Held,
            "backing_off" => SignalState::BackingOff,
            "parked" => SignalState::Parked,
            "pending" => SignalState::Pending,
            other => {
                return Err(Error::Config(format!(
                    "unknown state {other:?}: use held, backing_off, parked or pending"
                )));
            }
        })
    }
}

/// The longest text a filter field may hold.
pub const MAX_FILTER_TEXT: usize = 512;

/// Which signals of one type an operator looks at or acts on. Every field narrows the
/// selection; the default is every held (backing-off or parked) signal.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SignalFilter {
    /// Which rows.
    #[serde(default)]
    pub state: SignalState,
    /// Only this ordering key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Only rows whose last error contains this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_contains: Option<String>,
    /// Only rows with this header name and value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<(String, String)>,
    /// Only rows written at least this long ago.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub older_than: Option<Duration>,
    /// Only rows written at most this long ago.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub newer_than: Option<Duration>,
    /// Only rows of this failure group ([`FailureGroup::id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl SignalFilter {
    /// Every held signal (the default).
    pub fn new() -> Self {
        SignalFilter::default()
    }

    /// Only rows in `state`.
    pub fn state(mut self, state: SignalState) -> Self {
        self.state = state;
        self
    }

    /// Only rows of this ordering key.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Only rows whose last error contains `text` (case-insensitive).
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Only rows with header `name` set to `value`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.header = Some((name.into(), value.into()));
        self
    }

    /// Only rows written at least `age` ago.
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Only rows written at most `age` ago.
    pub fn newer_than(mut self, age: Duration) -> Self {
        self.newer_than = Some(age);
        self
    }

    /// Only rows of the failure group `id`.
    pub fn group(mut self, id: impl Into<String>) -> Self {
        self.group = Some(id.into());
        self
    }

    /// Refuse a filter that cannot be run: texts longer than [`MAX_FILTER_TEXT`], a header
    /// name that is not a plain token, a group id that is not one, an age beyond a century.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(what));
        let texts = [
            ("ordering key", self.ordering_key.as_deref()),
            ("error text", self.error_contains.as_deref()),
            ("header name", self.header.as_ref().map(|(n, _)| n.as_str())),
            (
                "header value",
                self.header.as_ref().map(|(_, v)| v.as_str()),
            ),
        ];
        for (what, text) in texts {
            if text.is_some_and(|t| t.len() > MAX_FILTER_TEXT) {
                return bad(format!(
                    "the {what} filter is longer than {MAX_FILTER_TEXT} bytes"
                ));
            }
        }
        if let Some((name, _)) = &self.header
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        {
            return bad(format!(
                "header name {name:?} in the filter: use letters, digits, `-`, `_`, `.` or `:`"
            ));
        }
        if let Some(group) = &self.group
            && !is_group_id(group)
        {
            return bad(format!(
                "group {group:?} is not a failure group id (16 hexadecimal digits, as the \
                 failure groups list shows)"
            ));
        }
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        if self.older_than.is_some_and(|d| d > CENTURY)
            || self.newer_than.is_some_and(|d| d > CENTURY)
        {
            return bad("an age in the filter is over a century".to_owned());
        }
        Ok(())
    }
}

fn is_group_id(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Durations as whole seconds in JSON.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

/// One signal type's numbers for the overview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeOverview {
    /// Counts and ages.
    pub stats: PendingStats,
    /// Rows being sent right now.
    pub in_flight: u64,
}

/// One signal as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalSummary {
    /// The row's id (per table).
    pub id: i64,
    /// The message id it is sent with.
    pub message_id: String,
    /// Its destination (exchange, subject, topic, queue, endpoint).
    pub destination: String,
    /// Its routing key.
    pub routing_key: Option<String>,
    /// Its ordering key.
    pub ordering_key: Option<String>,
    /// Its content type.
    pub content_type: Option<String>,
    /// Attempts the bus refused.
    pub attempts: u64,
    /// The bus' last reason.
    pub last_error: Option<String>,
    /// How long ago it was written.
    pub age: Option<Duration>,
    /// How long ago the bus last refused it (`None`: never, or only before the table was
    /// migrated to a release that records it).
    pub last_attempt: Option<Duration>,
    /// How long it has been parked (`None`: not parked).
    pub parked_for: Option<Duration>,
    /// When its next attempt is due, from now (`None`: due now, or parked).
    pub next_attempt_in: Option<Duration>,
    /// Whether a flusher holds it right now (being sent).
    pub in_flight: bool,
    /// The size of its body, in bytes.
    pub body_bytes: u64,
    /// Its state: parked, backing off or pending.
    pub state: SignalState,
    /// Its failure group, when it has a last error.
    pub group: Option<String>,
}

/// One signal in full: what a list shows, its headers, its body (capped) and the signals
/// of its key it holds back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalDetail {
    /// What a list shows.
    pub summary: SignalSummary,
    /// Its headers, as stored (a JSON object).
    pub headers: Option<String>,
    /// The first bytes of its body.
    pub body: Vec<u8>,
    /// Whether `body` is only the start of it.
    pub body_truncated: bool,
    /// Signals of its ordering key written after it: in ordered flushing they wait for it
    /// while it is held.
    pub held_behind: u64,
}

/// A page of signals, lowest ids first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalPage {
    /// The signals.
    pub signals: Vec<SignalSummary>,
    /// Where the next page starts (pass it as `after`); `None` at the end.
    pub next_after: Option<i64>,
}

/// How many signals a filter matches now, and the highest id among them: a bulk action
/// given that id never touches a signal held after the operator saw the count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Matched {
    /// Signals matched.
    pub signals: u64,
    /// Of which parked.
    pub parked: u64,
    /// The highest id matched.
    pub through_id: Option<i64>,
}

/// Held signals of one type whose last errors have the same fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FailureGroup {
    /// The group's id: a hash of the fingerprint (16 hexadecimal digits).
    pub id: String,
    /// The normalised error ([`error_fingerprint`]).
    pub fingerprint: String,
    /// One of its errors as the bus said it.
    pub example: String,
    /// Signals in it.
    pub signals: u64,
    /// Of which parked.
    pub parked: u64,
    /// The highest row id in it.
    pub through_id: i64,
    /// Age of its oldest signal (first seen), in seconds.
    pub oldest_age_s: Option<u64>,
    /// Age of its newest signal (last seen), in seconds.
    pub newest_age_s: Option<u64>,
}

/// What a bulk action does to the held signals it matches: parked ones (unpark, purge) or
/// backing-off ones (retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Parked signals: send them again, attempts from zero; the next flush or the relay
    /// takes them.
    Unpark,
    /// Parked signals: delete them, for good.
    Purge,
    /// Backing-off signals: send them now rather than when their backoff ends (their
    /// attempts are kept: one more refusal may park them). Those in flight are left to
    /// their flusher.
    Retry,
}

impl BulkAction {
    /// `unpark`, `purge` or `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Unpark => "unpark",
            BulkAction::Purge => "purge",
            BulkAction::Retry => "retry",
        }
    }

    /// The signals it acts on: parked, or backing off.
    pub fn acts_on(self) -> SignalState {
        match self {
            BulkAction::Unpark | BulkAction::Purge => SignalState::Parked,
            BulkAction::Retry => SignalState::BackingOff,
        }
    }
}

/// One line of the audit log: who did what to which signals, and how many it changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Its id (per database), newest highest.
    pub id: i64,
    /// Who (the token's name).
    pub actor: String,
    /// Their role.
    pub role: String,
    /// The action (`unpark`, `purge`).
    pub action: String,
    /// The signal type.
    pub signal: String,
    /// The filter, as JSON.
    pub filter: String,
    /// Signals the dry run counted.
    pub matched: u64,
    /// Signals changed.
    pub changed: u64,
    /// How long ago, in seconds.
    pub age_s: Option<u64>,
}

/// A new audit line ([`AuditEntry`] without the id and time the database gives it).
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    /// Who.
    pub actor: &'a str,
    /// Their role.
    pub role: &'a str,
    /// The action.
    pub action: &'a str,
    /// The signal type.
    pub signal: &'a str,
    /// The filter, as JSON.
    pub filter: &'a str,
    /// Signals the dry run counted.
    pub matched: u64,
    /// Signals changed.
    pub changed: u64,
}

/// The normalised form of a last error, so that errors that differ only in what is
/// particular to each signal fall into one group: the signal's own destination and routing
/// key become `{destination}` and `{routing_key}`, numbers `#`, UUIDs and long hexadecimal
/// runs `{id}`; whitespace is collapsed and the text capped at 200 characters.
///
/// ```
/// use signalbus_core::inspection::error_fingerprint;
/// let eu = error_fingerprint("no route for order.placed.eu", "orders", Some("order.placed.eu"));
/// let us = error_fingerprint("no route for order.placed.us", "orders", Some("order.placed.us"));
/// assert_eq!(eu, us);
/// assert_eq!(eu, "no route for {routing_key}");
/// ```
pub fn error_fingerprint(error: &str, destination: &str, routing_key: Option<&str>) -> String {
    // Longest first, so that a key that contains the destination is replaced whole.
    let mut own: Vec<(&str, &str)> = vec![(destination, "{destination}")];
    if let Some(key) = routing_key {
        own.push((key, "{routing_key}"));
    }
    own.retain(|(text, _)| text.len() >= 2);
    own.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
    // Only the start counts (and the work stays linear in a bounded text).
    let mut text: String = error.chars().take(1000).collect();
    for (from, to) in own {
        text = text.replace(from, to);
    }
    let mut out = String::with_capacity(text.len().min(256));
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        out.push_str(&normalise_word(word));
        if words.peek().is_some() {
            out.push(' ');
        }
        if out.chars().count() >= 200 {
            out = out.chars().take(200).collect();
            break;
        }
    }
    out
}

/// A word with its ids and numbers made general.
fn normalise_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        // A run of hexadecimal digits and dashes: an id when long (a UUID, a hash).
        if c.is_ascii_hexdigit() {
            let run_end = word[i..]
                .find(|ch: char| !(ch.is_ascii_hexdigit() || ch == '-'))
                .map_or(word.len(), |n| i + n);
            let run = &word[i..run_end];
            let hex_digits = run.bytes().filter(u8::is_ascii_hexdigit).count();
            let starts_word = i == 0 || !word[..i].ends_with(|ch: char| ch.is_ascii_alphabetic());
            if hex_digits >= 8 && starts_word && run.bytes().any(|b| b.is_ascii_digit()) {
                out.push_str("{id}");
                while chars.peek().is_some_and(|(j, _)| *j < run_end) {
                    chars.next();
                }
                continue;
            }
        }
        if c.is_ascii_digit() {
            out.push('#');
            while chars.peek().is_some_and(|(_, ch)| ch.is_ascii_digit()) {
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The id of the failure group of `fingerprint`: 16 hexadecimal digits of its FNV-1a hash
/// (stable across processes and versions, unlike std's hasher).
pub fn group_id(fingerprint: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in fingerprint.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_make_particulars_general() {
        let f = |e: &str, k: Option<&str>| error_fingerprint(e, "orders", k);
        assert_eq!(
            f("queue orders: message 12345 too large (262145 bytes)", None),
            "queue {destination}: message # too large (# bytes)"
        );
        assert_eq!(
            f("duplicate id 0190f3c2-7a1b-7c3d-9e8f-0a1b2c3d4e5f", None),
            "duplicate id {id}"
        );
        assert_eq!(f("  spaced \n out  ", None), "spaced out");
        // Words that merely contain hex letters stay.
        assert_eq!(f("bad feed: decade", None), "bad feed: decade");
        assert_eq!(
            f("HTTP 503 from https://a.example/hook/77", Some("x")),
            "HTTP # from https://a.example/hook/#"
        );
        assert_eq!(
            group_id(&f("no route for a.eu", Some("a.eu"))),
            group_id(&f("no route for b.us", Some("b.us")))
        );
        assert_ne!(group_id("a"), group_id("b"));
        assert!(is_group_id(&group_id("a")));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let long = "x".repeat(MAX_FILTER_TEXT + 1);
        for (filter, says) in [
            (SignalFilter::new().error_contains(long), "longer than"),
            (SignalFilter::new().header("a\"b", "v"), "header name"),
            (SignalFilter::new().group("zz"), "failure group id"),
            (
                SignalFilter::new().older_than(Duration::from_secs(u64::MAX / 2)),
                "century",
            ),
        ] {
            let e = filter.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        SignalFilter::new()
            .header("x-tenant", "eu")
            .group(group_id("a"))
            .validate()
            .unwrap();
    }
}
