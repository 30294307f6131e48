//! Signed HTTP webhooks for [signalbus](https://docs.rs/signalbus): each message is one
//! `POST`, signed per the [Standard Webhooks](https://www.standardwebhooks.com/)
//! specification.
//!
//! `https://hooks.example.com/signals?allow=partner.example.org:8443`. A message's
//! destination is either a path relative to the bus URL (`orders/placed` goes to
//! `https://hooks.example.com/signals/orders/placed`) or an absolute URL whose host is the bus
//! URL's or one listed in `allow=`. Rows are written by any service, so a row must not be able
//! to make the relay call an arbitrary (internal) address: any other destination is parked at
//! once with a reason that says so, and nothing is sent. Redirects are not followed (a 3xx
//! is a refusal), no proxy is used, and `https://` uses the system's root certificates
//! (rustls on ring; on Linux, `SSL_CERT_FILE` or `SSL_CERT_DIR` replace them, for a private
//! CA).
//!
//! # The request
//! | header | value |
//! |---|---|
//! | `webhook-id` | the stable message id of the signal: the same on every re-send, the receiver's deduplication key |
//! | `webhook-timestamp` | seconds since the Unix epoch, when this attempt was signed |
//! | `webhook-signature` | `v1,` + base64(HMAC-SHA256(key, `id.timestamp.body`)), one per secret, space-separated |
//! | `content-type` | the message's content type, else `application/octet-stream` |
//! | `signalbus-signal` | the signal type's name |
//! | each header of the message | as it is (a header named like one above is refused: parked at once) |
//!
//! The body is the message's body, byte for byte (binary bodies too). The secrets come from
//! the environment variable `SIGNALBUS_WEBHOOK_SECRET` (or the one `secret_env=` names), or
//! from `secret=` in the URL (masked wherever the URL is shown), and never into a log: one or
//! more `whsec_…` secrets separated by spaces; every one signs, so a receiver that knows the
//! old or the new key accepts during a rotation.
//! [`Secrets::verify`] is the receiver's check.
//!
//! # What each answer means
//! * **2xx**: stored.
//! * **4xx** other than 408, 425 and 429, and **3xx**: refused, that message alone: retried
//!   with backoff, then parked, with the status in the reason (never the response body).
//! * **429**, **408**, **425**, **5xx**, no answer within `timeout_ms`, a connection that
//!   fails: an outage of *that endpoint* only. Its messages are deferred (no attempt spent)
//!   and the endpoint is paused: for its `Retry-After` (429), else 1 s doubling with each
//!   failure in a row, at most `max_pause_s`. Messages to it wait without a request until
//!   then; the other endpoints go on.
//!
//! A publish call never fails as a whole, and starts no request after `budget_ms` (2.5 s):
//! messages not sent by then are deferred (no attempt spent), so that a slow endpoint makes
//! progress call after call (requests in flight finish, within `timeout_ms`; keep the sum
//! below the bus's publish timeout). A request that timed out may still have reached the receiver: the message is
//! sent again with the same `webhook-id` (at-least-once). Each request is signed when it is
//! sent. A 5xx is the endpoint's: a message an endpoint answers 500 for every time is never
//! parked; it waits, with the endpoint paused, until the endpoint takes it.
//!
//! # URL query parameters
//! | parameter | default | meaning |
//! |---|---|---|
//! | `allow` | none | more hosts (`host` or `host:port`, comma-separated) that absolute destinations may name |
//! | `secret_env` | `SIGNALBUS_WEBHOOK_SECRET` | the environment variable that holds the secret(s) |
//! | `secret` | none | the secret(s) themselves, instead of `secret_env` |
//! | `timeout_ms` | `10000` | limit of one request, from connect to the end of the answer |
//! | `concurrency` | `8` | requests in flight at once per endpoint |
//! | `max_pause_s` | `300` | the longest an endpoint is paused (also caps `Retry-After`; at most a day) |
//! | `budget_ms` | `2500` | no request of a publish call starts after this; with `timeout_ms`, keep it below the bus's publish timeout |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod endpoints;
mod options;
mod publisher;
mod sign;

pub use options::{DEFAULT_BUDGET, DEFAULT_SECRET_ENV, WebhookOptions};
pub use publisher::WebhookPublisher;
pub use sign::Secrets;
