//! The bus URL of the webhook publisher, and where a message may be sent.

use crate::sign::Secrets;
use signalbus_core::redact::redact_url;
use signalbus_core::{Error, Result};
use std::time::Duration;
use url::Url;

/// The environment variable that holds the signing secret(s) unless `secret_env=` names
/// another.
pub const DEFAULT_SECRET_ENV: &str = "SIGNALBUS_WEBHOOK_SECRET";

/// How long one publish call may take by default (below SQLite's 3 s publish timeout).
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(2500);

/// How the webhook publisher sends; usually parsed from the bus URL.
#[derive(Clone)]
pub struct WebhookOptions {
    /// The bus URL without its query, its path ending in `/`: relative destinations are
    /// resolved against it.
    pub(crate) base: Url,
    pub(crate) display: String,
    /// `host:port` of every origin a message may go to: the base's, and `allow=`'s.
    pub(crate) allowed: Vec<String>,
    pub(crate) secrets: Secrets,
    /// Limit of one request, from connect to the end of the answer.
    pub timeout: Duration,
    /// Requests in flight at once per endpoint.
    pub concurrency: usize,
    /// The longest an endpoint is paused: after repeated failures, or by a `Retry-After`.
    pub max_pause: Duration,
    /// No request of a publish call starts after this: messages not sent by then are deferred
    /// (no attempt spent), so that a slow endpoint makes progress call after call instead of
    /// the whole call timing out. Requests in flight finish (within `timeout`): keep the two
    /// together below the bus's publish timeout (3 s on SQLite, 30 s else).
    pub budget: Duration,
}

impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("url", &self.display)
            .field("allowed", &self.allowed)
            .field("secrets", &self.secrets)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("max_pause", &self.max_pause)
            .field("budget", &self.budget)
            .finish()
    }
}

impl WebhookOptions {
    /// Parse `https://host[:port][/base][?params]` (or `http://`); the signing secrets come
    /// from the environment variable `secret_env=` names (`SIGNALBUS_WEBHOOK_SECRET` by
    /// default).
    pub fn from_url(url: &str) -> Result<Self> {
        let display = redact_url(url);
        let parsed = Url::parse(url)
            .map_err(|e| Error::Config(format!("bus URL `{display}` is not a valid URL: {e}")))?;
        let mut secret_env = None;
        let mut secret = None;
        let mut extra = Vec::new();
        let mut timeout = Duration::from_secs(10);
        let mut concurrency = 8;
        let mut max_pause = Duration::from_secs(300);
        let mut budget = DEFAULT_BUDGET;
        let positive = |key: &str, value: &str| -> Result<u64> {
            value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Config(format!(
                    "bus URL `{display}`: `{key}` must be a positive whole number"
                ))
            })
        };
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "allow" => extra.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .map(str::to_owned),
                ),
                "secret_env" => secret_env = Some(value.into_owned()),
                "secret" => secret = Some(value.into_owned()),
                "timeout_ms" => timeout = Duration::from_millis(positive("timeout_ms", &value)?),
                "concurrency" => {
                    concurrency =
                        usize::try_from(positive("concurrency", &value)?).unwrap_or(usize::MAX)
                }
                // At most a day: a pause is added to the clock and stored as milliseconds.
                "max_pause_s" => {
                    max_pause = Duration::from_secs(positive("max_pause_s", &value)?.min(86_400))
                }
                "budget_ms" => budget = Duration::from_millis(positive("budget_ms", &value)?),
                other => {
                    return Err(Error::Config(format!(
                        "bus URL `{display}`: unknown query parameter `{other}`; known: allow, \
                         secret, secret_env, timeout_ms, concurrency, max_pause_s, budget_ms"
                    )));
                }
            }
        }
        let (text, from) = match (secret, secret_env) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(format!(
                    "bus URL `{display}`: give `secret` or `secret_env`, not both"
                )));
            }
            (Some(text), None) => (text, "`secret`".to_owned()),
            (None, env) => {
                let env = env.unwrap_or_else(|| DEFAULT_SECRET_ENV.to_owned());
                let text = std::env::var(&env).map_err(|_| {
                    Error::Config(format!(
                        "bus URL `{display}`: webhooks are signed, and the environment variable \
                         `{env}` that holds the secret is not set; set it to `whsec_` and the \
                         base64 of 32 random bytes (e.g. `whsec_$(openssl rand -base64 32)`), \
                         and give the receivers the same secret"
                    ))
                })?;
                (text, format!("`{env}`"))
            }
        };
        let secrets = Secrets::parse(&text)
            .map_err(|e| Error::Config(format!("bus URL `{display}`: {from}: {e}")))?;
        let mut options = Self::new(parsed, secrets)?;
        for host in extra {
            options = options.allow(&host)?;
        }
        options.timeout = timeout;
        options.concurrency = concurrency;
        options.max_pause = max_pause;
        options.budget = budget;
        Ok(options)
    }

    /// Send to `base` (its query is ignored), signing with `secrets`.
    pub fn new(mut base: Url, secrets: Secrets) -> Result<Self> {
        let display = redact_url(base.as_str());
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "bus URL `{display}`: scheme `{}:` is not a webhook; use `https://host/path`",
                base.scheme()
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::Config(format!(
                "bus URL `{display}`: no user or password in a webhook URL; receivers \
                 authenticate the sender by the signature"
            )));
        }
        let Some(origin) = origin(&base) else {
            return Err(Error::Config(format!(
                "bus URL `{display}` names no host; use e.g. `https://hooks.example.com/signals`"
            )));
        };
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(WebhookOptions {
            display: redact_url(base.as_str()),
            base,
            allowed: vec![origin],
            secrets,
            timeout: Duration::from_secs(10),
            concurrency: 8,
            max_pause: Duration::from_secs(300),
            budget: DEFAULT_BUDGET,
        })
    }

    /// Also allow destinations on `host` (`host` or `host:port`; the scheme's port when none
    /// is given).
    pub fn allow(mut self, host: &str) -> Result<Self> {
        let scheme = self.base.scheme().to_owned();
        let parsed = Url::parse(&format!("{scheme}://{host}/"))
            .ok()
            .filter(|u| u.path() == "/" && u.username().is_empty())
            .and_then(|u| origin(&u))
            .ok_or_else(|| {
                Error::Config(format!(
                    "bus URL `{}`: `allow` lists `{host}`, which is not a host or host:port",
                    self.display
                ))
            })?;
        self.allowed.push(parsed);
        Ok(self)
    }

    /// The URL a message to `destination` goes to: a path relative to the bus URL
    /// (`orders/placed`), or an absolute `http(s)://` URL whose host is allowed. Anything else
    /// is refused with the reason: a row must not make the relay call an arbitrary address.
    pub(crate) fn resolve(&self, destination: &str) -> std::result::Result<Url, String> {
        let url = match Url::parse(destination) {
            Ok(url) => url,
            Err(url::ParseError::RelativeUrlWithoutBase) => self
                .base
                .join(destination)
                .map_err(|e| format!("destination `{destination}` is not a valid URL path: {e}"))?,
            Err(e) => {
                return Err(format!(
                    "destination `{destination}` is not a valid URL: {e}"
                ));
            }
        };
        let shown = redact_url(url.as_str());
        let allowed_scheme = url.scheme() == "https" || url.scheme() == self.base.scheme();
        if !allowed_scheme || !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "destination `{shown}` is not an allowed webhook URL (only {}:// without user \
                 or password); nothing was sent",
                self.base.scheme()
            ));
        }
        match origin(&url) {
            Some(origin) if self.allowed.contains(&origin) => Ok(url),
            _ => Err(format!(
                "destination `{shown}`: its host is not on the allow-list of the bus URL \
                 (`allow=`); nothing was sent"
            )),
        }
    }
}

