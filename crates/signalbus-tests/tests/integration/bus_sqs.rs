//! Amazon SQS and SNS end to end, against moto's server (`scripts/moto.sh`; the real wire
//! protocol to the real SDK), on FIFO queues and topics so that arrival order can be checked:
//! a queue or topic that does not exist yet is refused until it is made; one refused message
//! among 1,000 is parked while the others arrive once. SNS is read through a FIFO queue
//! subscribed with raw delivery. The outage tests are in `outage.rs`, per-key order through 4
//! relay processes in `relay_keyed_brokers.rs`.

use crate::buses::{BusFixture, Received, Route, end_to_end, poison_scenario};
use crate::common::TestBackend;
use crate::on_every_database;
use aws_sdk_sqs::types::QueueAttributeName;
use signalbus::aws::{AwsOptions, SnsPublisher, SqsPublisher};
use signalbus::{BoxPublisher, PublisherExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The credentials moto takes (any), given to the publisher in code and to relay processes
/// through the environment.
pub const ACCESS_KEY: &str = "testing";

pub fn aws_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), ACCESS_KEY.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]
}

pub fn options(scheme: &str, endpoint: &str) -> AwsOptions {
    AwsOptions::from_url(&url(scheme, endpoint), scheme)
        .unwrap()
        .credentials(ACCESS_KEY, ACCESS_KEY)
}

fn url(scheme: &str, endpoint: &str) -> String {
    format!("{scheme}://us-east-1?endpoint={endpoint}&timeout_ms=5000")
}

pub async fn sqs_client(endpoint: &str) -> SqsPublisher {
    SqsPublisher::with_options(options("sqs", endpoint))
        .await
        .unwrap()
}

pub async fn create_queue(sqs: &SqsPublisher, name: &str) -> String {
    let mut create = sqs.client().create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    create
        .send()
        .await
        .expect("moto must run on 127.0.0.1:4577 (scripts/moto.sh start)")
        .queue_url()
        .unwrap()
        .to_owned()
}

/// What arrived on SQS queues, read and deleted 10 at a time (moto takes about a tenth of a
/// second a request, so not one delete per message as the consumer runner does), kept per
/// queue.
#[derive(Clone, Default)]
pub struct QueueReader {
    got: Arc<Mutex<HashMap<String, Vec<Received>>>>,
}

impl QueueReader {
    /// Everything that arrived on `queue_url` so far, in order; waits until `n` did (240 s:
    /// moto delivers a thousand SNS messages to a queue in about a minute, two of these tests
    /// at once in over two).
    pub async fn read(&self, sqs: &SqsPublisher, queue_url: &str, n: usize) -> Vec<Received> {
        use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
        let deadline = Instant::now() + Duration::from_secs(240);
        let client = sqs.client();
        loop {
            let have = self.got.lock().unwrap().get(queue_url).map_or(0, Vec::len);
            if have >= n || Instant::now() > deadline {
                return self
                    .got
                    .lock()
                    .unwrap()
                    .get(queue_url)
                    .cloned()
                    .unwrap_or_default();
            }
            let answer = client
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .send()
                .await;
            // moto on a loaded machine may pass the client's 5 s: ask again (a message it
            // handed out meanwhile comes back after its visibility timeout).
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    eprintln!("receive from {queue_url}: {e}; asking again");
                    continue;
                }
            };
            let messages = answer.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            let mut deletes = Vec::new();
            for (n, m) in messages.into_iter().enumerate() {
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(n.to_string())
                        .receipt_handle(m.receipt_handle().unwrap())
                        .build()
                        .unwrap(),
                );
                let m = signalbus::aws::consumer::Received::from(m);
                self.got
                    .lock()
                    .unwrap()
                    .entry(queue_url.to_owned())
                    .or_default()
                    .push(Received {
                        id: m.message_id().unwrap_or_default().to_owned(),
                        body: m.body().unwrap(),
                        customer: m.header("customer"),
                        traceparent: m.header("traceparent"),
                    });
            }
            // A delete that times out is tried again (the messages were read: left undeleted
            // they would come back as copies).
            let mut tries = 0;
            while let Err(e) = client
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(deletes.clone()))
                .send()
                .await
            {
                tries += 1;
                assert!(tries < 5, "delete from {queue_url}: {e}");
            }
        }
    }
}

/// moto takes a tenth of a second or more a request (more on FIFO queues, whose
/// deduplication it checks against every message held): the keyed-order test sends 200
/// signals, not 10,000.
const KEYED_SCALE: (usize, u32) = (20, 10);

/// The SQS fixture: routes are queues of the shared moto, FIFO ones unless `standard`.
pub struct Sqs {
    sqs: SqsPublisher,
    suffix: String,
    reader: QueueReader,
    fifo: bool,
}

impl Sqs {
    /// On FIFO queues.
    pub async fn new() -> Sqs {
        Self::with(true).await
    }

    /// On standard queues (no order; moto handles them ten times faster).
    pub async fn standard() -> Sqs {
        Self::with(false).await
    }

    async fn with(fifo: bool) -> Sqs {
        let sqs = sqs_client(&signalbus_testkit::moto::endpoint()).await;
        let fx = Sqs {
            sqs,
            suffix: uuid::Uuid::new_v4().simple().to_string(),
            reader: QueueReader::default(),
            fifo,
        };
        create_queue(&fx.sqs, &fx.ready().0).await;
        fx
    }

    fn queue(&self, key: &str) -> String {
        let fifo = if self.fifo { ".fifo" } else { "" };
        format!("sbtest-{key}-{}{fifo}", self.suffix)
    }

