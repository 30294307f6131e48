//! Fleet mode: one `signalbus relay` over a list of databases that changes while it runs.
//! A private PostgreSQL cluster with 200 tenant databases listed by a catalog query: every
//! signal written to random tenants is delivered once; tenants added to and removed from the
//! catalog are served and let go; ten tenants refused at the start, and ten more cut while it
//! runs, are served once they are back, without slowing the others. And on SQLite, a list
//! file read again on SIGHUP, with a database that cannot be reached on it.

use crate::{Scratch, signal, text};
use signalbus_testkit::postgres::PrivatePostgres;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const BULK: &str = "[[signal]]\nname = \"bulk\"\n";

/// How often each body reached the `file:` bus.
fn delivered(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, body) in crate::received(path) {
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

/// Wait until every body of `expected` was delivered (each exactly once, nothing else).
fn until_delivered(path: &Path, expected: &[String], limit: Duration, log: &Path) {
    let started = Instant::now();
    loop {
        let got = delivered(path);
        let missing: Vec<&String> = expected.iter().filter(|b| !got.contains_key(*b)).collect();
        if missing.is_empty() {
            let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "sent more than once: {twice:?}");
            assert_eq!(got.len(), expected.len(), "only what was written");
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} not delivered after {limit:?}, e.g. {:?}; relay log:\n{}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)],
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(log: &Path) -> String {
    let all = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn readyz(base: &str) -> (u16, String) {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Poll /readyz until `until` holds for its body.
async fn until_ready(base: &str, limit: Duration, until: impl Fn(u16, &str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(base).await;
        if until(status, &body) {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "/readyz after {limit:?}: {status}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exited_within(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tenants of a private cluster.
struct Cluster {
    pg: PrivatePostgres,
    admin: sqlx::PgPool,
}

impl Cluster {
    fn url(&self, db: &str) -> String {
        self.pg.url(self.pg.port, db)
    }

    async fn sql(&self, sql: String) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
            .unwrap();
    }

    /// Write `n` signals into tenant `t`: bodies `t{t}-{from}`...
    async fn write(&self, t: usize, from: usize, n: usize) -> Vec<String> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url(&format!("t{t}")))
            .await
            .unwrap();
        let bodies: Vec<String> = (from..from + n).map(|i| format!("t{t}-{i}")).collect();
        sqlx::query(
            "INSERT INTO bulk (topic, body) SELECT 'bulk', convert_to(b, 'UTF8') FROM unnest($1::text[]) AS b",
        )
        .bind(&bodies)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        bodies
    }

    /// Nobody can connect to tenant `t` until [`Cluster::allow`]; its sessions end.
    async fn refuse(&self, t: usize) {
        self.sql(format!(
            "ALTER DATABASE t{t} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 't{t}'"
        ))
        .await;
    }

    async fn allow(&self, t: usize) {
        self.sql(format!("ALTER DATABASE t{t} ALLOW_CONNECTIONS true"))
            .await;
    }

    async fn pending(&self, t: usize) -> i64 {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url(&format!("t{t}")))
            .await
            .unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM bulk")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_serves_two_hundred_tenants_that_come_go_and_fail() {
    const TENANTS: usize = 200;
    const ADDED: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let port = signalbus_testkit::nats::free_port();
    let data = dir.path().join("pg");
    // Each served tenant holds up to three connections (pool, listener, idle lock).
    let pg = tokio::task::spawn_blocking(move || {
        PrivatePostgres::start_with(&data, port, &["max_connections=1000", "fsync=off"])
    })
    .await
    .unwrap()
    .expect("a private PostgreSQL cluster (initdb: the postgresql package)");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url(port, "postgres"))
        .await
        .unwrap();
    let cluster = Cluster { pg, admin };
    let s = Scratch::new(BULK);
    cluster.sql("CREATE DATABASE tenant_template".into()).await;
    let out = s.run(&cluster.url("tenant_template"), &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for t in 0..TENANTS + ADDED {
        cluster
            .sql(format!("CREATE DATABASE t{t} TEMPLATE tenant_template"))
            .await;
    }
    // The catalog: a table of the tenants' URLs in the cluster's own database.
    cluster
        .sql(
            "CREATE TABLE tenants (url text PRIMARY KEY, active boolean NOT NULL DEFAULT true)"
                .into(),
        )
        .await;
    for t in 0..TENANTS {
        cluster
            .sql(format!(
                "INSERT INTO tenants (url) VALUES ('{}')",
                cluster.url(&format!("t{t}"))
            ))
            .await;
    }
    std::fs::write(
        s.path("signalbus.toml"),
        format!(
            "{BULK}\n[fleet]\ncatalog_url_env = \"TEST_CATALOG_URL\"\n\
             catalog_query = \"SELECT url FROM tenants WHERE active ORDER BY url\"\n\
             reload_every = 1\nready = \"90%\"\n"
        ),
    )
    .unwrap();
    let mut expected = Vec::new();
    // Ten tenants hold signals and refuse connections when the relay starts.
    let late: Vec<usize> = (190..200).collect();
    for &t in &late {
        expected.extend(cluster.write(t, 0, 5).await);
        cluster.refuse(t).await;
    }
    let listen = format!("127.0.0.1:{}", signalbus_testkit::nats::free_port());
    let base = format!("http://{listen}");
    let log = s.path("relay.log");
    let child = s
        .cmd("")
        .env_remove("DATABASE_URL")
        .env("TEST_CATALOG_URL", cluster.url("postgres"))
        .args([
            "relay",
            "--bus-url",
            &s.bus("out.jsonl"),
            "--listen",
            &listen,
        ])
        .args(["--database-retry-max", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = s.path("out.jsonl");
    let body = until_ready(&base, Duration::from_secs(120), |status, body| {
        status == 200 && body.contains("190 of 200 database(s) ready")
    })
    .await;
    assert!(
        body.contains(&format!("{}: database down", cluster.url("t190"))),
        "{body}"
    );

    // Traffic to random tenants among those up.
    let mut rng_state = 0x5eed_u64;
    let mut next = |n: usize| {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng_state >> 33) as usize) % n
    };
    let mut written: HashMap<usize, usize> = HashMap::new();
    for _ in 0..300 {
        let t = next(190);
        let from = *written.get(&t).unwrap_or(&100);
        expected.extend(cluster.write(t, from, 5).await);
        written.insert(t, from + 5);
    }
    // The ten come back: their signals go out too.
    for &t in &late {
        cluster.allow(t).await;
    }
    until_delivered(&out, &expected, Duration::from_secs(120), &log);

    // Ten tenants cut while the relay runs: the others go on; they are served once back.
    for t in 0..10 {
        cluster.refuse(t).await;
    }
    let body = until_ready(&base, Duration::from_secs(30), |status, body| {
        status == 200 && body.contains("190 of 200 database(s) ready")
    })
    .await;
    assert!(body.contains("policy 90%: ready"), "{body}");
    for t in 10..60 {
        expected.extend(cluster.write(t, 1000, 2).await);
    }
    until_delivered(&out, &expected, Duration::from_secs(60), &log);
    for t in 0..10 {
        cluster.allow(t).await;
        expected.extend(cluster.write(t, 2000, 3).await);
    }
    until_delivered(&out, &expected, Duration::from_secs(90), &log);

    // Tenants added to the catalog are served within seconds; those removed are let go.
    for t in TENANTS..TENANTS + ADDED {
        cluster
            .sql(format!(
                "INSERT INTO tenants (url) VALUES ('{}')",
                cluster.url(&format!("t{t}"))
            ))
            .await;
        expected.extend(cluster.write(t, 0, 4).await);
    }
    cluster
        .sql(format!(
            "UPDATE tenants SET active = false WHERE url IN ({})",
            (100..110)
                .map(|t| format!("'{}'", cluster.url(&format!("t{t}"))))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await;
    until_delivered(&out, &expected, Duration::from_secs(60), &log);
    let body = until_ready(&base, Duration::from_secs(30), |status, body| {
        status == 200 && body.contains("200 of 200 database(s) ready")
    })
    .await;
    assert!(
        !body.contains(&format!("{}:", cluster.url("t100"))),
        "{body}"
    );
    // A removed tenant's signals stay pending: nobody serves it now.
    cluster.write(100, 5000, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.pending(100).await,
        2,
        "a removed tenant is not served"
    );
    until_delivered(&out, &expected, Duration::from_secs(5), &log);

    signal(&child, "TERM");
    let status = exited_within(child, Duration::from_secs(30));
    assert!(status.success(), "{}", tail(&log));
    let log_text = std::fs::read_to_string(&log).unwrap();
    // The catalog was read every second while it changed: the changes may span reads.
    let (mut added, mut removed) = (0, 0);
    for line in log_text
        .lines()
        .filter(|l| l.contains("list of databases read again"))
    {
        let count = |what: &str| -> usize {
            let before = line.split(what).next().unwrap_or_default();
            before
                .rsplit(|c: char| !c.is_ascii_digit())
                .find(|w| !w.is_empty())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        added += count(" added");
        removed += count(" removed");
    }
    assert_eq!((added, removed), (ADDED, 10), "{}", tail(&log));
    cluster.admin.close().await;
}

#[tokio::test]
async fn a_list_file_is_read_again_on_sighup_and_a_database_down_is_not_fatal() {
    let s = Scratch::new(BULK);
    let urls: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("sqlite:{}", s.path(&format!("{n}.sqlite")).display()))
        .collect();
    let mut pools = Vec::new();
    for url in &urls {
        let out = s.cmd(url).args(["migrate"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        pools.push(crate::sqlite_pool(url).await);
    }
    // Nothing answers on port 1: never fatal, reported, retried.
    let down = "postgres://postgres:secret@127.0.0.1:1/nowhere";
    std::fs::write(
        s.path("tenants.txt"),
        format!("# tenants\n{}\n{}\n{down}\n", urls[0], urls[1]),
    )
    .unwrap();
    std::fs::write(
        s.path("signalbus.toml"),
        format!("{BULK}\n[fleet]\ndatabases_file = \"tenants.txt\"\nreload_every = 3600\n"),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", signalbus_testkit::nats::free_port());
    let base = format!("http://{listen}");
    let log = s.path("relay.log");
    let child = s
        .cmd("")
        .env_remove("DATABASE_URL")
        .args([
            "relay",
            "--bus-url",
            &s.bus("out.jsonl"),
            "--listen",
            &listen,
        ])
        .args(["--ready-policy", "any", "--poll-max", "0.2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let body = until_ready(&base, Duration::from_secs(30), |status, body| {
        status == 200 && body.contains("2 of 3 database(s) ready")
    })
    .await;
    assert!(
        body.contains("postgres://postgres:***@127.0.0.1:1/nowhere: database down (not relaying: cannot connect"),
        "{body}"
    );
    assert!(!body.contains("secret"), "{body}");
    let out = s.path("out.jsonl");
    crate::insert_sqlite(&pools[0], "bulk", &["a1"]).await;
    crate::insert_sqlite(&pools[2], "bulk", &["c1"]).await;
    until_delivered(&out, &["a1".to_owned()], Duration::from_secs(20), &log);
    let series_of_a = format!("bus=\"{}\"", urls[0]);
    assert!(metrics(&base).await.contains(&series_of_a));
    // c is not on the list yet; a SIGHUP after adding it (and dropping a) serves it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        delivered(&out).len(),
        1,
        "c is not served before it is listed"
    );
    std::fs::write(
        s.path("tenants.txt"),
        format!("{}\n{}\n{down}\n", urls[1], urls[2]),
    )
    .unwrap();
    signal(&child, "HUP");
    until_delivered(
        &out,
        &["a1".to_owned(), "c1".to_owned()],
        Duration::from_secs(20),
        &log,
    );
    until_ready(&base, Duration::from_secs(20), |_, body| {
        !body.contains(&format!("{}:", urls[0]))
    })
    .await;
    crate::insert_sqlite(&pools[0], "bulk", &["a2"]).await;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(delivered(&out).len(), 2, "a is let go");
    let text = metrics(&base).await;
    assert!(
        !text.contains(&series_of_a),
        "a's series are gone from /metrics:\n{text}"
    );
    assert!(text.contains(&format!("bus=\"{}\"", urls[2])), "{text}");
    signal(&child, "TERM");
    let status = exited_within(child, Duration::from_secs(20));
    assert!(status.success(), "{}", tail(&log));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("(SIGHUP): 1 added, 1 removed, 2 kept"),
        "{log_text}"
    );
    assert!(!log_text.contains("secret"), "{log_text}");
}
