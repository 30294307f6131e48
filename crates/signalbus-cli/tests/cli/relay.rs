//! `signalbus relay` as a process: two relays split a backlog (each row once), one killed
//! with SIGKILL mid-drain loses nothing, SIGTERM exits 0 within the bound, one relay serves
//! two databases and one going down does not stop the other, `/metrics` and `/readyz` read
//! with a real HTTP client, and bad input is one clear line.

use crate::{Scratch, TWO_TYPES, received, signal, text};
use signalbus_testkit::database::TestDb;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const BULK: &str = "[[signal]]\nname = \"bulk\"\n";

/// A fresh PostgreSQL database (the test kit's), dropped by [`PgDb::drop`].
struct PgDb {
    db: TestDb<sqlx::Postgres>,
    /// The server's own database, to refuse and allow connections to this one.
    admin: sqlx::PgPool,
}

impl std::ops::Deref for PgDb {
    type Target = TestDb<sqlx::Postgres>;

    fn deref(&self) -> &Self::Target {
        &self.db
    }
}

impl PgDb {
    async fn new() -> Self {
        let db = TestDb::<sqlx::Postgres>::new(4).await;
        let admin = sqlx::PgPool::connect(db.server().expect("a server database"))
            .await
            .unwrap();
        PgDb { db, admin }
    }

    async fn fill(&self, table: &str, from: i64, to: i64) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (topic, body) SELECT 'bulk', convert_to(g::text, 'UTF8') \
             FROM generate_series({from}, {to}) AS g"
        )))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn until_empty(&self, table: &str, limit: Duration) {
        let started = Instant::now();
        loop {
            let n = self.count(table).await;
            if n == 0 {
                return;
            }
            assert!(started.elapsed() < limit, "{n} rows left after {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nobody, superusers included, can connect until [`PgDb::allow`]; open connections end.
    async fn refuse_connections(&self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap();
    }

    async fn allow_connections(&self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        )))
        .execute(&self.admin)
        .await
        .unwrap();
    }

    async fn drop(self) {
        self.admin.close().await;
        self.db.cleanup().await;
    }
}

