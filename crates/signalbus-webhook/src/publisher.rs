//! The publisher: each message one signed POST; endpoints in parallel, a bounded number of
//! requests in flight per endpoint; an endpoint that fails is paused, the others go on.

use crate::endpoints::{Endpoints, Failure};
use crate::options::WebhookOptions;
use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use signalbus_core::redact::redact_url;
use signalbus_core::{BatchOutcome, Error, Message, PublishError, Publisher};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// Headers a message's own headers may not set: the signature's, and HTTP's framing.
const RESERVED: [&str; 9] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "signalbus-signal",
];

/// The HTTP/1.1 client: hyper over rustls on ring (hyper, not reqwest: a TLS backend
/// compiled into reqwest without a provider would make every other `reqwest::Client` of the
/// application panic). It follows no redirect and uses no proxy.
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends each message as a signed HTTP POST (see the crate docs). Cheap to clone; clones
/// share the connection pool and what is known of each endpoint's health.
#[derive(Clone)]
pub struct WebhookPublisher {
    client: HttpClient,
    options: Arc<WebhookOptions>,
    endpoints: Endpoints,
}

impl std::fmt::Debug for WebhookPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPublisher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A message ready to go: its position in the batch, itself, its signed headers.
type Ready<'a> = (usize, &'a Message, HeaderMap);

/// What became of one message.
enum Delivery {
    Stored,
    Refused(String),
    Deferred(String, Duration),
}

