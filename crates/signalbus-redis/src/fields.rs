//! The fields of a stream entry: how a message is written, and read back by a consumer.

use redis::Value;
use signalbus_core::Message;
use std::borrow::Cow;
use std::collections::HashMap;

/// The stable message id of the signal: the inbox key of a consumer.
pub const ID: &str = "id";
/// The name of the signal type.
pub const SIGNAL: &str = "signal";
/// The routing key, when the message has one.
pub const ROUTING_KEY: &str = "routing-key";
/// The MIME type of the body, when the message has one.
pub const CONTENT_TYPE: &str = "content-type";
/// Each header `NAME` is the field `header:NAME` (so no header can shadow the fields above).
pub const HEADER_PREFIX: &str = "header:";
/// The body, as bytes (Redis values are binary-safe: any body travels as it is).
pub const BODY: &str = "body";

/// The fields of `message`, in this order: id, signal, routing key, content type, headers,
/// body.
pub(crate) fn of(message: &Message) -> Vec<(Cow<'static, str>, &[u8])> {
    let mut fields = Vec::with_capacity(5 + message.headers.len());
    fields.push((Cow::Borrowed(ID), message.id.as_bytes()));
    fields.push((Cow::Borrowed(SIGNAL), message.signal.as_bytes()));
    if let Some(key) = &message.routing_key {
        fields.push((Cow::Borrowed(ROUTING_KEY), key.as_bytes()));
    }
    if let Some(ct) = &message.content_type {
        fields.push((Cow::Borrowed(CONTENT_TYPE), ct.as_bytes()));
    }
    for (name, value) in &message.headers {
        fields.push((
            Cow::Owned(format!("{HEADER_PREFIX}{name}")),
            value.as_bytes(),
        ));
    }
    fields.push((Cow::Borrowed(BODY), &message.body));
    fields
}

/// One entry of a stream, as a consumer reads it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream key it was read from.
    pub stream: String,
    /// Its entry id in the stream (`1700000000000-0`), the id `XACK` takes.
    pub entry_id: String,
    fields: HashMap<String, Value>,
}

impl Entry {
    pub(crate) fn new(stream: &str, entry_id: String, fields: HashMap<String, Value>) -> Self {
        Entry {
            stream: stream.to_owned(),
            entry_id,
            fields,
        }
    }

    /// The bytes of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        match self.fields.get(name)? {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.as_bytes()),
            _ => None,
        }
    }

    fn text(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.field(name)?).ok()
    }

    /// The signal's stable message id (field `id`), the same on every copy.
    pub fn message_id(&self) -> Option<&str> {
        self.text(ID)
    }

    /// The signal type's name (field `signal`).
    pub fn signal(&self) -> Option<&str> {
        self.text(SIGNAL)
    }

    /// The routing key (field `routing-key`).
    pub fn routing_key(&self) -> Option<&str> {
        self.text(ROUTING_KEY)
    }

    /// The body's MIME type (field `content-type`).
    pub fn content_type(&self) -> Option<&str> {
        self.text(CONTENT_TYPE)
    }

    /// Header `name` (field `header:NAME`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text(&format!("{HEADER_PREFIX}{name}"))
    }

    /// The body (field `body`); empty when the entry has none.
    pub fn body(&self) -> &[u8] {
        self.field(BODY).unwrap_or_default()
    }
}
