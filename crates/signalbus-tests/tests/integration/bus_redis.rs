//! Redis Streams end to end (127.0.0.1:6379; every test its own stream keys): a stream key
//! that holds a string is refused (`WRONGTYPE`) until it is deleted; one refused message among
//! 1,000 is parked while the others arrive once; an outage of a private redis-server spends
//! no attempt (`outage.rs`).

use crate::buses::{BusFixture, Received, Route, end_to_end, poison_scenario};
use crate::common::TestBackend;
use crate::on_every_database;
use std::collections::HashMap;

const URL: &str = "redis://127.0.0.1:6379";

/// The Redis fixture.
pub struct Redis {
    connection: redis::aio::MultiplexedConnection,
    suffix: String,
}

impl Redis {
    pub async fn new() -> Redis {
        let client = redis::Client::open(URL).unwrap();
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must run on 127.0.0.1:6379");
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        // The `later` stream's key holds a string until `open_later` deletes it.
        let _: () = redis::cmd("SET")
            .arg(format!("sbtest-later-{suffix}"))
            .arg("not a stream")
            .query_async(&mut connection)
            .await
            .unwrap();
        Redis { connection, suffix }
    }

    fn stream(&self, key: &str) -> String {
        format!("sbtest-{key}-{}", self.suffix)
    }
}

/// One stream entry as XRANGE returns it: its id and its fields.
type StreamEntry = (String, HashMap<String, Vec<u8>>);

impl BusFixture for Redis {
    fn url(&self) -> String {
        format!("{URL}?timeout_ms=5000")
    }
    fn ready(&self) -> Route {
        (self.stream("ready"), "ev".into())
    }
    fn later(&self) -> Route {
        (self.stream("later"), "ev".into())
    }
    async fn open_later(&self) {
        let _: i64 = redis::cmd("DEL")
            .arg(self.stream("later"))
            .query_async(&mut self.connection.clone())
            .await
            .unwrap();
    }
    async fn received(&self, route: &Route, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let text = |f: &HashMap<String, Vec<u8>>, name: &str| {
            f.get(name).map(|v| String::from_utf8(v.clone()).unwrap())
        };
        let mut out = Vec::new();
        // Pages of 1,000 entries: one XRANGE of 10,000 takes longer than the client's
        // response timeout on a loaded machine (and read nothing at all).
        let mut start = "-".to_owned();
        loop {
            let page: redis::RedisResult<Vec<StreamEntry>> = redis::cmd("XRANGE")
                .arg(&route.0)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.connection.clone())
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    eprintln!("XRANGE {}: {e}; trying again", route.0);
                    Vec::new()
                }
            };
            let full = page.len() == 1000;
            for (id, f) in page {
                start = format!("({id}");
                out.push(Received {
                    id: text(&f, "id").unwrap_or_default(),
                    body: f.get("body").cloned().unwrap_or_default(),
                    customer: text(&f, "header:customer"),
                    traceparent: text(&f, "header:traceparent"),
                });
            }
            if full {
                continue;
            }
            if out.len() >= n || std::time::Instant::now() > deadline {
                return out;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    async fn cleanup(self) {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(self.stream("ready"))
            .arg(self.stream("later"))
            .query_async(&mut self.connection.clone())
            .await;
    }
}

on_every_database!(redis_end_to_end);

async fn redis_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Redis::new().await).await;
}

#[tokio::test]
async fn redis_trace_context() {
    crate::trace_context::trace_travels(Redis::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_one_poison_among_a_thousand() {
    poison_scenario::<sqlx::Postgres, _>(Redis::new().await).await;
}
