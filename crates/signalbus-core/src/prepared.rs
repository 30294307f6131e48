//! A signal row prepared for another database library to insert, inside that library's own
//! transaction (sea-orm, diesel-async, …): [`Recorder::prepare`](crate::Recorder::prepare)
//! builds the statement and its values, the caller runs it on its connection, and
//! [`Recorder::record`](crate::Recorder::record) takes the new row's id so that the
//! auto-flush sends the signal after that transaction commits.

use crate::engine::auto::Item;
use crate::message::{Headers, Message};
use crate::registry::TypeIdx;
use crate::storage::NewRow;
use std::sync::Arc;

/// One parameter of [`PreparedSignal::sql`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertParam<'a> {
    /// A text value, or SQL `NULL`.
    Text(Option<&'a str>),
    /// A byte string (the body).
    Bytes(&'a [u8]),
    /// A 64-bit integer, or SQL `NULL`.
    Int(Option<i64>),
}

/// A signal row ready to be inserted through any connection to the signal's database.
pub struct PreparedSignal {
    pub(crate) idx: TypeIdx,
    pub(crate) signal: Arc<str>,
    pub(crate) sql: sqlx::SqlStr,
    pub(crate) returns_id: bool,
    pub(crate) message_id: String,
    pub(crate) topic: String,
    pub(crate) routing_key: Option<String>,
    /// The headers as stored (JSON) and as the auto-flush sends them.
    pub(crate) headers_json: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: Option<String>,
    pub(crate) lease_ms: Option<i64>,
    pub(crate) ordering_key: Option<String>,
    pub(crate) autoflush: bool,
}

// Not derived: the body and headers stay out of logs.
impl std::fmt::Debug for PreparedSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSignal")
            .field("signal", &self.signal)
            .field("message_id", &self.message_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl PreparedSignal {
    /// The `INSERT` statement, in the database's placeholders (`$1`… on PostgreSQL, `?` on
    /// MySQL and SQLite), taking [`PreparedSignal::params`] in order.
    pub fn sql(&self) -> &str {
        self.sql.as_str()
    }

    /// The statement's parameters, in order.
    pub fn params(&self) -> [InsertParam<'_>; 8] {
        let row = self.row();
        [
            InsertParam::Text(Some(row.message_id)),
            InsertParam::Text(Some(row.topic)),
            InsertParam::Text(row.routing_key),
            InsertParam::Text(row.headers),
            InsertParam::Bytes(row.body),
            InsertParam::Text(row.content_type),
            InsertParam::Int(row.lease_ms),
            InsertParam::Text(row.ordering_key),
        ]
    }

    /// Whether the statement returns the new row's id as its only column (`RETURNING id`,
    /// PostgreSQL and SQLite); otherwise the id is the connection's last insert id (MySQL).
    pub fn returns_id(&self) -> bool {
        self.returns_id
    }

    /// The message id the signal will carry on every send.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    pub(crate) fn row(&self) -> NewRow<'_> {
        NewRow {
            message_id: &self.message_id,
            topic: &self.topic,
            routing_key: self.routing_key.as_deref(),
            headers: self.headers_json.as_deref(),
            body: &self.body,
            content_type: self.content_type.as_deref(),
            lease_ms: self.lease_ms,
            ordering_key: self.ordering_key.as_deref(),
        }
    }

    /// What the auto-flush sends for the inserted row `id`, if the signal is meant for it.
    pub(crate) fn into_item(self, id: i64) -> Option<Item> {
        if !self.autoflush {
            return None;
        }
        let mut headers = self.headers;
        // As a flush builds it from the row: the key travels as a header.
        if let Some(key) = &self.ordering_key {
            headers.insert(crate::message::ORDERING_KEY_HEADER.to_owned(), key.clone());
        }
        Some(Item {
            idx: self.idx,
            id,
            leased: self.lease_ms.is_some(),
            message: Some(Message {
                id: self.message_id,
                signal: self.signal,
                destination: self.topic,
                routing_key: self.routing_key,
                headers,
                body: self.body,
                content_type: self.content_type,
            }),
        })
    }
}
