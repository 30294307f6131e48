//! Sending pending rows: the step shared by auto-flush and every explicit flush mode.
//!
//! What it records is listed in [`crate::metrics`].
//!
//! Every mode publishes a set of rows it holds (a lease, or a lock in the flush transaction),
//! then *settles* each row by what the broker said of its message: stored → deleted; refused
//! → one more attempt, the next one after a backoff delay, or parked after the type's
//! `max_attempts` ([`crate::RetryPolicy`]); a row that is not a valid signal → parked at once.
//! A failure of the publish call as a whole (broker down, connection lost, timeout) settles
//! nothing and spends no attempt: the rows are given back for the next flush. A message the
//! publisher *deferred* (its part of the bus is out: one webhook endpoint of several) spends
//! no attempt either; its row waits for the delay the publisher gave. A crash after
//! publishing and before settling leaves the rows too: they are sent again later
//! (at-least-once; the stable message id lets consumers drop the duplicate).

use super::context::Shared;
use crate::error::{Error, PublishErrorKind, Result};
use crate::message::{Headers, Message};
use crate::publisher::{BatchOutcome, Publisher};
use crate::registry::{Registered, TypeIdx};
use crate::storage::{Backend, StoredRow};
use std::collections::BTreeMap;
use std::time::Duration;

/// Rows of one signal type, held by the current flush.
pub(crate) type HeldRows = (TypeIdx, Vec<StoredRow>);

/// What one publish-and-settle step did.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// Rows the broker stored (and that were deleted), per type.
    pub sent: Vec<(TypeIdx, Vec<i64>)>,
    /// Rows refused (kept for a later attempt, or parked).
    pub refused: usize,
    /// Of those, rows parked by this step.
    pub parked: usize,
    /// The last refusal's reason, for reports.
    pub last_refusal: Option<String>,
    /// Rows deferred (not stored, no attempt spent: their part of the bus is out).
    pub deferred: usize,
    /// The shortest backoff delay of the refused or deferred rows that will be tried again.
    pub next_retry: Option<Duration>,
}

impl Settled {
    pub fn count(&self) -> usize {
        self.sent.iter().map(|(_, ids)| ids.len()).sum()
    }
}

/// The shortest wait of a deferred row.
const MIN_DEFERRAL: Duration = Duration::from_millis(100);

/// One message on its way, and the row it came from.
pub(crate) struct Entry {
    pub idx: TypeIdx,
    pub id: i64,
    pub attempts: i64,
    /// When its transaction committed, as near as known (the row's `created_at`): the start
    /// of the commit-to-acknowledgement latency.
    pub born: Option<std::time::Instant>,
}

/// A row to publish: its message, or why it is not a valid signal.
pub(crate) struct Outgoing {
    pub entry: Entry,
    pub message: Result<Message, String>,
}

/// What became of one entry.
pub(crate) enum Fate {
    Stored,
    Refused(String),
    /// Not a valid signal: parked at once, it can never be sent.
    Invalid(String),
    /// Not stored because its part of the bus is out: given back, no attempt spent, not
    /// sent again before the delay.
    Deferred(String, Duration),
    /// Not published (ordered mode, after a refusal): left as it was.
    Untouched,
}

/// Publish `held` and settle every row through `conn` (see the module docs). `Err` means the
/// bus failed as a whole and nothing was settled: the caller gives the rows back (or rolls
/// back). When `ordered`, nothing is published after a refused or invalid row.
pub(crate) async fn publish_and_settle<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    held: Vec<HeldRows>,
    ordered: bool,
) -> Result<Settled> {
    let outgoing = prepare(shared, held);
    let (entries, fates) = publish(shared, outgoing, ordered).await?;
    settle(shared, conn, &entries, &fates, true).await
}

/// Rows as messages.
pub(crate) fn prepare<DB: Backend>(shared: &Shared<DB>, held: Vec<HeldRows>) -> Vec<Outgoing> {
    let mut outgoing = Vec::new();
    let now = std::time::Instant::now();
    for (idx, rows) in held {
        let reg = shared.registry().get(idx);
        for row in rows {
            let age = Duration::from_micros(
                row.age_micros
                    .and_then(|a| u64::try_from(a).ok())
                    .unwrap_or(0),
            );
            let entry = Entry {
                idx,
                id: row.id,
                attempts: row.attempts,
                born: now.checked_sub(age),
            };
            // Logged once, when it is parked (with the reason), by the settle step.
            let message = to_message(reg, row).map_err(|e| e.to_string());
            outgoing.push(Outgoing { entry, message });
        }
    }
    outgoing
}

