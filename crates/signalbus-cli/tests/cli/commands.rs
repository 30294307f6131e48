//! Output, names, exit codes, errors and `--repeat` of the binary.

use crate::{BIN, Scratch, TWO_TYPES, insert_sqlite, received, text};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn signals_pending_and_migrate_output() {
    let s = Scratch::new(TWO_TYPES);
    let (url, pool) = s.migrated_sqlite().await;
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
    assert_eq!(
        rows[1],
        ["beta", "0", "backing-off", "0", "parked", "0"],
        "{stdout}"
    );
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
    let (url, pool) = s.migrated_sqlite().await;
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
    // The database's own answer, at once: not the pool's "timed out" after 30 s.
    let started = std::time::Instant::now();
    let err = fail(
        s.run("postgres://bob:s3cret@127.0.0.1:1/db", &["pending"]),
        "cannot connect to the database at `postgres://bob:***@127.0.0.1:1/db`",
    );
    assert!(err.contains("Connection refused"), "the cause: {err}");
    assert!(!err.contains("pool timed out"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
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
    // Credentials RabbitMQ refuses: one clear line, not lapin's three error lines first.
    let err = fail(
        s.run(
            &url,
            &[
                "flushmany",
                "--bus-url",
                "amqp://guest:wrong-password@127.0.0.1:5672/%2f",
            ],
        ),
        "refused the credentials of user `guest`",
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("wrong-password"), "{err}");
}

#[tokio::test]
async fn repeat_keeps_flushing_and_stops_cleanly_on_sigterm() {
    let s = Scratch::new(TWO_TYPES);
    let (url, pool) = s.migrated_sqlite().await;
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

/// Against the real RabbitMQ: a message the broker cannot route (its exchange does not exist)
/// does not fail the flush nor hold back the others: they are sent and deleted, it stays with
/// one attempt spent and the broker's reason, and the summary says so.
#[tokio::test]
async fn a_refused_message_stays_and_the_others_go_out() {
    let s = Scratch::new(TWO_TYPES);
    let (url, pool) = s.migrated_sqlite().await;
    let missing = format!("sbtest-missing-{}", uuid::Uuid::new_v4().simple());
    // `alpha` flushes in bursts of 2: the first burst goes to an exchange that exists, the
    // second to one that does not.
    for topic in ["amq.direct", "amq.direct", missing.as_str()] {
        sqlx::query("INSERT INTO alpha_signal (topic, routing_key, body) VALUES (?, 'k', 'x')")
            .bind(topic)
            .execute(&pool)
            .await
            .unwrap();
    }
    let flush = || {
        s.run(
            &url,
            &[
                "flushmany",
                "alpha",
                "--bus-url",
                "amqp://guest:guest@127.0.0.1:5672/%2f?timeout_ms=5000&unroutable=drop",
            ],
        )
    };
    let out = flush();
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "refused signals left behind: {err}"
    );
    assert!(
        err.contains("the bus refused signals; retrying later"),
        "a refusal is logged when it happens, at the default level: {err}"
    );
    assert!(
        err.contains("sent 2 signal(s); 1 not sent (refused by the bus, or not a valid signal): kept, retried later with backoff"),
        "{err}"
    );
    let (left, attempts, last_error): (i64, i64, Option<String>) =
        sqlx::query_as("SELECT count(*), max(attempts), max(last_error) FROM alpha_signal")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (left, attempts),
        (1, 1),
        "only the unsendable signal stays, one attempt spent"
    );
    assert!(
        last_error.as_deref().unwrap_or_default().contains(&missing),
        "the broker's reason is kept: {last_error:?}"
    );
    // Backing off: the next flush right away does not send it again.
    let out = flush();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sent 0 signal(s)"),
        "{}",
        text(&out.stderr)
    );
}

