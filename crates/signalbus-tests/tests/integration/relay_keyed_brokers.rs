//! The relay's per-key order through real brokers (RabbitMQ, NATS, Kafka, Redis Streams, webhooks, SQS and SNS FIFO): 200 keys × 50
//! signals written by 16 writers whose transactions interleave (PostgreSQL), drained by four
//! ordered relays — in-process (four buses with broker connections of their own, one dropped
//! mid-run) and as four `signalbus relay --ordered` processes (one killed with SIGKILL
//! mid-run); the broker's own order, read back, has every key's first deliveries in write
//! order, and nothing is missing.

use crate::bus_amqp::Amqp;
use crate::bus_kafka::Kafka;
use crate::bus_nats::Nats;
use crate::buses::BusFixture;
use crate::common::TestBackend;
use signalbus::SignalBus;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A keyed signal routed by the fixture.
#[derive(Debug, Clone, serde::Serialize, signalbus::Signal)]
#[signal(
    name = "keyed_event",
    table = "keyed_event",
    autoflush = false,
    burst = 100
)]
struct KeyedEvent {
    #[signal(destination)]
    destination: String,
    #[signal(routing_key)]
    route: String,
    #[signal(key)]
    account: String,
    seq: u32,
}

const WRITERS: usize = 16;

/// Who drains the backlog.
#[derive(Debug, Clone, Copy)]
enum Relays {
    /// Four relays in this process, on buses of their own; one dropped mid-run.
    InProcess,
    /// Four `signalbus relay --ordered` processes; one killed with SIGKILL mid-run.
    Processes,
    /// Four `signalbus relay --ordered --transaction-pooler` processes, and the writers,
    /// through a private PgBouncer in transaction mode (three server connections handed out
    /// round-robin); none killed: nothing may be sent twice.
    BehindPgBouncer,
    /// Two relays as in `BehindPgBouncer` (ordered bursts without lanes) and two direct ones
    /// (with lanes) on the same table, at once; none killed: nothing may be sent twice.
    Mixed,
}

impl Relays {
    /// Whether relay `n` reaches the database through the pooler.
    fn pooled(self, n: usize) -> bool {
        match self {
            Relays::BehindPgBouncer => true,
            Relays::Mixed => n < 2,
            Relays::InProcess | Relays::Processes => false,
        }
    }
}

/// The `signalbus` binary of this workspace build (next to the test binary's `deps`).
pub(crate) fn signalbus_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("signalbus"))
        .unwrap();
    assert!(
        bin.exists(),
        "the signalbus binary is not built at {}: run the tests with `cargo test --workspace` \
         (scripts/test.sh), or `cargo build -p signalbus-cli` first",
        bin.display()
    );
    bin
}

