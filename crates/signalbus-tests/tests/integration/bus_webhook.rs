//! Signed webhooks end to end, against the test kit's receiver on 127.0.0.1 (it checks every
//! signature on its own): a path answering 422 is refused until it answers 200; one refused
//! message among 1,000 is parked while the others arrive once; an endpoint that is down
//! defers only its own signals (no attempt spent) and gets them all once it is back; no
//! secret and no body reaches the logs.

use crate::buses::{BusFixture, Received, Route, end_to_end, poison_scenario};
use crate::common::TestBackend;
use crate::on_every_database;
use signalbus::{Selection, SignalBus, SignalType};
use signalbus_testkit::webhook::{Answer, Receiver};
use sqlx::AssertSqlSafe;
use std::time::{Duration, Instant};

pub const SECRET: &str = "whsec_dGVzdC1vbmx5LXNpZ25hbGJ1cy13ZWJob29rLWtleQ==";

/// The webhook fixture: routes are paths of one receiver.
pub struct Webhook {
    receiver: Receiver,
    suffix: String,
}

impl Webhook {
    pub async fn new() -> Webhook {
        let fx = Webhook {
            receiver: Receiver::start(SECRET).await,
            suffix: uuid::Uuid::new_v4().simple().to_string(),
        };
        fx.receiver
            .set(&format!("/later-{}", fx.suffix), Answer::Status(422));
        fx
    }
}

impl BusFixture for Webhook {
    fn url(&self) -> String {
        // One request at a time per endpoint: the end-to-end test checks arrival order.
        format!(
            "{}?secret={SECRET}&concurrency=1&timeout_ms=5000",
            self.receiver.url()
        )
    }
    fn ready(&self) -> Route {
        (format!("ready-{}", self.suffix), "ev".into())
    }
    fn later(&self) -> Route {
        (format!("later-{}", self.suffix), "ev".into())
    }
    async fn open_later(&self) {
        self.receiver
            .set(&format!("/later-{}", self.suffix), Answer::Ok);
    }
    async fn received(&self, route: &Route, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.receiver.accepted(&format!("/{}", route.0));
            if got.len() >= n || Instant::now() > deadline {
                return got
                    .into_iter()
                    .map(|r| {
                        assert!(r.signed);
                        Received {
                            id: r.id,
                            body: r.body,
                            customer: r.headers.get("customer").cloned(),
                            traceparent: r.headers.get("traceparent").cloned(),
                        }
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    async fn cleanup(self) {}
}

on_every_database!(webhook_end_to_end);

async fn webhook_end_to_end<DB: TestBackend>() {
    end_to_end::<DB, _>(Webhook::new().await).await;
}

#[tokio::test]
async fn webhook_trace_context() {
    crate::trace_context::trace_travels(Webhook::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_one_poison_among_a_thousand() {
    poison_scenario::<sqlx::Postgres, _>(Webhook::new().await).await;
}

/// A log writer that keeps everything written, to search afterwards.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Two endpoints, one of them down: the other's signals go out; the down one's are deferred
/// (backing off, no attempt spent, however often they are tried) until it is back, then all
/// arrive once. Everything logged meanwhile, at trace level, holds no secret and no body.
#[tokio::test(flavor = "current_thread")]
async fn an_endpoint_outage_defers_only_its_signals() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("signalbus=trace,signalbus_core=trace,signalbus_webhook=trace")
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();

    let up = Receiver::start(SECRET).await;
    let down = Receiver::start(SECRET).await;
    let down_port = down.port;
    let stopped = down.stop();
    let url = format!(
        "{}?secret={SECRET}&allow=127.0.0.1:{down_port}&timeout_ms=1000&max_pause_s=1",
        up.url()
    );
    let db = <sqlx::Postgres as TestBackend>::create(3).await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(signalbus::connect_bus(&url).await.unwrap())
        .register_type(SignalType::new("hooked").autoflush(false))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let marker = "body-marker-7f3a";
    let rows: Vec<String> = (0..40)
        .map(|n| {
            let to = if n % 2 == 0 {
                "to-up".to_owned()
            } else {
                format!("http://127.0.0.1:{down_port}/to-down")
            };
            format!("('{to}', '{{\"n\":{n},\"m\":\"{marker}\"}}')")
        })
        .collect();
    let sql = format!(
        "INSERT INTO hooked (topic, body) VALUES {}",
        rows.join(", ")
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();

    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 20);
    assert_eq!(up.accepted("/to-up").len(), 20);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
        let stats = bus.pending(&Selection::all()).await.unwrap()[0].1;
        assert_eq!((stats.count, stats.backing_off, stats.parked), (20, 20, 0));
    }
    let (attempts,): (i64,) = sqlx::query_as("SELECT max(attempts) FROM hooked")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "an outage spends no attempt");

    let down = stopped.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while sent < 20 {
        sent += bus.flush_many(&Selection::all()).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "sent {sent} of 20 after it came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids: Vec<String> = down
        .accepted("/to-down")
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each once");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("no attempt spent"),
        "the deferrals were logged: {logs}"
    );
    let key = SECRET.trim_start_matches("whsec_");
    assert!(!logs.contains(key), "a secret reached the logs");
    assert!(!logs.contains(marker), "a body reached the logs");
    db.cleanup().await;
}