/// A configuration that is valid TOML but not a valid signalbus configuration, or not TOML at
/// all: one `error:` line naming the file, the line and the column.
#[test]
fn a_malformed_config_names_the_file_line_and_column() {
    let s = Scratch::new(TWO_TYPES);
    for (toml, place, what) in [
        (
            "signal = 5\n",
            "line 1, column 10",
            "invalid type: integer `5`, expected a sequence",
        ),
        (
            "[[signal]]\nname = \"a\"\n\n[[signal]]\nname = \"b\"\nburst = \"many\"\n",
            "line 6, column 9",
            "invalid type: string \"many\"",
        ),
        ("[[signal]\nname = \"a\"\n", "line 1, column", ""),
    ] {
        std::fs::write(s.path("broken.toml"), toml).unwrap();
        let path = s.path("broken.toml");
        let out = s
            .cmd(&s.sqlite_url())
            .args(["--config", path.to_str().unwrap(), "pending"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let expected = format!("error: `{}`, {place}", path.display());
        assert!(
            err.starts_with(&expected),
            "expected `{expected}…` in: {err}"
        );
        assert!(err.contains("not a valid signalbus configuration"), "{err}");
        assert!(err.contains(what), "expected `{what}` in: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

/// The pool size and the runtime's threads: flags or environment, at least 1, in `--help`.
#[tokio::test]
async fn pool_size_and_worker_threads_are_settings() {
    let s = Scratch::new(TWO_TYPES);
    let (url, pool) = s.migrated_sqlite().await;
    insert_sqlite(&pool, "alpha_signal", &["1", "2", "3"]).await;

    // The smallest settings still flush (one connection is enough, in bursts).
    let out = s.run(
        &url,
        &[
            "flushmany",
            "--max-connections",
            "1",
            "--worker-threads",
            "1",
            "--bus-url",
            &s.bus("out.jsonl"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(received(&s.path("out.jsonl")).len(), 3);
    let out = s
        .cmd(&url)
        .env("SIGNALBUS_MAX_CONNECTIONS", "3")
        .env("SIGNALBUS_WORKER_THREADS", "4")
        .arg("pending")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Zero is a usage error, from the flag or from the environment.
    for (flag, var) in [
        ("--max-connections", "SIGNALBUS_MAX_CONNECTIONS"),
        ("--worker-threads", "SIGNALBUS_WORKER_THREADS"),
    ] {
        let out = s.run(&url, &[flag, "0", "pending"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} 0: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(flag), "{}", text(&out.stderr));
        let out = s.cmd(&url).env(var, "0").arg("pending").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}=0: {}", text(&out.stderr));
    }

    let help = text(&s.run(&url, &["--help"]).stdout);
    for expected in [
        "--max-connections <N>",
        "SIGNALBUS_MAX_CONNECTIONS",
        "--worker-threads <N>",
        "SIGNALBUS_WORKER_THREADS",
    ] {
        assert!(
            help.contains(expected),
            "`{expected}` not in --help:\n{help}"
        );
    }
}

/// Conventions people know from cargo and kubectl: values checked where they are given and
/// blamed on the option, environment variables for what a container sets, `--json` on every
/// listing, exit statuses in `--help`.
#[tokio::test]
async fn options_follow_the_command_line_conventions() {
    let s = Scratch::new(TWO_TYPES);
    let (url, _pool) = s.migrated_sqlite().await;
    let usage = |out: Output, expect: &[&str]| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
        for part in expect {
            assert!(err.contains(part), "expected `{part}` in: {err}");
        }
    };
    // A negative value is a bad value of the option, not a signal name after `--`.
    usage(
        s.run(&url, &["pending", "--lease", "-5"]),
        &["--lease", "negative"],
    );
    usage(
        s.run(&url, &["pending", "--publish-timeout", "1e30"]),
        &["--publish-timeout", "more than a week"],
    );
    usage(
        s.run(&url, &["pending", "--publish-timeout", "0"]),
        &["--publish-timeout", "more than 0"],
    );
    usage(
        s.cmd(&url)
            .env("SIGNALBUS_PUBLISH_TIMEOUT", "soon")
            .arg("pending")
            .output()
            .unwrap(),
        &["--publish-timeout", "not a number"],
    );
    usage(
        s.run(&url, &["relay", "--listen", "9464"]),
        &["--listen", "has no port"],
    );
    // Two options that do not fit together: blamed on them, not on the configuration file.
    let out = s.run(
        &url,
        &["pending", "--lease", "0.5", "--publish-timeout", "2"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--lease (0.5 s) must be longer than --publish-timeout (2 s)"),
        "{err}"
    );
    assert!(!err.contains("configuration"), "{err}");
    // From the environment as well as the command line.
    let out = s
        .cmd(&url)
        .env("SIGNALBUS_LEASE", "90")
        .env("SIGNALBUS_PUBLISH_TIMEOUT", "5")
        .env("SIGNALBUS_LOG_FORMAT", "json")
        .arg("pending")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // --json on `signals` too.
    let out = s.run(&url, &["signals", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(list[0]["table"], "alpha_signal");
    assert_eq!(list[0]["order_by"], serde_json::json!(["id"]));
    // Exit statuses are documented where people look.
    let out = s.run(&url, &["--help"]);
    let help = text(&out.stdout);
    assert!(
        help.contains("Exit status:") && help.contains("3    a flush ran"),
        "{help}"
    );
    // Log lines written to a pipe carry no colour codes.
    let out = s
        .cmd(&url)
        .env("RUST_LOG", "debug")
        .args(["flushmany", "--bus-url", "stdout:"])
        .output()
        .unwrap();
    let logs = text(&out.stderr);
    assert!(logs.contains("DEBUG"), "debug lines were written: {logs}");
    assert!(!logs.contains('\u{1b}'), "{logs}");
}

/// A Kafka broker that is down: one clear error line, and librdkafka's own lines summarised
/// (one per cause) instead of hundreds of repeated connection failures.
#[tokio::test]
async fn a_kafka_broker_that_is_down_does_not_flood_the_log() {
    let s = Scratch::new(TWO_TYPES);
    let (url, _pool) = s.migrated_sqlite().await;
    // Nothing listens there, and no other test is given it.
    let port = signalbus_testkit::nats::free_port();
    let out = s.run(
        &url,
        &[
            "flushmany",
            "--publish-timeout",
            "6",
            "--bus-url",
            &format!("kafka://127.0.0.1:{port}"),
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to the bus"), "{err}");
    let librdkafka = err.lines().filter(|l| l.contains("librdkafka")).count();
    assert!(
        librdkafka <= 4,
        "{librdkafka} lines of librdkafka in 6 s: {err}"
    );
}

/// Configuration without surprises: `./signalbus.toml` is found like cargo's `Cargo.toml`;
/// the file's `databases` serve every command (each database in turn), not only `relay`;
/// `DATABASE_URL` from the environment still wins, but says so.
#[tokio::test]
async fn the_configuration_file_is_found_and_its_databases_serve_every_command() {
    let s = Scratch::new(TWO_TYPES);
    let (one, pool_one) = s.migrated_sqlite().await;
    let two = format!("sqlite:{}", s.path("two.sqlite").display());
    let out = s.run(&format!("{two}?mode=rwc"), &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pool_two = crate::sqlite_pool(&two).await;
    insert_sqlite(&pool_one, "alpha_signal", &["a1"]).await;
    insert_sqlite(&pool_two, "alpha_signal", &["a2", "a3"]).await;
    std::fs::write(
        s.path("signalbus.toml"),
        format!("databases = [\"{one}\", \"{two}\"]\n{TWO_TYPES}"),
    )
    .unwrap();
    // No --config, no SIGNALBUS_CONFIG, no DATABASE_URL: the file in the current directory.
    let bare = || {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(s.path("."))
            .env_remove("SIGNALBUS_CONFIG")
            .env_remove("DATABASE_URL")
            .env_remove("SIGNALBUS_BUS_URL")
            .env_remove("RUST_LOG");
        cmd
    };
    let out = bare().args(["pending", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let totals: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["total"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        totals,
        [1, 2],
        "one document per database, in the file's order"
    );
    let bus = s.bus("out.jsonl");
    let out = bare()
        .args(["flushmany", "--bus-url", &bus])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("sent ").count(), 2, "{err}");
    assert_eq!(received(&s.path("out.jsonl")).len(), 3);
    // Row ids are per database: --id with several is refused, nothing changed.
    let out = bare()
        .args(["purge-parked", "alpha", "--id", "1", "--yes"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--id names rows of one database"), "{err}");
    // DATABASE_URL from the environment wins over the file's list, and says so.
    let out = bare()
        .env("DATABASE_URL", &one)
        .arg("pending")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("using DATABASE_URL from the environment, not the 2 database(s)"),
        "{err}"
    );
}
