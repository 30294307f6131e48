//! From a signalbus message to AMQP publish options and properties.

use crate::headers;
use crate::options::{AmqpOptions, parse_bool};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use signalbus_core::Message;
use std::time::{SystemTime, UNIX_EPOCH};

/// What one message is published with.
pub(crate) struct Outgoing {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub options: BasicPublishOptions,
    pub properties: BasicProperties,
}

/// The exchange a destination names: `""` and `amq.default` both mean the default exchange
/// (RabbitMQ refuses publishing to `amq.default` by name).
pub(crate) fn exchange_name(destination: &str) -> &str {
    if destination == "amq.default" {
        ""
    } else {
        destination
    }
}

/// AMQP short strings hold at most 255 bytes; longer would be cut or refused by the broker.
fn short(what: &str, value: &str, message: &Message) -> Result<ShortString, String> {
    if value.len() > 255 {
        return Err(format!(
            "message {} of signal `{}`: {what} is {} bytes long; AMQP allows at most 255",
            message.id,
            message.signal,
            value.len()
        ));
    }
    Ok(value.into())
}

/// What `message` is published with, or why it cannot be (a reason that names the header or
/// property at fault, never the body): the message is then refused without being sent.
pub(crate) fn outgoing(message: &Message, config: &AmqpOptions) -> Result<Outgoing, String> {
    let invalid = |name: &str, value: &str, want: &str| {
        format!(
            "message {} of signal `{}`: header `{name}: {value}` must be {want}",
            message.id, message.signal
        )
    };
    let mut mandatory = config.is_mandatory(&message.signal);
    let mut persistent = config.persistent;
    let mut table = FieldTable::default();
    let mut props = BasicProperties::default()
        .with_message_id(short("the message id", &message.id, message)?)
        .with_type(short("the signal name", &message.signal, message)?)
        .with_timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
    if let Some(ct) = &message.content_type {
        props = props.with_content_type(short("the content type", ct, message)?);
    }
    if let Some(app_id) = &config.app_id {
        props = props.with_app_id(short("app_id", app_id, message)?);
    }
    for (name, value) in &message.headers {
        match name.as_str() {
            headers::MANDATORY => {
                mandatory =
                    parse_bool(value).ok_or_else(|| invalid(name, value, "true or false"))?
            }
            headers::PERSISTENT => {
                persistent =
                    parse_bool(value).ok_or_else(|| invalid(name, value, "true or false"))?
            }
            headers::TYPE => props = props.with_type(short(name, value, message)?),
            headers::CORRELATION_ID => {
                props = props.with_correlation_id(short(name, value, message)?)
            }
            headers::REPLY_TO => props = props.with_reply_to(short(name, value, message)?),
            headers::EXPIRATION => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(name, value, "a number of milliseconds"));
                }
                props = props.with_expiration(short(name, value, message)?);
            }
            headers::PRIORITY => {
                let priority: u8 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, value, "a number from 0 to 255"))?;
                props = props.with_priority(priority);
            }
            _ => {
                table.insert(
                    short("a header name", name, message)?,
                    AMQPValue::LongString(LongString::from(value.as_str())),
                );
            }
        }
    }
    Ok(Outgoing {
        exchange: short("the exchange", exchange_name(&message.destination), message)?,
        routing_key: short(
            "the routing key",
            message.routing_key.as_deref().unwrap_or(""),
            message,
        )?,
        options: BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        },
        properties: props
            .with_headers(table)
            .with_delivery_mode(if persistent { 2 } else { 1 }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn message(headers: &[(&str, &str)]) -> Message {
        Message {
            id: "id-1".into(),
            signal: Arc::from("order_placed"),
            destination: "orders".into(),
            routing_key: Some("order.placed".into()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: b"{}".to_vec(),
            content_type: Some("application/json".into()),
        }
    }

    #[test]
    fn reserved_headers_become_properties_and_are_stripped() {
        let config = crate::AmqpOptions::from_url("amqp://h/?app_id=svc").unwrap();
        let m = message(&[
            ("amqp-mandatory", "true"),
            ("amqp-persistent", "false"),
            ("amqp-type", "OrderPlaced"),
            ("amqp-correlation-id", "c-9"),
            ("amqp-expiration", "60000"),
            ("amqp-priority", "7"),
            ("customer", "ada"),
        ]);
        let out = outgoing(&m, &config).unwrap();
        let p = &out.properties;
        assert!(out.options.mandatory);
        assert_eq!(out.exchange.as_str(), "orders");
        assert_eq!(out.routing_key.as_str(), "order.placed");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "OrderPlaced");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c-9");
        assert_eq!(p.expiration().as_ref().unwrap().as_str(), "60000");
        assert_eq!(*p.priority(), Some(7));
        assert_eq!(*p.delivery_mode(), Some(1));
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "svc");
        let headers = p.headers().as_ref().unwrap();
        assert_eq!(headers.inner().len(), 1, "only `customer` stays a header");
    }

    #[test]
    fn defaults_and_bad_values() {
        let config = crate::AmqpOptions::from_url("amqp://h").unwrap();
        let out = outgoing(&message(&[]), &config).unwrap();
        assert!(out.options.mandatory, "unroutable is refused by default");
        assert_eq!(*out.properties.delivery_mode(), Some(2));
        assert_eq!(
            out.properties.kind().as_ref().unwrap().as_str(),
            "order_placed"
        );
        for bad in [
            ("amqp-priority", "high"),
            ("amqp-expiration", "1m"),
            ("amqp-mandatory", "?"),
        ] {
            let e = outgoing(&message(&[bad]), &config).err().unwrap();
            assert!(e.to_string().contains(bad.0), "{e}");
        }
        let mut m = message(&[]);
        m.destination = "amq.default".into();
        assert_eq!(outgoing(&m, &config).unwrap().exchange.as_str(), "");
    }
}
