//! `fleet`: one `signalbus relay` process over N tenant databases (a private PostgreSQL
//! cluster of the test kit's, so that hundreds of databases and their connections touch no
//! shared server), publishing to NATS JetStream.
//!
//! For each N of `--tenants` (10, 100, 200 by default), in one run:
//! * `idle`: the relay's resident memory, its connections to the tenants (pg_stat_activity)
//!   and its CPU while every tenant is idle; `rss_kib_per_added_tenant` compares with the
//!   previous N;
//! * `backlog`: tenant `t0` drains `--backlog` pending signals while tenant `t1` commits one
//!   signal per transaction at `--rate`: the quiet tenant's commit-to-receipt latency (a
//!   subscriber on the quiet subject stamps each message as it arrives), the backlog's drain
//!   rate, and the relay's CPU per message.
//!
//! The `signalbus` binary must be built beside this one (`cargo build --release -p
//! signalbus-cli -p signalbus-bench`).

use crate::stats::{Latencies, emit, round2};
use futures_util::StreamExt as _;
use signalbus_testkit::nats::free_port;
use signalbus_testkit::postgres::PrivatePostgres;
use sqlx::Connection as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Tenant databases, one run per count (comma-separated, ascending).
    #[arg(long, value_delimiter = ',', default_value = "10,100,200")]
    tenants: Vec<usize>,
    /// Pending signals of the busy tenant (0: skip the backlog phase).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: usize,
    /// Signals per second the quiet tenant commits while the backlog drains.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Longest seconds the quiet tenant writes while the backlog drains.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Seconds the relay idles before memory, connections and CPU are sampled.
    #[arg(long, default_value_t = 15)]
    idle_seconds: u64,
    /// NATS with JetStream (the relay's bus; the stream `SIGNALBUS_BENCH_FLEET` is made).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Bursts in flight at once across the tenants (`--bursts-at-once` of the relay).
    #[arg(long, default_value_t = 16)]
    bursts_at_once: usize,
    /// The relay's `--poll-max` (seconds): how often an idle lane looks anyway.
    #[arg(long, default_value = "1")]
    poll_max: String,
}

const CONFIG: &str = "[[signal]]\nname = \"bench_fleet\"\nburst = 1000\n";

