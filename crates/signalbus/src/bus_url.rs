//! Choosing a publisher by URL, including the brokers compiled in by feature.

use signalbus_core::publisher::{FilePublisher, MemoryPublisher, StdoutPublisher};
use signalbus_core::redact::redact_url;
use signalbus_core::{BoxPublisher, Error, PublisherExt, Result};

/// Connect to the bus named by `url`.
///
/// | URL | feature | publisher |
/// |---|---|---|
/// | `amqp://user:password@host:5672/vhost`, `amqps://…` | `amqp` | RabbitMQ with publisher confirms |
/// | `nats://user:password@host:4222` | `nats` | NATS JetStream, acks awaited |
/// | `kafka://host:9092[,host:port…]` | `kafka` | Kafka, idempotent producer, `acks=all` |
/// | `redis://user:password@host:6379/db`, `rediss://…` | `redis` | Redis Streams, pipelined `XADD` |
/// | `https://host/path?allow=…`, `http://…` | `webhook` | signed HTTP POSTs (Standard Webhooks), allow-listed hosts |
/// | `sqs://REGION` | `sqs` | Amazon SQS (standard and FIFO), `SendMessageBatch` |
/// | `sns://REGION` | `sns` | Amazon SNS (standard and FIFO), `PublishBatch` |
/// | `stdout:` | always | JSON lines on standard output ([`StdoutPublisher`]) |
/// | `file:PATH` | always | JSON lines appended to PATH ([`FilePublisher`]) |
/// | `memory:` | always | kept in memory, for tests and benchmarks ([`MemoryPublisher`]) |
///
/// Broker publishers connect at once, so a wrong host, user, password or vhost fails here
/// with an error that names it. Passwords in `url` never appear in errors or logs.
pub async fn connect_bus(url: &str) -> Result<BoxPublisher> {
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(Error::Config(format!(
            "bus URL `{}` has no scheme; use e.g. `amqp://…`, `nats://…`, `kafka://…`, \
             `stdout:`, `file:/path/to/signals.jsonl` or `memory:`",
            redact_url(url)
        )));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "stdout" => Ok(StdoutPublisher::new().boxed()),
        "memory" => Ok(MemoryPublisher::new().boxed()),
        "file" => {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(Error::Config(
                    "bus URL `file:` needs a path, e.g. `file:/var/tmp/signals.jsonl`".into(),
                ));
            }
            Ok(FilePublisher::open(path).await?.boxed())
        }
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Ok(signalbus_amqp::AmqpPublisher::connect(url).await?.boxed()),
        #[cfg(feature = "nats")]
        "nats" => Ok(signalbus_nats::NatsPublisher::connect(url).await?.boxed()),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(signalbus_kafka::KafkaPublisher::connect(url).await?.boxed()),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(signalbus_redis::RedisPublisher::connect(url).await?.boxed()),
        #[cfg(feature = "webhook")]
        "http" | "https" => Ok(signalbus_webhook::WebhookPublisher::connect(url)?.boxed()),
        #[cfg(feature = "sqs")]
        "sqs" => Ok(signalbus_aws::SqsPublisher::connect(url).await?.boxed()),
        #[cfg(feature = "sns")]
        "sns" => Ok(signalbus_aws::SnsPublisher::connect(url).await?.boxed()),
        scheme if broker_feature(scheme).is_some() => Err(missing_feature(url, scheme)),
        other => Err(Error::Config(format!(
            "unsupported bus URL scheme `{other}:` in `{}`; known: `stdout:`, `file:PATH`, \
             `memory:`, and with their features `amqp://`, `amqps://`, `nats://`, `kafka://`, `redis://`, `rediss://`, `https://`, `http://`, `sqs://`, `sns://`",
            redact_url(url)
        ))),
    }
}

/// The feature of this crate that compiles in the publisher of a broker URL scheme.
fn broker_feature(scheme: &str) -> Option<&'static str> {
    match scheme {
        "amqp" | "amqps" => Some("amqp"),
        "nats" => Some("nats"),
        "kafka" => Some("kafka"),
        "redis" | "rediss" => Some("redis"),
        "http" | "https" => Some("webhook"),
        "sqs" => Some("sqs"),
        "sns" => Some("sns"),
        _ => None,
    }
}