impl WebhookPublisher {
    /// Parse `url` (see the crate docs) and make the client. Nothing is sent yet: an endpoint
    /// is reached by the first message to it.
    pub fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(WebhookOptions::from_url(url)?)
    }

    /// With `options`.
    pub fn with_options(options: WebhookOptions) -> signalbus_core::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                use rustls_platform_verifier::BuilderVerifierExt;
                builder.with_platform_verifier()
            })
            .map_err(|e| {
                Error::Config(format!(
                    "cannot set up TLS with the system's root certificates: {e}"
                ))
            })?
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(WebhookPublisher {
            client,
            endpoints: Endpoints::new(options.max_pause),
            options: Arc::new(options),
        })
    }

    /// The request headers of `message` but the timestamp and signature (added when it is
    /// sent); or why they cannot be sent (refused at once).
    fn headers(&self, message: &Message) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED.contains(&lower.as_str()) {
                return Err(format!(
                    "message {}: header `{name}` is set by the webhook publisher itself",
                    message.id
                ));
            }
            let invalid =
                |e: &dyn std::fmt::Display| format!("message {}: header `{name}`: {e}", message.id);
            let key = HeaderName::from_bytes(lower.as_bytes()).map_err(|e| invalid(&e))?;
            let value = HeaderValue::from_str(value).map_err(|e| invalid(&e))?;
            headers.insert(key, value);
        }
        let text =
            |v: &str| HeaderValue::from_str(v).map_err(|e| format!("message {}: {e}", message.id));
        headers.insert("webhook-id", text(&message.id)?);
        headers.insert("signalbus-signal", text(&message.signal)?);
        let content_type = message
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        headers.insert(header::CONTENT_TYPE, text(content_type)?);
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("signalbus/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(headers)
    }

    /// POST one message, signed now, and sort the answer.
    async fn deliver(&self, url: &Url, message: &Message, mut headers: HeaderMap) -> Delivery {
        let shown = redact_url(url.as_str());
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = self
            .options
            .secrets
            .sign(&message.id, timestamp, &message.body);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        match HeaderValue::from_str(&signature) {
            Ok(value) => headers.insert("webhook-signature", value),
            Err(e) => return Delivery::Refused(format!("message {}: {e}", message.id)),
        };
        let request = http::Request::post(url.as_str())
            .body(Full::new(Bytes::from(message.body.clone())))
            .map(|mut request| {
                *request.headers_mut() = headers;
                request
            });
        let request = match request {
            Ok(request) => request,
            Err(e) => return Delivery::Refused(format!("{shown}: not a request URL: {e}")),
        };
        let sent = tokio::time::timeout(self.options.timeout, self.client.request(request)).await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Err(_) => {
                let what = format!("no answer from {shown} within {:?}", self.options.timeout);
                return self.failed(url, what, None);
            }
            Ok(Err(e)) => {
                // hyper's errors name no URL (it may hold a token).
                let what = if e.is_connect() {
                    format!("cannot connect to {shown}: {}", source_chain(&e))
                } else {
                    format!("the request to {shown} failed: {}", source_chain(&e))
                };
                return self.failed(url, what, None);
            }
        };
        let status = response.status();
        if status.is_success() {
            self.endpoints.succeeded(url);
            return Delivery::Stored;
        }
        let said = format!(
            "HTTP {} {} from {shown}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        match status.as_u16() {
            // Too many requests: paused for as long as the endpoint asks.
            429 => {
                let asked = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after);
                self.failed(url, said, asked)
            }
            // Request timeout, too early, and the server's errors: the endpoint is out.
            408 | 425 | 500..=599 => self.failed(url, said, None),
            300..=399 => {
                let to = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(redact_url)
                    .unwrap_or_default();
                // The endpoint answered: it is up.
                self.endpoints.succeeded(url);
                Delivery::Refused(format!(
                    "{said}: redirect to `{to}` not followed; point the destination at the final URL"
                ))
            }
            _ => {
                self.endpoints.succeeded(url);
                Delivery::Refused(said)
            }
        }
    }

    /// The endpoint of `url` failed (`what`): it is paused, and the message deferred.
    fn failed(&self, url: &Url, what: String, asked: Option<Duration>) -> Delivery {
        let pause = self.endpoints.failed(url, &what, asked);
        Delivery::Deferred(
            format!("{what}; endpoint paused for {pause:?}, no attempt spent"),
            pause,
        )
    }

    /// Deliver the messages of one endpoint, `concurrency` at a time; once the endpoint
    /// fails, or the call's budget is spent, the rest of its messages are deferred without a
    /// request. Requests in flight are never cut short by the budget (a request cut short may
    /// have been taken, and would be sent twice).
    async fn endpoint(
        &self,
        url: &Url,
        items: Vec<Ready<'_>>,
        deadline: Instant,
    ) -> Vec<(usize, Delivery)> {
        let mut done = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            if Instant::now() >= deadline {
                let reason = format!(
                    "not sent within this call's budget ({:?}, `budget_ms`); no attempt spent",
                    self.options.budget
                );
                done.extend(
                    items.map(|(i, _, _)| (i, Delivery::Deferred(reason.clone(), Duration::ZERO))),
                );
                break;
            }
            if let Some(Failure { reason, remaining }) = self.endpoints.paused(url) {
                done.extend(items.map(|(i, _, _)| {
                    (
                        i,
                        Delivery::Deferred(format!("{reason} (paused)"), remaining),
                    )
                }));
                break;
            }
            let chunk: Vec<_> = items.by_ref().take(self.options.concurrency).collect();
            let answers = join_all(chunk.into_iter().map(|(i, message, headers)| async move {
                (i, self.deliver(url, message, headers).await)
            }))
            .await;
            done.extend(answers);
        }
        done
    }
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An error and its causes, on one line (reqwest's own message names only the outermost).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Publisher for WebhookPublisher {
    /// One signed POST per message, endpoints in parallel (see the crate docs for what each
    /// answer means). Never fails as a whole: an endpoint that is out defers its messages
    /// only.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut outcome = BatchOutcome::all_stored();
        let mut per_endpoint: BTreeMap<String, (Url, Vec<Ready<'_>>)> = BTreeMap::new();
        for (index, message) in batch.iter().enumerate() {
            let prepared = self
                .options
                .resolve(&message.destination)
                .and_then(|url| Ok((url, self.headers(message)?)));
            match prepared {
                Ok((url, headers)) => per_endpoint
                    .entry(url.to_string())
                    .or_insert_with(|| (url, Vec::new()))
                    .1
                    .push((index, message, headers)),
                Err(reason) => outcome.refuse_permanently(index, reason),
            }
        }
        let deadline = Instant::now() + self.options.budget;
        let answers = join_all(
            per_endpoint
                .into_values()
                .map(|(url, items)| async move { self.endpoint(&url, items, deadline).await }),
        )
        .await;
        for (index, delivery) in answers.into_iter().flatten() {
            match delivery {
                Delivery::Stored => {}
                Delivery::Refused(reason) => outcome.refuse(index, reason),
                Delivery::Deferred(reason, after) => outcome.defer(index, reason, after),
            }
        }
        Ok(outcome)
    }

    /// The bus URL's host accepts TCP connections (no request is made: a request could have
    /// effects).
    async fn check(&self) -> Result<(), PublishError> {
        let base = &self.options.base;
        let (Some(host), Some(port)) = (base.host_str(), base.port_or_known_default()) else {
            return Ok(());
        };
        let limit = self.options.timeout.min(Duration::from_secs(2));
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PublishError::unavailable(format!(
                "cannot connect to the webhook host of `{}`: {e}",
                self.options.display
            ))),
            Err(_) => Err(PublishError::unavailable(format!(
                "the webhook host of `{}` did not accept a connection within {limit:?}",
                self.options.display
            ))),
        }
    }
}
