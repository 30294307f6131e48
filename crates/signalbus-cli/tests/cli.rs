//! The `signalbus` binary, run as a process against real databases: output, names, exit
//! codes, errors, `--repeat` with SIGTERM, and concurrent `flushmany` processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_signalbus");

/// A scratch directory with a configuration file and a SQLite database.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("signalbus.toml"), config).unwrap();
        Scratch { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn sqlite_url(&self) -> String {
        format!("sqlite:{}", self.path("db.sqlite").display())
    }
    fn bus(&self, name: &str) -> String {
        format!("file:{}", self.path(name).display())
    }
    /// `signalbus` with this directory's config and database and a clean environment.
    fn cmd(&self, db_url: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("DATABASE_URL")
            .env_remove("SIGNALBUS_BUS_URL")
            .env_remove("RUST_LOG")
            .env("SIGNALBUS_CONFIG", self.path("signalbus.toml"))
            .env("DATABASE_URL", db_url);
        cmd
    }
    fn run(&self, db_url: &str, args: &[&str]) -> Output {
        self.cmd(db_url).args(args).output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The messages a `file:` bus received: (signal, body) per line.
fn received(path: &Path) -> Vec<(String, String)> {
    let Ok(content) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    content
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["signal"].as_str().unwrap().to_owned(),
                v["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const TWO_TYPES: &str = r#"
[[signal]]
name = "alpha"
table = "alpha_signal"
burst = 2

[[signal]]
name = "beta"
"#;

async fn sqlite_pool(url: &str) -> sqlx::SqlitePool {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    sqlx::SqlitePool::connect_with(options.busy_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
}

/// Writes rows the way a service in another language would: plain INSERTs of the contract.
async fn insert_sqlite(pool: &sqlx::SqlitePool, table: &str, bodies: &[&str]) {
    for body in bodies {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (topic, routing_key, headers, body) VALUES ('t', 'k', '{{\"h\":\"v\"}}', ?)"
        )))
        .bind(body.as_bytes())
        .execute(pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn signals_pending_and_migrate_output() {
    let s = Scratch::new(TWO_TYPES);
    let url = s.sqlite_url();
    let out = s.run(&url, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pool = sqlite_pool(&url).await;
    insert_sqlite(&pool, "alpha_signal", &["1", "2", "3"]).await;

    // Listing needs no database at all.
    let out = s
        .cmd(&url)
        .env_remove("DATABASE_URL")
        .arg("signals")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("alpha\ttable=alpha_signal burst=2"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("beta\ttable=beta "), "{lines:?}");

    let out = s.run(&url, &["pending"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["alpha", "3"], "{stdout}");
    assert_eq!(rows[1], ["beta", "0"], "{stdout}");
    assert_eq!(rows[2][..2], ["total", "3"], "{stdout}");
    assert_eq!(rows[2][2], "oldest", "{stdout}");

    let out = s.run(&url, &["pending", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 3);
    assert_eq!(json["signals"][0]["name"], "alpha");
    assert_eq!(json["signals"][0]["pending"], 3);
    assert!(json["oldest_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(json["signals"][1]["oldest_age_seconds"].is_null());

    let out = s.run(&url, &["pending", "beta", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 0);
    assert_eq!(json["signals"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn names_exclude_unknown_and_exit_codes() {
    let s = Scratch::new(TWO_TYPES);
    let url = s.sqlite_url();
    assert!(s.run(&url, &["migrate"]).status.success());
    let pool = sqlite_pool(&url).await;
    insert_sqlite(&pool, "alpha_signal", &["a1", "a2", "a3"]).await;
    insert_sqlite(&pool, "beta", &["b1"]).await;
    let bus = s.bus("out.jsonl");

    // Only the named type.
    let out = s.run(&url, &["flushmany", "alpha", "--bus-url", &bus]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("flushmany: sent 3 signal(s)"),
        "{}",
        text(&out.stderr)
    );
    let got = received(&s.path("out.jsonl"));
    assert_eq!(
        got.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["a1", "a2", "a3"]
    );
    assert!(got.iter().all(|(sig, _)| sig == "alpha"));

    // An unknown name next to a known one: a warning naming it, the known one is flushed.
    insert_sqlite(&pool, "alpha_signal", &["a4"]).await;
    let out = s.run(
        &url,
        &[
            "flush",
            "-w",
            "0",
            "alpha",
            "nope",
            "-e",
            "beta",
            "--bus-url",
            &bus,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unknown signal name `nope`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(received(&s.path("out.jsonl")).len(), 4, "beta excluded");

    // Only unknown names, or everything excluded: nothing to do, non-zero.
    let out = s.run(&url, &["flushordered", "nope", "--bus-url", &bus]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown signal name `nope`"));
    assert!(text(&out.stderr).contains("none of the given signal names is known"));
    let out = s.run(
        &url,
        &[
            "flushmany",
            "-e",
            "alpha",
            "--exclude",
            "beta",
            "--bus-url",
            &bus,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("every signal type is excluded"));

    // All types, excluding one; then the rest.
    let out = s.run(&url, &["flushordered", "--bus-url", &bus]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("sent 1 signal(s)"));
    let got = received(&s.path("out.jsonl"));
    assert_eq!(got.last().unwrap(), &("beta".to_owned(), "b1".to_owned()));
    let out = s.run(&url, &["pending", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 0);

    // A usage error is exit status 2 (clap).
    assert_eq!(
        s.run(&url, &["flush", "--wait", "soon"]).status.code(),
        Some(2)
    );
}

#[tokio::test]
async fn failures_are_one_clear_line_without_credentials() {
    let s = Scratch::new(TWO_TYPES);
    let url = s.sqlite_url();
    let fail = |out: Output, expect: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(expect), "expected `{expect}` in: {err}");
        err
    };

    let out = Command::new(BIN)
        .env_remove("SIGNALBUS_CONFIG")
        .env("DATABASE_URL", &url)
        .arg("pending")
        .output()
        .unwrap();
    fail(out, "no configuration file");
    let out = s
        .cmd(&url)
        .args(["--config", "/nonexistent/x.toml", "pending"])
        .output()
        .unwrap();
    fail(
        out,
        "cannot read the configuration file `/nonexistent/x.toml`",
    );
    std::fs::write(s.path("bad.toml"), "[[signal]]\nnmae = \"x\"\n").unwrap();
    let bad = s.path("bad.toml");
    let out = s
        .cmd(&url)
        .args(["--config", bad.to_str().unwrap(), "pending"])
        .output()
        .unwrap();
    fail(out, "not a valid signalbus configuration");

    let err = fail(
        s.run("redis://bob:s3cret@h/0", &["pending"]),
        "unsupported database URL",
    );
    assert!(!err.contains("s3cret"), "{err}");
    let err = fail(
        s.run("postgres://bob:s3cret@127.0.0.1:1/db", &["pending"]),
        "cannot connect to the database at `postgres://bob:***@127.0.0.1:1/db`",
    );
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A declared table that does not exist (not migrated): named, with the fix. (An empty
    // file is an empty SQLite database.)
    std::fs::File::create(s.path("db.sqlite")).unwrap();
    let out = s.run(
        &format!("{url}?mode=rwc"),
        &["flushmany", "--bus-url", "stdout:"],
    );
    let err = fail(out, "signal `alpha`: cannot read its table `alpha_signal`");
    assert!(err.contains("signalbus migrate"), "{err}");
    assert!(!err.contains("caused by"), "{err}");
    let out = s.run(&url, &["-v", "pending"]);
    let err = fail(out, "cannot read its table");
    assert!(
        err.contains("caused by") && err.contains("no such table"),
        "{err}"
    );

    assert!(s.run(&url, &["migrate"]).status.success());
    fail(s.run(&url, &["flushmany"]), "no bus");
    let out = s
        .cmd(&url)
        .env_remove("DATABASE_URL")
        .arg("pending")
        .output()
        .unwrap();
    fail(out, "no database");
    let err = fail(
        s.run(
            &url,
            &["flushmany", "--bus-url", "carrier-pigeon://u:hunter2@coop"],
        ),
        "cannot connect to the bus",
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn repeat_keeps_flushing_and_stops_cleanly_on_sigterm() {
    let s = Scratch::new(TWO_TYPES);
    let url = s.sqlite_url();
    assert!(s.run(&url, &["migrate"]).status.success());
    let pool = sqlite_pool(&url).await;
    let mut child = s
        .cmd(&url)
        .args([
            "flushmany",
            "--repeat",
            "0.1",
            "--bus-url",
            &s.bus("out.jsonl"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = s.path("out.jsonl");
    // Rows written while it runs are picked up by later rounds.
    for round in 0..3 {
        let body = format!("r{round}");
        insert_sqlite(&pool, "beta", &[&body]).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !received(&out).iter().any(|(_, b)| *b == body) {
            assert!(Instant::now() < deadline, "round {round} not flushed");
            assert!(child.try_wait().unwrap().is_none(), "exited early");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ends --repeat with status 0"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("stopping after the current burst"),
        "{stderr}"
    );
    assert_eq!(received(&out).len(), 3);
}

// ---- several `signalbus flushmany` processes on one backlog ----

const BULK: &str = "[[signal]]\nname = \"bulk\"\n";

/// Runs `processes` flushmany processes at once; checks that bodies 1..=rows arrived exactly
/// once in total.
fn drain_with_processes(s: &Scratch, db_url: &str, rows: usize, processes: usize) {
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            s.cmd(db_url)
                .args(["flushmany", "--bus-url", &s.bus(&format!("out{p}.jsonl"))])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut per_process = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        per_process.push(
            text(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in 0..processes {
        for (_, body) in received(&s.path(&format!("out{p}.jsonl"))) {
            *counts.entry(body).or_default() += 1;
        }
    }
    let duplicates = counts.values().filter(|&&n| n > 1).count();
    println!(
        "{processes} processes drained {rows} rows in {:.1?}: {per_process:?}",
        started.elapsed()
    );
    assert_eq!(duplicates, 0, "no row sent twice");
    assert_eq!(counts.len(), rows, "every row sent");
    assert!((1..=rows).all(|n| counts.contains_key(&n.to_string())));
}

fn server(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn with_database(server: &str, db: &str) -> String {
    let mut url = url::Url::parse(server).unwrap();
    url.set_path(db);
    url.to_string()
}

#[tokio::test]
async fn four_flushmany_processes_drain_100k_postgres() {
    let server = server(
        "SIGNALBUS_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let name = format!("sbtest_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&server)
        .await
        .expect("PostgreSQL is up");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let s = Scratch::new(BULK);
    assert!(s.run(&url, &["migrate"]).status.success());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO bulk (topic, body) SELECT 'bulk', convert_to(g::text, 'UTF8') \
         FROM generate_series(1, 100000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    drain_with_processes(&s, &url, 100_000, 4);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM bulk")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "table empty");
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn four_flushmany_processes_drain_100k_mariadb() {
    let server = server(
        "SIGNALBUS_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    );
    let name = format!("sbtest_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::MySqlPool::connect(&server)
        .await
        .expect("MariaDB is up");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let s = Scratch::new(BULK);
    assert!(s.run(&url, &["migrate"]).status.success());
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO bulk (topic, body) SELECT 'bulk', CAST(seq AS CHAR) FROM seq_1_to_100000",
    )
    .execute(&pool)
    .await
    .unwrap();
    drain_with_processes(&s, &url, 100_000, 4);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bulk")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "table empty");
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
}

/// SQLite has no SKIP LOCKED: flushers take the single write lock in turn (BEGIN IMMEDIATE),
/// which is just as exact.
#[tokio::test]
async fn four_flushmany_processes_drain_20k_sqlite() {
    let s = Scratch::new(BULK);
    let url = s.sqlite_url();
    assert!(s.run(&url, &["migrate"]).status.success());
    let pool = sqlite_pool(&url).await;
    sqlx::query(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000) \
         INSERT INTO bulk (topic, body) SELECT 'bulk', CAST(CAST(n AS TEXT) AS BLOB) FROM g",
    )
    .execute(&pool)
    .await
    .unwrap();
    drain_with_processes(&s, &url, 20_000, 4);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bulk")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
