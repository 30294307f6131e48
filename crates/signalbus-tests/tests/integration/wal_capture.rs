//! WAL capture (`relay --capture wal`, `RelayBuilder::capture_wal`) on a private PostgreSQL
//! cluster with `wal_level = logical`: rows written by plain SQL go out once each, every key
//! in commit order (a transaction that starts first and commits last goes after the ones
//! that committed before it), through RabbitMQ, NATS and Kafka; relays killed with SIGKILL
//! while a standby waits; the slot dropped by an administrator, PostgreSQL restarted, the
//! relay stopped for a while; and on the shared server (wal_level = replica) the relay
//! explains and sends from the tables.

use crate::bus_amqp::Amqp;
use crate::bus_kafka::Kafka;
use crate::bus_nats::Nats;
use crate::buses::{BusFixture, Route};
use crate::common::TestBackend;
use signalbus::{CaptureState, Relay, SignalBus, WalCapture};
use signalbus_testkit::postgres::PrivatePostgres;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An ordered, keyed signal type; the tests write its rows by plain SQL.
#[derive(Debug, Clone, serde::Serialize, signalbus::Signal)]
#[signal(
    name = "wal_event",
    table = "wal_event",
    autoflush = false,
    ordered = true,
    burst = 200,
    max_attempts = 1000,
    retry_base_ms = 50,
    retry_max_ms = 200
)]
struct WalEvent {
    #[signal(destination)]
    destination: String,
    #[signal(routing_key)]
    route: String,
    #[signal(key)]
    account: String,
    seq: u32,
}

