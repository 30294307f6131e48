//! Redis Streams publisher for [signalbus](https://docs.rs/signalbus), on redis-rs.
//!
//! `redis://[user:password@]host:6379[/db]`, or `rediss://` for TLS (the system's root
//! certificates; `SSL_CERT_FILE` or `SSL_CERT_DIR` replace them, for a private CA). Each message becomes one entry (`XADD stream * …`) of the stream named by its
//! destination, with these fields, in this order:
//!
//! | field | value |
//! |---|---|
//! | `id` | the stable message id of the signal: the same on every re-send, the inbox key of a consumer |
//! | `signal` | the signal type's name |
//! | `routing-key` | the routing key, when there is one |
//! | `content-type` | the body's MIME type, when there is one |
//! | `header:NAME` | each header (the trace context, the ordering key `signalbus-ordering-key`, …) |
//! | `body` | the body, as bytes: Redis values are binary-safe, so any body travels unchanged |
//!
//! A batch is one pipeline; Redis answers every `XADD` on its own, and the publisher says what
//! became of each message (a [`BatchOutcome`](signalbus_core::BatchOutcome)):
//!
//! * **stored**: Redis answered with an entry id (it holds the entry in memory; how durable
//!   that is depends on the server's `appendonly`/`appendfsync` and replicas);
//! * **refused**, that message alone, retried with backoff and then parked: an error of the
//!   command's own, such as `WRONGTYPE` (the key holds something other than a stream) or
//!   `NOPERM` (an ACL denies the key). Refused at once and parked (permanently): a body larger
//!   than `max_bytes` (Redis's `proto-max-bulk-len`, 512 MiB by default: a larger one would make
//!   the server drop the connection) or an empty destination;
//! * an **error** for the whole call, with nothing counted as stored and no attempt spent: no
//!   answer within `timeout_ms`, a lost connection, or an error that says the server cannot
//!   take writes now (`OOM`, `READONLY`, `LOADING`, `BUSY`, `MASTERDOWN`, `MISCONF`, …).
//!
//! A call that failed as a whole may have stored some entries before it failed; they are sent
//! again (at-least-once). Redis does not drop such copies: consumers skip them by the `id` field
//! (the consumer inbox, `signalbus::inbox`, does).
//!
//! Per-key order: the entries of one stream are in the order of the pipeline, so the ordered
//! flush and the relay's ordered mode keep each key's order within its stream.
//!
//! # URL query parameters
//! | parameter | default | meaning |
//! |---|---|---|
//! | `timeout_ms` | `10000` | limit of the connect and of the answers to a batch |
//! | `stream` | `destination` | `destination`: the stream is the destination; `destination_key`: `destination:routing_key` |
//! | `maxlen` | none | trim each stream to about this many entries (`MAXLEN ~ N`); entries trimmed before a consumer read them are gone |
//! | `max_bytes` | `536870912` | bodies larger than this are parked instead of sent |
//!
//! The consumer side is [`consumer::consume`]: a consumer-group runner that acknowledges an
//! entry after its handler succeeded and claims the entries of consumers that died.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consumer;
pub mod fields;
mod options;
mod publisher;

pub use fields::Entry;
pub use options::{DEFAULT_MAX_BYTES, RedisOptions, StreamFrom};
pub use publisher::RedisPublisher;
