//! Sending pending rows: the step shared by auto-flush and every explicit flush mode.
//!
//! Metrics (through the `metrics` facade; install any recorder to export them):
//! `signalbus_signals_sent_total{signal}`, `signalbus_publish_failures_total`,
//! `signalbus_publish_seconds` (histogram of publish calls per flush step).
//!
//! Every mode follows the same pattern inside one database transaction: lock rows (so no
//! other flusher takes them), publish them as a batch, delete them, commit. A publish failure
//! rolls back, leaving the rows pending. A crash after publishing and before the commit leaves
//! them too: they are sent again later (at-least-once; the stable message id lets consumers
//! drop the duplicate).

pub(crate) mod auto;
pub(crate) mod explicit;

/// A progress callback of an explicit flush: called after every committed burst; returning
/// `ControlFlow::Break(())` stops the flush after that burst.
pub type Progress<'a> =
    &'a mut (dyn FnMut(&explicit::FlushProgress<'_>) -> std::ops::ControlFlow<()> + Send);

use crate::bus::Shared;
use crate::error::{Error, Result};
use crate::message::{Headers, Message};
use crate::publisher::Publisher;
use crate::registry::{Registered, TypeIdx};
use crate::storage::{Backend, StoredRow};

/// Rows of one signal type, locked in the current flush transaction.
pub(crate) type LockedRows = (TypeIdx, Vec<StoredRow>);

/// What one publish-and-delete step did.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Rows published and deleted, per type.
    pub ids: Vec<(TypeIdx, Vec<i64>)>,
    /// The first row that could not be turned into a message (left in its table).
    pub invalid: Option<Error>,
}

impl Sent {
    pub fn count(&self) -> usize {
        self.ids.iter().map(|(_, ids)| ids.len()).sum()
    }
}

/// Publish the locked rows, then delete them in the same transaction (`conn`). On a publish
/// error nothing is deleted and the error is returned; the caller rolls back. An invalid row
/// is left in its table; when `ordered`, the rows after it are left too, so that nothing
/// overtakes it.
pub(crate) async fn publish_and_delete<DB: Backend>(
    shared: &Shared<DB>,
    conn: &mut DB::Connection,
    locked: Vec<LockedRows>,
    ordered: bool,
) -> Result<Sent> {
    let sent = publish(shared, prepare(shared, locked, ordered)).await?;
    for (idx, ids) in &sent.ids {
        shared
            .registry
            .get(*idx)
            .sql
            .delete_ids::<DB>(conn, ids)
            .await?;
    }
    Ok(sent)
}

/// Commit `tx` when `result` is Ok, roll it back at once otherwise. A dropped sqlx
/// transaction is rolled back only when its connection is next used, keeping its row locks
/// (SQLite: the write lock) until then, so that a retry or a concurrent flush would skip or
/// wait for rows that are in fact free.
pub(crate) async fn settle<DB: Backend, T>(
    tx: sqlx::Transaction<'static, DB>,
    result: Result<T>,
) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback after a failed flush failed");
            }
            Err(e)
        }
    }
}

/// Rows turned into messages, ready to publish.
pub(crate) struct Prepared {
    /// What publishing them sends (and which rows were invalid).
    pub sent: Sent,
    batched: Vec<Message>,
    single: Vec<Message>,
}

/// Turn rows into messages: batched types go in one publish call, the others one message per
/// call. Rows that are not valid signals are left out (see [`Sent::invalid`]); when
/// `ordered`, so are the rows after one.
pub(crate) fn prepare<DB: Backend>(
    shared: &Shared<DB>,
    rows: Vec<LockedRows>,
    ordered: bool,
) -> Prepared {
    let mut sent = Sent::default();
    let mut batched = Vec::new();
    let mut single = Vec::new();
    for (idx, rows) in rows {
        let reg = shared.registry.get(idx);
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.id;
            match to_message(reg, row) {
                Ok(message) if reg.ty.is_batched() => batched.push(message),
                Ok(message) => single.push(message),
                Err(e) => {
                    tracing::error!(signal = %reg.name, id, error = %e, "pending row is not a valid signal");
                    sent.invalid.get_or_insert(e);
                    if ordered {
                        break;
                    }
                    continue;
                }
            }
            ids.push(id);
        }
        if !ids.is_empty() {
            sent.ids.push((idx, ids));
        }
    }
    Prepared {
        sent,
        batched,
        single,
    }
}

/// Publish prepared messages; returns what was sent.
pub(crate) async fn publish<DB: Backend>(shared: &Shared<DB>, prepared: Prepared) -> Result<Sent> {
    let Prepared {
        sent,
        batched,
        single,
    } = prepared;
    let started = std::time::Instant::now();
    let published = async {
        if !batched.is_empty() {
            shared.publisher.publish(&batched).await?;
        }
        for message in &single {
            shared
                .publisher
                .publish(std::slice::from_ref(message))
                .await?;
        }
        Ok::<_, crate::error::PublishError>(())
    }
    .await;
    metrics::histogram!("signalbus_publish_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = published {
        metrics::counter!("signalbus_publish_failures_total").increment(1);
        return Err(e.into());
    }
    for (idx, ids) in &sent.ids {
        let name = shared.registry.get(*idx).name.to_string();
        metrics::counter!("signalbus_signals_sent_total", "signal" => name)
            .increment(ids.len() as u64);
    }
    Ok(sent)
}

/// Turn a stored row into the message the publisher gets.
pub(crate) fn to_message(reg: &Registered, row: StoredRow) -> Result<Message> {
    let headers = match row.headers.as_deref().map(str::trim) {
        None | Some("") | Some("null") => Headers::new(),
        Some(text) => parse_headers(text).map_err(|reason| Error::InvalidRow {
            table: reg.table.to_string(),
            id: row.id,
            reason,
        })?,
    };
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