/// Publish: batched types in one call, the others one message per call. Returns what became
/// of each.
pub(crate) async fn publish<DB: Backend>(
    shared: &Shared<DB>,
    outgoing: Vec<Outgoing>,
    ordered: bool,
) -> Result<(Vec<Entry>, Vec<Fate>)> {
    let mut entries = Vec::with_capacity(outgoing.len());
    let mut fates = Vec::with_capacity(outgoing.len());
    // Messages and, beside them, their entries' positions: a call gets the slice as it is.
    let (mut batched, mut batched_at): (Vec<Message>, Vec<usize>) = (Vec::new(), Vec::new());
    let (mut single, mut single_at): (Vec<Message>, Vec<usize>) = (Vec::new(), Vec::new());
    let mut stopped: Option<TypeIdx> = None;
    for Outgoing { entry, message } in outgoing {
        let i = entries.len();
        let idx = entry.idx;
        entries.push(entry);
        if stopped == Some(idx) {
            fates.push(Fate::Untouched);
            continue;
        }
        match message {
            Ok(message) => {
                fates.push(Fate::Stored);
                if shared.registry().get(idx).ty.is_batched() {
                    batched.push(message);
                    batched_at.push(i);
                } else {
                    single.push(message);
                    single_at.push(i);
                }
            }
            Err(why) => {
                fates.push(Fate::Invalid(why));
                if ordered {
                    stopped = Some(idx);
                }
            }
        }
    }
    let started = std::time::Instant::now();
    let result = async {
        if !batched.is_empty() {
            call(shared, &batched, &batched_at, &mut fates, ordered).await?;
        }
        for (n, (one, at)) in single.iter().zip(&single_at).enumerate() {
            let at = std::slice::from_ref(at);
            call(shared, std::slice::from_ref(one), at, &mut fates, ordered).await?;
            if ordered && !matches!(fates[at[0]], Fate::Stored) {
                for i in &single_at[n + 1..] {
                    fates[*i] = Fate::Untouched;
                }
                break;
            }
        }
        Ok::<_, crate::error::PublishError>(())
    }
    .await;
    metrics::histogram!("signalbus_publish_seconds", "bus" => shared.name().to_owned())
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        metrics::counter!("signalbus_publish_failures_total", "bus" => shared.name().to_owned())
            .increment(1);
        return Err(e.into());
    }
    Ok((entries, fates))
}

/// One publish call for `batch`, marking the refused ones in `fates` (`at[n]` is the
/// position of `batch[n]` there). A publisher that
/// refuses a batch as a whole (all or nothing) is asked again one message at a time, to find
/// which one it refuses (the others may go out twice: at-least-once).
async fn call<DB: Backend>(
    shared: &Shared<DB>,
    batch: &[Message],
    at: &[usize],
    fates: &mut [Fate],
    ordered: bool,
) -> Result<(), crate::error::PublishError> {
    let publishing = shared.publisher().publish(batch);
    #[cfg(feature = "otel")]
    let publishing = tracing::Instrument::instrument(publishing, crate::otel::publish_span(batch));
    let outcome = match publishing.await {
        Ok(outcome) => {
            // Part of a burst is on the bus, the rest (later rounds, other calls) is not.
            fail_point!("signalbus::mid-burst");
            outcome
        }
        Err(e) if e.kind() == PublishErrorKind::Rejected && batch.len() > 1 => {
            tracing::debug!(messages = batch.len(), error = %e, "the bus refused a whole batch; sending its messages one by one");
            let mut outcome = BatchOutcome::all_stored();
            for (n, message) in batch.iter().enumerate() {
                match shared
                    .publisher()
                    .publish(std::slice::from_ref(message))
                    .await
                {
                    Ok(one) if one.is_all_stored() => {}
                    Ok(one) => match one.deferred().first() {
                        Some(d) if one.refused().is_empty() => {
                            outcome.defer(n, d.reason.clone(), d.retry_after)
                        }
                        _ => outcome.refuse(n, reason(&one)),
                    },
                    Err(e) if e.kind() == PublishErrorKind::Rejected => {
                        outcome.refuse(n, e.to_string())
                    }
                    Err(e) => return Err(e),
                }
                if ordered
                    && (outcome.is_refused(n) || outcome.deferred().iter().any(|d| d.index == n))
                {
                    for i in &at[n + 1..] {
                        fates[*i] = Fate::Untouched;
                    }
                    break;
                }
            }
            outcome
        }
        Err(e) if e.kind() == PublishErrorKind::Rejected => {
            BatchOutcome::all_stored().with_refused(0, e.to_string())
        }
        Err(e) => return Err(e),
    };
    for deferred in outcome.deferred() {
        if let Some(i) = at.get(deferred.index) {
            fates[*i] = Fate::Deferred(deferred.reason.clone(), deferred.retry_after);
        }
    }
    for refused in outcome.refused() {
        if let Some(i) = at.get(refused.index) {
            let why = refused.reason.clone();
            fates[*i] = if refused.permanent {
                Fate::Invalid(why)
            } else {
                Fate::Refused(why)
            };
        }
    }
    Ok(())
}

