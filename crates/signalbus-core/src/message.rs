//! The message that a publisher delivers.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Message headers: names to string values. Every bus carries string headers.
pub type Headers = BTreeMap<String, String>;

/// The header that carries a signal's ordering key ([`crate::Signal::ordering_key`], the
/// `ordering_key` column) on every bus.
pub const ORDERING_KEY_HEADER: &str = "signalbus-ordering-key";

/// One message ready for the bus, built from a pending signal row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Stable message id: the same on every re-send of this signal, so that brokers
    /// (NATS `Nats-Msg-Id`, AMQP `message_id`) and consumers can drop duplicates.
    pub id: String,
    /// Name of the signal type the message comes from.
    pub signal: Arc<str>,
    /// Where the message goes: exchange (AMQP), subject (NATS) or topic (Kafka).
    pub destination: String,
    /// Routing key (AMQP) or key (Kafka); `None` when the bus needs none.
    pub routing_key: Option<String>,
    /// Message headers.
    pub headers: Headers,
    /// The payload.
    #[serde(with = "body_as_text")]
    pub body: Vec<u8>,
    /// MIME type of the payload, e.g. `application/json`.
    pub content_type: Option<String>,
}

impl Message {
    /// The body as UTF-8 text, if it is.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// Bodies are shown as text when they are UTF-8 (the common JSON case) and as an array of
/// bytes otherwise, so that JSON-lines output stays readable.
mod body_as_text {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(body) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(body),
        }
    }
}