    async fn queue_url(&self, name: &str) -> String {
        let answer = self
            .sqs
            .client()
            .get_queue_url()
            .queue_name(name)
            .send()
            .await;
        answer.unwrap().queue_url().unwrap().to_owned()
    }
}

impl BusFixture for Sqs {
    fn url(&self) -> String {
        url("sqs", &signalbus_testkit::moto::endpoint())
    }
    async fn publisher(&self) -> BoxPublisher {
        sqs_client(&signalbus_testkit::moto::endpoint())
            .await
            .boxed()
    }
    fn process_env(&self) -> Vec<(String, String)> {
        aws_env()
    }
    fn keyed_scale(&self) -> (usize, u32) {
        KEYED_SCALE
    }
    fn ordered(&self) -> bool {
        self.fifo
    }
    fn ready(&self) -> Route {
        (self.queue("ready"), "ev".into())
    }
    fn later(&self) -> Route {
        (self.queue("later"), "ev".into())
    }
    async fn open_later(&self) {
        create_queue(&self.sqs, &self.later().0).await;
    }
    async fn received(&self, route: &Route, n: usize) -> Vec<Received> {
        let url = self.queue_url(&route.0).await;
        self.reader.read(&self.sqs, &url, n).await
    }
    async fn cleanup(self) {
        for route in [self.ready(), self.later()] {
            if let Ok(answer) = self
                .sqs
                .client()
                .get_queue_url()
                .queue_name(&route.0)
                .send()
                .await
            {
                let url = answer.queue_url().unwrap_or_default().to_owned();
                let _ = self.sqs.client().delete_queue().queue_url(url).send().await;
            }
        }
    }
}

/// The SNS fixture: routes are FIFO topics, each read through a FIFO queue subscribed to it
/// with raw delivery.
pub struct Sns {
    sqs: SqsPublisher,
    sns: SnsPublisher,
    suffix: String,
    reader: QueueReader,
    fifo: bool,
}

impl Sns {
    /// On FIFO topics and queues.
    pub async fn new() -> Sns {
        Self::with(true).await
    }

    /// On standard ones.
    pub async fn standard() -> Sns {
        Self::with(false).await
    }

    async fn with(fifo: bool) -> Sns {
        let endpoint = signalbus_testkit::moto::endpoint();
        let fx = Sns {
            sqs: sqs_client(&endpoint).await,
            sns: SnsPublisher::with_options(options("sns", &endpoint))
                .await
                .unwrap(),
            suffix: uuid::Uuid::new_v4().simple().to_string(),
            reader: QueueReader::default(),
            fifo,
        };
        fx.create("ready").await;
        fx
    }

    fn topic(&self, key: &str) -> String {
        let fifo = if self.fifo { ".fifo" } else { "" };
        format!("sbtest-{key}-{}{fifo}", self.suffix)
    }

    fn queue(&self, key: &str) -> String {
        let fifo = if self.fifo { ".fifo" } else { "" };
        format!("sbtest-{key}-sub-{}{fifo}", self.suffix)
    }

    /// Topic `key` and its subscribed queue.
    async fn create(&self, key: &str) {
        let mut create = self.sns.client().create_topic().name(self.topic(key));
        if self.fifo {
            create = create.attributes("FifoTopic", "true");
        }
        let arn = create.send().await.unwrap().topic_arn().unwrap().to_owned();
        let url = create_queue(&self.sqs, &self.queue(key)).await;
        let queue_arn = self
            .sqs
            .client()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        self.sns
            .client()
            .subscribe()
            .topic_arn(arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .unwrap();
    }
}

impl BusFixture for Sns {
    fn url(&self) -> String {
        url("sns", &signalbus_testkit::moto::endpoint())
    }
    async fn publisher(&self) -> BoxPublisher {
        let endpoint = signalbus_testkit::moto::endpoint();
        SnsPublisher::with_options(options("sns", &endpoint))
            .await
            .unwrap()
            .boxed()
    }
    fn process_env(&self) -> Vec<(String, String)> {
        aws_env()
    }
    fn keyed_scale(&self) -> (usize, u32) {
        KEYED_SCALE
    }
    fn ordered(&self) -> bool {
        self.fifo
    }
    fn ready(&self) -> Route {
        (self.topic("ready"), "ev".into())
    }
    fn later(&self) -> Route {
        (self.topic("later"), "ev".into())
    }
    async fn open_later(&self) {
        self.create("later").await;
    }
    async fn received(&self, route: &Route, n: usize) -> Vec<Received> {
        let key = if route.0 == self.topic("ready") {
            "ready"
        } else {
            "later"
        };
        let answer = self
            .sqs
            .client()
            .get_queue_url()
            .queue_name(self.queue(key))
            .send()
            .await;
        let url = answer.unwrap().queue_url().unwrap().to_owned();
        self.reader.read(&self.sqs, &url, n).await
    }
    async fn cleanup(self) {}
}

on_every_database!(sqs_end_to_end, sns_end_to_end);

async fn sqs_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Sqs::new().await).await;
}

async fn sns_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Sns::new().await).await;
}

#[tokio::test]
async fn sqs_trace_context() {
    crate::trace_context::trace_travels(Sqs::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_one_poison_among_a_thousand() {
    poison_scenario::<sqlx::Postgres, _>(Sqs::standard().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sns_one_poison_among_a_thousand() {
    poison_scenario::<sqlx::Postgres, _>(Sns::standard().await).await;
}