/// One keyed run at a time in this binary: each holds up to ~80 PostgreSQL connections (its
/// writers and four relays), and two together would pass the server's 100.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn keyed_relayed<F: BusFixture>(fx: F, relays: Relays) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (keys_n, per_key) = fx.keyed_scale();
    let db = <sqlx::Postgres as TestBackend>::create(60).await;
    let route = fx.ready();
    let pooler = matches!(relays, Relays::BehindPgBouncer | Relays::Mixed).then(|| {
        let port = signalbus_testkit::nats::free_port();
        signalbus_testkit::pgbouncer::PrivatePgBouncer::start(5432, port, 3)
            .expect("a private PgBouncer")
    });
    // The writers reach the database through the pooler, when there is one.
    let url = match &pooler {
        Some(pooler) => pooler.url(&db.name),
        None => db.url.clone(),
    };
    let mut buses = Vec::new();
    // Pools of their own, as processes have (the in-process relay that dies must not leave
    // cancelled connections to the others).
    let mut pools = Vec::new();
    for _ in 0..4 {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        pools.push(pool.clone());
        let bus = SignalBus::builder(pool)
            .publisher(fx.publisher().await)
            .register::<KeyedEvent>()
            .publish_timeout(Duration::from_secs(10))
            .lease(Duration::from_secs(12))
            .transaction_pooler(pooler.is_some())
            .autoflush(false)
            .build()
            .unwrap();
        bus.migrate().await.unwrap();
        buses.push(bus);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signalbus.toml");
    std::fs::write(&config, "[[signal]]\nname = \"keyed_event\"\nburst = 100\n").unwrap();
    let mut in_process = Vec::new();
    let mut processes = Vec::new();
    for (n, bus) in buses.iter().enumerate() {
        match relays {
            Relays::InProcess => in_process.push(
                bus.relay()
                    .ordered(true)
                    .ordered_lanes(4)
                    .poll(Duration::from_millis(10), Duration::from_millis(200))
                    .start()
                    .await
                    .unwrap(),
            ),
            Relays::Processes | Relays::BehindPgBouncer | Relays::Mixed => {
                let pooled = relays.pooled(n);
                let url = if pooled { &url } else { &db.url };
                processes.push(signalbus_testkit::process::KillOnDrop(
                    std::process::Command::new(signalbus_binary())
                        .env_remove("RUST_LOG")
                        .envs(fx.process_env())
                        .env("SIGNALBUS_TRANSACTION_POOLER", pooled.to_string())
                        .args(["--config", config.to_str().unwrap()])
                        .args(["--database-url", url, "--bus-url", &fx.url()])
                        .args(["--publish-timeout", "10", "--lease", "12"])
                        .args([
                            "relay",
                            "--ordered",
                            "--ordered-lanes",
                            "4",
                            "--poll-max",
                            "0.2",
                        ])
                        .stdout(std::process::Stdio::null())
                        // Kept, so that a relay that ends badly says why in the test's failure.
                        .stderr(
                            std::fs::File::create(dir.path().join(format!("relay-{n}.log")))
                                .unwrap(),
                        )
                        .spawn()
                        .unwrap(),
                ))
            }
        }
    }
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (bus, route) = (buses[1 + w % 3].clone(), route.clone());
        writers.spawn(async move {
            let keys: Vec<String> = (w..keys_n)
                .step_by(WRITERS)
                .map(|k| format!("a{k}"))
                .collect();
            for seq in 0..per_key {
                for chunk in keys.chunks(4) {
                    let mut tx = bus.begin().await.unwrap();
                    for account in chunk {
                        let event = KeyedEvent {
                            destination: route.0.clone(),
                            route: route.1.clone(),
                            account: account.clone(),
                            seq,
                        };
                        tx.send(&event).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One relay dies mid-run: its lanes are free at once, its burst in flight comes back
    // after the lease.
    match relays {
        Relays::InProcess => {
            drop(in_process.remove(0));
            pools[0].close().await;
        }
        Relays::Processes => {
            let mut victim = processes.remove(0);
            victim.kill().unwrap(); // SIGKILL
            victim.wait().unwrap();
        }
        Relays::BehindPgBouncer | Relays::Mixed => {}
    }
    while writers.join_next().await.is_some() {}
    let total = keys_n * per_key as usize;
    let left = until_keyed_empty(&db.pool, Duration::from_secs(180)).await;
    assert_eq!(left, 0, "drained");
    let drained = started.elapsed();
    for relay in in_process {
        assert!(relay.shutdown(Duration::from_secs(10)).await);
    }
    for mut child in processes {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        if !exit.success() {
            let logs: Vec<String> = (0..buses.len())
                .filter_map(|n| {
                    std::fs::read_to_string(dir.path().join(format!("relay-{n}.log"))).ok()
                })
                .collect();
            panic!("SIGTERM: {exit}, not exit 0; the relays' logs: {logs:#?}");
        }
    }
    let got = fx.received(&route, total).await;
    let (next, duplicates) = crate::buses::key_order(&got);
    eprintln!(
        "{total} keyed signals through 4 relays ({relays:?}) in {drained:?}: {} read \
         back, {duplicates} duplicates",
        got.len()
    );
    assert_eq!(next.len(), keys_n, "every key arrived");
    if let Some(pooler) = &pooler {
        assert_eq!(
            duplicates,
            0,
            "nothing sent twice; PgBouncer's log:\n{}",
            pooler.log()
        );
    }
    if duplicates == 0 {
        // (With duplicates, reading `total` messages stops short of the last ones.)
        assert!(
            next.values().all(|&n| n == per_key),
            "every key complete, in order"
        );
    }
    fx.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_keyed_order_postgres() {
    keyed_relayed(Amqp::new().await, Relays::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_keyed_order_postgres_relay_processes() {
    keyed_relayed(Amqp::new().await, Relays::Processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_keyed_order_postgres_behind_pgbouncer() {
    keyed_relayed(Amqp::new().await, Relays::BehindPgBouncer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_keyed_order_postgres_pooled_and_direct_relays_together() {
    keyed_relayed(Amqp::new().await, Relays::Mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_keyed_order_postgres() {
    keyed_relayed(Nats::new().await, Relays::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_keyed_order_postgres_relay_processes() {
    keyed_relayed(Nats::new().await, Relays::Processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_keyed_order_postgres_relay_processes() {
    keyed_relayed(crate::bus_redis::Redis::new().await, Relays::Processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_keyed_order_postgres_relay_processes() {
    keyed_relayed(crate::bus_webhook::Webhook::new().await, Relays::Processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_fifo_keyed_order_postgres_relay_processes() {
    keyed_relayed(crate::bus_sqs::Sqs::new().await, Relays::Processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sns_fifo_keyed_order_postgres() {
    keyed_relayed(crate::bus_sqs::Sns::new().await, Relays::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_keyed_order_postgres() {
    keyed_relayed(Kafka::new().await, Relays::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_keyed_order_postgres_relay_processes() {
    keyed_relayed(Kafka::new().await, Relays::Processes).await;
}

async fn until_keyed_empty(pool: &sqlx::PgPool, limit: Duration) -> i64 {
    let started = Instant::now();
    loop {
        let n = <sqlx::Postgres as TestBackend>::count_rows(pool, "keyed_event").await;
        if n == 0 || started.elapsed() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
