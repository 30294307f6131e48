//! Kafka topics for a test, and reading back what was published (rdkafka).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// The shared broker (tansu, started by `scripts/kafka.sh start`).
pub const SERVERS: &str = "127.0.0.1:9092";

fn admin(servers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap()
}

/// Create `name` (one partition) on the shared broker; tansu does not auto-create topics.
pub async fn create_topic(name: &str) {
    create_topic_at(SERVERS, name).await
}

/// Create `name` (one partition) on the broker at `servers`.
pub async fn create_topic_at(servers: &str, name: &str) {
    let results = admin(servers)
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("a Kafka broker must run on {servers} (scripts/kafka.sh start): {e}")
        });
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

/// Delete `name` from the shared broker, if it is there.
pub async fn delete_topic(name: &str) {
    let _ = admin(SERVERS)
        .delete_topics(&[name], &AdminOptions::new())
        .await;
}

/// The first `n` messages of partition 0 of `topic` on the shared broker, read from the
/// beginning; fewer if they do not all arrive within 20 s. Blocks: call it from
/// `spawn_blocking` in async tests.
pub fn read_topic(topic: &str, n: usize) -> Vec<OwnedMessage> {
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

/// The value of header `name` of `m`, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
