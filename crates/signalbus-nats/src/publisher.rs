//! The publisher: a batch is published back to back, then every JetStream ack is awaited.

use crate::options::NatsOptions;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use futures_util::future::join_all;
use signalbus_core::{
    BatchOutcome, Error, Message, PublishError, PublishErrorKind as Kind, Publisher,
};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// Publishes to NATS JetStream and waits for the stream's acks. Cheap to clone; clones share
/// the connection, which the client re-establishes by itself.
#[derive(Clone)]
pub struct NatsPublisher {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    options: NatsOptions,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// Connect to the server of `url` (see the crate docs). Fails at once, naming the host or
    /// the credentials at fault, when the server cannot be used.
    pub async fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(NatsOptions::from_url(url)?).await
    }

    /// Connect with `options`.
    pub async fn with_options(options: NatsOptions) -> signalbus_core::Result<Self> {
        let mut connect = async_nats::ConnectOptions::new()
            .name(&options.name)
            .connection_timeout(options.timeout)
            .request_timeout(Some(options.timeout))
            .ping_interval(options.ping_interval());
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let Some((user, password)) = &options.user_password {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        let client = connect.connect(options.servers.as_slice()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let shown = &options.display;
            let message = match e.kind() {
                K::AuthorizationViolation | K::Authentication => format!(
                    "NATS at `{shown}` refused the credentials (password or token not shown): {e}"
                ),
                K::TimedOut => format!(
                    "NATS at `{shown}` did not answer within {:?}; check the host and port",
                    options.timeout
                ),
                _ => format!(
                    "cannot reach NATS at `{shown}` ({e}); check the host and port and that \
                     nats-server is running"
                ),
            };
            Error::Publish(PublishError::unavailable(message).with_source(e))
        })?;
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(options.timeout);
        Ok(NatsPublisher {
            client,
            jetstream,
            options,
        })
    }

    /// The underlying client, e.g. to declare streams.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The headers of `message`, or why NATS cannot carry them (the message is then refused).
    fn headers(message: &Message) -> Result<HeaderMap, String> {
        let invalid = |name: &str, e: &dyn std::fmt::Display| {
            format!(
                "message {} of signal `{}`: header `{name}` cannot be sent over NATS: {e}",
                message.id, message.signal
            )
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            let key = HeaderName::from_str(name).map_err(|e| invalid(name, &e))?;
            let value = HeaderValue::from_str(value).map_err(|e| invalid(name, &e))?;
            headers.insert(key, value);
        }
        if let Some(ct) = &message.content_type {
            let value = HeaderValue::from_str(ct).map_err(|e| invalid("Content-Type", &e))?;
            headers.insert("Content-Type", value);
        }
        Ok(headers)
    }

    /// Publish the batch back to back, then await every ack: the messages whose own publish
    /// or ack failed for a reason of theirs are refused (see [`refusal`]); any other failure
    /// fails the call.
    async fn send(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut outcome = BatchOutcome::all_stored();
        let mut streams = Streams::default();
        // The lookups after "no responders" share the call's time.
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let mut acks = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let subject = self
                .options
                .subject(&message.destination, message.routing_key.as_deref());
            let headers = match Self::headers(message) {
                Ok(headers) => headers,
                Err(reason) => {
                    // A header NATS cannot carry fails every attempt alike.
                    outcome.refuse_permanently(index, reason);
                    continue;
                }
            };
            let publish = PublishMessage::build()
                .payload(bytes::Bytes::copy_from_slice(&message.body))
                .headers(headers)
                .message_id(&message.id);
            match self.jetstream.send_publish(subject.clone(), publish).await {
                Ok(ack) => acks.push(async move { (index, subject, ack.await) }),
                Err(e) => match self.refusal(&e, &subject, &mut streams, deadline).await? {
                    Some(reason) if permanent(&e) => outcome.refuse_permanently(index, reason),
                    Some(reason) => outcome.refuse(index, reason),
                    None => return Err(error(e, message, &subject)),
                },
            }
        }
        for (index, subject, result) in join_all(acks).await {
            if let Err(e) = result {
                match self.refusal(&e, &subject, &mut streams, deadline).await? {
                    Some(reason) if permanent(&e) => outcome.refuse_permanently(index, reason),
                    Some(reason) => outcome.refuse(index, reason),
                    None => return Err(error(e, &batch[index], &subject)),
                }
            }
        }
        Ok(outcome)
    }
}

/// Whether JetStream's API itself had no responders.
fn api_absent(e: &async_nats::jetstream::context::GetStreamByNameError) -> bool {
    use async_nats::jetstream::context::{RequestError, RequestErrorKind};
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RequestError>())
        .is_some_and(|r| matches!(r.kind(), RequestErrorKind::NoResponders))
}

/// What a batch learnt of the streams of its subjects: the stream that captures each
/// subject, `None` when none does.
type Streams = HashMap<String, Option<String>>;