/// The error for a broker URL whose feature this build lacks: it names the feature to enable.
fn missing_feature(url: &str, scheme: &str) -> Error {
    let feature = broker_feature(scheme).unwrap_or(scheme);
    Error::Config(format!(
        "bus URL `{}` needs the `{feature}` feature of the signalbus crate, which this build \
         does not have",
        redact_url(url)
    ))
}

#[cfg(test)]
mod tests {
    use super::{connect_bus, missing_feature};

    /// Every broker scheme names a feature that exists in Cargo.toml (`nats` once came out
    /// as `nat`), and the hint keeps the password out.
    #[test]
    fn missing_feature_hints_name_the_real_feature() {
        let manifest = include_str!("../Cargo.toml");
        for (url, scheme, feature) in [
            ("amqp://u:hunter2@h/%2f", "amqp", "amqp"),
            ("amqps://u:hunter2@h/%2f", "amqps", "amqp"),
            ("nats://u:hunter2@h:4222", "nats", "nats"),
            ("kafka://h:9092", "kafka", "kafka"),
            ("rediss://u:hunter2@h:6380", "rediss", "redis"),
            ("https://h/in?secret=hunter2", "https", "webhook"),
            ("sqs://eu-west-1", "sqs", "sqs"),
            ("sns://eu-west-1", "sns", "sns"),
        ] {
            let e = missing_feature(url, scheme).to_string();
            assert!(e.contains(&format!("the `{feature}` feature")), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
            assert!(
                manifest.contains(&format!("\n{feature} = [")),
                "`{feature}` is not a feature of signalbus"
            );
        }
    }

    #[tokio::test]
    async fn unknown_schemes_and_bad_hosts_say_why_without_the_password() {
        let e = connect_bus("ftp://u:hunter2@host/x")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`ftp:`") && !e.contains("hunter2"), "{e}");
        assert!(connect_bus("memory:").await.is_ok());
        // Without a broker's feature, its URL says which feature to enable.
        #[cfg(not(feature = "amqp"))]
        {
            let e = connect_bus("amqps://h").await.unwrap_err().to_string();
            assert!(e.contains("the `amqp` feature"), "{e}");
        }
        #[cfg(not(feature = "nats"))]
        {
            let e = connect_bus("nats://h").await.unwrap_err().to_string();
            assert!(e.contains("the `nats` feature"), "{e}");
        }
        #[cfg(not(feature = "kafka"))]
        {
            let e = connect_bus("kafka://h").await.unwrap_err().to_string();
            assert!(e.contains("the `kafka` feature"), "{e}");
        }
        #[cfg(not(feature = "redis"))]
        {
            let e = connect_bus("redis://h").await.unwrap_err().to_string();
            assert!(e.contains("the `redis` feature"), "{e}");
        }
        #[cfg(feature = "redis")]
        {
            let e = connect_bus("redis://u:hunter2@127.0.0.1:1?timeout_ms=1000")
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("cannot reach Redis") && !e.contains("hunter2"),
                "{e}"
            );
        }
        #[cfg(not(feature = "webhook"))]
        {
            let e = connect_bus("https://h/in").await.unwrap_err().to_string();
            assert!(e.contains("the `webhook` feature"), "{e}");
        }
        #[cfg(feature = "webhook")]
        {
            let e = connect_bus("https://h/in?secret=whsec_hunter2")
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("`secret`") && !e.contains("hunter2"), "{e}");
        }
        #[cfg(not(feature = "sqs"))]
        {
            let e = connect_bus("sqs://eu-west-1")
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("the `sqs` feature"), "{e}");
        }
        #[cfg(feature = "sqs")]
        {
            let e = connect_bus("sqs://u:hunter2@eu-west-1")
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("no credentials in the URL") && !e.contains("hunter2"),
                "{e}"
            );
        }
        #[cfg(feature = "amqp")]
        {
            let e = connect_bus("amqp://guest:hunter2@127.0.0.1:1/%2f")
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("cannot reach RabbitMQ at 127.0.0.1:1") && !e.contains("hunter2"),
                "{e}"
            );
        }
        #[cfg(feature = "nats")]
        {
            let e = connect_bus("nats://u:hunter2@127.0.0.1:1?timeout_ms=1000")
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("NATS") && !e.contains("hunter2"), "{e}");
        }
        #[cfg(feature = "kafka")]
        {
            let e = connect_bus("kafka://127.0.0.1:1?timeout_ms=1000")
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot reach Kafka at 127.0.0.1:1"), "{e}");
        }
    }
}
