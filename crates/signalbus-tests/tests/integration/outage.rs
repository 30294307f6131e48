//! A broker outage spends no attempt: a private server (the test's own: nats-server,
//! redis-server, moto for SQS) is stopped while signals are pending; flushes fail as a whole, nothing is
//! refused, parked or lost; once the server is back, everything is delivered, each once.

use crate::common::TestBackend;
use async_nats::jetstream::{self, stream};
use signalbus::{Selection, SignalBus, SignalType};
use signalbus_testkit::nats::{PrivateServer, free_port};
use signalbus_testkit::redis::PrivateRedis;
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A broker of the test's own that it may stop and start again.
trait PrivateBroker: Sized {
    async fn start() -> Self;
    /// The bus URL, with a short timeout.
    fn url(&self) -> String;
    /// Where the signals go.
    fn destination(&self) -> String;
    /// The publisher: `connect_bus(url)` unless the broker needs more (given credentials).
    async fn publisher(&self) -> signalbus::BoxPublisher {
        signalbus::connect_bus(&self.url()).await.unwrap()
    }
    /// Stop the server (SIGKILL); what it takes to start it again.
    fn stop(self) -> Stopped;
    async fn restart(stopped: Stopped) -> Self;
    /// The message id of every message the broker holds, each copy.
    async fn stored_ids(&self) -> Vec<String>;
}

struct Stopped {
    port: u16,
    /// The server's data directory (moto keeps none: an empty one).
    dir: tempfile::TempDir,
    destination: String,
}

struct Nats {
    server: PrivateServer,
    subject: String,
    dir: tempfile::TempDir,
}

