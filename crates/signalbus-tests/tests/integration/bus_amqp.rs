//! RabbitMQ end to end (127.0.0.1:5672, guest/guest): mandatory publishing, so a routing key
//! without a bound queue is refused until a queue is bound.

use crate::buses::{BusFixture, Received, Route, end_to_end, poison_scenario};
use crate::common::TestBackend;
use crate::on_every_database;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use signalbus_testkit::rabbitmq::close_connection_named;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The RabbitMQ fixture; the relay's tests use it too (`relay.rs`, `relay_keyed_brokers.rs`).
pub struct Amqp {
    _conn: Connection,
    channel: Channel,
    exchange: String,
    suffix: String,
}

impl Amqp {
    pub async fn new() -> Amqp {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (rabbitmq-server -detached)");
        let channel = conn.create_channel().await.unwrap();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("sbtest-x-{suffix}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let fx = Amqp {
            _conn: conn,
            channel,
            exchange,
            suffix,
        };
        fx.bind("ready").await;
        fx
    }

    fn queue(&self, key: &str) -> String {
        format!("sbtest-q-{key}-{}", self.suffix)
    }

    async fn bind(&self, key: &str) {
        let queue = self.queue(key);
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                self.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
}

impl BusFixture for Amqp {
    fn url(&self) -> String {
        // The app_id names the connection, so the test can close exactly this one.
        format!(
            "{URL}?mandatory=true&timeout_ms=5000&app_id=sbtest-{}",
            self.suffix
        )
    }
    async fn interrupt(&self) -> bool {
        let name = format!("sbtest-{}", self.suffix);
        tokio::task::spawn_blocking(move || close_connection_named(&name))
            .await
            .unwrap();
        true
    }
    fn ready(&self) -> Route {
        (self.exchange.clone(), "ready".into())
    }
    fn later(&self) -> Route {
        (self.exchange.clone(), "later".into())
    }
    async fn open_later(&self) {
        self.bind("later").await;
    }
    async fn received(&self, route: &Route, _n: usize) -> Vec<Received> {
        // Confirmed means enqueued: everything is there already.
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(
                self.queue(&route.1).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let p = &m.delivery.properties;
            let header = |name: &str| {
                p.headers()
                    .as_ref()
                    .and_then(|h| match h.inner().get(name) {
                        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                        _ => None,
                    })
            };
            let (customer, traceparent) = (header("customer"), header("traceparent"));
            out.push(Received {
                id: p
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                body: m.delivery.data.clone(),
                customer,
                traceparent,
            });
        }
        out
    }
    async fn cleanup(self) {
        for key in ["ready", "later"] {
            let _ = self
                .channel
                .queue_delete(
                    self.queue(key).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
}

on_every_database!(amqp_end_to_end);

async fn amqp_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Amqp::new().await).await;
}

#[tokio::test]
async fn amqp_trace_context() {
    crate::trace_context::trace_travels(Amqp::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_one_poison_among_a_thousand() {
    poison_scenario::<sqlx::Postgres, _>(Amqp::new().await).await;
}
