//! NATS JetStream publisher for [signalbus](https://docs.rs/signalbus), on async-nats.
//!
//! `nats://user:password@host:4222`. Each message goes to the subject named by its
//! destination (with `.routing_key` appended when it has one), with its headers, a
//! `Content-Type` header, and `Nats-Msg-Id` = the stable signal id: the stream's duplicate
//! window drops a re-send of a message it already stored. A batch is published back to
//! back and counts as sent when the stream acknowledged every message. Publishing to a
//! subject that no stream captures is an error (rows stay pending), not a silent success.
//!
//! The client reconnects by itself after the server went away; batches published while it
//! is away fail (timeout or broken pipe) and are sent again by a later flush.
//!
//! # URL query parameters
//! | parameter | default | meaning |
//! |---|---|---|
//! | `timeout_ms` | `10000` | limit of the connect and of waiting for the acks of a batch |
//! | `token` | none | authenticate with a token instead of user and password (`nats://TOKEN@host` works too) |
//! | `name` | `signalbus` | the client name the server shows |
//! | `subject` | `destination` | `destination_key`: subject = destination + `.` + routing key; `destination`: the destination alone |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod options;
mod publisher;

pub use options::{NatsOptions, SubjectFrom};
pub use publisher::NatsPublisher;
