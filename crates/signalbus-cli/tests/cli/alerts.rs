//! The operations kit (ops/): the alert rules pass `promtool check rules` and their unit
//! tests, and a real Prometheus (Debian's, scripts/test-tools.sh installs it) on its own
//! loopback port scrapes a running relay: the lag alert fires while a signal is held back
//! and resolves once it is sent; every expression of the Grafana dashboard is one that
//! Prometheus accepts.

use crate::{Scratch, received, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "[[signal]]\nname = \"bulk\"\n";

fn ops(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ops")
        .join(path)
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is missing: install the Debian package prometheus (scripts/test-tools.sh)"
    );
    Command::new(name)
}

#[test]
fn the_alert_rules_pass_promtool() {
    for (command, file) in [
        ("check", "prometheus/signalbus-alerts.yml"),
        ("test", "prometheus/signalbus-alerts.test.yml"),
    ] {
        let out = tool("promtool")
            .args([command, "rules"])
            .arg(ops(file))
            .output()
            .unwrap();
        let says = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "promtool {command} rules: {says}");
    }
}

/// Stops the child when dropped.
struct Stopping(Child);

impl Drop for Stopping {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped rules with the lag alert's threshold and wait cut to seconds, so that a test
/// can see it fire.
fn quick_rules() -> String {
    let rules = std::fs::read_to_string(ops("prometheus/signalbus-alerts.yml")).unwrap();
    let expr = "expr: max by (bus, signal) (signalbus_oldest_pending_seconds) > 300";
    let at = rules.find(expr).expect("the lag alert's expression");
    let (head, tail) = rules.split_at(at);
    let tail = tail
        .replacen(expr, &expr.replace("> 300", "> 2"), 1)
        .replacen("for: 5m", "for: 2s", 1);
    format!("{head}{tail}")
}

async fn alerts(prometheus: &str) -> Vec<(String, String)> {
    let Ok(r) = reqwest::get(format!("{prometheus}/api/v1/alerts")).await else {
        return Vec::new();
    };
    // A Prometheus still starting answers with a plain-text error: no alerts yet.
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap_or_default())
    else {
        return Vec::new();
    };
    v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn prometheus_sees_the_lag_alert_fire_and_resolve() {
    let s = Scratch::new(CONFIG);
    let (url, pool) = s.migrated_sqlite().await;
    crate::insert_sqlite(&pool, "bulk", &["held"]).await;
    // Refused once, next attempt in an hour: held back.
    sqlx::query(
        "UPDATE bulk SET attempts = 1, last_error = 'refused', \
         next_attempt_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 3600000",
    )
    .execute(&pool)
    .await
    .unwrap();
    let relay_port = signalbus_testkit::nats::free_port();
    let _relay = Stopping(
        s.cmd(&url)
            .args(["relay", "--bus-url", &s.bus("out.jsonl")])
            .args([
                "--listen",
                &format!("127.0.0.1:{relay_port}"),
                "--stats-interval",
                "0.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(s.path("rules.yml"), quick_rules()).unwrap();
    std::fs::write(
        s.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: signalbus\n    static_configs:\n      - targets: ['127.0.0.1:{relay_port}']\n"
        ),
    )
    .unwrap();
    let prom_port = signalbus_testkit::nats::free_port();
    let _prometheus = Stopping(
        tool("prometheus")
            .arg(format!(
                "--config.file={}",
                s.path("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", s.path("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prometheus = format!("http://127.0.0.1:{prom_port}");
    until("the lag alert fires", Duration::from_secs(90), || {
        let p = prometheus.clone();
        async move {
            alerts(&p)
                .await
                .contains(&("SignalbusSignalsLagging".to_owned(), "firing".to_owned()))
        }
    })
    .await;

    // Every expression of the dashboard is valid PromQL, with its variables filled in.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ops("grafana/signalbus-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$bus", ".*")
                .replace("$signal", ".*")
                .replace("$__rate_interval", "1m");
            let query: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
            let r = reqwest::get(format!("{prometheus}/api/v1/query?query={query}"))
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(body.contains("\"status\":\"success\""), "{expr}: {body}");
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} expressions");

    // Sent once its next attempt is due: the alert resolves.
    sqlx::query("UPDATE bulk SET next_attempt_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    until("the signal is sent", Duration::from_secs(30), || {
        let path = s.path("out.jsonl");
        async move { received(&path).len() == 1 }
    })
    .await;
    until("the lag alert resolves", Duration::from_secs(90), || {
        let p = prometheus.clone();
        async move {
            !alerts(&p)
                .await
                .iter()
                .any(|(name, _)| name == "SignalbusSignalsLagging")
        }
    })
    .await;
}
