//! NATS JetStream end to end (127.0.0.1:4222 with -js): a subject no stream captures is
//! refused until its stream is created.

use crate::buses::{BusFixture, Received, Route, end_to_end, poison_scenario};
use crate::common::TestBackend;
use crate::on_every_database;
use async_nats::jetstream::{self, stream};

const URL: &str = "nats://127.0.0.1:4222";

/// The NATS fixture; the relay's tests use it too (`relay.rs`, `relay_keyed_brokers.rs`).
pub struct Nats {
    js: jetstream::Context,
    suffix: String,
}

impl Nats {
    pub async fn new() -> Nats {
        let client = async_nats::connect(URL)
            .await
            .expect("NATS must run on 127.0.0.1:4222 with -js");
        let fx = Nats {
            js: jetstream::new(client),
            suffix: uuid::Uuid::new_v4().simple().to_string(),
        };
        fx.create("ready").await;
        fx
    }

    fn stream(&self, key: &str) -> String {
        format!("SBTEST_{key}_{}", self.suffix)
    }

    fn root(&self, key: &str) -> String {
        format!("sbtest_{key}_{}", self.suffix)
    }

    async fn create(&self, key: &str) {
        self.js
            .create_stream(stream::Config {
                name: self.stream(key),
                subjects: vec![format!("{}.>", self.root(key))],
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

impl BusFixture for Nats {
    fn url(&self) -> String {
        format!("{URL}?timeout_ms=5000")
    }
    fn ready(&self) -> Route {
        (self.root("ready"), "ev".into())
    }
    fn later(&self) -> Route {
        (self.root("later"), "ev".into())
    }
    async fn open_later(&self) {
        self.create("later").await;
    }
    async fn received(&self, route: &Route, n: usize) -> Vec<Received> {
        let key = if route.0 == self.root("ready") {
            "ready"
        } else {
            "later"
        };
        let stream = self.js.get_stream(self.stream(key)).await.unwrap();
        let mut out = Vec::new();
        for seq in 1..=n as u64 {
            let m = stream.get_raw_message(seq).await.unwrap();
            out.push(Received {
                id: m
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                body: m.payload.to_vec(),
                customer: m.headers.get("customer").map(|v| v.to_string()),
                traceparent: m.headers.get("traceparent").map(|v| v.to_string()),
            });
        }
        out
    }
    async fn cleanup(self) {
        for key in ["ready", "later"] {
            let _ = self.js.delete_stream(self.stream(key)).await;
        }
    }
}

on_every_database!(nats_end_to_end);

async fn nats_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Nats::new().await).await;
}

#[tokio::test]
async fn nats_trace_context() {
    crate::trace_context::trace_travels(Nats::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_one_poison_among_a_thousand() {
    poison_scenario::<sqlx::Postgres, _>(Nats::new().await).await;
}
