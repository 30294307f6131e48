//! Amazon SQS and SNS publishers for [signalbus](https://docs.rs/signalbus), on the AWS SDK
//! for Rust.
//!
//! `sqs://REGION` (feature `sqs`) and `sns://REGION` (feature `sns`): each signal's
//! destination names its queue (a name, or a queue URL) or topic (a name, or an ARN).
//! Credentials come from the AWS default chain (environment, shared profile and SSO, web
//! identity, container and instance roles), or from [`AwsOptions::credentials`]; never from
//! the URL. `?endpoint=http://127.0.0.1:4566` points the client at an emulator (LocalStack,
//! moto). HTTPS is rustls on ring with the system's root certificates.
//!
//! # The message
//! The body travels as it is when it is text SQS and SNS accept (valid UTF-8 of the allowed
//! characters, not empty); any other body (binary, invalid UTF-8, control characters) travels
//! base64-encoded, with the attribute `signalbus-content-encoding: base64`, and an empty body
//! as `-` with `signalbus-content-encoding: empty` (SQS and SNS take no empty message);
//! [`consumer::Received::body`] undoes both. Message attributes (strings):
//!
//! | attribute | value |
//! |---|---|
//! | `signalbus-message-id` | the stable message id: the same on every re-send, the inbox key of a consumer |
//! | `signalbus-signal` | the signal type's name |
//! | `content-type` | the body's MIME type, when there is one |
//! | `signalbus-content-encoding` | `base64`, when the body was encoded |
//! | each header, and `signalbus-routing-key` | as they are, when they all fit |
//!
//! SQS and SNS allow 10 attributes a message. When the headers (with the routing key) do not
//! fit in what is left, or one has a name or value SQS does not take or a name of the
//! attributes above, *all* of them travel as
//! one attribute `signalbus-headers` holding a JSON object ([`consumer::Received::header`]
//! reads both forms). Nothing is dropped.
//!
//! A message larger than `max_bytes` (body and attributes; 256 KiB by default) is parked at
//! once with a reason that says so.
//!
//! # FIFO queues and topics
//! A queue URL or topic ARN ending in `.fifo` is FIFO: the message id is the
//! `MessageDeduplicationId` (a re-send within 5 minutes is dropped), and the signal's ordering
//! key is the `MessageGroupId`; a signal without a key goes to the group `signalbus` (or the
//! one `fifo_group=` names), one sequence. Requests to a FIFO queue or topic go one at a time,
//! in order; with the ordered flush or the relay's ordered mode, each key's signals arrive in
//! order, end to end.
//!
//! # What each answer means
//! A batch becomes `SendMessageBatch` / `PublishBatch` requests of up to 10 entries within the
//! size limit, per queue or topic. Then:
//! * an entry in `Successful`: **stored**;
//! * an entry in `Failed` with `SenderFault: true`: **refused**, that message alone (retried
//!   with backoff, then parked), with the code and message AWS gave; with `SenderFault:
//!   false`: **deferred** (sent again after 1 s, no attempt spent);
//! * a request refused for its queue or topic (it does not exist, access denied, invalid):
//!   its messages **refused**;
//! * throttling, HTTP 5xx, no answer within `timeout_ms`, a connection failure, credentials
//!   rejected or missing: an **outage**. When nothing of the call was stored, the call fails as
//!   a whole (the burst is given back, no attempt spent); else the messages that met it are
//!   deferred.
//!
//! The SDK retries a failed request once within `timeout_ms` (its standard retry policy). A
//! publish call starts no request after `budget_ms` (2.5 s): the messages not sent by then
//! are deferred (no attempt spent); requests in flight finish, within `timeout_ms` (keep the
//! two below the bus's publish timeout). On a FIFO queue or topic, nothing more of the call is
//! sent after a message that was not stored.
//!
//! # URL query parameters
//! | parameter | default | meaning |
//! |---|---|---|
//! | `region` | the host of the URL, else the default chain's (`AWS_REGION`) | the AWS region |
//! | `endpoint` | AWS's | another endpoint, e.g. `http://127.0.0.1:4566` |
//! | `profile` | the default chain's | a profile of `~/.aws/config` |
//! | `timeout_ms` | `10000` | limit of one API call, its retry included |
//! | `fifo_group` | `signalbus` | the `MessageGroupId` of FIFO messages without an ordering key |
//! | `max_bytes` | `262144` | larger messages are parked instead of sent |
//! | `budget_ms` | `2500` | no request of a publish call starts after this; with `timeout_ms`, keep it below the bus's publish timeout |
//!
//! The consumer side for SQS is [`consumer::consume`] (feature `sqs`). SNS delivers to its
//! subscribers; subscribe an SQS queue with `RawMessageDelivery` so that the attributes above
//! arrive as message attributes, and read it with the same runner.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// With neither service chosen, the shared encoding serves nothing.
#![cfg_attr(not(any(feature = "sqs", feature = "sns")), allow(dead_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "sqs")]
pub mod consumer;
pub mod encode;
mod errors;
mod options;
mod service;
#[cfg(feature = "sns")]
mod sns;
#[cfg(feature = "sqs")]
mod sqs;

pub use options::{AwsOptions, DEFAULT_FIFO_GROUP, DEFAULT_MAX_BYTES};
#[cfg(feature = "sns")]
pub use sns::SnsPublisher;
#[cfg(feature = "sqs")]
pub use sqs::SqsPublisher;
