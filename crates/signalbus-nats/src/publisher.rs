//! The publisher: a batch is published back to back, then every JetStream ack is awaited.

use crate::options::NatsOptions;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use futures_util::future::join_all;
use signalbus_core::{
    BatchOutcome, Error, Message, PublishError, PublishErrorKind as Kind, Publisher,
};
use std::str::FromStr;

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
            .request_timeout(Some(options.timeout));
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let Some((user, password)) = &options.user_password {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        let client = connect.connect(options.server.as_str()).await.map_err(|e| {
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

    fn headers(message: &Message) -> Result<HeaderMap, PublishError> {
        let invalid = |name: &str, e: &dyn std::fmt::Display| {
            PublishError::rejected(format!(
                "message {} of signal `{}`: header `{name}` cannot be sent over NATS: {e}",
                message.id, message.signal
            ))
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

    async fn send(&self, batch: &[Message]) -> Result<(), PublishError> {
        // Check every message before publishing any, so a bad one sends nothing.
        let mut prepared = Vec::with_capacity(batch.len());
        for message in batch {
            let subject = self
                .options
                .subject(&message.destination, message.routing_key.as_deref());
            let publish = PublishMessage::build()
                .payload(bytes::Bytes::copy_from_slice(&message.body))
                .headers(Self::headers(message)?)
                .message_id(&message.id);
            prepared.push((subject, publish));
        }
        let mut acks = Vec::with_capacity(batch.len());
        let mut subjects = Vec::with_capacity(batch.len());
        for (message, (subject, publish)) in batch.iter().zip(prepared) {
            let ack = self
                .jetstream
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| error(e, message, &subject))?;
            acks.push(ack.into_future());
            subjects.push(subject);
        }
        let results = join_all(acks).await;
        for ((message, subject), result) in batch.iter().zip(&subjects).zip(results) {
            result.map_err(|e| error(e, message, subject))?;
        }
        Ok(())
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
        PublishErrorKind::StreamNotFound => PublishError::rejected(format!(
            "no JetStream stream captures the subject of {what}: create a stream whose \
             subjects include `{subject}`; the batch stays pending"
        )),
        PublishErrorKind::TimedOut => PublishError::new(
            Kind::Timeout,
            format!("JetStream did not acknowledge {what} in time; the batch stays pending"),
        ),
        PublishErrorKind::BrokenPipe => PublishError::unavailable(format!(
            "lost the NATS connection while publishing {what}; the batch stays pending"
        )),
        PublishErrorKind::MaxPayloadExceeded => {
            PublishError::rejected(format!("{what} is larger than the server allows: {e}"))
        }
        _ => PublishError::unavailable(format!("JetStream did not store {what}: {e}")),
    };
    error.with_source(e)
}

impl Publisher for NatsPublisher {
    /// All or nothing for now: an error refusing the batch makes the flush engine send its
    /// messages one by one to find the refused one.
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        self.publish_all(batch)
            .await
            .map(|()| BatchOutcome::all_stored())
    }
}

impl NatsPublisher {
    async fn publish_all(&self, batch: &[Message]) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
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
}
