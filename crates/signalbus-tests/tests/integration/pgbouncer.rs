//! Behind a real PgBouncer in transaction pooling mode (three server connections handed out
//! round-robin, so that consecutive transactions of one client land on different server
//! sessions): writers whose auto-flush sends at commit, two `signalbus flushmany --repeat`
//! processes and a relay (no LISTEN: it polls), all through the pooler at once. Every signal
//! arrives exactly once, and PgBouncer logs no session-state error. Per-key order with four
//! relays behind the pooler: `relay_keyed_brokers.rs`.

use crate::common::TestBackend;
use crate::relay_keyed_brokers::signalbus_binary;
use signalbus::SignalBus;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize, signalbus::Signal)]
#[signal(name = "pooled_event", table = "pooled_event", burst = 50)]
struct PooledEvent {
    #[signal(destination)]
    destination: String,
    n: u64,
}

/// How often each `n` reached the `file:` buses.
fn delivered(paths: &[&Path]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let body: serde_json::Value =
                serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
            *counts.entry(body["n"].as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autoflush_flushmany_and_a_relay_behind_pgbouncer_send_each_signal_once() {
    const WRITERS: u64 = 8;
    const PER_WRITER: u64 = 150;
    let db = <sqlx::Postgres as TestBackend>::create(10).await;
    let pooler = signalbus_testkit::pgbouncer::PrivatePgBouncer::start(
        5432,
        signalbus_testkit::nats::free_port(),
        3,
    )
    .expect("a private PgBouncer");
    let url = pooler.url(&db.name);
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let bus_url = |name: &str| format!("file:{}", out(name).display());
    // The writers' bus: auto-flush at commit, through the pooler.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap();
    let bus = SignalBus::builder(pool)
        .publisher(
            signalbus::connect_bus(&bus_url("autoflush.jsonl"))
                .await
                .unwrap(),
        )
        .register::<PooledEvent>()
        .transaction_pooler(true)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let config = out("signalbus.toml");
    std::fs::write(&config, "[[signal]]\nname = \"pooled_event\"\nburst = 50\n").unwrap();
    let process = |args: &[&str], bus: &str, log: &str| {
        signalbus_testkit::process::KillOnDrop(
            std::process::Command::new(signalbus_binary())
                .env_remove("RUST_LOG")
                .env_remove("DATABASE_URL")
                .args(["--config", config.to_str().unwrap()])
                .args(["--database-url", &url, "--bus-url", &bus_url(bus)])
                .arg("--transaction-pooler")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(out(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    // A second bus of the writers, without auto-flush: its signals wait for the others.
    let plain = SignalBus::builder(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap(),
    )
    .publisher(
        signalbus::connect_bus(&bus_url("unused.jsonl"))
            .await
            .unwrap(),
    )
    .register::<PooledEvent>()
    .transaction_pooler(true)
    .autoflush(false)
    .build()
    .unwrap();
    let write = |bus: SignalBus<sqlx::Postgres>, from: u64, txs: u64| async move {
        for i in 0..txs {
            let mut tx = bus.begin().await.unwrap();
            for k in 0..2 {
                tx.send(&PooledEvent {
                    destination: "pooled".into(),
                    n: (from + i) * 2 + k,
                })
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }
    };
    let drained = |what: &'static str| {
        let (pool, log) = (db.pool.clone(), pooler.log());
        async move {
            let started = Instant::now();
            loop {
                let left = <sqlx::Postgres as TestBackend>::count_rows(&pool, "pooled_event").await;
                if left == 0 {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{what}: {left} left; PgBouncer's log:\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let stop = |mut child: signalbus_testkit::process::KillOnDrop| {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(child.wait().unwrap().success());
    };
    // 1. The flushmany processes alone.
    let many = [
        process(
            &["flushmany", "--repeat", "0.05"],
            "many-0.jsonl",
            "many-0.log",
        ),
        process(
            &["flushmany", "--repeat", "0.05"],
            "many-1.jsonl",
            "many-1.log",
        ),
    ];
    write(plain.clone(), 0, 100).await;
    drained("flushmany").await;
    // 2. Everyone at once: auto-flush, flushmany and a relay (which polls: no LISTEN).
    let relay = process(&["relay", "--poll-max", "0.1"], "relay.jsonl", "relay.log");
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let bus = if w % 2 == 0 {
            bus.clone()
        } else {
            plain.clone()
        };
        writers.spawn(write(bus, 1000 + w * PER_WRITER, PER_WRITER));
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    drained("all at once").await;
    for child in many {
        stop(child);
    }
    // 3. The relay alone.
    write(plain.clone(), 100_000, 100).await;
    drained("the relay").await;
    stop(relay);
    bus.close(Duration::from_secs(10)).await;
    let total = (WRITERS * PER_WRITER + 200) * 2;
    let files: Vec<_> = [
        "autoflush.jsonl",
        "many-0.jsonl",
        "many-1.jsonl",
        "relay.jsonl",
    ]
    .iter()
    .map(|f| out(f))
    .collect();
    let got = delivered(&files.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(got.len() as u64, total, "every signal arrived");
    let by: Vec<usize> = files
        .iter()
        .map(|f| delivered(&[f.as_path()]).len())
        .collect();
    eprintln!(
        "{total} signals behind PgBouncer: auto-flush / flushmany / flushmany / relay sent {by:?}"
    );
    assert!(by[0] > 0, "auto-flush sent: {by:?}");
    assert!(
        by[1] + by[2] >= 200,
        "flushmany sent what it was alone with: {by:?}"
    );
    assert!(
        by[3] >= 200,
        "the relay sent what it was alone with: {by:?}"
    );
    // Nothing above may have leaned on a server session: PgBouncer's log would name it.
    let log = pooler.log();
    for error in [
        "does not exist",
        "already exists",
        "unnamed prepared statement",
    ] {
        assert!(!log.contains(error), "PgBouncer saw `{error}`:\n{log}");
    }
    for name in ["many-0.log", "many-1.log", "relay.log"] {
        let text = std::fs::read_to_string(out(name)).unwrap();
        assert!(!text.contains("prepared statement"), "{name}: {text}");
    }
    db.cleanup().await;
}