impl PrivateBroker for Nats {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = PrivateServer::start(free_port(), dir.path());
        server.wait_ready().await;
        let subject = format!("outage.{}", uuid::Uuid::new_v4().simple());
        let js = jetstream::new(
            async_nats::connect(Self::server_url(&server))
                .await
                .unwrap(),
        );
        js.create_stream(stream::Config {
            name: "OUTAGE".into(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        Nats {
            server,
            subject,
            dir,
        }
    }
    fn url(&self) -> String {
        format!("{}?timeout_ms=500", Self::server_url(&self.server))
    }
    fn destination(&self) -> String {
        self.subject.clone()
    }
    fn stop(self) -> Stopped {
        let (port, _) = self.server.stop();
        Stopped {
            port,
            dir: self.dir,
            destination: self.subject,
        }
    }
    async fn restart(stopped: Stopped) -> Self {
        let server = PrivateServer::start(stopped.port, stopped.dir.path());
        server.wait_ready().await;
        Nats {
            server,
            subject: stopped.destination,
            dir: stopped.dir,
        }
    }
    async fn stored_ids(&self) -> Vec<String> {
        use futures_util::StreamExt;
        let js = jetstream::new(
            async_nats::connect(Self::server_url(&self.server))
                .await
                .unwrap(),
        );
        let mut stored = js.get_stream("OUTAGE").await.unwrap();
        let n = stored.info().await.unwrap().state.messages;
        let consumer = stored
            .create_consumer(jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(usize::try_from(n).unwrap())
            .messages()
            .await
            .unwrap();
        let mut ids = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let headers = message.headers.as_ref().unwrap();
            ids.push(headers.get("Nats-Msg-Id").unwrap().to_string());
        }
        ids
    }
}

impl Nats {
    fn server_url(server: &PrivateServer) -> String {
        format!("nats://127.0.0.1:{}", server.port)
    }
}

struct Redis {
    server: PrivateRedis,
    stream: String,
    dir: tempfile::TempDir,
}

impl PrivateBroker for Redis {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = PrivateRedis::start(free_port(), dir.path());
        server.wait_ready().await;
        Redis {
            server,
            stream: format!("outage-{}", uuid::Uuid::new_v4().simple()),
            dir,
        }
    }
    fn url(&self) -> String {
        format!("{}?timeout_ms=500", self.server.url())
    }
    fn destination(&self) -> String {
        self.stream.clone()
    }
    fn stop(self) -> Stopped {
        let (port, _) = self.server.stop();
        Stopped {
            port,
            dir: self.dir,
            destination: self.stream,
        }
    }
    async fn restart(stopped: Stopped) -> Self {
        let server = PrivateRedis::start(stopped.port, stopped.dir.path());
        server.wait_ready().await;
        Redis {
            server,
            stream: stopped.destination,
            dir: stopped.dir,
        }
    }
    async fn stored_ids(&self) -> Vec<String> {
        let client = redis::Client::open(self.server.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap();
        entries.into_iter().map(|(_, f)| f["id"].clone()).collect()
    }
}

struct Sqs {
    server: signalbus_testkit::moto::PrivateMoto,
    queue: String,
    dir: tempfile::TempDir,
}

impl Sqs {
    async fn client(&self) -> signalbus::aws::SqsPublisher {
        crate::bus_sqs::sqs_client(&self.server.endpoint()).await
    }
}

impl PrivateBroker for Sqs {
    async fn start() -> Self {
        let server = signalbus_testkit::moto::PrivateMoto::start(free_port()).await;
        let fx = Sqs {
            server,
            queue: format!("outage-{}", uuid::Uuid::new_v4().simple()),
            dir: tempfile::tempdir().unwrap(),
        };
        crate::bus_sqs::create_queue(&fx.client().await, &fx.queue).await;
        fx
    }
    fn url(&self) -> String {
        format!(
            "sqs://us-east-1?endpoint={}&timeout_ms=1000",
            self.server.endpoint()
        )
    }
    fn destination(&self) -> String {
        self.queue.clone()
    }
    async fn publisher(&self) -> signalbus::BoxPublisher {
        use signalbus::PublisherExt;
        let mut options = crate::bus_sqs::options("sqs", &self.server.endpoint());
        options.timeout = Duration::from_millis(1000);
        signalbus::aws::SqsPublisher::with_options(options)
            .await
            .unwrap()
            .boxed()
    }
    fn stop(self) -> Stopped {
        let port = self.server.stop();
        Stopped {
            port,
            dir: self.dir,
            destination: self.queue,
        }
    }
    /// moto keeps nothing over a restart: the queue is made again, as an operator would.
    async fn restart(stopped: Stopped) -> Self {
        let server = signalbus_testkit::moto::PrivateMoto::start(stopped.port).await;
        let fx = Sqs {
            server,
            queue: stopped.destination,
            dir: stopped.dir,
        };
        crate::bus_sqs::create_queue(&fx.client().await, &fx.queue).await;
        fx
    }
    async fn stored_ids(&self) -> Vec<String> {
        let sqs = self.client().await;
        let url = sqs
            .client()
            .get_queue_url()
            .queue_name(&self.queue)
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        let reader = crate::bus_sqs::QueueReader::default();
        let got = reader.read(&sqs, &url, 20).await;
        got.into_iter().map(|r| r.id).collect()
    }
}

async fn an_outage_spends_no_attempt<DB: TestBackend, B: PrivateBroker>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let broker = B::start().await;
    let db = DB::create(3).await;
    let publisher = broker.publisher().await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register_type(SignalType::new("outage").autoflush(false).burst(5))
        .publish_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let destination = broker.destination();
    let values: Vec<String> = (0..20)
        .map(|n| format!("('{destination}', '{{\"n\":{n}}}')"))
        .collect();
    let sql = format!(
        "INSERT INTO outage (topic, body) VALUES {}",
        values.join(", ")
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();

    // The broker goes away.
    let stopped = broker.stop();
    for _ in 0..3 {
        let failed = bus.flush_many(&Selection::all()).await;
        assert!(failed.is_err(), "{failed:?}");
    }
    let stats = bus.pending(&Selection::all()).await.unwrap()[0].1;
    assert_eq!(
        (stats.count, stats.backing_off, stats.parked),
        (20, 0, 0),
        "an outage spends no attempt: {stats:?}"
    );

    // It comes back (same port and store): everything goes out, each message once.
    let broker = B::restart(stopped).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < 20 {
        sent += bus.flush_many(&Selection::all()).await.unwrap_or(0);
        assert!(
            Instant::now() < deadline,
            "sent {sent} of 20 after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(DB::count_rows(&db.pool, "outage").await, 0);
    // Nothing reached the broker while it was down, so nothing was sent twice (NATS would
    // drop a second copy by Nats-Msg-Id anyway).
    let ids = broker.stored_ids().await;
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        20,
        "each signal once"
    );
    db.cleanup().await;
}

macro_rules! on_every_database_and_broker {
    ($($module:ident: $broker:ident),*) => {$(
        mod $module {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { an_outage_spends_no_attempt::<sqlx::Postgres, $broker>().await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() { an_outage_spends_no_attempt::<sqlx::MySql, $broker>().await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { an_outage_spends_no_attempt::<sqlx::Sqlite, $broker>().await }
        }
    )*};
}

on_every_database_and_broker!(nats: Nats, redis_streams: Redis, sqs: Sqs);