impl NatsPublisher {
    /// [`refusal`], after "no responders" only when no stream captures the subject. A stream
    /// that captures it but does not answer is electing a leader (a node of its cluster went
    /// away): that fails the call, and the batch stays pending without spending any
    /// message's attempt; so does a question JetStream cannot answer now.
    async fn refusal(
        &self,
        e: &async_nats::jetstream::context::PublishError,
        subject: &str,
        streams: &mut Streams,
        deadline: tokio::time::Instant,
    ) -> Result<Option<String>, PublishError> {
        if e.kind() != PublishErrorKind::StreamNotFound {
            return Ok(refusal(e, subject));
        }
        let stream = match streams.get(subject) {
            Some(stream) => stream.clone(),
            None => {
                let asked = self.jetstream.stream_by_subject(subject);
                let stream = match tokio::time::timeout_at(deadline, asked).await {
                    Ok(Ok(name)) => Some(name),
                    Ok(Err(found))
                        if matches!(found.kind(), GetStreamByNameErrorKind::NotFound) =>
                    {
                        None
                    }
                    // Its API has no responders either: JetStream is not enabled on this
                    // server or account (or another domain's): refused, as before.
                    Ok(Err(found)) if api_absent(&found) => {
                        return Ok(Some(format!(
                            "nothing answers for subject `{subject}` nor JetStream's API (no \
                             responders): enable JetStream on the server and account (or name \
                             its domain), with a stream whose subjects include it"
                        )));
                    }
                    Ok(Err(found)) => {
                        return Err(PublishError::unavailable(format!(
                            "JetStream did not answer for subject `{subject}` (no responders), and \
                             cannot say now which stream captures it ({found}); the batch stays \
                             pending"
                        ))
                        .with_source(found));
                    }
                    Err(_) => {
                        return Err(PublishError::new(
                            Kind::Timeout,
                            format!(
                                "JetStream did not answer for subject `{subject}` (no responders), nor \
                                 say in time which stream captures it; the batch stays pending",
                            ),
                        ));
                    }
                };
                streams.insert(subject.to_owned(), stream.clone());
                stream
            }
        };
        match stream {
            None => Ok(refusal(e, subject)),
            Some(name) => Err(PublishError::unavailable(format!(
                "stream `{name}` captures subject `{subject}` but did not answer (no \
                 responders): it is electing a leader; the batch stays pending"
            ))),
        }
    }
}

/// Why JetStream refused one message, when the failure is the message's own: no stream
/// captures its subject (no responders), the subject is not valid, the message is larger than
/// the server's `max_payload`, or the stream answered with an error about it (e.g. larger
/// than the stream's `max_msg_size`). `None` for failures of the call as a whole: a timeout,
/// a lost connection, the server unavailable (status 503).
fn refusal(e: &async_nats::jetstream::context::PublishError, subject: &str) -> Option<String> {
    let source = std::error::Error::source(e);
    match e.kind() {
        PublishErrorKind::StreamNotFound => Some(format!(
            "no JetStream stream captures subject `{subject}` (no responders): create a stream \
             whose subjects include it"
        )),
        PublishErrorKind::MaxPayloadExceeded => Some(format!(
            "the message to subject `{subject}` is larger than the server allows: {e}"
        )),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => Some(
            format!("JetStream refused the message to subject `{subject}`: {e}"),
        ),
        PublishErrorKind::Other => {
            if source.is_some_and(|s| s.is::<async_nats::SubjectError>()) {
                return Some(format!(
                    "`{subject}` is not a valid NATS subject to publish to"
                ));
            }
            let api = source.and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())?;
            (api.code() != 503)
                .then(|| format!("JetStream refused the message to subject `{subject}`: {api}"))
        }
        _ => None,
    }
}

/// Whether a refusal would come back on every attempt: a message larger than the server's
/// `max_payload`, or a subject that is not valid (both from the row itself). A missing stream
/// is not: it may be created.
fn permanent(e: &async_nats::jetstream::context::PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => {
            std::error::Error::source(e).is_some_and(|s| s.is::<async_nats::SubjectError>())
        }
        _ => false,
    }
}

/// A JetStream publish error that names the subject and says whether retrying helps.
fn error(
    e: async_nats::jetstream::context::PublishError,
    message: &Message,
    subject: &str,
) -> PublishError {
    let what = format!("message {} to subject `{subject}`", message.id);
    let error = match e.kind() {
        PublishErrorKind::TimedOut => PublishError::new(
            Kind::Timeout,
            format!("JetStream did not acknowledge {what} in time; the batch stays pending"),
        ),
        PublishErrorKind::BrokenPipe => PublishError::unavailable(format!(
            "lost the NATS connection while publishing {what}; the batch stays pending"
        )),
        _ => PublishError::unavailable(format!(
            "JetStream did not store {what} ({e}); the batch stays pending"
        )),
    };
    error.with_source(e)
}

impl Publisher for NatsPublisher {
    /// Publishes the batch and reports per message: the ones JetStream refused (see
    /// `refusal`) and, implicitly, the ones it acknowledged. A timeout or a lost connection
    /// fails the call.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.is_empty() {
            return Ok(BatchOutcome::all_stored());
        }
        let limit = self.options.timeout;
        match tokio::time::timeout(limit, self.send(batch)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(
                Kind::Timeout,
                format!(
                    "NATS did not acknowledge {} message(s) within {limit:?}; the batch stays pending",
                    batch.len()
                ),
            )),
        }
    }

    /// The client is connected (it reconnects by itself; while it is not, publishing fails).
    async fn check(&self) -> Result<(), PublishError> {
        if let state @ (async_nats::connection::State::Disconnected
        | async_nats::connection::State::Pending) = self.client.connection_state()
        {
            return Err(PublishError::unavailable(format!(
                "not connected to NATS at `{}` ({state}); reconnecting",
                self.options.display
            )));
        }
        // A round trip: a server that is frozen, or a network that drops everything, still
        // looks connected until pings time out. A request nobody answers comes back at once
        // from a live server ("no responders").
        let subject = self.client.new_inbox();
        let limit = self.options.timeout.min(Duration::from_secs(2));
        let answer =
            tokio::time::timeout(limit, self.client.request(subject, bytes::Bytes::new())).await;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(PublishError::unavailable(format!(
                "NATS at `{}` did not answer a request: {e}",
                self.options.display
            ))),
            Err(_) => Err(PublishError::unavailable(format!(
                "NATS at `{}` did not answer a request within {limit:?}",
                self.options.display
            ))),
        }
    }
}