/// The bodies a `file:` bus received, with how often each; a line cut short by a SIGKILL is
/// skipped.
fn bodies(paths: &[&Path]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for path in paths {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        for line in content.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                *counts
                    .entry(v["body"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    counts
}

fn relay(s: &Scratch, db_url: &str, out: &str, extra: &[&str]) -> Child {
    s.cmd(db_url)
        .args(["relay", "--bus-url", &s.bus(out)])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the child to exit, at most `limit`; its status and standard error.
fn exited_within(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn two_relays_split_a_backlog_and_a_killed_one_loses_nothing() {
    let db = PgDb::new().await;
    let s = Scratch::new(BULK);
    assert!(s.run(&db.url, &["migrate"]).status.success());
    let settings = [
        "--publish-timeout",
        "1",
        "--lease",
        "3",
        "--poll-max",
        "0.2",
    ];

    // Two relays on one backlog: each row sent once.
    db.fill("bulk", 1, 20_000).await;
    let a = relay(&s, &db.url, "a1.jsonl", &settings);
    let b = relay(&s, &db.url, "b1.jsonl", &settings);
    db.until_empty("bulk", Duration::from_secs(60)).await;
    let got = bodies(&[&s.path("a1.jsonl"), &s.path("b1.jsonl")]);
    assert_eq!(got.len(), 20_000, "every row sent");
    assert!(got.values().all(|&n| n == 1), "no row sent twice");
    let from_a = bodies(&[&s.path("a1.jsonl")]).len();
    println!("relay a sent {from_a}, relay b {}", 20_000 - from_a);

    // SIGTERM: both exit 0 within the bound.
    for child in [a, b] {
        signal(&child, "TERM");
        let (status, err) = exited_within(child, Duration::from_secs(10));
        assert!(status.success(), "{err}");
        assert!(err.contains("signalbus relay: stopped"), "{err}");
    }

    // One killed mid-drain: the other sends everything, the killed one's burst after its
    // lease expires.
    db.fill("bulk", 1, 50_000).await;
    let a = relay(&s, &db.url, "a2.jsonl", &settings);
    let b = relay(&s, &db.url, "b2.jsonl", &settings);
    let started = Instant::now();
    while bodies(&[&s.path("a2.jsonl")]).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay a never sent"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&a, "KILL");
    let (status, _) = exited_within(a, Duration::from_secs(5));
    assert!(!status.success());
    db.until_empty("bulk", Duration::from_secs(60)).await;
    let got = bodies(&[&s.path("a2.jsonl"), &s.path("b2.jsonl")]);
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!(
        "after SIGKILL: {} delivered, {duplicates} duplicates",
        got.len()
    );
    assert_eq!(got.len(), 50_000, "nothing lost");
    signal(&b, "TERM");
    let (status, err) = exited_within(b, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    db.drop().await;
}

#[tokio::test]
async fn one_relay_serves_two_databases_and_one_down_does_not_stop_the_other() {
    let (one, two) = (PgDb::new().await, PgDb::new().await);
    let s = Scratch::new(BULK);
    for db in [&one, &two] {
        assert!(s.run(&db.url, &["migrate"]).status.success());
    }
    let child = s
        .cmd(&one.url)
        .args(["--database-url", &one.url, "--database-url", &two.url])
        .args([
            "relay",
            "--bus-url",
            &s.bus("out.jsonl"),
            "--poll-max",
            "0.2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    one.fill("bulk", 1, 100).await;
    two.fill("bulk", 101, 200).await;
    one.until_empty("bulk", Duration::from_secs(20)).await;
    two.until_empty("bulk", Duration::from_secs(20)).await;

    // The first database goes away; the second keeps being served.
    one.refuse_connections().await;
    two.fill("bulk", 201, 300).await;
    two.until_empty("bulk", Duration::from_secs(20)).await;
    // And the first is served again once it is back.
    one.allow_connections().await;
    let mut one = one;
    one.db.pool = sqlx::PgPool::connect(&one.url).await.unwrap();
    one.fill("bulk", 301, 400).await;
    one.until_empty("bulk", Duration::from_secs(30)).await;
    let got = bodies(&[&s.path("out.jsonl")]);
    assert_eq!(got.len(), 400, "both databases delivered");
    signal(&child, "TERM");
    let (status, err) = exited_within(child, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(err.contains("relaying from 2 database(s)"), "{err}");
    one.drop().await;
    two.drop().await;
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the sample `name{labels…}` in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_move_and_health_answers() {
    let s = Scratch::new(BULK);
    let (url, pool) = s.migrated_sqlite().await;
    let port = signalbus_testkit::nats::free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = relay(
        &s,
        &url,
        "out.jsonl",
        &["--listen", &listen, "--stats-interval", "0.1"],
    );
    let base = format!("http://{listen}");
    let started = Instant::now();
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    // Not ready while its relay starts (the endpoints are served from the start).
    let (status, body) = loop {
        let (status, body) = get(&format!("{base}/readyz")).await;
        if status == 200 || started.elapsed() > Duration::from_secs(20) {
            break (status, body);
        }
        assert!(body.contains("not relaying yet: starting"), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("database ok, broker ok"), "{body}");
    crate::insert_sqlite(&pool, "bulk", &["1", "2", "3"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let (_, page) = get(&format!("{base}/metrics")).await;
        if sample(&page, "signalbus_signals_sent_total") == Some(3.0)
            && sample(&page, "signalbus_pending") == Some(0.0)
        {
            break page;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in [
        "signalbus_delivery_seconds_count",
        "signalbus_publish_seconds_count",
        "signalbus_oldest_pending_seconds",
        "signalbus_parked",
        "signalbus_backing_off",
    ] {
        assert!(sample(&page, name).is_some(), "{name} missing:\n{page}");
    }
    assert_eq!(sample(&page, "signalbus_delivery_seconds_count"), Some(3.0));
    signal(&child, "TERM");
    let (status, err) = exited_within(child, Duration::from_secs(10));
    assert!(status.success(), "{err}");
}

/// A `signalbus relay` on a SQLite database, sending to a private nats-server (that the
/// test may stop or freeze) and serving `/readyz`: its scratch directory and the server's
/// (kept alive by the caller), the server, the relay process and the `/readyz` URL.
async fn relay_on_a_private_nats() -> (
    Scratch,
    tempfile::TempDir,
    signalbus_testkit::nats::PrivateServer,
    Child,
    String,
) {
    let s = Scratch::new(BULK);
    let (url, _pool) = s.migrated_sqlite().await;
    let nats_port = signalbus_testkit::nats::free_port();
    let dir = tempfile::tempdir().unwrap();
    let nats = signalbus_testkit::nats::PrivateServer::start(nats_port, dir.path());
    nats.wait_ready().await;
    let listen = format!("127.0.0.1:{}", signalbus_testkit::nats::free_port());
    let child = s
        .cmd(&url)
        .args([
            "relay",
            "--bus-url",
            &format!("nats://127.0.0.1:{nats_port}"),
        ])
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (s, dir, nats, child, format!("http://{listen}/readyz"))
}

#[tokio::test]
async fn readyz_turns_unready_while_the_broker_is_down() {
    let (_s, _dir, nats, child, readyz) = relay_on_a_private_nats().await;
    let until = |want: u16| {
        let readyz = readyz.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(r) = reqwest::get(&readyz).await {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap();
                    if status == want {
                        return body;
                    }
                }
                assert!(Instant::now() < deadline, "/readyz never answered {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until(200).await;
    let (port, path) = nats.stop();
    let body = until(503).await;
    assert!(body.contains("broker unreachable"), "{body}");
    let nats = signalbus_testkit::nats::PrivateServer::start(port, &path);
    nats.wait_ready().await;
    until(200).await;
    signal(&child, "TERM");
    let (status, err) = exited_within(child, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    nats.stop();
}

/// A frozen broker (SIGSTOP: connections stay open, nothing answers) makes `/readyz` answer
/// 503 within a probe's usual bound, not hang; it is ready again once the broker runs.
#[tokio::test]
async fn readyz_answers_503_at_once_while_the_broker_is_frozen() {
    let (_s, _dir, nats, mut child, readyz) = relay_on_a_private_nats().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let ask = || async {
        let asked = Instant::now();
        let r = client.get(&readyz).send().await;
        let answer = match r {
            Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
            Err(_) => None,
        };
        (answer, asked.elapsed())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask().await.0.map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // This test's relay answered, not one that took its port first.
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    nats.freeze();
    let (answer, took) = ask().await;
    nats.thaw();
    let (status, body) = answer.expect("an answer, not a hang");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker unreachable"), "{body}");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask().await.0.map(|(status, _)| status) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready again after the broker thawed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, "TERM");
    let (status, err) = exited_within(child, Duration::from_secs(10));
    assert!(status.success(), "{err}");
    nats.stop();
}

#[tokio::test]
async fn bad_relay_input_is_one_clear_line_and_loses_nothing() {
    let s = Scratch::new(BULK);
    let (url, pool) = s.migrated_sqlite().await;
    crate::insert_sqlite(&pool, "bulk", &["1"]).await;
    let bus = s.bus("out.jsonl");
    let one_line = |out: &std::process::Output, code: i32, needle: &str| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        if code == 1 {
            let errors = err.lines().filter(|l| l.starts_with("error: ")).count();
            assert_eq!(errors, 1, "one error line: {err}");
        }
    };
    let out = s.run(&url, &["relay", "nope", "--bus-url", &bus]);
    one_line(&out, 1, "none of the given signal names is known");
    let out = s.run(&url, &["relay", "--bus-url", &bus, "--listen", "localhost"]);
    one_line(&out, 2, "--listen");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = s.run(&url, &["relay", "--bus-url", &bus, "--listen", &addr]);
    one_line(&out, 1, &format!("cannot listen on {addr}"));
    // A database that cannot be reached is not fatal (fleet.rs): the relay retries it.
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bulk")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "nothing sent, nothing lost");
    assert!(!s.path("out.jsonl").exists() || bodies(&[&s.path("out.jsonl")]).is_empty());
}

/// `flushordered` on PostgreSQL never says a bare "sent 0" while the gap-safe watermark holds
/// rows back: it says how many, and which transaction (pid, database, state, age) holds them;
/// the library says the same (`ordered_holdback`), and an ordered relay exports it.
#[tokio::test]
async fn flushordered_says_which_transaction_holds_signals_back() {
    let db = PgDb::new().await;
    let s = Scratch::new(TWO_TYPES);
    assert!(s.run(&db.url, &["migrate"]).status.success());
    // A transaction with an id, left open (as an idle-in-transaction session would be).
    let mut open = db.pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *open)
        .await
        .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    db.fill("alpha_signal", 1, 3).await;
    let out = s.run(
        &db.url,
        &["flushordered", "alpha", "--bus-url", &s.bus("out.jsonl")],
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sent 0 signal(s); 3 held back"), "{err}");
    // The oldest transaction on the whole server: ours, unless another test's began earlier.
    assert!(
        err.contains(&format!(
            "pid {pid} on database {} (idle in transaction",
            db.name
        )) || err.contains(" on database "),
        "names the transaction: {err}"
    );
    open.rollback().await.unwrap();
    // Once it ended they go (other tests' transactions on the shared server may hold them a
    // moment longer).
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(&s.path("out.jsonl")).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "not sent after the transaction ended"
        );
        let out = s.run(
            &db.url,
            &["flushordered", "alpha", "--bus-url", &s.bus("out.jsonl")],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    db.drop().await;
}