/// `host:port` of `url`, with the scheme's port when none is written.
fn origin(url: &Url) -> Option<String> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    Some(format!(
        "{}:{}",
        host.to_ascii_lowercase(),
        url.port_or_known_default()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WebhookOptions {
        let secrets = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        WebhookOptions::new(
            Url::parse("https://hooks.example.com/in?x=1").unwrap(),
            secrets,
        )
        .unwrap()
        .allow("partner.example.org:8443")
        .unwrap()
    }

    #[test]
    fn destinations_resolve_within_the_allow_list_only() {
        let o = options();
        let ok = |d: &str| o.resolve(d).unwrap().to_string();
        assert_eq!(ok("orders"), "https://hooks.example.com/in/orders");
        assert_eq!(
            ok("orders/placed?v=2"),
            "https://hooks.example.com/in/orders/placed?v=2"
        );
        assert_eq!(
            ok("https://HOOKS.example.com:443/x"),
            "https://hooks.example.com/x"
        );
        assert_eq!(
            ok("https://partner.example.org:8443/hook"),
            "https://partner.example.org:8443/hook"
        );
        for bad in [
            "https://169.254.169.254/latest/meta-data",
            "//evil.example.net/x",
            "http://hooks.example.com/x",
            "https://partner.example.org/hook",
            "https://user:pw@hooks.example.com/x",
            "file:///etc/passwd",
            "https://hooks.example.com.evil.net/x",
        ] {
            let e = o.resolve(bad).unwrap_err();
            assert!(
                e.contains("nothing was sent") && !e.contains(":pw@"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bad_bus_urls_say_why() {
        let secrets = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        for bad in ["ftp://h/x", "https://u:secret@h/x"] {
            let e = WebhookOptions::new(Url::parse(bad).unwrap(), secrets.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains("bus URL") && !e.contains("secret@"), "{e}");
        }
        let e = WebhookOptions::from_url("https://h/x?secret_env=SIGNALBUS_TEST_NO_SUCH_VAR")
            .unwrap_err()
            .to_string();
        assert!(e.contains("SIGNALBUS_TEST_NO_SUCH_VAR"), "{e}");
        let e = WebhookOptions::from_url("https://h/x?secret=whsec_notbase64!!")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`secret`") && !e.contains("notbase64"), "{e}");
        let o = WebhookOptions::from_url(
            "https://h/x?secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw&allow=p:81&timeout_ms=5",
        )
        .unwrap();
        assert!(!format!("{o:?}").contains("MfKQ"), "{o:?}");
        assert_eq!(o.allowed, ["h:443", "p:81"]);
        assert!(options().allow("a b").is_err());
        assert!(!format!("{:?}", options()).contains("MfKQ"));
    }
}
