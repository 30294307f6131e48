//! The receiving side: a runner over a Redis Streams consumer group that hands each entry to
//! a handler and acknowledges it (`XACK`) only once the handler succeeded.
//!
//! The handler does the entry's work, usually one database transaction that records the
//! message id ([`Entry::message_id`]) in the inbox (`signalbus::inbox`) together with the
//! effects. [`consume`] then:
//!
//! - creates the group if it is missing (`XGROUP CREATE … MKSTREAM`, from
//!   [`ConsumerConfig::start`]);
//! - first reads the entries this consumer name was given and never acknowledged (a restart
//!   after a crash), then new ones (`XREADGROUP … >`);
//! - acknowledges an entry when the handler returns `Ok`, after its commit (an `XACK` that
//!   fails is logged and counted as rejected: the entry comes back, and the inbox skips it);
//! - leaves it pending when the handler returns `Err`: it is claimed again, by this consumer
//!   or another, once it has been idle for [`ConsumerConfig::claim_idle`];
//! - claims entries that another consumer of the group took and left idle that long (it
//!   stopped or died: `XAUTOCLAIM`), and keeps the entries it holds from being claimed while
//!   their handlers run (`XCLAIM … JUSTID` resets their idle time, as an SQS consumer extends
//!   the visibility of a message it works on);
//! - runs at most `concurrency` handlers at once;
//! - on `shutdown`, stops reading, lets the handlers in flight finish and acknowledges what
//!   they finished. Entries read but not handled stay pending for this consumer name: a
//!   restart under the same name reads them first, another consumer claims them after
//!   `claim_idle`.
//!
//! Entries trimmed from the stream while pending (`MAXLEN`) cannot be handled; they are
//! acknowledged and logged with their entry id.
//!
//! When the connection fails, [`consume`] returns the error; to run on, connecting again
//! with backoff, run it in [`signalbus_core::consume::reconnecting`], which opens a new
//! session (connection and all) after each failure and hands it the shutdown.

use crate::fields::Entry;
use redis::Value;
use redis::aio::MultiplexedConnection;
use signalbus_core::consume::Handlers;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use signalbus_core::consume::ConsumeReport;

/// Error of [`consume`]: Redis went away, or the group cannot be read.
pub type ConsumeError = Box<dyn std::error::Error + Send + Sync>;

/// Which stream and group to read, as whom, and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The stream key.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// This consumer's name in the group: keep it across restarts, so that a restart reads
    /// the entries the previous run left unacknowledged at once.
    pub consumer: String,
    /// Entries read at once at most (`COUNT`; never more than there are free handler slots);
    /// 100 by default.
    pub batch: usize,
    /// How long one read waits for new entries (`BLOCK`); 1 s by default.
    pub block: Duration,
    /// Entries pending this long, on any consumer of the group, are claimed (`XAUTOCLAIM`):
    /// entries of a consumer that stopped, and entries whose handler failed. 30 s by default;
    /// longer than a handler may take is not needed, the runner keeps its own entries fresh.
    pub claim_idle: Duration,
    /// Where a group created by [`consume`] starts: `0` (the whole stream, the default) or `$`
    /// (new entries only).
    pub start: String,
}

impl ConsumerConfig {
    /// Read `stream` in `group` as `consumer`, with the defaults above.
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        ConsumerConfig {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            batch: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            start: "0".into(),
        }
    }

    /// Set [`ConsumerConfig::claim_idle`].
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Set [`ConsumerConfig::block`].
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Set [`ConsumerConfig::batch`].
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Set [`ConsumerConfig::start`].
    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = start.into();
        self
    }
}

