//! The bus URL of the NATS publisher.

use signalbus_core::redact::{redact_url, split_hosts};
use signalbus_core::{Error, Result};
use std::time::Duration;

/// How the subject of a message is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectFrom {
    /// The destination alone (the routing key is ignored).
    Destination,
    /// `destination.routing_key` when there is a routing key, else the destination.
    DestinationKey,
}

/// How the NATS publisher connects; usually parsed from the bus URL.
#[derive(Clone)]
pub struct NatsOptions {
    /// `nats://host:port` of each server, credentials and query left out.
    pub(crate) servers: Vec<String>,
    pub(crate) display: String,
    pub(crate) token: Option<String>,
    /// User and password from the URL, percent-decoded.
    pub(crate) user_password: Option<(String, String)>,
    /// The client name.
    pub name: String,
    /// Limit of the connect and of each batch's acks; the client pings its server every half
    /// of it ([`NatsOptions::ping_interval`]).
    pub timeout: Duration,
    /// How subjects are made.
    pub subject: SubjectFrom,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &self.display)
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl NatsOptions {
    /// How often the client pings its server: half the timeout, between 1 s and 2 minutes
    /// (NATS' own default). At the third ping with two unanswered, the client leaves the
    /// server for another of the URL, so a server that stops answering with its connection
    /// open (frozen, or behind a partition that drops packets) holds the publisher up for one
    /// to one and a half timeouts, not several minutes.
    pub fn ping_interval(&self) -> Duration {
        (self.timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(120))
    }

    /// Parse `nats://[user:password@]host[:port][,host2[:port2]…][?params]`: several servers
    /// of one cluster, comma-separated, are tried in turn and on every reconnect.
    pub fn from_url(url: &str) -> Result<Self> {
        let hosts = split_hosts(url);
        let mut parsed = url::Url::parse(&hosts.first).map_err(|e| {
            Error::Config(format!(
                "bus URL `{}` is not a valid URL: {e}",
                redact_url(url)
            ))
        })?;
        // `nats://TOKEN@host` (a user without a password) is the NATS way of writing a token:
        // mask it like a password.
        let display = if !parsed.username().is_empty() && parsed.password().is_none() {
            let mut shown = parsed.clone();
            let _ = shown.set_username("***");
            redact_url(shown.as_str())
        } else {
            redact_url(url)
        };
        if parsed.scheme() != "nats" {
            return Err(Error::Config(format!(
                "bus URL `{display}`: scheme `{}:` is not NATS; use `nats://host:4222`",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Error::Config(format!(
                "bus URL `{display}` names no host; use e.g. `nats://127.0.0.1:4222`"
            )));
        }
        let mut options = NatsOptions {
            servers: Vec::new(),
            display: display.clone(),
            token: None,
            user_password: None,
            name: "signalbus".into(),
            timeout: Duration::from_secs(10),
            subject: SubjectFrom::DestinationKey,
        };
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "timeout_ms" => {
                    let ms: u64 = value.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                        Error::Config(format!(
                            "bus URL `{display}`: `timeout_ms` must be a positive number of milliseconds"
                        ))
                    })?;
                    options.timeout = Duration::from_millis(ms);
                }
                "token" => options.token = Some(value.into_owned()),
                "name" => options.name = value.into_owned(),
                "subject" => {
                    options.subject = match value.as_ref() {
                        "destination" => SubjectFrom::Destination,
                        "destination_key" => SubjectFrom::DestinationKey,
                        _ => {
                            return Err(Error::Config(format!(
                                "bus URL `{display}`: `subject` must be `destination` or `destination_key`"
                            )));
                        }
                    }
                }
                other => {
                    return Err(Error::Config(format!(
                        "bus URL `{display}`: unknown query parameter `{other}`; known: \
                         timeout_ms, token, name, subject"
                    )));
                }
            }
        }
        // async-nats does not take credentials from the server address: pass them explicitly
        // and keep them out of the address it may log.
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| {
                    Error::Config(format!(
                        "bus URL `{display}`: the user, password or token is not valid \
                         percent-encoded UTF-8"
                    ))
                })
        };
        let from_url_token = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            ("", Some(_)) => {
                return Err(Error::Config(format!(
                    "bus URL `{display}` has a password but no user; write `nats://user:password@host`"
                )));
            }
            (token, None) => Some(decode(token)?),
            (user, Some(password)) => {
                options.user_password = Some((decode(user)?, decode(password)?));
                None
            }
        };
        if let Some(token) = from_url_token {
            if options.token.is_some() {
                return Err(Error::Config(format!(
                    "bus URL `{display}` gives a token twice (before `@` and as `token=`)"
                )));
            }
            options.token = Some(token);
        }
        if options.user_password.is_some() && options.token.is_some() {
            return Err(Error::Config(format!(
                "bus URL `{display}`: give a user and password or a token, not both"
            )));
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        parsed.set_query(None);
        options.servers.push(parsed.to_string());
        for other in &hosts.others {
            let server = format!("nats://{other}");
            match url::Url::parse(&server) {
                Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) && u.path().is_empty() => {
                    options.servers.push(server);
                }
                _ => {
                    return Err(Error::Config(format!(
                        "bus URL `{display}`: `{other}` is not a server; list them as \
                         `nats://user:password@host1:4222,host2:4222,host3:4222`"
                    )));
                }
            }
        }
        Ok(options)
    }

    /// The subject of a message.
    pub(crate) fn subject(&self, destination: &str, routing_key: Option<&str>) -> String {
        match (self.subject, routing_key) {
            (SubjectFrom::DestinationKey, Some(key)) if !key.is_empty() => {
                format!("{destination}.{key}")
            }
            _ => destination.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let o = NatsOptions::from_url("nats://u:secret@h:4222?timeout_ms=50&name=svc").unwrap();
        assert_eq!(o.timeout, Duration::from_millis(50));
        assert_eq!(o.name, "svc");
        assert_eq!(o.servers, ["nats://h:4222"]);
        assert_eq!(o.user_password, Some(("u".to_owned(), "secret".to_owned())));
        let o = NatsOptions::from_url("nats://u%40x:p%2Fw+1&a=b%25@h").unwrap();
        assert_eq!(
            o.user_password,
            Some(("u@x".to_owned(), "p/w+1&a=b%".to_owned()))
        );
        let o = NatsOptions::from_url("nats://s3cr3t-tok@h:4222").unwrap();
        assert_eq!(o.token.as_deref(), Some("s3cr3t-tok"));
        assert_eq!(o.servers, ["nats://h:4222"]);
        assert!(!format!("{o:?}").contains("s3cr3t"));
        assert!(!format!("{o:?}").contains("secret"));
        assert_eq!(o.subject("orders", Some("placed")), "orders.placed");
        let o = NatsOptions::from_url("nats://u:secret@a:1,b:2,c?name=n").unwrap();
        assert_eq!(o.servers, ["nats://a:1", "nats://b:2", "nats://c"]);
        assert_eq!(o.name, "n");
        assert!(format!("{o:?}").contains("a:1,b:2,c"));
        assert!(!format!("{o:?}").contains("secret"));
        let o = NatsOptions::from_url("nats://h?subject=destination").unwrap();
        assert_eq!(o.subject("orders", Some("placed")), "orders");
        for bad in [
            "amqp://u:secret@h",
            "nats://u:secret@h?x=1",
            "nats://u:secret@h?timeout_ms=-1",
            "nats://u:secret@h?token=t",
            "nats://:secret@h",
            "nats://secret@h?token=t",
            "nats://u:%FFsecret@h",
            "nats://u:secret@h,",
            "nats://u:secret@h,b:port",
        ] {
            let e = NatsOptions::from_url(bad).unwrap_err().to_string();
            assert!(!e.contains("secret") && e.contains("bus URL"), "{e}");
        }
    }
}
