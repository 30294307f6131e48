//! The bus URL: lapin's AMQP URI plus signalbus' own query parameters.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use signalbus_core::redact::{redact_url, split_hosts};
use signalbus_core::{Error, Result};
use std::collections::BTreeSet;
use std::time::Duration;

/// Query parameters that lapin itself understands; passed through untouched.
const LAPIN_PARAMS: [&str; 5] = [
    "heartbeat",
    "channel_max",
    "frame_max",
    "connection_timeout",
    "auth_mechanism",
];

/// How the AMQP publisher connects and publishes; usually parsed from the bus URL.
#[derive(Clone)]
pub struct AmqpOptions {
    /// The URIs handed to lapin (the bus URL without signalbus' parameters), one per node
    /// of a cluster, in the order the URL lists them.
    pub(crate) uris: Vec<String>,
    /// The URL with the password masked, for messages.
    pub(crate) display: String,
    /// Publish every message as mandatory, so that RabbitMQ returns a message no queue is
    /// bound for and the publisher refuses it (retried, then parked) instead of the broker
    /// dropping it. On by default (`unroutable=refuse`); `unroutable=drop` turns it off.
    pub mandatory: bool,
    /// Signal names whose messages are published as mandatory even with `unroutable=drop`.
    pub mandatory_signals: BTreeSet<String>,
    /// Delivery mode 2 (persistent) unless a message says otherwise.
    pub persistent: bool,
    /// The `app_id` property of every message.
    pub app_id: Option<String>,
    /// Limit of every wait on the broker.
    pub timeout: Duration,
    /// TLS settings of an `amqps://` URL: extra trusted CA certificates and a client
    /// certificate, read from the files the URL names.
    pub(crate) tls: OwnedTLSConfig,
}

impl std::fmt::Debug for AmqpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpOptions")
            .field("url", &self.display)
            .field("mandatory", &self.mandatory)
            .field("mandatory_signals", &self.mandatory_signals)
            .field("persistent", &self.persistent)
            .field("app_id", &self.app_id)
            .field("timeout", &self.timeout)
            .field("custom_ca", &self.tls.cert_chain.is_some())
            .field("client_certificate", &self.tls.identity.is_some())
            .finish()
    }
}

impl AmqpOptions {
    /// Parse `amqp://user:password@host:port/vhost?params` (or `amqps://`). The vhost is
    /// percent-encoded: `/` is `%2f`, and an empty path means `/`. The nodes of a cluster
    /// are listed comma-separated — `amqp://user:password@host1:5672,host2:5672/vhost` —
    /// and tried in turn on every (re)connect.
    pub fn from_url(url: &str) -> Result<Self> {
        let display = redact_url(url);
        let hosts = split_hosts(url);
        let mut parsed = url::Url::parse(&hosts.first)
            .map_err(|e| Error::Config(format!("bus URL `{display}` is not a valid URL: {e}")))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(Error::Config(format!(
                "bus URL `{display}`: scheme `{}:` is not AMQP; use `amqp://` or `amqps://`",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Error::Config(format!(
                "bus URL `{display}` names no host; use e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`"
            )));
        }
        let mut options = AmqpOptions {
            uris: Vec::new(),
            display: display.clone(),
            mandatory: true,
            mandatory_signals: BTreeSet::new(),
            persistent: true,
            app_id: None,
            timeout: Duration::from_secs(10),
            tls: OwnedTLSConfig::default(),
        };
        let mut passed = Vec::new();
        let (mut certfile, mut keyfile) = (None, None);
        for (key, value) in parsed.query_pairs() {
            let bad = |what: &str| {
                Error::Config(format!(
                    "bus URL `{display}`: query parameter `{key}={value}` must be {what}"
                ))
            };
            match key.as_ref() {
                "unroutable" => {
                    options.mandatory = match value.trim() {
                        "refuse" => true,
                        "drop" => false,
                        _ => {
                            return Err(bad(
                                "`refuse` (the default: a message no queue is bound for is refused, retried, then parked) or `drop` (RabbitMQ discards it and signalbus counts it as sent)",
                            ));
                        }
                    }
                }
                // The AMQP flag's own name, kept as a synonym of `unroutable`.
                "mandatory" => {
                    options.mandatory = parse_bool(&value).ok_or_else(|| bad("true or false"))?
                }
                "persistent" => {
                    options.persistent = parse_bool(&value).ok_or_else(|| bad("true or false"))?
                }
                "mandatory_signals" => options.mandatory_signals.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                ),
                "app_id" => options.app_id = Some(value.into_owned()),
                "timeout_ms" => {
                    let ms: u64 = value
                        .parse()
                        .ok()
                        .filter(|ms| *ms > 0)
                        .ok_or_else(|| bad("a positive number of milliseconds"))?;
                    options.timeout = Duration::from_millis(ms);
                }
                "cacertfile" => {
                    options.tls.cert_chain =
                        Some(read_pem(&display, &key, &value, Pem::Certificates)?)
                }
                "certfile" => certfile = Some(read_pem(&display, &key, &value, Pem::Certificates)?),
                "keyfile" => keyfile = Some(read_pem(&display, &key, &value, Pem::PrivateKey)?),
                k if LAPIN_PARAMS.contains(&k) => {
                    passed.push((key.into_owned(), value.into_owned()))
                }
                other => {
                    return Err(Error::Config(format!(
                        "bus URL `{display}`: unknown query parameter `{other}`; known: unroutable, \
                         mandatory, mandatory_signals, persistent, app_id, timeout_ms, cacertfile, certfile, \
                         keyfile, {}",
                        LAPIN_PARAMS.join(", ")
                    )));
                }
            }
        }
        match (certfile, keyfile) {
            (Some(pem), Some(key)) => {
                options.tls.identity = Some(OwnedIdentity::PKCS8 {
                    pem: pem.into_bytes(),
                    key: key.into_bytes(),
                })
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(format!(
                    "bus URL `{display}`: a client certificate needs both `certfile` and `keyfile` \
                     (PEM; the key unencrypted PKCS#8)"
                )));
            }
        }
        let tls_asked = options.tls.cert_chain.is_some() || options.tls.identity.is_some();
        if tls_asked && parsed.scheme() != "amqps" {
            return Err(Error::Config(format!(
                "bus URL `{display}`: `cacertfile`, `certfile` and `keyfile` are TLS settings; \
                 use `amqps://` (port 5671 by default)"
            )));
        }
        parsed.set_query(None);
        if !passed.is_empty() {
            parsed.query_pairs_mut().extend_pairs(passed);
        }
        // lapin reads an empty path as the vhost "" (not "/"); an empty path means "/" here.
        if parsed.path().is_empty() || parsed.path() == "/" {
            parsed.set_path("/%2f");
        }
        options.uris.push(parsed.to_string());
        for other in &hosts.others {
            let node = url::Url::parse(&format!("{}://{other}", parsed.scheme()))
                .ok()
                .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()) && u.path().is_empty())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "bus URL `{display}`: `{other}` is not a node; list them as \
                         `amqp://user:password@host1:5672,host2:5672,host3:5672/vhost`"
                    ))
                })?;
            let mut uri = parsed.clone();
            let host_set = uri.set_host(node.host_str()).is_ok();
            if !host_set || uri.set_port(node.port()).is_err() {
                return Err(Error::Config(format!(
                    "bus URL `{display}`: `{other}` is not a node"
                )));
            }
            options.uris.push(uri.to_string());
        }
        Ok(options)
    }

    /// Whether a message of `signal` is mandatory unless its headers say otherwise.
    pub(crate) fn is_mandatory(&self, signal: &str) -> bool {
        self.mandatory || self.mandatory_signals.contains(signal)
    }
}

