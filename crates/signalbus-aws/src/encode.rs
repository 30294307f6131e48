//! A message as SQS and SNS carry it: a text body and at most 10 string attributes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use signalbus_core::Message;

/// The signal's stable message id (also the FIFO `MessageDeduplicationId`).
pub const MESSAGE_ID: &str = "signalbus-message-id";
/// The signal type's name.
pub const SIGNAL: &str = "signalbus-signal";
/// The body's MIME type.
pub const CONTENT_TYPE: &str = "content-type";
/// `base64` when the body was encoded (it was not text SQS and SNS can carry); `empty` for
/// an empty body, sent as `-`.
pub const CONTENT_ENCODING: &str = "signalbus-content-encoding";
/// The routing key, carried like a header.
pub const ROUTING_KEY: &str = "signalbus-routing-key";
/// Every header as one JSON object, when they do not fit as attributes of their own.
pub const HEADERS: &str = "signalbus-headers";
/// The most attributes a message may have.
pub const MAX_ATTRIBUTES: usize = 10;
/// The most entries of one `SendMessageBatch` or `PublishBatch`.
const MAX_BATCH: usize = 10;

/// A message ready for SQS or SNS.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub body: String,
    /// Names and string values.
    pub attributes: Vec<(String, String)>,
    /// What SQS and SNS count against their size limit: body, names and values.
    pub size: usize,
}

/// Encode `message`: its body as it is when it is text SQS and SNS can carry, else base64 with
/// `signalbus-content-encoding: base64`; its id, signal name and content type as attributes;
/// its headers (and routing key) as attributes of their own when they all fit within the 10
/// and have names and values SQS takes, else all of them as one JSON attribute
/// `signalbus-headers`.
pub(crate) fn encode(message: &Message) -> Encoded {
    let mut attributes = vec![
        (MESSAGE_ID.to_owned(), message.id.clone()),
        (SIGNAL.to_owned(), message.signal.to_string()),
    ];
    if let Some(ct) = message.content_type.as_deref().filter(|ct| carried(ct)) {
        attributes.push((CONTENT_TYPE.to_owned(), ct.to_owned()));
    }
    let body = match std::str::from_utf8(&message.body) {
        Ok("") => {
            attributes.push((CONTENT_ENCODING.to_owned(), "empty".to_owned()));
            "-".to_owned()
        }
        Ok(text) if text.chars().all(allowed) => text.to_owned(),
        _ => {
            attributes.push((CONTENT_ENCODING.to_owned(), "base64".to_owned()));
            STANDARD.encode(&message.body)
        }
    };
    let mut headers: Vec<(String, String)> = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(key) = &message.routing_key {
        headers.push((ROUTING_KEY.to_owned(), key.clone()));
    }
    const RESERVED: [&str; 5] = [MESSAGE_ID, SIGNAL, CONTENT_TYPE, CONTENT_ENCODING, HEADERS];
    let fit = attributes.len() + headers.len() <= MAX_ATTRIBUTES
        && headers.iter().all(|(name, value)| {
            attribute_name(name)
                && carried(value)
                && !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
        });
    if fit {
        attributes.extend(headers);
    } else if !headers.is_empty() {
        let object: serde_json::Map<String, serde_json::Value> = headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        attributes.push((
            HEADERS.to_owned(),
            serde_json::Value::Object(object).to_string(),
        ));
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(name, value)| name.len() + value.len() + "String".len())
            .sum::<usize>();
    Encoded {
        body,
        attributes,
        size,
    }
}

/// The characters SQS and SNS accept in a body or an attribute value: `#x9 | #xA | #xD |
/// #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF`.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn carried(value: &str) -> bool {
    !value.is_empty() && value.chars().all(allowed)
}

/// An attribute name SQS takes: up to 256 of `A-Za-z0-9_-.`, no leading, trailing or double
/// period, not starting with `AWS.` or `Amazon.`.
fn attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (1..=256).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

/// `key` as a FIFO `MessageGroupId`: 1 to 128 letters, digits or ASCII punctuation.
pub(crate) fn group_id(key: &str) -> Option<&str> {
    ((1..=128).contains(&key.len()) && key.chars().all(|c| c.is_ascii_graphic())).then_some(key)
}

/// Batches of at most 10 entries and `max_bytes` in all, in order: what `SendMessageBatch` and
/// `PublishBatch` take. Entries are positions into `sizes`.
pub(crate) fn batches(entries: &[usize], sizes: &[usize], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for &entry in entries {
        let size = sizes[entry];
        match out.last_mut() {
            Some(last) if last.len() < MAX_BATCH && bytes + size <= max_bytes => {
                last.push(entry);
                bytes += size;
            }
            _ => {
                out.push(vec![entry]);
                bytes = size;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn message(body: &[u8], headers: usize) -> Message {
        Message {
            id: "id-1".into(),
            signal: Arc::from("s"),
            destination: "q".into(),
            routing_key: None,
            headers: (0..headers)
                .map(|n| (format!("h{n}"), format!("v{n}")))
                .collect(),
            body: body.to_vec(),
            content_type: Some("application/json".into()),
        }
    }

    #[test]
    fn bodies_and_headers_are_carried_without_loss() {
        let e = encode(&message(br#"{"n":1}"#, 2));
        assert_eq!(e.body, r#"{"n":1}"#);
        assert!(e.attributes.iter().any(|(k, v)| k == "h1" && v == "v1"));
        // Binary, invalid UTF-8, a character SQS refuses: base64.
        for body in [&[0u8, 159, 146][..], b"\xFF", "a\u{1}b".as_bytes()] {
            let e = encode(&message(body, 0));
            assert_eq!(STANDARD.decode(&e.body).unwrap(), body);
            assert!(
                e.attributes
                    .contains(&(CONTENT_ENCODING.into(), "base64".into()))
            );
        }
        // 3 fixed attributes + 8 headers > 10: the headers travel as one JSON object.
        let e = encode(&message(b"x", 8));
        assert_eq!(e.attributes.len(), 4);
        let json: serde_json::Value = serde_json::from_str(&e.attributes[3].1).unwrap();
        assert_eq!(json["h7"], "v7");
        let mut odd = message(b"x", 0);
        odd.headers.insert("has space".into(), "v".into());
        assert_eq!(encode(&odd).attributes.last().unwrap().0, HEADERS);
        // A header named like an attribute of ours cannot replace it.
        let mut sly = message(b"x", 0);
        sly.headers
            .insert("Signalbus-Message-Id".into(), "forged".into());
        let e = encode(&sly);
        assert!(e.attributes.contains(&(MESSAGE_ID.into(), "id-1".into())));
        assert_eq!(e.attributes.last().unwrap().0, HEADERS);
        let e = encode(&message(b"", 0));
        assert_eq!(e.body, "-");
        assert!(
            e.attributes
                .contains(&(CONTENT_ENCODING.into(), "empty".into()))
        );
    }

    #[test]
    fn batches_hold_ten_and_the_size_limit() {
        let sizes = vec![100; 25];
        let all: Vec<usize> = (0..25).collect();
        let b = batches(&all, &sizes, 1000);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        let b = batches(&all, &sizes, 250);
        assert_eq!(b[0], [0, 1]);
        assert!(group_id("acct-1").is_some() && group_id("a b").is_none());
    }
}
