//! NATS JetStream publisher for [signalbus](https://docs.rs/signalbus), on async-nats.
//!
//! `nats://user:password@host:4222`. Each message goes to the subject named by its
//! destination (with `.routing_key` appended when it has one), with its headers, a
//! `Content-Type` header, and `Nats-Msg-Id` = the stable signal id: the stream's duplicate
//! window drops a re-send of a message it already stored. A batch is published back to
//! back, then every ack is awaited, and the publisher says what became of each message (a
//! [`BatchOutcome`](signalbus_core::BatchOutcome)):
//!
//! * **stored**: acknowledged by the stream;
//! * **refused**, with a reason naming the subject (never the body): no stream captures the
//!   subject (no responders; not a silent success), the subject is not valid, the message is
//!   larger than the server's `max_payload` (checked before it is sent), a header cannot be
//!   carried, or the stream answered with an error about the message (e.g. larger than its
//!   `max_msg_size`);
//! * an **error** for the whole call, with nothing counted as stored: an ack that did not come
//!   within `timeout_ms`, a lost connection, JetStream unavailable (status 503). Messages the
//!   stream did store are dropped as duplicates when the batch is sent again.
//!
//! The client reconnects by itself after the server went away; batches published while it
//! is away fail (timeout or broken pipe) and are sent again by a later flush.
//!
//! A cluster: list its servers, comma-separated —
//! `nats://user:password@host1:4222,host2:4222,host3:4222` — and the client connects to
//! any that answers and moves to another when its server goes away (it also learns the
//! cluster's other members from the servers, unless they run with `no_advertise`). A server
//! that stops answering while its connection stays open (a frozen process, a partition that
//! drops packets) is left at the third ping with two unanswered, pings going every half
//! `timeout_ms` (1 s to 2 minutes; NATS' own default is two minutes): within 10–15 s with
//! the default timeout. Give a
//! stream several replicas (`num_replicas: 3`) so that an acknowledged message survives a
//! server; with one replica a message is acknowledged by one server alone.
//!
//! # URL query parameters
//! | parameter | default | meaning |
//! |---|---|---|
//! | `timeout_ms` | `10000` | limit of the connect and of waiting for the acks of a batch; pings go every half of it (1 s to 2 min) |
//! | `token` | none | authenticate with a token instead of user and password (`nats://TOKEN@host` works too) |
//! | `name` | `signalbus` | the client name the server shows |
//! | `subject` | `destination` | `destination_key`: subject = destination + `.` + routing key; `destination`: the destination alone |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consumer;
mod options;
mod publisher;

pub use options::{NatsOptions, SubjectFrom};
pub use publisher::NatsPublisher;

/// The signal's message id as a consumer reads it from a JetStream message (the
/// `Nats-Msg-Id` header this publisher sets, which JetStream also deduplicates by): the key of
/// the consumer inbox (`signalbus::inbox`), the same on every copy. `None` for a message that
/// has none.
pub fn message_id(message: &async_nats::jetstream::Message) -> Option<&str> {
    message
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|id| id.as_str())
}