/// The `signalbus` binary of this build (beside this one).
fn signalbus_binary() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("signalbus");
    if !bin.exists() {
        return Err(format!(
            "the signalbus binary is not built at {}: cargo build --release -p signalbus-cli -p signalbus-bench",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// The relay process' CPU seconds and resident KiB ([`crate::relay`]'s readings of /proc).
fn cpu_seconds(pid: u32) -> f64 {
    crate::relay::process_cpu_seconds(&pid.to_string())
}

fn rss_kib(pid: u32) -> f64 {
    crate::relay::rss_kib(&pid.to_string())
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let bin = signalbus_binary()?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let data = dir.path().join("pg");
    let pg = tokio::task::spawn_blocking(move || {
        PrivatePostgres::start_with(
            &data,
            port,
            &[
                "max_connections=1500",
                "fsync=off",
                "synchronous_commit=off",
                "shared_buffers=256MB",
                "max_wal_size=8GB",
                "checkpoint_timeout=30min",
            ],
        )
    })
    .await??;
    let url = |db: &str| pg.url(port, db);
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url("postgres"))
        .await?;
    let sql = |text: String| {
        let admin = admin.clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                .execute(&admin)
                .await
                .map(drop)
        }
    };
    sql("CREATE DATABASE tenant_template".into()).await?;
    std::fs::write(dir.path().join("signalbus.toml"), CONFIG)?;
    let migrated = std::process::Command::new(&bin)
        .env("SIGNALBUS_CONFIG", dir.path().join("signalbus.toml"))
        .args(["--database-url", &url("tenant_template"), "migrate"])
        .output()?;
    if !migrated.status.success() {
        return Err(String::from_utf8_lossy(&migrated.stderr)
            .into_owned()
            .into());
    }
    let nats = async_nats::connect(args.nats.trim_start_matches("nats://")).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let _ = js.delete_stream("SIGNALBUS_BENCH_FLEET").await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SIGNALBUS_BENCH_FLEET".into(),
        subjects: vec!["bench.fleet.>".into()],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        // A stream that keeps a million messages in memory stalls the server for 0.2-0.4 s
        // while its index grows past about 0.8 million, then past 1.6 million (measured:
        // every quiet message of that moment waits): the bench measures the relay, so the
        // stream keeps the newest 100,000.
        max_messages: 100_000,
        max_bytes: 1024 * 1024 * 1024,
        discard: async_nats::jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await?;
    let mut created = 0;
    let mut previous: Option<(usize, f64)> = None;
    for &n in &args.tenants {
        while created < n {
            sql(format!(
                "CREATE DATABASE t{created} TEMPLATE tenant_template"
            ))
            .await?;
            created += 1;
        }
        let list: String = (0..n).map(|t| url(&format!("t{t}")) + "\n").collect();
        std::fs::write(dir.path().join("tenants.txt"), list)?;
        std::fs::write(
            dir.path().join("signalbus.toml"),
            format!("{CONFIG}\n[fleet]\ndatabases_file = \"tenants.txt\"\n"),
        )?;
        let listen = format!("127.0.0.1:{}", free_port());
        let mut relay = tokio::process::Command::new(&bin)
            .env("SIGNALBUS_CONFIG", dir.path().join("signalbus.toml"))
            .env_remove("DATABASE_URL")
            .args(["--bus-url", &args.nats, "relay", "--listen", &listen])
            .args(["--bursts-at-once", &args.bursts_at_once.to_string()])
            .args(["--poll-max", &args.poll_max])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(
                dir.path().join(format!("relay-{n}.log")),
            )?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = relay.id().ok_or("the relay exited at once")?;
        let started = Instant::now();
        loop {
            let ready = reqwest::get(format!("http://{listen}/readyz")).await;
            if let Ok(r) = ready
                && r.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!("the relay over {n} tenants never became ready").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ready_s = started.elapsed().as_secs_f64();
        // Idle: what the tenants cost while nothing happens.
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        let cpu = cpu_seconds(pid);
        let window = Duration::from_secs(10);
        tokio::time::sleep(window).await;
        let idle_cpu = (cpu_seconds(pid) - cpu) / window.as_secs_f64();
        let rss = rss_kib(pid);
        let connections: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 't%' AND backend_type = 'client backend'",
        )
        .fetch_one(&admin)
        .await?;
        #[allow(clippy::cast_precision_loss)]
        let per_added = previous.map(|(m, r)| round2((rss - r) / (n - m) as f64));
        emit(serde_json::json!({
            "bench": "fleet",
            "mode": "idle",
            "database": "PostgreSQL",
            "tenants": n,
            "poll_max_s": args.poll_max,
            "ready_s": round2(ready_s),
            "relay_rss_mib": round2(rss / 1024.0),
            "rss_kib_per_added_tenant": per_added,
            "connections": connections,
            "connections_per_tenant": round2(connections as f64 / n as f64),
            "idle_cpu_percent": round2(idle_cpu * 100.0),
        }));
        previous = Some((n, rss));
        if args.backlog > 0 && n >= 2 {
            backlog(&args, &url, &nats, pid, n).await?;
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), relay.wait()).await;
    }
    admin.close().await;
    drop(pg);
    Ok(())
}