/// Consume `config.stream` from `client`'s server until `shutdown` resolves, at most
/// `concurrency` handlers at once (see the [module documentation](self)).
pub async fn consume<H, Fut, E>(
    client: &redis::Client,
    config: &ConsumerConfig,
    concurrency: usize,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeReport, ConsumeError>
where
    H: Fn(Entry) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    // Reads block; acknowledgements and claims must not wait behind them, so they have a
    // connection of their own.
    let reads = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(config.block + Duration::from_secs(10)));
    let mut reader = client
        .get_multiplexed_async_connection_with_config(&reads)
        .await?;
    // Acknowledgements wait up to 10 s for an answer (the client's default is 0.5 s).
    let writes =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let writer = client
        .get_multiplexed_async_connection_with_config(&writes)
        .await?;
    create_group(&mut reader.clone(), config).await?;

    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut handlers = Handlers::<ConsumeError>::new(concurrency);
    let mut shutdown = std::pin::pin!(shutdown);
    // `Some(cursor)` while this consumer's own unacknowledged entries are read back.
    let mut own = Some("0".to_owned());
    let mut claim_cursor = "0-0".to_owned();
    let min = Duration::from_millis(50);
    let (claim_every, refresh_every) = (
        (config.claim_idle / 2).max(min),
        (config.claim_idle / 3).max(min),
    );
    let mut next_claim = Instant::now();
    let mut next_refresh = Instant::now() + refresh_every;
    let failure = 'run: loop {
        // A free handler slot first, keeping the entries held here fresh meanwhile; then as
        // many entries as there are free slots (an entry waiting for a slot would go idle).
        let first = loop {
            tokio::select! {
                slot = handlers.slot() => break slot,
                () = tokio::time::sleep_until(next_refresh.into()) => {
                    next_refresh = Instant::now() + refresh_every;
                    if let Err(e) = refresh(&mut writer.clone(), config, &held).await {
                        break 'run Some(e);
                    }
                }
                _ = &mut shutdown => break 'run None,
            }
        };
        let mut slots = vec![first];
        while slots.len() < config.batch {
            match handlers.try_slot() {
                Some(slot) => slots.push(slot),
                None => break,
            }
        }
        let mut batch = Vec::new();
        let now = Instant::now();
        if now >= next_claim {
            match claim(&mut writer.clone(), config, &claim_cursor, slots.len()).await {
                Ok((cursor, entries)) => {
                    if cursor == "0-0" {
                        next_claim = now + claim_every;
                    }
                    claim_cursor = cursor;
                    batch = entries;
                }
                Err(e) => break Some(e),
            }
        }
        if batch.is_empty() {
            let from = own.as_deref().unwrap_or(">");
            let read = tokio::select! {
                read = read_group(&mut reader, config, from, slots.len()) => read,
                _ = &mut shutdown => break None,
            };
            match read {
                Ok(entries) => {
                    if own.is_some() {
                        own = entries.last().map(|(id, _)| id.clone());
                    }
                    batch = entries;
                }
                Err(e) => break Some(e),
            }
        }
        let mut failed = None;
        for (entry_id, fields) in batch {
            let Some(fields) = fields else {
                tracing::warn!(
                    stream = %config.stream,
                    entry_id,
                    "a pending entry was trimmed from the stream before it was handled; \
                     acknowledged without a handler"
                );
                if let Err(e) = ack(&mut writer.clone(), config, &entry_id).await {
                    failed = Some(e);
                    break;
                }
                continue;
            };
            if !held.lock().expect("not poisoned").insert(entry_id.clone()) {
                continue; // claimed back while its handler still runs here
            }
            let Some(slot) = slots.pop() else {
                // Never: no more entries are asked for than there are slots.
                held.lock().expect("not poisoned").remove(&entry_id);
                continue;
            };
            let work = handler(Entry::new(&config.stream, entry_id.clone(), fields));
            let (mut writer, config, held) = (writer.clone(), config.clone(), held.clone());
            handlers.spawn(async move {
                let outcome = work.await;
                drop(slot);
                let acked = match outcome {
                    // An acknowledgement that fails ends nothing: the entry stays pending and
                    // comes back after `claim_idle`, and the inbox skips it then.
                    Ok(()) => match ack(&mut writer, &config, &entry_id).await {
                        Ok(()) => Ok(true),
                        Err(e) => {
                            tracing::warn!(
                                error = %e, stream = %config.stream, entry_id,
                                "could not acknowledge a handled entry; it comes back after claim_idle"
                            );
                            Ok(false)
                        }
                    },
                    Err(e) => {
                        tracing::warn!(
                            error = %e, stream = %config.stream, entry_id,
                            "the handler failed; the entry is claimed again after claim_idle"
                        );
                        Ok(false)
                    }
                };
                held.lock().expect("not poisoned").remove(&entry_id);
                acked
            })?;
        }
        if failed.is_some() {
            break failed;
        }
    };
    let report = handlers.finish().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// `XGROUP CREATE stream group start MKSTREAM`; a group that exists is fine.
