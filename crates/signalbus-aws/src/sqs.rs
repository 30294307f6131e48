//! The SQS publisher: `SendMessageBatch` per queue, 10 entries at a time.

use crate::errors::{Failure, classify};
use crate::options::AwsOptions;
use crate::service::{self, Answer, Entry, FailedEntry, Service};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use signalbus_core::{BatchOutcome, Message, PublishError, Publisher};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Publishes to Amazon SQS (see the crate docs). Cheap to clone; clones share the client and
/// the queue URLs looked up.
#[derive(Clone)]
pub struct SqsPublisher {
    client: aws_sdk_sqs::Client,
    options: Arc<AwsOptions>,
    /// Queue names to their URLs (`GetQueueUrl`, once per name).
    queues: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SqsPublisher {
    /// Parse `url` (`sqs://[REGION][?params]`, see the crate docs) and make the client, with
    /// credentials from the AWS default chain. Nothing is sent yet: [`Publisher::check`]
    /// reaches the service.
    pub async fn connect(url: &str) -> signalbus_core::Result<Self> {
        Self::with_options(AwsOptions::from_url(url, "sqs")?).await
    }

    /// With `options`.
    pub async fn with_options(options: AwsOptions) -> signalbus_core::Result<Self> {
        let config = options.sdk_config().await;
        options.check_region(&config)?;
        Ok(SqsPublisher {
            client: aws_sdk_sqs::Client::new(&config),
            options: Arc::new(options),
            queues: Arc::default(),
        })
    }

    /// The SDK client, e.g. to create queues.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }
}

impl Service for SqsPublisher {
    /// A queue URL as it is; a queue name through `GetQueueUrl` (remembered).
    async fn resolve(&self, destination: &str) -> Result<String, Failure> {
        if destination.starts_with("https://") || destination.starts_with("http://") {
            return Ok(destination.to_owned());
        }
        if let Some(url) = self.queues.lock().expect("not poisoned").get(destination) {
            return Ok(url.clone());
        }
        let what = format!("queue `{destination}`");
        let answer = self
            .client
            .get_queue_url()
            .queue_name(destination)
            .send()
            .await
            .map_err(|e| match classify(&e, &what) {
                Failure::Refused(_)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_queue_does_not_exist()) =>
                {
                    Failure::Refused(format!(
                        "{what} does not exist (in this account and region); create it"
                    ))
                }
                other => other,
            })?;
        let url = answer
            .queue_url()
            .ok_or_else(|| Failure::Outage(format!("{what}: GetQueueUrl answered no URL")))?
            .to_owned();
        self.queues
            .lock()
            .expect("not poisoned")
            .insert(destination.to_owned(), url.clone());
        Ok(url)
    }

    async fn send(&self, target: &str, entries: &[Entry]) -> Result<Vec<Answer>, Failure> {
        let what = format!("queue {target}");
        let mut request = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let mut built = SendMessageBatchRequestEntry::builder()
                .id(n.to_string())
                .message_body(&entry.encoded.body);
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
            .send_message_batch()
            .queue_url(target)
            .set_entries(Some(request))
            .send()
            .await
            .map_err(|e| classify(&e, &what))?;
        Ok(service::answers(
            &what,
            "SQS",
            entries.len(),
            output.successful().iter().map(|ok| ok.id()),
            output.failed().iter().map(|f| FailedEntry {
                id: f.id(),
                sender_fault: f.sender_fault(),
                code: f.code(),
                message: f.message(),
            }),
        ))
    }
}

impl Publisher for SqsPublisher {
    /// `SendMessageBatch` per queue, 10 entries at a time (see the crate docs).
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.is_empty() {
            return Ok(BatchOutcome::all_stored());
        }
        service::publish(self, &self.options, batch).await
    }

    /// `ListQueues` (one result): the service answers and takes the credentials. An answer
    /// that access is denied counts as reachable.
    async fn check(&self) -> Result<(), PublishError> {
        match self.client.list_queues().max_results(1).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&e, "SQS") {
                Failure::Refused(_) => Ok(()),
                Failure::Outage(reason) => Err(PublishError::unavailable(reason)),
            },
        }
    }
}