/// Tenant t0 drains `--backlog` signals while t1 commits at `--rate`.
async fn backlog(
    args: &Args,
    url: &impl Fn(&str) -> String,
    nats: &async_nats::Client,
    pid: u32,
    tenants: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut busy = sqlx::PgConnection::connect(&url("t0")).await?;
    let mut quiet = sqlx::PgConnection::connect(&url("t1")).await?;
    // Receipts of the quiet tenant's messages, by body.
    let receipts: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut subscriber = nats.subscribe("bench.fleet.quiet").await?;
    let stamped = receipts.clone();
    let listener = tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let at = Instant::now();
            let body = String::from_utf8_lossy(&message.payload).into_owned();
            stamped.lock().unwrap().insert(body, at);
        }
    });
    let cpu = cpu_seconds(pid);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO bench_fleet (topic, body) SELECT 'bench.fleet.backlog', \
         convert_to(g::text, 'UTF8') FROM generate_series(1, {}) AS g",
        args.backlog
    )))
    .execute(&mut busy)
    .await?;
    let drain_started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut commits: Vec<(String, Instant)> = Vec::new();
    let mut drained: Option<f64> = None;
    let mut next = tokio::time::Instant::now();
    let mut i = 0u64;
    while drain_started.elapsed() < Duration::from_secs(args.seconds) {
        let body = format!("q{i}");
        sqlx::query("INSERT INTO bench_fleet (topic, body) VALUES ('bench.fleet.quiet', convert_to($1, 'UTF8'))")
            .bind(&body)
            .execute(&mut quiet)
            .await?;
        commits.push((body, Instant::now()));
        i += 1;
        // Every 2 s, a look at the backlog's first row by its index (a count would scan the
        // table and load the box the relay shares).
        if i.is_multiple_of(2 * u64::from(args.rate.max(1))) {
            let first: Option<i64> =
                sqlx::query_scalar("SELECT id FROM bench_fleet ORDER BY id LIMIT 1")
                    .fetch_optional(&mut busy)
                    .await?;
            if first.is_none() {
                drained = Some(drain_started.elapsed().as_secs_f64());
                break;
            }
        }
        next += every;
        tokio::time::sleep_until(next).await;
    }
    let cpu_used = cpu_seconds(pid) - cpu;
    // The last quiet messages: give them a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    listener.abort();
    let receipts = receipts.lock().unwrap().clone();
    let mut latencies = Latencies::default();
    let mut lost = 0;
    // When the slow ones came (seconds into the drain, and their latency): where a tail is.
    let mut slow = Vec::new();
    for (body, committed) in &commits {
        match receipts.get(body) {
            Some(at) => {
                let latency = at.saturating_duration_since(*committed);
                if latency > Duration::from_millis(50) {
                    slow.push((
                        round2(committed.duration_since(drain_started).as_secs_f64()),
                        round2(latency.as_secs_f64() * 1000.0),
                    ));
                }
                latencies.push(latency);
            }
            None => lost += 1,
        }
    }
    slow.truncate(30);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_fleet")
        .fetch_one(&mut busy)
        .await?;
    let left = usize::try_from(left).unwrap_or(0);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let sent = args.backlog.saturating_sub(left) as f64 + latencies.len() as f64;
    let secs = drained.unwrap_or_else(|| drain_started.elapsed().as_secs_f64());
    emit(serde_json::json!({
        "bench": "fleet",
        "mode": "backlog",
        "database": "PostgreSQL",
        "bus": "NATS JetStream",
        "tenants": tenants,
        "backlog": args.backlog,
        "drained_s": drained.map(round2),
        "backlog_left": left,
        "drain_per_s": round2(sent / secs),
        "quiet_rate": args.rate,
        "quiet_signals": commits.len(),
        "quiet_not_received": lost,
        "quiet_p50_ms": round2(latencies.percentile_ms(50.0)),
        "quiet_p99_ms": round2(latencies.percentile_ms(99.0)),
        "quiet_max_ms": round2(latencies.percentile_ms(100.0)),
        "relay_cpu_us_per_msg": round2(cpu_used / sent.max(1.0) * 1e6),
        "quiet_over_50ms_at_s_ms": slow,
    }));
    // The next run starts from empty tables.
    sqlx::raw_sql("DELETE FROM bench_fleet")
        .execute(&mut busy)
        .await?;
    sqlx::raw_sql("DELETE FROM bench_fleet")
        .execute(&mut quiet)
        .await?;
    Ok(())
}
