//! Kafka end to end (a Kafka-protocol broker on 127.0.0.1:9092, e.g. tansu started by
//! `scripts/kafka.sh start`): a topic that does not exist is refused until it is created.

use crate::buses::{BusFixture, Received, Route, end_to_end};
use crate::common::TestBackend;
use crate::on_every_database;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const SERVERS: &str = "127.0.0.1:9092";

pub async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("a Kafka broker must run on 127.0.0.1:9092 (scripts/kafka.sh start)");
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

pub async fn delete_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .create()
        .unwrap();
    let _ = admin.delete_topics(&[name], &AdminOptions::new()).await;
}

/// The first `n` messages of partition 0 of `topic`, read from the beginning.
pub fn read_topic(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .set(
            "group.id",
            format!("sbtest-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

pub fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

struct Kafka {
    suffix: String,
}

impl Kafka {
    async fn new() -> Kafka {
        let fx = Kafka {
            suffix: uuid::Uuid::new_v4().simple().to_string(),
        };
        create_topic(&fx.topic("ready")).await;
        fx
    }

    fn topic(&self, key: &str) -> String {
        format!("sbtest-{key}-{}", self.suffix)
    }
}

impl BusFixture for Kafka {
    fn url(&self) -> String {
        format!("kafka://{SERVERS}?timeout_ms=10000")
    }
    fn ready(&self) -> Route {
        (self.topic("ready"), "key-1".into())
    }
    fn later(&self) -> Route {
        (self.topic("later"), "key-1".into())
    }
    async fn open_later(&self) {
        create_topic(&self.topic("later")).await;
    }
    async fn received(&self, route: &Route, n: usize) -> Vec<Received> {
        let topic = route.0.clone();
        tokio::task::spawn_blocking(move || read_topic(&topic, n))
            .await
            .unwrap()
            .iter()
            .map(|m| Received {
                id: header(m, "message-id").unwrap_or_default(),
                body: m.payload().unwrap_or_default().to_vec(),
                customer: header(m, "customer"),
            })
            .collect()
    }
    async fn cleanup(self) {
        for key in ["ready", "later"] {
            delete_topic(&self.topic(key)).await;
        }
    }
}

on_every_database!(kafka_end_to_end);

async fn kafka_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Kafka::new().await).await;
}
