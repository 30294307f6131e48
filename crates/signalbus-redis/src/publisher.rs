//! The publisher: a batch is one pipeline of `XADD`s, and Redis answers each command.

use crate::fields;
use crate::options::RedisOptions;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};
use signalbus_core::{
    BatchOutcome, Error, Message, PublishError, PublishErrorKind as Kind, Publisher,
};
use std::time::Duration;

/// Publishes to Redis Streams. Cheap to clone; clones share one multiplexed connection, which
/// is re-established in the background after it broke.
#[derive(Clone)]
pub struct RedisPublisher {
    connection: ConnectionManager,
    options: RedisOptions,
}

impl std::fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisPublisher {
    /// Connect to the server of `url` (see the crate docs). Fails at once, naming the host or
    /// the credentials at fault, when the server cannot be used.
    pub async fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(RedisOptions::from_url(url)?).await
    }

    /// Connect with `options`.
    pub async fn with_options(options: RedisOptions) -> signalbus_core::Result<Self> {
        let connection = connect(&options).await?;
        Ok(RedisPublisher {
            connection,
            options,
        })
    }

    /// The connection, e.g. to create streams or read them back.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Send the batch as one pipeline (every `XADD` answered on its own) and sort the answers:
    /// an entry id is stored, an error of the entry's own a refusal, an error of the server
    /// as a whole (or no answer) fails the call.
    async fn send(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut outcome = BatchOutcome::all_stored();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let stream = self
                .options
                .stream(&message.destination, message.routing_key.as_deref());
            if stream.is_empty() {
                outcome.refuse_permanently(
                    index,
                    format!(
                        "message {} of signal `{}` names no stream (empty destination)",
                        message.id, message.signal
                    ),
                );
                continue;
            }
            if message.body.len() > self.options.max_bytes {
                outcome.refuse_permanently(
                    index,
                    format!(
                        "message {} to stream `{stream}` is {} bytes, more than the {} bytes \
                         Redis takes (`max_bytes` of the bus URL; the server's \
                         proto-max-bulk-len)",
                        message.id,
                        message.body.len(),
                        self.options.max_bytes
                    ),
                );
                continue;
            }
            let cmd = pipe.cmd("XADD").arg(&stream);
            if let Some(maxlen) = self.options.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg("*");
            for (name, value) in fields::of(message) {
                cmd.arg(name.as_ref()).arg(value);
            }
            sent.push((index, stream));
        }
        if sent.is_empty() {
            return Ok(outcome);
        }
        let mut connection = self.connection.clone();
        let answers: Vec<redis::RedisResult<String>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| failure(e, &self.options.display, batch.len()))?;
        if answers.len() != sent.len() {
            return Err(PublishError::unavailable(format!(
                "Redis answered {} of {} commands; the batch stays pending",
                answers.len(),
                sent.len()
            )));
        }
        for ((index, stream), answer) in sent.into_iter().zip(answers) {
            if let Err(e) = answer {
                if !refused_alone(&e) {
                    return Err(failure(e, &self.options.display, batch.len()));
                }
                outcome.refuse(
                    index,
                    format!(
                        "Redis refused the entry for stream `{stream}`: {}",
                        e.detail().map_or_else(
                            || e.to_string(),
                            |d| { format!("{} {d}", e.code().unwrap_or("ERR")) }
                        )
                    ),
                );
            }
        }
        Ok(outcome)
    }
}

/// Open the managed connection of `options`, with its timeouts, failing at once (one retry)
/// with an error that says what to check.
pub(crate) async fn connect(options: &RedisOptions) -> signalbus_core::Result<ConnectionManager> {
    let shown = &options.display;
    let client = redis::Client::open(options.connection.as_str()).map_err(|e| {
        Error::Config(format!(
            "bus URL `{shown}` is not a Redis URL the client takes: {}",
            e.detail().unwrap_or("invalid")
        ))
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.timeout))
        .set_response_timeout(Some(options.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| {
            let message = match e.kind() {
                ErrorKind::AuthenticationFailed => {
                    format!("Redis at `{shown}` refused the credentials (password not shown): {e}")
                }
                ErrorKind::Server(_) if e.code() == Some("NOAUTH") => format!(
                    "Redis at `{shown}` needs a password: write `redis://user:password@host`"
                ),
                _ if e.is_timeout() => format!(
                    "Redis at `{shown}` did not answer within {:?}; check the host and port",
                    options.timeout
                ),
                _ => format!(
                    "cannot reach Redis at `{shown}` ({e}); check the host and port and that \
                     redis-server is running"
                ),
            };
            Error::Publish(PublishError::unavailable(message).with_source(e))
        })
}

/// Whether a command's error is the entry's own, to retry it alone with backoff: a key that
/// holds another type (`WRONGTYPE`), an ACL that denies the key (`NOPERM`), a plain `ERR`.
/// Errors that say the server cannot take writes now (out of memory, a read-only replica,
/// loading, busy, failing over, persistence failing) fail the whole call instead: they spend
/// no attempt.
fn refused_alone(e: &RedisError) -> bool {
    const SERVER_WIDE: [&str; 12] = [
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MOVED",
        "ASK",
        "NOREPLICAS",
        "MISCONF",
        "NOAUTH",
    ];
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && !e.code().is_some_and(|code| SERVER_WIDE.contains(&code))
}

/// A failure of the whole call: nothing counts as stored, no attempt is spent.
fn failure(e: RedisError, shown: &str, n: usize) -> PublishError {
    let error = if e.is_timeout() {
        PublishError::new(
            Kind::Timeout,
            format!(
                "Redis at `{shown}` did not answer for {n} message(s) in time; the batch stays \
                 pending"
            ),
        )
    } else if e.is_io_error() || e.is_connection_dropped() {
        PublishError::unavailable(format!(
            "lost the connection to Redis at `{shown}` ({e}); the batch stays pending and the \
             connection is re-established"
        ))
    } else {
        PublishError::unavailable(format!(
            "Redis at `{shown}` cannot take writes now ({e}); the batch stays pending"
        ))
    };
    error.with_source(e)
}

impl Publisher for RedisPublisher {
    /// One pipeline of `XADD`s; Redis answers each: an entry id (stored) or an error (see
    /// `refused_alone`). No answer within `timeout_ms` fails the call.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.is_empty() {
            return Ok(BatchOutcome::all_stored());
        }
        let limit = self.options.timeout;
        match tokio::time::timeout(limit, self.send(batch)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(
                Kind::Timeout,
                format!(
                    "Redis did not answer for {} message(s) within {limit:?}; the batch stays \
                     pending",
                    batch.len()
                ),
            )),
        }
    }

    /// `PING`, within `timeout_ms` (at most 2 s).
    async fn check(&self) -> Result<(), PublishError> {
        let limit = self.options.timeout.min(Duration::from_secs(2));
        let mut connection = self.connection.clone();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut connection);
        match tokio::time::timeout(limit, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PublishError::unavailable(format!(
                "Redis at `{}` did not answer PING: {e}",
                self.options.display
            ))),
            Err(_) => Err(PublishError::unavailable(format!(
                "Redis at `{}` did not answer PING within {limit:?}",
                self.options.display
            ))),
        }
    }
}
