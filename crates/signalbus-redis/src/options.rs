//! The bus URL of the Redis Streams publisher.

use signalbus_core::redact::redact_url;
use signalbus_core::{Error, Result};
use std::time::Duration;

/// How the stream key of a message is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// The destination alone; the routing key travels as the entry's `routing-key` field.
    Destination,
    /// `destination:routing_key` when there is a routing key, else the destination.
    DestinationKey,
}

/// The largest entry Redis takes by default (`proto-max-bulk-len`, 512 MiB): a larger body
/// would make the server drop the connection, failing every batch that carries it.
pub const DEFAULT_MAX_BYTES: usize = 512 * 1024 * 1024;

/// How the Redis publisher connects; usually parsed from the bus URL.
#[derive(Clone)]
pub struct RedisOptions {
    /// The URL handed to the redis client: ours without the query parameters of this crate.
    pub(crate) connection: String,
    pub(crate) display: String,
    /// Limit of the connect and of each batch's replies.
    pub timeout: Duration,
    /// How stream keys are made.
    pub stream: StreamFrom,
    /// Trim each stream to about this many entries (`XADD … MAXLEN ~ N`); `None` keeps all.
    pub maxlen: Option<u64>,
    /// Bodies larger than this are refused permanently (parked) instead of sent.
    pub max_bytes: usize,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &self.display)
            .field("timeout", &self.timeout)
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl RedisOptions {
    /// Parse `redis://[user:password@]host[:port][/db][?params]` (`rediss://` for TLS).
    pub fn from_url(url: &str) -> Result<Self> {
        let display = redact_url(url);
        let mut parsed = url::Url::parse(url)
            .map_err(|e| Error::Config(format!("bus URL `{display}` is not a valid URL: {e}")))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(Error::Config(format!(
                "bus URL `{display}`: scheme `{}:` is not Redis; use `redis://host:6379` \
                 (or `rediss://` for TLS)",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Error::Config(format!(
                "bus URL `{display}` names no host; use e.g. `redis://127.0.0.1:6379`"
            )));
        }
        let db = parsed.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(Error::Config(format!(
                "bus URL `{display}`: the path must be a database number (`/0`), not `/{db}`"
            )));
        }
        let mut options = RedisOptions {
            connection: String::new(),
            display: display.clone(),
            timeout: Duration::from_secs(10),
            stream: StreamFrom::Destination,
            maxlen: None,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let positive = |key: &str, value: &str| -> Result<u64> {
            value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Config(format!(
                    "bus URL `{display}`: `{key}` must be a positive whole number"
                ))
            })
        };
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "timeout_ms" => {
                    options.timeout = Duration::from_millis(positive("timeout_ms", &value)?);
                }
                "maxlen" => options.maxlen = Some(positive("maxlen", &value)?),
                "max_bytes" => {
                    options.max_bytes =
                        usize::try_from(positive("max_bytes", &value)?).unwrap_or(usize::MAX);
                }
                "stream" => {
                    options.stream = match value.as_ref() {
                        "destination" => StreamFrom::Destination,
                        "destination_key" => StreamFrom::DestinationKey,
                        _ => {
                            return Err(Error::Config(format!(
                                "bus URL `{display}`: `stream` must be `destination` or \
                                 `destination_key`"
                            )));
                        }
                    }
                }
                other => {
                    return Err(Error::Config(format!(
                        "bus URL `{display}`: unknown query parameter `{other}`; known: \
                         timeout_ms, stream, maxlen, max_bytes"
                    )));
                }
            }
        }
        parsed.set_query(None);
        options.connection = parsed.to_string();
        Ok(options)
    }

    /// The stream key of a message.
    pub(crate) fn stream(&self, destination: &str, routing_key: Option<&str>) -> String {
        match (self.stream, routing_key) {
            (StreamFrom::DestinationKey, Some(key)) if !key.is_empty() => {
                format!("{destination}:{key}")
            }
            _ => destination.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let o = RedisOptions::from_url(
            "redis://u:secret@h:6380/2?timeout_ms=50&maxlen=1000&stream=destination_key",
        )
        .unwrap();
        assert_eq!(o.timeout, Duration::from_millis(50));
        assert_eq!(o.maxlen, Some(1000));
        assert_eq!(o.connection, "redis://u:secret@h:6380/2");
        assert_eq!(o.stream("orders", Some("placed")), "orders:placed");
        assert_eq!(o.stream("orders", None), "orders");
        assert!(!format!("{o:?}").contains("secret"));
        let o = RedisOptions::from_url("rediss://h").unwrap();
        assert_eq!(o.stream("orders", Some("placed")), "orders");
        assert_eq!(o.max_bytes, DEFAULT_MAX_BYTES);
        for bad in [
            "nats://u:secret@h",
            "redis://u:secret@h?x=1",
            "redis://u:secret@h?timeout_ms=0",
            "redis://u:secret@h?maxlen=-1",
            "redis://u:secret@h?stream=key",
            "redis://u:secret@h/orders",
            "redis://u:secret@",
        ] {
            let e = RedisOptions::from_url(bad).unwrap_err().to_string();
            assert!(!e.contains("secret") && e.contains("bus URL"), "{e}");
        }
    }
}
