//! Kafka end to end (a Kafka-protocol broker on 127.0.0.1:9092, e.g. tansu started by
//! `scripts/kafka.sh start`): a topic that does not exist is refused until it is created.

use crate::buses::{BusFixture, Received, Route, end_to_end};
use crate::common::TestBackend;
use crate::on_every_database;
use rdkafka::message::Message as _;
use signalbus_testkit::kafka::{SERVERS, create_topic, delete_topic, header, read_topic};

/// The Kafka fixture; the relay's tests use it too (`relay.rs`, `relay_keyed_brokers.rs`).
pub struct Kafka {
    suffix: String,
}

impl Kafka {
    pub async fn new() -> Kafka {
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
                traceparent: header(m, "traceparent"),
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

#[tokio::test]
async fn kafka_trace_context() {
    crate::trace_context::trace_travels(Kafka::new().await).await;
}