/// A private cluster that can stream its WAL, with a database `sb`.
struct Cluster {
    pg: PrivatePostgres,
    _dir: tempfile::TempDir,
    url: String,
    pool: PgPool,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let port = signalbus_testkit::nats::free_port();
    let pg = PrivatePostgres::start_with(
        &dir.path().join("pg"),
        port,
        &[
            "wal_level=logical",
            "max_wal_senders=16",
            "max_replication_slots=16",
        ],
    )
    .unwrap();
    assert!(signalbus_testkit::process::wait_for_port(port, Duration::from_secs(30)).await);
    let admin = PgPool::connect(&pg.url(port, "postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE sb")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = pg.url(port, "sb");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect(&url)
        .await
        .unwrap();
    Cluster {
        pg,
        _dir: dir,
        url,
        pool,
    }
}

/// A bus of `WalEvent` on `pool`, migrated.
async fn wal_bus(pool: &PgPool, bus_url: &str) -> SignalBus<sqlx::Postgres> {
    let bus = SignalBus::builder(pool.clone())
        .publisher(signalbus::connect_bus(bus_url).await.unwrap())
        .register::<WalEvent>()
        .publish_timeout(Duration::from_secs(10))
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus
}

async fn capturing(bus: &SignalBus<sqlx::Postgres>, url: &str) -> Relay {
    let relay = bus
        .relay()
        .ordered(true)
        .capture_wal(
            WalCapture::from_url(url)
                .unwrap()
                .slot("sb_wal")
                .scan_every(Duration::from_millis(500)),
        )
        .start()
        .await
        .unwrap();
    until_state(&relay, |s| *s == CaptureState::Streaming, "streaming").await;
    relay
}

async fn until_state(relay: &Relay, want: impl Fn(&CaptureState) -> bool, what: &str) {
    let started = Instant::now();
    loop {
        let state = relay.capture().expect("the relay captures");
        if want(&state) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay's capture is {state:?}, not {what}, after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Insert one row of `account` with `seq` in the open transaction `conn`.
async fn insert(conn: &mut sqlx::PgConnection, route: &Route, account: &str, seq: u32) {
    let body = serde_json::json!({"destination": route.0, "route": route.1, "account": account, "seq": seq});
    sqlx::query(
        "INSERT INTO wal_event (topic, routing_key, body, content_type, ordering_key) \
         VALUES ($1, $2, $3, 'application/json', $4)",
    )
    .bind(&route.0)
    .bind(&route.1)
    .bind(body.to_string().into_bytes())
    .bind(account)
    .execute(conn)
    .await
    .unwrap();
}

const KEYS: usize = 200;
const WRITERS: usize = 16;

/// 16 writers, each transaction takes the next number of one of 200 keys (a row lock on the
/// key's counter: the key's transactions commit in number order) and writes its signal;
/// `per_writer` transactions each. Returns how many signals each key got.
async fn write_keyed(pool: &PgPool, route: &Route, per_writer: usize) -> HashMap<String, u32> {
    sqlx::query("CREATE TABLE IF NOT EXISTS counters (k TEXT PRIMARY KEY, n INT NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO counters SELECT 'a' || g, 0 FROM generate_series(0, $1) AS g ON CONFLICT DO NOTHING")
        .bind(i32::try_from(KEYS - 1).unwrap())
        .execute(pool)
        .await
        .unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (pool, route) = (pool.clone(), route.clone());
        writers.spawn(async move {
            for n in 0..per_writer {
                // Writers share keys, so a key's transactions interleave with others'.
                let account = format!("a{}", (n * 7 + w * 13) % KEYS);
                let mut tx = pool.begin().await.unwrap();
                let next: i32 =
                    sqlx::query_scalar("UPDATE counters SET n = n + 1 WHERE k = $1 RETURNING n")
                        .bind(&account)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                insert(&mut tx, &route, &account, u32::try_from(next - 1).unwrap()).await;
                tx.commit().await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let counts: Vec<(String, i32)> = sqlx::query_as("SELECT k, n FROM counters WHERE n > 0")
        .fetch_all(pool)
        .await
        .unwrap();
    counts
        .into_iter()
        .map(|(k, n)| (k, u32::try_from(n).unwrap()))
        .collect()
}

async fn active_pid(pool: &PgPool, slot: &str) -> Option<i32> {
    sqlx::query_scalar::<_, Option<i32>>(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .unwrap()
    .flatten()
}

/// Every key's numbers in order from 0 with none missing, counting re-sent ones (read again,
/// further, while duplicates hide the last ones); returns the duplicates.
async fn all_in_order<F: BusFixture>(
    fx: &F,
    route: &Route,
    expect: &HashMap<String, u32>,
) -> usize {
    let total = expect.values().sum::<u32>() as usize;
    let mut n = total;
    loop {
        let got = fx.received(route, n).await;
        let (next, duplicates) = crate::buses::key_order(&got);
        if &next == expect {
            return duplicates;
        }
        assert!(
            total + duplicates > n,
            "signals missing: {} of {total} arrived in order ({duplicates} duplicates)",
            next.values().sum::<u32>()
        );
        n = total + duplicates;
    }
}

async fn until_empty(pool: &PgPool, limit: Duration) {
    let started = Instant::now();
    loop {
        let n = <sqlx::Postgres as TestBackend>::count_rows(pool, "wal_event").await;
        if n == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{n} signals still pending after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Order by commit, per key, through a real broker.
async fn commit_order<F: BusFixture>(fx: F) {
    let c = cluster().await;
    let route = fx.ready();
    let bus = wal_bus(&c.pool, &fx.url()).await;
    let relay = capturing(&bus, &c.url).await;
    // A transaction that starts first and commits last: its signal has the lower id, and
    // goes out after the one that committed before it.
    let mut first = c.pool.begin().await.unwrap();
    insert(&mut first, &route, "late", 1).await;
    let mut second = c.pool.begin().await.unwrap();
    insert(&mut second, &route, "late", 0).await;
    second.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    let started = Instant::now();
    let mut expect = write_keyed(&c.pool, &route, 320).await;
    until_empty(&c.pool, Duration::from_secs(120)).await;
    let took = started.elapsed();
    expect.insert("late".into(), 2);
    let total = expect.values().sum::<u32>() as usize;
    let duplicates = all_in_order(&fx, &route, &expect).await;
    eprintln!(
        "WAL capture: {total} signals of 16 writers, 200 keys, in commit order in {took:?} \
         ({duplicates} duplicates)"
    );
    assert_eq!(
        duplicates, 0,
        "one streaming relay, nothing killed: no duplicates"
    );
    assert_eq!(relay.capture(), Some(CaptureState::Streaming));
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_commit_order_amqp() {
    commit_order(Amqp::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_commit_order_nats() {
    commit_order(Nats::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_commit_order_kafka() {
    commit_order(Kafka::new().await).await;
}

/// `signalbus relay --capture wal --ordered` processes: two at a time (one streams, one
/// stands by); the streaming one is killed with SIGKILL three times while writers write, a
/// new standby started each time. Nothing is lost, order holds, the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_relays_killed_standby_takes_over() {
    let fx = Nats::new().await;
    let c = cluster().await;
    let route = fx.ready();
    let bus = wal_bus(&c.pool, &fx.url()).await;
    drop(bus);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signalbus.toml");
    std::fs::write(
        &config,
        "[[signal]]\nname = \"wal_event\"\nordered = true\nburst = 200\n",
    )
    .unwrap();
    let spawn = |n: usize| {
        signalbus_testkit::process::KillOnDrop(
            std::process::Command::new(crate::relay_keyed_brokers::signalbus_binary())
                // Its log says when it streams: that is the one to kill.
                .env("RUST_LOG", "signalbus_core=info")
                .args(["--config", config.to_str().unwrap()])
                .args(["--database-url", &c.url, "--bus-url", &fx.url()])
                .args(["--publish-timeout", "10"])
                .args(["relay", "--capture", "wal", "--slot", "sb_group"])
                .args(["--capture-scan", "0.5"])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("relay-{n}.log"))).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    // Which live relay streams: the one whose log says so.
    let streaming = |relays: &[(usize, signalbus_testkit::process::KillOnDrop)]| {
        relays.iter().position(|(n, _)| {
            std::fs::read_to_string(dir.path().join(format!("relay-{n}.log")))
                .is_ok_and(|log| log.contains("WAL capture: streaming"))
        })
    };
    let mut relays = vec![(0, spawn(0)), (1, spawn(1))];
    let started = Instant::now();
    while active_pid(&c.pool, "sb_group").await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no relay streams after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writing = {
        let (pool, route) = (c.pool.clone(), route.clone());
        tokio::spawn(async move { write_keyed(&pool, &route, 250).await })
    };
    // Three times: the streaming relay killed mid-stream, a new standby started.
    let mut takeovers = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let walsender = active_pid(&c.pool, "sb_group").await;
        let asked = Instant::now();
        let victim = loop {
            if let Some(v) = streaming(&relays) {
                break v;
            }
            if asked.elapsed() > Duration::from_secs(20) {
                let logs: Vec<String> = relays
                    .iter()
                    .map(|(n, _)| {
                        std::fs::read_to_string(dir.path().join(format!("relay-{n}.log")))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!("no relay says it streams: {logs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (_, mut victim) = relays.remove(victim);
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        let killed = Instant::now();
        relays.push((2 + round, spawn(2 + round)));
        loop {
            let now = active_pid(&c.pool, "sb_group").await;
            if now.is_some() && now != walsender && streaming(&relays).is_some() {
                takeovers.push(killed.elapsed());
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no relay streams 30 s after the streaming one was killed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let expect = writing.await.unwrap();
    until_empty(&c.pool, Duration::from_secs(120)).await;
    let duplicates = all_in_order(&fx, &route, &expect).await;
    eprintln!(
        "WAL capture, relays killed 3 times: {} signals, {duplicates} duplicates; takeovers \
         after {takeovers:?}",
        expect.values().sum::<u32>()
    );
    assert_eq!(takeovers.len(), 3, "a standby took over each time");
    for t in &takeovers {
        assert!(
            *t < Duration::from_secs(5),
            "a standby took over after {t:?}"
        );
    }
    for (_, mut child) in relays {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let exit = child.wait().unwrap();
        assert!(exit.success(), "SIGTERM: {exit}");
    }
    fx.cleanup().await;
}

/// The relay stopped while signals are written, then started; PostgreSQL restarted under
/// it; the slot dropped by an administrator (the relay says so and goes on from the tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_stopped_restarted_and_slot_dropped() {
    let fx = Nats::new().await;
    let c = cluster().await;
    let route = fx.ready();
    let bus = wal_bus(&c.pool, &fx.url()).await;
    let mut written = 0u32;
    let write = |from: u32, n: u32| {
        let (pool, route) = (c.pool.clone(), route.clone());
        async move {
            for seq in from..from + n {
                let mut tx = pool.begin().await.unwrap();
                insert(&mut tx, &route, "k", seq).await;
                tx.commit().await.unwrap();
            }
        }
    };
    // Stopped for a while: what was written meanwhile goes out after the start.
    let relay = capturing(&bus, &c.url).await;
    write(written, 50).await;
    written += 50;
    until_empty(&c.pool, Duration::from_secs(30)).await;
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    write(written, 50).await;
    written += 50;
    let relay = capturing(&bus, &c.url).await;
    until_empty(&c.pool, Duration::from_secs(30)).await;
    // PostgreSQL restarted under the relay: it connects again and goes on streaming.
    c.pg.crash_restart().unwrap();
    write(written, 50).await;
    written += 50;
    until_empty(&c.pool, Duration::from_secs(60)).await;
    until_state(&relay, |s| *s == CaptureState::Streaming, "streaming again").await;
    // The slot dropped by an administrator (its walsender ended first, as it must be).
    let started = Instant::now();
    loop {
        sqlx::query("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'sb_wal' AND active_pid IS NOT NULL")
            .execute(&c.pool)
            .await
            .unwrap();
        let dropped = sqlx::query("SELECT pg_drop_replication_slot('sb_wal')")
            .execute(&c.pool)
            .await;
        if dropped.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cannot drop the slot: {dropped:?}"
        );
    }
    write(written, 50).await;
    written += 50;
    until_state(
        &relay,
        |s| matches!(s, CaptureState::TableMode(why) if why.contains("was dropped")),
        "table mode, saying the slot was dropped",
    )
    .await;
    until_empty(&c.pool, Duration::from_secs(30)).await;
    let expect = HashMap::from([("k".to_owned(), written)]);
    let duplicates = all_in_order(&fx, &route, &expect).await;
    eprintln!("WAL capture stopped, restarted, slot dropped: {duplicates} duplicates");
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    fx.cleanup().await;
}

/// PostgreSQL restarted (`pg_ctl restart -m fast`) while batches are in flight: each restart
/// finishes (within pg_ctl's 60 s), and everything goes out, in order. A server that shuts
/// down waits for its walsenders until their clients confirm the end of the WAL. A relay that
/// kept its stream open while the database refused it (its batch could not settle) never
/// confirmed, and the shutdown waited for ever (found by the fault harness); one busy for
/// long (an ordered key's rows through a slow bus, a pool waiting 30 s for a connection)
/// kept a shutdown waiting past pg_ctl's 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_lets_a_server_shut_down_with_batches_in_flight() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("signalbus_core::engine::capture=debug,pgwire_replication=info")
        .with_test_writer()
        .try_init();
    let fx = Nats::new().await;
    let c = cluster().await;
    let route = fx.ready();
    // A slow bus: most of the time a batch is on its way when the restart begins.
    let slow = signalbus_testkit::proxy::Proxy::start(([127, 0, 0, 1], 4222).into())
        .await
        .unwrap();
    slow.set_latency(Duration::from_millis(150));
    let url = fx.url().replace(":4222", &format!(":{}", slow.port()));
    let bus = wal_bus(&c.pool, &url).await;
    let relay = capturing(&bus, &c.url).await;
    until_state(&relay, |s| *s == CaptureState::Streaming, "streaming").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (pool, route, stop) = (c.pool.clone(), route.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Each number until it commits (the server may be restarting).
                let committed = async {
                    let body = serde_json::json!({"destination": route.0, "route": route.1, "account": "k", "seq": seq});
                    let mut tx = pool.begin().await.ok()?;
                    sqlx::query(
                        "INSERT INTO wal_event (topic, routing_key, body, content_type, ordering_key) \
                         VALUES ($1, $2, $3, 'application/json', 'k')",
                    )
                    .bind(&route.0)
                    .bind(&route.1)
                    .bind(body.to_string().into_bytes())
                    .execute(&mut *tx)
                    .await
                    .ok()?;
                    tx.commit().await.ok()
                };
                match tokio::time::timeout(Duration::from_secs(5), committed).await {
                    Ok(Some(())) => seq += 1,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seq
        })
    };
    // Three restarts, 2 s apart: after each the relay catches up from the table first (one
    // key's rows, a round trip each through the slow bus), the work that a restart soon
    // after used to wait for until pg_ctl gave up.
    let began = Instant::now();
    let mut took = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        let restarted = c.pg.restart_async().await;
        assert!(
            restarted.is_ok(),
            "PostgreSQL did not restart ({restarted:?}) after {:?}; restarts before took {took:?}",
            t.elapsed()
        );
        took.push(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    slow.set_latency(Duration::ZERO);
    until_empty(&c.pool, Duration::from_secs(60)).await;
    let expect = HashMap::from([("k".to_owned(), written)]);
    let duplicates = all_in_order(&fx, &route, &expect).await;
    eprintln!(
        "WAL capture through 3 restarts (they took {took:?}; all in {:?}): {written} signals, \
         {duplicates} duplicates",
        began.elapsed()
    );
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    fx.cleanup().await;
}

/// A refused signal holds back its key only: the key's first signal is refused (its route
/// has no stream yet) and its later ones would be taken; they wait, the other key's go out
/// meanwhile; once the broker takes the first, the held ones follow in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_a_refused_signal_holds_back_only_its_key() {
    let fx = Nats::new().await;
    let c = cluster().await;
    let (ready, later) = (fx.ready(), fx.later());
    let bus = wal_bus(&c.pool, &fx.url()).await;
    let relay = capturing(&bus, &c.url).await;
    for seq in 0..10 {
        let held_route = if seq == 0 { &later } else { &ready };
        for (route, account) in [(held_route, "held"), (&ready, "free")] {
            let mut tx = c.pool.begin().await.unwrap();
            insert(&mut tx, route, account, seq).await;
            tx.commit().await.unwrap();
        }
    }
    // The free key's signals leave the table; the held key's stay.
    let started = Instant::now();
    while <sqlx::Postgres as TestBackend>::count_rows(&c.pool, "wal_event").await > 10 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the free key's signals went out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let free = fx.received(&ready, 10).await;
    let accounts = |got: &[crate::buses::Received]| -> Vec<(String, u64)> {
        got.iter()
            .map(|m| {
                let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
                (
                    body["account"].as_str().unwrap().to_owned(),
                    body["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let want_free: Vec<(String, u64)> = (0..10).map(|n| ("free".to_owned(), n)).collect();
    assert_eq!(
        accounts(&free),
        want_free,
        "the other key goes on, in order"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = <sqlx::Postgres as TestBackend>::count_rows(&c.pool, "wal_event").await;
    assert_eq!(
        waiting, 10,
        "the refused key's signals all wait, the takeable ones too"
    );
    fx.open_later().await;
    until_empty(&c.pool, Duration::from_secs(60)).await;
    assert_eq!(
        accounts(&fx.received(&later, 1).await),
        vec![("held".to_owned(), 0)]
    );
    let all = accounts(&fx.received(&ready, 19).await);
    let want_held: Vec<(String, u64)> = (1..10).map(|n| ("held".to_owned(), n)).collect();
    assert_eq!(
        all[10..],
        want_held[..],
        "the held key's later signals, after its first"
    );
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    fx.cleanup().await;
}

/// A relay of other signal types given a slot that relays use already is refused with a
/// message (and sends from its tables), and leaves the others' publication alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_a_slot_of_other_tables_is_refused() {
    let c = cluster().await;
    let bus = wal_bus(&c.pool, "memory:").await;
    let relay = capturing(&bus, &c.url).await;
    let other = SignalBus::builder(c.pool.clone())
        .publisher(signalbus::connect_bus("memory:").await.unwrap())
        .register_type(signalbus::SignalType::new("other_event").autoflush(false))
        .autoflush(false)
        .build()
        .unwrap();
    other.migrate().await.unwrap();
    let intruder = other
        .relay()
        .capture_wal(WalCapture::from_url(&c.url).unwrap().slot("sb_wal"))
        .start()
        .await
        .unwrap();
    until_state(
        &intruder,
        |s| matches!(s, CaptureState::TableMode(why) if why.contains("covers other tables")),
        "table mode, saying the slot's publication covers other tables",
    )
    .await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'sb_wal'",
    )
    .fetch_all(&c.pool)
    .await
    .unwrap();
    assert_eq!(tables, vec!["wal_event".to_owned()]);
    assert_eq!(relay.capture(), Some(CaptureState::Streaming));
    assert!(intruder.shutdown(Duration::from_secs(10)).await);
    assert!(relay.shutdown(Duration::from_secs(10)).await);
}

/// On the shared server (wal_level = replica) the relay says why it cannot stream and sends
/// from the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_capture_on_a_server_without_logical_wal_falls_back() {
    let db = <sqlx::Postgres as TestBackend>::create(20).await;
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(
        level, "logical",
        "the shared PostgreSQL was expected with wal_level = replica"
    );
    let fx = Nats::new().await;
    let route = fx.ready();
    let bus = wal_bus(&db.pool, &fx.url()).await;
    let relay = bus
        .relay()
        .ordered(true)
        .capture_wal(WalCapture::from_url(&db.url).unwrap())
        .start()
        .await
        .unwrap();
    until_state(
        &relay,
        |s| matches!(s, CaptureState::TableMode(why) if why.contains("wal_level = logical")),
        "table mode, saying wal_level must be logical",
    )
    .await;
    let mut tx = db.pool.begin().await.unwrap();
    for seq in 0..20 {
        insert(&mut tx, &route, "k", seq).await;
    }
    tx.commit().await.unwrap();
    until_empty(&db.pool, Duration::from_secs(30)).await;
    all_in_order(&fx, &route, &HashMap::from([("k".to_owned(), 20)])).await;
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    fx.cleanup().await;
    db.cleanup().await;
}