fn reason(outcome: &BatchOutcome) -> String {
    outcome
        .refused()
        .first()
        .map(|r| r.reason.clone())
        .unwrap_or_default()
}

/// Delete the stored rows, count the refusals, park the invalid rows.
pub(crate) async fn settle<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    entries: &[Entry],
    fates: &[Fate],
    alone: bool,
) -> Result<Settled> {
    // Published, not deleted yet: the rows come back after their lease (duplicates).
    fail_point!("signalbus::after-publish");
    let mut settled = Settled::default();
    let mut stored: BTreeMap<TypeIdx, Vec<i64>> = BTreeMap::new();
    let mut untouched: BTreeMap<TypeIdx, Vec<i64>> = BTreeMap::new();
    // Refusals of one type with the same attempts and reason share one UPDATE.
    let mut refused: BTreeMap<(TypeIdx, i64, &str, bool), Vec<i64>> = BTreeMap::new();
    let mut deferred: BTreeMap<(TypeIdx, Duration, &str), Vec<i64>> = BTreeMap::new();
    // When each stored signal's transaction committed, per type, and when the broker had
    // answered for them: the delivery latency.
    let acknowledged = std::time::Instant::now();
    let mut born: BTreeMap<TypeIdx, Vec<std::time::Instant>> = BTreeMap::new();
    for (entry, fate) in entries.iter().zip(fates) {
        match fate {
            Fate::Stored => {
                stored.entry(entry.idx).or_default().push(entry.id);
                born.entry(entry.idx).or_default().extend(entry.born);
            }
            Fate::Refused(why) | Fate::Invalid(why) => {
                let invalid = matches!(fate, Fate::Invalid(_));
                refused
                    .entry((entry.idx, entry.attempts, why.as_str(), invalid))
                    .or_default()
                    .push(entry.id);
            }
            // At least 100 ms: a deferral of 0 (a `Retry-After: 0`) must not make a drain
            // claim the same rows again and again.
            Fate::Deferred(why, delay) => deferred
                .entry((entry.idx, (*delay).max(MIN_DEFERRAL), why.as_str()))
                .or_default()
                .push(entry.id),
            Fate::Untouched => untouched.entry(entry.idx).or_default().push(entry.id),
        }
    }
    // Not stored, their part of the bus out: back, due after the publisher's delay.
    for ((idx, delay, why), ids) in deferred {
        let reg = shared.registry().get(idx);
        retry_db!(reg.sql.defer::<DB>(conn, &ids, delay, why).await)?;
        let labels = [
            ("bus", shared.name().to_owned()),
            ("signal", reg.name.to_string()),
        ];
        metrics::counter!("signalbus_signals_deferred_total", &labels).increment(ids.len() as u64);
        tracing::warn!(signal = %reg.name, ids = ?ids, retry_in = ?delay, reason = why, "not sent: their part of the bus is out; no attempt spent, sent again later");
        settled.deferred += ids.len();
        settled.next_retry = Some(settled.next_retry.map_or(delay, |d| d.min(delay)));
    }
    // Not published (behind a refusal, in order): given back as they were.
    for (idx, ids) in untouched {
        retry_db!(
            shared
                .registry()
                .get(idx)
                .sql
                .release::<DB>(conn, &ids)
                .await
        )?;
    }
    for (idx, ids) in stored {
        let reg = shared.registry().get(idx);
        retry_db!(reg.sql.delete_ids::<DB>(conn, &ids, alone).await)?;
        let labels = [
            ("bus", shared.name().to_owned()),
            ("signal", reg.name.to_string()),
        ];
        metrics::counter!("signalbus_signals_sent_total", &labels).increment(ids.len() as u64);
        // One histogram handle per type and step, not one label lookup per message.
        let delivery = metrics::histogram!("signalbus_delivery_seconds", &labels);
        for at in born.remove(&idx).unwrap_or_default() {
            delivery.record(acknowledged.saturating_duration_since(at).as_secs_f64());
        }
        settled.sent.push((idx, ids));
    }
    let refusals: Vec<Refusal<'_>> = refused
        .into_iter()
        .map(|((idx, attempts, why, invalid), ids)| {
            let policy = shared.registry().get(idx).ty.retry_policy();
            let refusals = u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX);
            // An invalid row can never be sent: its next attempt is its last.
            let max = if invalid {
                refusals
            } else {
                policy.max_attempts
            };
            Refusal {
                idx,
                ids,
                why,
                invalid,
                refusals,
                max,
                delay: policy.delay(refusals),
            }
        })
        .collect();
    retry_db!(write_refusals(shared, conn, &refusals).await)?;
    for Refusal {
        idx,
        ids,
        why,
        invalid,
        refusals,
        max,
        delay,
    } in refusals
    {
        let reg = shared.registry().get(idx);
        let parks = refusals >= max;
        let labels = [
            ("bus", shared.name().to_owned()),
            ("signal", reg.name.to_string()),
        ];
        metrics::counter!("signalbus_signals_refused_total", &labels).increment(ids.len() as u64);
        if parks {
            metrics::counter!("signalbus_signals_parked_total", &labels)
                .increment(ids.len() as u64);
            settled.parked += ids.len();
            if invalid {
                tracing::warn!(signal = %reg.name, ids = ?ids, reason = why, "parked at once: these signals can never be sent as they are; fix the cause, then `signalbus unpark` sends them again");
            } else {
                tracing::warn!(signal = %reg.name, ids = ?ids, attempts = refusals, reason = why, "parked: the bus refused these signals too often; `signalbus unpark` sends them again");
            }
        } else {
            settled.next_retry = Some(settled.next_retry.map_or(delay, |d| d.min(delay)));
            metrics::counter!("signalbus_signals_retried_total", &labels)
                .increment(ids.len() as u64);
            // At the default level: an operator sees a refusal when it happens, not only
            // when the signal is parked many minutes later.
            tracing::warn!(signal = %reg.name, ids = ?ids, attempts = refusals, retry_in = ?delay, reason = why, "the bus refused signals; retrying later");
        }
        settled.refused += ids.len();
        settled.last_refusal = Some(why.to_owned());
    }
    Ok(settled)
}

