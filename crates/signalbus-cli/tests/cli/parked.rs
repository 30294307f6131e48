//! `parked`, `unpark`, `purge-parked` and the backing-off/parked counts of `pending`: rows
//! parked by a real flush (a row that is not a valid signal is parked at once) on SQLite, and
//! parked by hand on PostgreSQL.

use crate::{Scratch, TWO_TYPES, insert_sqlite, received, text};
use signalbus_testkit::database::TestDb;
use std::process::Output;

/// Exit status 1 and one line on standard error that contains `expect`; returns that line.
fn fails(out: &Output, expect: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains(expect), "expected `{expect}` in: {err}");
    last
}

/// Exit status 3: a flush that parked (or left refused) signals; returns standard error.
fn parks(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    err
}

/// Exit status 0; returns standard error.
fn succeeds(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    err
}

fn json(out: &Output) -> serde_json::Value {
    succeeds(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// (attempts, parked) of row `id` of `alpha_signal`, or None when the row is gone.
async fn row(pool: &sqlx::SqlitePool, id: i64) -> Option<(i64, bool)> {
    sqlx::query_as("SELECT attempts, parked_at IS NOT NULL FROM alpha_signal WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Inserts an `alpha` row whose headers are not a JSON object: not a valid signal, so the
/// next flush parks it at once. Returns its id.
async fn insert_invalid(pool: &sqlx::SqlitePool, body: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO alpha_signal (topic, headers, body) VALUES ('t', '[1]', ?) RETURNING id",
    )
    .bind(body.as_bytes())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn parked_signals_are_listed_counted_unparked_and_purged() {
    let s = Scratch::new(TWO_TYPES);
    let (url, pool) = s.migrated_sqlite().await;
    let bus = s.bus("out.jsonl");

    // Nothing parked yet: said on standard error, nothing on standard output, success.
    let out = s.run(&url, &["parked"]);
    assert!(succeeds(&out).contains("nothing parked (alpha, beta)"));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // A real flush sends the valid row and parks the invalid one.
    insert_sqlite(&pool, "alpha_signal", &["good"]).await;
    let bad = insert_invalid(&pool, "bad").await;
    parks(&s.run(&url, &["flushmany", "--bus-url", &bus]));
    assert_eq!(received(&s.path("out.jsonl")).len(), 1);
    assert_eq!(row(&pool, bad).await, Some((1, true)));

    // `parked --json`: one document, the row with its last error, per type.
    let listed = json(&s.run(&url, &["parked", "--json"]));
    assert_eq!(listed["total"], 1, "{listed}");
    let alpha = &listed["signals"][0];
    assert_eq!(alpha["name"], "alpha");
    assert_eq!(alpha["table"], "alpha_signal");
    assert_eq!(alpha["parked"], 1);
    let parked = &alpha["rows"][0];
    assert_eq!(parked["id"], bad);
    assert_eq!(parked["attempts"], 1);
    assert!(parked["message_id"].as_str().is_some_and(|m| m.len() == 36));
    assert!(
        parked["last_error"]
            .as_str()
            .unwrap()
            .contains("headers must be a JSON object"),
        "{parked}"
    );
    assert!(parked["parked_for_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(listed["signals"][1]["name"], "beta");
    assert_eq!(listed["signals"][1]["rows"], serde_json::json!([]));

    // The table: a header, then one row per parked signal, the last error last.
    let out = s.run(&url, &["parked", "alpha"]);
    succeeds(&out);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("signal  id  attempts"), "{stdout}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[..3], ["alpha", &bad.to_string(), "1"], "{stdout}");
    assert!(
        lines[1].contains("headers must be a JSON object"),
        "{stdout}"
    );

    // `pending` counts it as pending and as parked, with the age of the oldest parked.
    let pending = json(&s.run(&url, &["pending", "--json"]));
    let alpha = &pending["signals"][0];
    assert_eq!(alpha["pending"], 1, "{pending}");
    assert_eq!(alpha["parked"], 1, "{pending}");
    assert_eq!(alpha["backing_off"], 0, "{pending}");
    assert!(alpha["oldest_parked_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(alpha["oldest_backing_off_age_seconds"].is_null());
    assert_eq!(pending["parked"], 1, "{pending}");
    assert_eq!(pending["total"], 1, "{pending}");
    let out = s.run(&url, &["pending"]);
    succeeds(&out);
    let stdout = text(&out.stdout);
    let alpha: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(alpha[..2], ["alpha", "1"], "{stdout}");
    assert!(
        stdout.lines().next().unwrap().contains("backing-off 0")
            && stdout.lines().next().unwrap().contains("parked 1  oldest"),
        "{stdout}"
    );

    // Purging without --yes says how many and deletes nothing.
    let line = fails(
        &s.run(&url, &["purge-parked", "--all"]),
        "would delete 1 parked signal(s) (alpha 1) for good; add --yes",
    );
    assert!(line.contains("nothing deleted"), "{line}");
    assert_eq!(row(&pool, bad).await, Some((1, true)));

    // Unknown ids are named; nothing changes, not even for the known id next to them.
    let line = fails(
        &s.run(&url, &["unpark", "--id", "99999", "alpha"]),
        "signal `alpha` has no parked signal with id 99999",
    );
    assert!(line.contains("nothing unparked"), "{line}");
    let ids = format!("{bad},99999");
    fails(
        &s.run(&url, &["unpark", "--id", &ids, "alpha"]),
        "no parked signal with id 99999 (",
    );
    fails(
        &s.run(&url, &["purge-parked", "--id", "99999", "alpha", "--yes"]),
        "no parked signal with id 99999",
    );
    assert_eq!(row(&pool, bad).await, Some((1, true)));

    // Fixed and unparked, the next flush sends it.
    sqlx::query("UPDATE alpha_signal SET headers = '{\"fixed\":\"yes\"}' WHERE id = ?")
        .bind(bad)
        .execute(&pool)
        .await
        .unwrap();
    let id = bad.to_string();
    let err = succeeds(&s.run(&url, &["unpark", "--id", &id, "alpha"]));
    assert!(
        err.contains("unparked 1 signal(s) of `alpha`; the next flush sends them"),
        "{err}"
    );
    assert_eq!(row(&pool, bad).await, Some((0, false)), "attempts reset");
    succeeds(&s.run(&url, &["flushmany", "--bus-url", &bus]));
    let got = received(&s.path("out.jsonl"));
    assert_eq!(got.last().unwrap(), &("alpha".to_owned(), "bad".to_owned()));
    assert_eq!(row(&pool, bad).await, None, "sent and deleted");

    // Unparked while still invalid, the next flush tries it again and parks it again.
    let bad = insert_invalid(&pool, "still bad").await;
    parks(&s.run(&url, &["flushmany", "--bus-url", &bus]));
    let err = succeeds(&s.run(&url, &["unpark", "--all"]));
    assert!(err.contains("unparked 1 signal(s) (alpha 1)"), "{err}");
    assert_eq!(row(&pool, bad).await, Some((0, false)));
    let err = parks(&s.run(&url, &["flushmany", "--bus-url", &bus]));
    assert!(err.contains("1 parked"), "{err}");
    assert_eq!(row(&pool, bad).await, Some((1, true)));

    // Purged for good with --yes; a second purge finds nothing.
    let err = succeeds(&s.run(&url, &["purge-parked", "--all", "--yes"]));
    assert!(
        err.contains("deleted 1 parked signal(s) (alpha 1)"),
        "{err}"
    );
    assert_eq!(row(&pool, bad).await, None);
    let err = succeeds(&s.run(&url, &["purge-parked", "--all"]));
    assert!(err.contains("nothing parked (alpha, beta)"), "{err}");
    let err = succeeds(&s.run(&url, &["unpark", "--all", "beta"]));
    assert!(err.contains("nothing parked (beta)"), "{err}");
    let pending = json(&s.run(&url, &["pending", "--json"]));
    assert_eq!(
        (&pending["total"], &pending["parked"]),
        (&0.into(), &0.into())
    );
}

#[tokio::test]
async fn parked_limit_purge_by_id_and_bad_input() {
    let s = Scratch::new(TWO_TYPES);
    let (url, pool) = s.migrated_sqlite().await;
    let mut bad = Vec::new();
    for body in ["b1", "b2", "b3"] {
        bad.push(insert_invalid(&pool, body).await);
    }
    parks(&s.run(&url, &["flushmany", "--bus-url", "stdout:"]));

    // --limit lists the lowest ids and says that there are more.
    let out = s.run(&url, &["parked", "--json", "--limit", "2"]);
    let listed = json(&out);
    assert_eq!(listed["signals"][0]["parked"], 3, "{listed}");
    let ids: Vec<i64> = listed["signals"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, bad[..2]);
    assert!(
        text(&out.stderr).contains("listed the first 2 of 3 parked signal(s)"),
        "{}",
        text(&out.stderr)
    );

    // Purging by id: without --yes it says how many, with it they are gone, the rest stay.
    let two = format!("{},{}", bad[0], bad[1]);
    fails(
        &s.run(&url, &["purge-parked", "--id", &two, "alpha"]),
        "would delete 2 parked signal(s) of `alpha` for good; add --yes",
    );
    assert_eq!(parked_count(&s, &url), 3);
    let err = succeeds(&s.run(
        &url,
        &[
            "purge-parked",
            "--id",
            &bad[0].to_string(),
            "--id",
            &bad[1].to_string(),
            "alpha",
            "--yes",
        ],
    ));
    assert!(
        err.contains("deleted 2 parked signal(s) of `alpha`"),
        "{err}"
    );
    assert_eq!(parked_count(&s, &url), 1);

    // Usage errors (clap, status 2): neither --id nor --all, both, an id that is no number.
    for args in [
        &["unpark", "alpha"][..],
        &["purge-parked", "--yes"],
        &["unpark", "--all", "--id", "1", "alpha"],
        &["unpark", "--id", "x", "alpha"],
        &["unpark", "--id", "0", "alpha"],
        &["parked", "--limit", "0"],
    ] {
        let out = s.run(&url, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // --id acts on one named type; unknown names get the usual warning and error.
    fails(
        &s.run(&url, &["unpark", "--id", "1"]),
        "--id needs exactly one signal type named (ids are per table), got none",
    );
    fails(
        &s.run(&url, &["unpark", "--id", "1", "alpha", "beta"]),
        "--id needs exactly one signal type named (ids are per table), got 2: alpha, beta",
    );
    let out = s.run(&url, &["purge-parked", "--id", "1", "nope", "--yes"]);
    fails(&out, "none of the given signal names is known");
    assert!(text(&out.stderr).contains("unknown signal name `nope`"));
    fails(
        &s.run(&url, &["parked", "nope"]),
        "none of the given signal names",
    );
    assert_eq!(parked_count(&s, &url), 1, "nothing changed");
}

fn parked_count(s: &Scratch, url: &str) -> u64 {
    json(&s.run(url, &["pending", "--json"]))["parked"]
        .as_u64()
        .unwrap()
}

/// On PostgreSQL, with a row parked by hand as a refused message would be (after its tenth
/// attempt): listed, counted, unparked and sent; a purge by id.
#[tokio::test]
async fn parked_signals_on_postgres() {
    let db = TestDb::<sqlx::Postgres>::new(2).await;
    let (url, pool) = (db.url.clone(), db.pool.clone());
    let s = Scratch::new(TWO_TYPES);
    succeeds(&s.run(&url, &["migrate"]));
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO alpha_signal (topic, body) VALUES ('t', 'one'), ('t', 'two') RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE alpha_signal SET created_at = now() - interval '2 hours', \
         parked_at = now() - interval '1 hour', attempts = 10, last_error = 'no route' \
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .execute(&pool)
    .await
    .unwrap();

    let listed = json(&s.run(&url, &["parked", "alpha", "--json"]));
    let rows = listed["signals"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(rows[0]["id"], ids[0]);
    assert_eq!(rows[0]["attempts"], 10);
    assert_eq!(rows[0]["last_error"], "no route");
    // Parked for an hour, ...
    let parked_for = rows[0]["parked_for_seconds"].as_f64().unwrap();
    assert!((3599.0..7199.0).contains(&parked_for), "{parked_for}");
    let pending = json(&s.run(&url, &["pending", "--json"]));
    assert_eq!(pending["signals"][0]["parked"], 2, "{pending}");
    // ... written two hours ago: the age of `pending` is since it was written.
    assert!(pending["oldest_parked_age_seconds"].as_f64().unwrap() >= 7199.0);

    // A flush leaves parked rows alone; unparked, the next one sends the row.
    let bus = s.bus("out.jsonl");
    succeeds(&s.run(&url, &["flushmany", "--bus-url", &bus]));
    assert!(received(&s.path("out.jsonl")).is_empty());
    fails(
        &s.run(&url, &["unpark", "--id", "99999", "alpha"]),
        "no parked signal with id 99999",
    );
    succeeds(&s.run(&url, &["unpark", "--id", &ids[0].to_string(), "alpha"]));
    succeeds(&s.run(&url, &["flushmany", "--bus-url", &bus]));
    assert_eq!(
        received(&s.path("out.jsonl")),
        [("alpha".to_owned(), "one".to_owned())]
    );

    fails(
        &s.run(&url, &["purge-parked", "--all", "alpha"]),
        "would delete 1 parked signal(s) (alpha 1)",
    );
    let err = succeeds(&s.run(
        &url,
        &["purge-parked", "--id", &ids[1].to_string(), "alpha", "-y"],
    ));
    assert!(err.contains("deleted 1 parked signal(s)"), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM alpha_signal")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);

    db.cleanup().await;
}