async fn create_group(
    connection: &mut MultiplexedConnection,
    config: &ConsumerConfig,
) -> Result<(), ConsumeError> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(&config.start)
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

/// An entry id and its fields; `None` for an entry deleted from the stream while pending.
type RawEntry = (String, Option<HashMap<String, Value>>);

/// `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS s from`.
async fn read_group(
    connection: &mut MultiplexedConnection,
    config: &ConsumerConfig,
    from: &str,
    count: usize,
) -> Result<Vec<RawEntry>, ConsumeError> {
    let block = u64::try_from(config.block.as_millis()).unwrap_or(u64::MAX);
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&config.group)
        .arg(&config.consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block)
        .arg("STREAMS")
        .arg(&config.stream)
        .arg(from)
        .query_async(connection)
        .await?;
    // [[stream, entries]] (RESP2) or {stream: entries} (RESP3); nil when nothing came.
    let per_stream = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    Ok(per_stream.into_iter().flat_map(entries).collect())
}

/// `XAUTOCLAIM` the group's entries idle longer than `claim_idle`, from `cursor`: the next
/// cursor (`0-0` once the whole pending list was scanned) and the entries now this consumer's.
async fn claim(
    connection: &mut MultiplexedConnection,
    config: &ConsumerConfig,
    cursor: &str,
    count: usize,
) -> Result<(String, Vec<RawEntry>), ConsumeError> {
    let idle = u64::try_from(config.claim_idle.as_millis()).unwrap_or(u64::MAX);
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(&config.consumer)
        .arg(idle)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await?;
    let Value::Array(mut parts) = reply else {
        return Err(format!("unexpected XAUTOCLAIM reply: {reply:?}").into());
    };
    parts.truncate(2);
    let claimed = parts.pop().map(entries).unwrap_or_default();
    let next = parts.pop().as_ref().and_then(text).unwrap_or("0-0".into());
    Ok((next, claimed))
}

/// Reset the idle time of the entries whose handlers run here, so that no other consumer
/// claims them meanwhile (`XCLAIM … 0 ids… JUSTID`: the delivery count stays).
async fn refresh(
    connection: &mut MultiplexedConnection,
    config: &ConsumerConfig,
    held: &Mutex<HashSet<String>>,
) -> Result<(), ConsumeError> {
    let ids: Vec<String> = held.lock().expect("not poisoned").iter().cloned().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let _: Value = redis::cmd("XCLAIM")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(&config.consumer)
        .arg(0)
        .arg(&ids)
        .arg("JUSTID")
        .query_async(connection)
        .await?;
    Ok(())
}

async fn ack(
    connection: &mut MultiplexedConnection,
    config: &ConsumerConfig,
    entry_id: &str,
) -> Result<(), ConsumeError> {
    let _: i64 = redis::cmd("XACK")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(entry_id)
        .query_async(connection)
        .await?;
    Ok(())
}

/// The entries of a reply that lists `[id, [field, value, …] | nil]`.
fn entries(list: Value) -> Vec<RawEntry> {
    let Value::Array(list) = list else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = text(&parts[0])?;
            let fields = match fields {
                Value::Array(flat) => {
                    let mut map = HashMap::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        if let Some(name) = text(&name) {
                            map.insert(name, value);
                        }
                    }
                    Some(map)
                }
                Value::Map(pairs) => Some(
                    pairs
                        .into_iter()
                        .filter_map(|(name, value)| Some((text(&name)?, value)))
                        .collect(),
                ),
                _ => None,
            };
            Some((id, fields))
        })
        .collect()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}