/// The refusals of one type with the same attempts and reason: one UPDATE.
struct Refusal<'a> {
    idx: TypeIdx,
    ids: Vec<i64>,
    why: &'a str,
    invalid: bool,
    /// The refusals each row will have had.
    refusals: u32,
    max: u32,
    delay: Duration,
}

/// Write `refusals`: several in one transaction, so that a poison incident whose messages are
/// each refused with a reason of their own (a routing key, an id in it) costs one commit per
/// burst, not one per message (measured: 10,050 such refusals took 80 s on MariaDB, one
/// UPDATE and commit each).
async fn write_refusals<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    refusals: &[Refusal<'_>],
) -> Result<()> {
    use sqlx::Connection as _;
    async fn write<DB: Backend>(
        shared: &Shared<DB>,
        conn: &mut DB::Connection,
        r: &Refusal<'_>,
    ) -> Result<u64> {
        let reg = shared.registry().get(r.idx);
        reg.sql
            .refuse::<DB>(conn, &r.ids, r.delay, r.max, r.refusals, r.why)
            .await
    }
    if refusals.len() < 2 || conn.is_in_transaction() {
        for r in refusals {
            write(shared, &mut *conn, r).await?;
        }
        return Ok(());
    }
    // A refusal lost in a crash only makes its row go out again without spending an
    // attempt: the commit need not wait for the disk where the database lets it.
    // (An owned statement: a borrowed `&'static str` here makes the flush's future not
    // `Send` for every lifetime, as the compiler sees it.)
    let begin = DB::DIALECT.begin_async.map(sqlx::SqlSafeStr::into_sql_str);
    let mut tx = match begin {
        Some(begin) => conn.begin_with(begin).await?,
        None => conn.begin().await?,
    };
    for r in refusals {
        write(shared, &mut tx, r).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// How often a flush step runs after a database error that a retry cures (see [`curable`]).
pub(crate) const DB_ATTEMPTS: u32 = 5;

/// The wait before retry `attempt` of a flush step.
pub(crate) fn db_retry_wait(attempt: u32) -> Duration {
    crate::publisher::Backoff {
        max_attempts: DB_ATTEMPTS,
        base: Duration::from_millis(20),
        max: Duration::from_secs(1),
        wait_before_first_retry: true,
    }
    .delay(attempt)
}

/// Evaluate `$step` (an `.await`ed `Result`) again after a database error that a retry cures
/// (a deadlock, a serialization failure, a lost connection), with backoff, up to
/// [`DB_ATTEMPTS`] times; it spends no attempt of any message.
macro_rules! retry_db {
    ($step:expr) => {{
        let mut attempt = 1;
        loop {
            match $step {
                Err(e) if attempt < $crate::engine::settle::DB_ATTEMPTS && $crate::engine::settle::curable::<DB>(&e) => {
                    let wait = $crate::engine::settle::db_retry_wait(attempt);
                    tracing::debug!(attempt, ?wait, error = %e, "database error during a flush; retrying the step");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                result => break result,
            }
        }
    }};
}
pub(crate) use retry_db;

/// Whether a database error goes away when the step runs again: a lost connection, or a
/// conflict (deadlock, serialization failure, lock timeout).
pub(crate) fn curable<DB: Backend>(error: &Error) -> bool {
    match error {
        // The database's own conflict codes, as atomic blocks know them.
        Error::Database(sqlx::Error::Database(db)) => (DB::DIALECT.is_conflict)(&**db),
        Error::Database(
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_),
        ) => true,
        _ => false,
    }
}

/// Turn a stored row into the message the publisher gets.
pub(crate) fn to_message(reg: &Registered, row: StoredRow) -> Result<Message> {
    let mut headers = match row.headers.as_deref().map(str::trim) {
        None | Some("") | Some("null") => Headers::new(),
        Some(text) => parse_headers(text).map_err(|reason| Error::InvalidRow {
            table: reg.table.to_string(),
            id: row.id,
            reason,
        })?,
    };
    if let Some(key) = row.ordering_key {
        headers.insert(crate::message::ORDERING_KEY_HEADER.to_owned(), key);
    }
    Ok(Message {
        id: row.message_id,
        signal: reg.name.clone(),
        destination: row.topic,
        routing_key: row.routing_key,
        headers,
        body: row.body,
        content_type: row.content_type,
    })
}

/// Headers are a JSON object; values that are not strings (written by other languages) are
/// kept as their JSON text.
fn parse_headers(text: &str) -> Result<Headers, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("headers must be a JSON object: {e}"))?;
    Ok(map
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_headers;

    #[test]
    fn headers_accept_objects_only() {
        let h = parse_headers(r#"{"a":"x","n":5,"b":true}"#).unwrap();
        assert_eq!(h["a"], "x");
        assert_eq!(h["n"], "5");
        assert_eq!(h["b"], "true");
        assert!(parse_headers("[1]").is_err());
        assert!(parse_headers("{").is_err());
    }
}