/// What a TLS file parameter must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// The PEM text of the file a TLS parameter names, or a configuration error saying what is
/// wrong with it: read now, so that a bad file fails at start-up, not at the first connect.
fn read_pem(display: &str, key: &str, path: &str, want: Pem) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "bus URL `{display}`: cannot read `{key}` file `{path}`: {e}"
        ))
    })?;
    let problem = match want {
        Pem::Certificates if !text.contains("-----BEGIN CERTIFICATE-----") => {
            Some("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")
        }
        Pem::PrivateKey if text.contains("ENCRYPTED") => {
            Some("holds an encrypted key; give the key unencrypted (PEM)")
        }
        Pem::PrivateKey if !text.contains("PRIVATE KEY-----") => {
            Some("holds no PEM private key (`-----BEGIN PRIVATE KEY-----`)")
        }
        _ => None,
    };
    match problem {
        Some(problem) => Err(Error::Config(format!(
            "bus URL `{display}`: `{key}` file `{path}` {problem}"
        ))),
        None => Ok(text),
    }
}

pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::AmqpOptions;

    #[test]
    fn parses_our_parameters_and_passes_lapins() {
        let o = AmqpOptions::from_url(
            "amqp://u:secret@h:5672/%2f?mandatory=true&persistent=false&app_id=svc&timeout_ms=250&heartbeat=10&mandatory_signals=a,b",
        )
        .unwrap();
        assert!(o.mandatory && !o.persistent);
        assert_eq!(o.app_id.as_deref(), Some("svc"));
        assert_eq!(o.timeout.as_millis(), 250);
        assert!(o.is_mandatory("a") && o.mandatory_signals.contains("b"));
        assert_eq!(o.uris, ["amqp://u:secret@h:5672/%2f?heartbeat=10"]);
        assert!(!format!("{o:?}").contains("secret"));
        let o = AmqpOptions::from_url("amqp://h").unwrap();
        assert_eq!(o.uris, ["amqp://h/%2f"]);
        let o =
            AmqpOptions::from_url("amqp://u:secret@a:1,b,c:3/v?heartbeat=5&timeout_ms=9").unwrap();
        assert_eq!(
            o.uris,
            [
                "amqp://u:secret@a:1/v?heartbeat=5",
                "amqp://u:secret@b/v?heartbeat=5",
                "amqp://u:secret@c:3/v?heartbeat=5"
            ]
        );
        assert!(!format!("{o:?}").contains("secret"));
        for bad in ["amqp://u:secret@a,", "amqp://u:secret@a,b:port/v"] {
            let e = AmqpOptions::from_url(bad).unwrap_err().to_string();
            assert!(!e.contains("secret") && e.contains("not a node"), "{e}");
        }
        assert!(
            o.persistent && o.is_mandatory("a"),
            "unroutable is refused by default"
        );
        let o = AmqpOptions::from_url("amqp://h?unroutable=drop&mandatory_signals=b").unwrap();
        assert!(!o.is_mandatory("a") && o.is_mandatory("b"));
        assert!(
            AmqpOptions::from_url("amqp://h?unroutable=refuse")
                .unwrap()
                .mandatory
        );
        assert!(
            !AmqpOptions::from_url("amqp://h?mandatory=false")
                .unwrap()
                .mandatory
        );
    }

    #[test]
    fn rejects_bad_urls_without_printing_the_password() {
        for url in [
            "nats://u:secret@h",
            "amqp://u:secret@h/?mandatory=maybe",
            "amqp://u:secret@h/?unroutable=ignore",
            "amqp://u:secret@h/?bogus=1",
            "amqp://u:secret@h/?timeout_ms=0",
            "amqp:///vhost",
        ] {
            let e = AmqpOptions::from_url(url).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
            assert!(e.contains("bus URL"), "{e}");
        }
    }
}
