//! `signalbus console` and `signalbus relay --console` as processes: tokens from the
//! environment and the configuration, an open console refused off loopback, and a relay
//! that sends what the console unparks.

use crate::{Scratch, received, text};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OPERATOR: &str = "operator-token-0123456789";
const CONFIG: &str = "[[signal]]\nname = \"bulk\"\n";

/// Parks every row of `bulk` as a refused message would be.
async fn park_all(pool: &sqlx::SqlitePool) {
    sqlx::query(
        "UPDATE bulk SET attempts = 5, last_error = 'no route to `t`', \
         parked_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn wait_listening(url: &str) {
    let started = Instant::now();
    while reqwest::get(url).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never listened: {url}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn api(url: &str, token: Option<&str>, body: Option<&str>) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut request = match body {
        Some(b) => client
            .post(url)
            .header("content-type", "application/json")
            .body(b.to_owned()),
        None => client.get(url),
    };
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn stop(child: Child) -> (std::process::ExitStatus, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status, text(&out.stderr))
}

#[tokio::test]
async fn the_console_command_serves_the_tables_with_tokens() {
    let s = Scratch::new(CONFIG);
    let (url, pool) = s.migrated_sqlite().await;
    crate::insert_sqlite(&pool, "bulk", &["1", "2"]).await;
    park_all(&pool).await;
    let listen = format!("127.0.0.1:{}", signalbus_testkit::nats::free_port());
    let child = s
        .cmd(&url)
        .args(["console", "--listen", &listen])
        .env("SIGNALBUS_CONSOLE_OPERATOR_TOKEN", OPERATOR)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://{listen}/console/api");
    wait_listening(&format!("{base}/openapi.json")).await;
    assert_eq!(api(&format!("{base}/overview"), None, None).await.0, 401);
    let (status, body) = api(&format!("{base}/overview"), Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["databases"][0]["signals"][0]["parked"], 2, "{body}");
    assert!(
        body["databases"][0]["signals"][0]["sent_per_s"].is_null(),
        "no rates without a relay: {body}"
    );
    // It sends nothing: unparked signals wait for a relay or a flush.
    let db = body["databases"][0]["name"].as_str().unwrap().to_owned();
    let enc: String = url::form_urlencoded::byte_serialize(db.as_bytes()).collect();
    let (status, answer) = api(
        &format!("{base}/databases/{enc}/signals/bulk/actions"),
        Some(OPERATOR),
        Some(r#"{"action": "unpark", "filter": {"state": "parked"}}"#),
    )
    .await;
    assert_eq!(
        (status, answer["changed"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let (status, stderr) = stop(child);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("serving http://"), "{stderr}");
    let out = s.run(&url, &["pending", "--json"]);
    assert!(
        text(&out.stdout).contains("\"parked\":0"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn an_open_console_is_refused_off_loopback_and_bad_tokens_are_named() {
    let s = Scratch::new(CONFIG);
    let (url, _pool) = s.migrated_sqlite().await;
    let port = signalbus_testkit::nats::free_port();
    let out = s.run(&url, &["console", "--listen", &format!("0.0.0.0:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("open to anyone"),
        "{}",
        text(&out.stderr)
    );
    let out = s
        .cmd(&url)
        .args(["console", "--listen", "127.0.0.1:0"])
        .env("SIGNALBUS_CONSOLE_VIEWER_TOKEN", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("shorter than 16"),
        "{}",
        text(&out.stderr)
    );
    let with_tokens = Scratch::new(&format!(
        "{CONFIG}\n[[console.tokens]]\nname = \"alice\"\nrole = \"admin\"\ntoken_env = \"ALICE_TOKEN\"\n"
    ));
    let out = with_tokens.run(&url, &["console", "--listen", "127.0.0.1:0"]);
    assert!(
        text(&out.stderr).contains("neither \"viewer\" nor \"operator\""),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&url, &["relay", "--console", "--bus-url", "stdout:"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap: --console requires --listen"
    );
}

#[tokio::test]
async fn a_relay_with_the_console_sends_what_is_unparked() {
    let s = Scratch::new(CONFIG);
    let (url, pool) = s.migrated_sqlite().await;
    crate::insert_sqlite(&pool, "bulk", &["a", "b", "c"]).await;
    park_all(&pool).await;
    let listen = format!("127.0.0.1:{}", signalbus_testkit::nats::free_port());
    let child = s
        .cmd(&url)
        .args([
            "relay",
            "--bus-url",
            &s.bus("out.jsonl"),
            "--listen",
            &listen,
            "--console",
        ])
        .env("SIGNALBUS_CONSOLE_OPERATOR_TOKEN", OPERATOR)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    wait_listening(&format!("{base}/healthz")).await;
    assert_eq!(
        api(&format!("{base}/metrics"), None, None).await.0,
        200,
        "metrics stay open"
    );
    let (_, body) = api(
        &format!("{base}/console/api/overview"),
        Some(OPERATOR),
        None,
    )
    .await;
    let db = body["databases"][0]["name"].as_str().unwrap().to_owned();
    let enc: String = url::form_urlencoded::byte_serialize(db.as_bytes()).collect();
    let (_, groups) = api(
        &format!("{base}/console/api/databases/{enc}/signals/bulk/groups"),
        Some(OPERATOR),
        None,
    )
    .await;
    let group = groups["groups"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(groups["groups"][0]["parked"], 3, "{groups}");
    assert!(
        received(&s.path("out.jsonl")).is_empty(),
        "parked: not sent"
    );
    let (status, answer) = api(
        &format!("{base}/console/api/databases/{enc}/signals/bulk/actions"),
        Some(OPERATOR),
        Some(&format!(
            r#"{{"action": "unpark", "filter": {{"group": "{group}"}}}}"#
        )),
    )
    .await;
    assert_eq!(
        (status, answer["changed"].as_u64()),
        (200, Some(3)),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while received(&s.path("out.jsonl")).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the relay never sent the unparked signals"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Beside a relay, the overview has the send rate, from the relay's counters (sampled
    // every 5 s: the rate shows once the sample after the sending is taken).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = api(
            &format!("{base}/console/api/overview"),
            Some(OPERATOR),
            None,
        )
        .await;
        let sent = body["databases"][0]["signals"][0]["sent_per_s"].as_f64();
        if sent.is_some_and(|r| r > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no send rate: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, stderr) = stop(child);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("and the console (/console)"), "{stderr}");
}
