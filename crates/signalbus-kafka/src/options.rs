//! The bus URL of the Kafka publisher.

use signalbus_core::redact::redact_url;
use signalbus_core::{Error, Result};
use std::collections::BTreeMap;
use std::time::Duration;

/// Properties signalbus relies on for "stored means stored"; the URL cannot change them.
const FIXED: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("allow.auto.create.topics", "false"),
];

/// How the Kafka publisher connects; usually parsed from the bus URL.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port,host:port`.
    pub bootstrap_servers: String,
    /// Limit of the connect check and of each batch.
    pub timeout: Duration,
    /// Extra librdkafka producer properties.
    pub properties: BTreeMap<String, String>,
}

impl KafkaOptions {
    /// Parse `kafka://host:port[,host:port…][?params]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            Error::Config(format!(
                "bus URL `{shown}`: the scheme is not Kafka; use `kafka://host:9092`"
            ))
        })?;
        let (servers, query) = rest.split_once('?').unwrap_or((rest, ""));
        let servers = servers.trim_end_matches('/');
        if servers.contains('@') {
            return Err(Error::Config(format!(
                "bus URL `{shown}`: credentials are not supported (this build has no SASL)"
            )));
        }
        if servers.is_empty() || servers.split(',').any(|s| !valid_server(s)) {
            return Err(Error::Config(format!(
                "bus URL `{shown}` must name brokers as host:port, e.g. `kafka://127.0.0.1:9092`"
            )));
        }
        let mut options = KafkaOptions {
            bootstrap_servers: servers.to_owned(),
            timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if key == "timeout_ms" {
                let ms: u64 = value.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                    Error::Config(format!(
                        "bus URL `{shown}`: `timeout_ms` must be a positive number of milliseconds"
                    ))
                })?;
                options.timeout = Duration::from_millis(ms);
            } else if FIXED.iter().any(|(k, _)| *k == key) || key == "bootstrap.servers" {
                return Err(Error::Config(format!(
                    "bus URL `{shown}`: `{key}` cannot be changed (signalbus needs {})",
                    FIXED.map(|(k, v)| format!("{k}={v}")).join(", ")
                )));
            } else {
                options
                    .properties
                    .insert(key.into_owned(), value.into_owned());
            }
        }
        Ok(options)
    }

    /// The complete librdkafka configuration.
    pub(crate) fn config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("message.timeout.ms", self.timeout.as_millis().to_string())
            // Flush a batch right away: signalbus already batches, and commits wait on it.
            .set("linger.ms", "1");
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        for (k, v) in FIXED {
            config.set(k, v);
        }
        config
    }
}

fn valid_server(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_and_properties() {
        let o = KafkaOptions::from_url("kafka://a:9092,b:9093?timeout_ms=500&compression.type=lz4")
            .unwrap();
        assert_eq!(o.bootstrap_servers, "a:9092,b:9093");
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.properties["compression.type"], "lz4");
        assert_eq!(o.config().get("acks"), Some("all"));
        assert_eq!(o.config().get("enable.idempotence"), Some("true"));
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://h:x",
            "amqp://h:1",
            "kafka://h:1?acks=1",
            "kafka://u:secret@h:1",
        ] {
            let e = KafkaOptions::from_url(bad).unwrap_err().to_string();
            assert!(e.contains("bus URL") && !e.contains("secret"), "{e}");
        }
    }
}
