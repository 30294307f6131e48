//! The SNS publisher: `PublishBatch` per topic, 10 entries at a time.

use crate::errors::{Failure, classify};
use crate::options::AwsOptions;
use crate::service::{self, Answer, Entry, FailedEntry, Service};
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use signalbus_core::{BatchOutcome, Message, PublishError, Publisher};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Publishes to Amazon SNS (see the crate docs). Cheap to clone; clones share the client and
/// the topic ARNs looked up.
#[derive(Clone)]
pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    options: Arc<AwsOptions>,
    /// Topic names to their ARNs (`ListTopics`, once per name found).
    topics: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for SnsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsPublisher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SnsPublisher {
    /// Parse `url` (`sns://[REGION][?params]`, see the crate docs) and make the client, with
    /// credentials from the AWS default chain.
    pub async fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(AwsOptions::from_url(url, "sns")?).await
    }

    /// With `options`.
    pub async fn with_options(options: AwsOptions) -> signalbus_core::Result<Self> {
        let config = options.sdk_config().await;
        options.check_region(&config)?;
        Ok(SnsPublisher {
            client: aws_sdk_sns::Client::new(&config),
            options: Arc::new(options),
            topics: Arc::default(),
        })
    }

    /// The SDK client, e.g. to create topics.
    pub fn client(&self) -> &aws_sdk_sns::Client {
        &self.client
    }
}

impl Service for SnsPublisher {
    /// A topic ARN as it is; a topic name by listing the account's topics (remembered once
    /// found).
    async fn resolve(&self, destination: &str) -> Result<String, Failure> {
        if destination.starts_with("arn:") {
            return Ok(destination.to_owned());
        }
        if let Some(arn) = self.topics.lock().expect("not poisoned").get(destination) {
            return Ok(arn.clone());
        }
        let what = format!("topic `{destination}`");
        let suffix = format!(":{destination}");
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .list_topics()
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| classify(&e, &what))?;
            let found = page
                .topics()
                .iter()
                .filter_map(|t| t.topic_arn())
                .find(|arn| arn.ends_with(&suffix));
            if let Some(arn) = found {
                self.topics
                    .lock()
                    .expect("not poisoned")
                    .insert(destination.to_owned(), arn.to_owned());
                return Ok(arn.to_owned());
            }
            match page.next_token() {
                Some(token) => next = Some(token.to_owned()),
                None => {
                    return Err(Failure::Refused(format!(
                        "{what} does not exist (in this account and region); create it, or \
                         name it by its ARN"
                    )));
                }
            }
        }
    }

    async fn send(&self, target: &str, entries: &[Entry]) -> Result<Vec<Answer>, Failure> {
        let what = format!("topic {target}");
        let mut request = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let mut built = PublishBatchRequestEntry::builder()
                .id(n.to_string())
                .message(&entry.encoded.body);
            for (name, value) in &entry.encoded.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| Failure::Outage(format!("{what}: {e}")))?;
                built = built.message_attributes(name, value);
            }
            if let Some(fifo) = &entry.fifo {
                built = built
                    .message_group_id(&fifo.group)
                    .message_deduplication_id(&fifo.deduplication);
            }
            request.push(
                built
                    .build()
                    .map_err(|e| Failure::Outage(format!("{what}: {e}")))?,
            );
        }
        let output = self
            .client
            .publish_batch()
            .topic_arn(target)
            .set_publish_batch_request_entries(Some(request))
            .send()
            .await
            .map_err(|e| match classify(&e, &what) {
                Failure::Refused(_)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_not_found_exception()) =>
                {
                    Failure::Refused(format!("{what} does not exist; create it"))
                }
                other => other,
            })?;
        Ok(service::answers(
            &what,
            "SNS",
            entries.len(),
            output.successful().iter().filter_map(|ok| ok.id()),
            output.failed().iter().map(|f| FailedEntry {
                id: f.id(),
                sender_fault: f.sender_fault(),
                code: f.code(),
                message: f.message(),
            }),
        ))
    }
}

impl Publisher for SnsPublisher {
    /// `PublishBatch` per topic, 10 entries at a time (see the crate docs).
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.is_empty() {
            return Ok(BatchOutcome::all_stored());
        }
        service::publish(self, &self.options, batch).await
    }

    /// `ListTopics` (the first page): the service answers and takes the credentials. An
    /// answer that access is denied counts as reachable.
    async fn check(&self) -> Result<(), PublishError> {
        match self.client.list_topics().send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&e, "SNS") {
                Failure::Refused(_) => Ok(()),
                Failure::Outage(reason) => Err(PublishError::unavailable(reason)),
            },
        }
    }
}
