//! A rolling deploy on one PostgreSQL database, through RabbitMQ, while writers commit keyed
//! signals: relay A is the previous release's `signalbus` (built by
//! scripts/previous-release.sh) with the old configuration (one signal type); this tree's
//! `signalbus migrate`, with the new configuration, adds a type's table while A runs; rows of
//! that table are left alone by A (not claimed, no attempt spent); relay B (this tree, new
//! configuration) starts beside A, they share the old type's backlog, then A is stopped
//! (SIGTERM, exit 0) and B goes on. Every signal of both types arrives exactly once, each key
//! in order, and A logs no failure.

use crate::bus_amqp::Amqp;
use crate::buses::BusFixture;
use crate::common::TestBackend;
use crate::relay_keyed_brokers::signalbus_binary;
use signalbus::SignalBus;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize, signalbus::Signal)]
#[signal(name = "rolling_old", table = "rolling_old", autoflush = false)]
struct OldEvent {
    #[signal(destination)]
    destination: String,
    #[signal(routing_key)]
    route: String,
    #[signal(key)]
    account: String,
    seq: u32,
}

#[derive(Debug, Clone, serde::Serialize, signalbus::Signal)]
#[signal(name = "rolling_new", table = "rolling_new", autoflush = false)]
struct NewEvent {
    #[signal(destination)]
    destination: String,
    #[signal(routing_key)]
    route: String,
    #[signal(key)]
    account: String,
    seq: u32,
}

const OLD: &str = "[[signal]]\nname = \"rolling_old\"\nordered = true\nburst = 20\n";
const NEW: &str = "[[signal]]\nname = \"rolling_new\"\nordered = true\nburst = 20\n";
const KEYS: u32 = 20;
const PER_KEY: u32 = 40;

/// The previous release's `signalbus`, which scripts/previous-release.sh (run by
/// scripts/test.sh) builds into `target/previous-release/`.
fn previous_release() -> PathBuf {
    let current = signalbus_binary();
    let bin = current
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("previous-release").join("signalbus"))
        .unwrap();
    assert!(
        bin.exists(),
        "the previous release's signalbus is not built at {}: run scripts/previous-release.sh \
         (scripts/test.sh does)",
        bin.display()
    );
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("+previous"),
        "{} is not the previous release's build",
        bin.display()
    );
    bin
}

fn signalbus(bin: &Path, config: &Path, url: &str, fx: &Amqp) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .envs(fx.process_env())
        .args(["--config", config.to_str().unwrap()])
        .args(["--database-url", url, "--bus-url", &fx.url()]);
    cmd
}

fn stop(child: &mut signalbus_testkit::process::KillOnDrop, log: &Path) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "{exit}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

async fn until_empty(pool: &sqlx::PgPool, table: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let n = <sqlx::Postgres as TestBackend>::count_rows(pool, table).await;
        if n == 0 {
            return;
        }
        assert!(started.elapsed() < limit, "{n} rows of {table} left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For each `seq` of `seqs`: one signal per key (`signal(key, seq)`) in one transaction, then
/// `pause`.
async fn write_keyed<S: signalbus::Signal>(
    bus: &SignalBus<sqlx::Postgres>,
    seqs: std::ops::Range<u32>,
    pause: Duration,
    signal: impl Fn(u32, u32) -> S,
) {
    for seq in seqs {
        let mut tx = bus.begin().await.unwrap();
        for k in 0..KEYS {
            tx.send(&signal(k, seq)).await.unwrap();
        }
        tx.commit().await.unwrap();
        tokio::time::sleep(pause).await;
    }
}

/// `signalbus migrate` with `bin` and `config`, asserted to succeed.
fn migrate(bin: &Path, config: &Path, url: &str, fx: &Amqp) {
    let out = signalbus(bin, config, url, fx)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_deploy_with_a_migration_between_loses_nothing_and_keeps_order() {
    let fx = Amqp::new().await;
    let route = fx.ready();
    let db = <sqlx::Postgres as TestBackend>::create(20).await;
    let dir = tempfile::tempdir().unwrap();
    let (old_config, new_config) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&old_config, OLD).unwrap();
    std::fs::write(&new_config, format!("{OLD}\n{NEW}")).unwrap();
    let log = |name: &str| dir.path().join(name);
    let (previous, current) = (previous_release(), signalbus_binary());
    // The database as the previous release set it up.
    migrate(&previous, &old_config, &db.url, &fx);
    let relay = |bin: &Path, config: &Path, name: &str| {
        signalbus_testkit::process::KillOnDrop(
            signalbus(bin, config, &db.url, &fx)
                .args(["relay", "--poll-max", "0.2", "--shutdown-timeout", "20"])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(log(name)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let mut a = relay(&previous, &old_config, "a.log");
    let writers = SignalBus::builder(db.pool.clone())
        .publisher(fx.publisher().await)
        .register::<OldEvent>()
        .register::<NewEvent>()
        .autoflush(false)
        .build()
        .unwrap();
    let write_old = {
        let (bus, route) = (writers.clone(), route.clone());
        tokio::spawn(async move {
            let old_event = |k, seq| OldEvent {
                destination: route.0.clone(),
                route: route.1.clone(),
                account: format!("old{k}"),
                seq,
            };
            write_keyed(&bus, 0..PER_KEY, Duration::from_millis(60), old_event).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The new release's migration, while the old relay runs.
    migrate(&current, &new_config, &db.url, &fx);
    // Rows of a table the old relay does not know: left alone, no attempt spent.
    let new_event = |k, seq| NewEvent {
        destination: route.0.clone(),
        route: route.1.clone(),
        account: format!("new{k}"),
        seq,
    };
    write_keyed(&writers, 0..5, Duration::ZERO, &new_event).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let untouched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rolling_new WHERE attempts = 0 AND claim IS NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        i64::from(5 * KEYS),
        untouched,
        "the old relay leaves the new table alone"
    );
    // The new relay beside the old one; then the old one is stopped.
    let mut b = relay(&current, &new_config, "b.log");
    write_keyed(&writers, 5..PER_KEY, Duration::ZERO, &new_event).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop(&mut a, &log("a.log"));
    write_old.await.unwrap();
    until_empty(&db.pool, "rolling_old", Duration::from_secs(60)).await;
    until_empty(&db.pool, "rolling_new", Duration::from_secs(60)).await;
    stop(&mut b, &log("b.log"));
    let total = (2 * KEYS * PER_KEY) as usize;
    let got = fx.received(&route, total).await;
    let (next, duplicates) = crate::buses::key_order(&got);
    assert_eq!(duplicates, 0, "nothing sent twice");
    assert_eq!(got.len(), total, "everything arrived");
    assert_eq!(next.len(), 2 * KEYS as usize);
    assert!(
        next.values().all(|&n| n == PER_KEY),
        "every key complete, in order"
    );
    let a_log = std::fs::read_to_string(log("a.log")).unwrap();
    assert!(
        !a_log.contains("cannot send"),
        "the old relay failed: {a_log}"
    );
    fx.cleanup().await;
    db.cleanup().await;
}
