//! The JSON API fuzzed against its own OpenAPI description with schemathesis (Python
//! registry; scripts/schemathesis.sh installs it): thousands of generated requests, valid and
//! not, as an operator, over a database of parked signals. It fails on any server error,
//! any response that breaks the schema, a status code or content type the description does
//! not list.

mod common;

use common::{OPERATOR, serve, with_tokens};
use std::path::PathBuf;

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SIGNALBUS_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/signalbus/schemathesis/bin/schemathesis")
        });
    assert!(
        path.is_file(),
        "schemathesis is missing at {}: run scripts/schemathesis.sh install",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_openapi_description_under_fuzzing() {
    let tool = schemathesis();
    let s = serve(with_tokens).await;
    // The database, the signal type and the row ids are fixed to ones that exist, so that
    // the generated requests reach the filters, pages and actions instead of a 404.
    let text = reqwest::get(format!("{}/console/api/openapi.json", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (_, item) in schema["paths"].as_object_mut().unwrap() {
        for (_, operation) in item.as_object_mut().unwrap() {
            let parameters = operation
                .get_mut("parameters")
                .and_then(|p| p.as_array_mut());
            for p in parameters.into_iter().flatten() {
                match p["name"].as_str() {
                    Some("db") => {
                        p["schema"] = serde_json::json!({"type": "string", "enum": ["shop"]})
                    }
                    Some("signal") => {
                        p["schema"] =
                            serde_json::json!({"type": "string", "enum": ["order_placed"]})
                    }
                    // The rows there are (15 written, 12 parked).
                    Some("id") if p["in"] == "path" => {
                        p["schema"] =
                            serde_json::json!({"type": "integer", "minimum": 1, "maximum": 15})
                    }
                    _ => {}
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_string(&schema).unwrap()).unwrap();
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tool)
            // Its cache (.schemathesis/) goes to the scratch directory, not the crate.
            .current_dir(file.parent().expect("a file in a directory"))
            .arg("run")
            .arg(&file)
            .args(["--url", &base])
            .args(["-H", &format!("Authorization: Bearer {OPERATOR}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--max-examples", "60", "--workers", "1", "--seed", "1"])
            .args(["--phases", "coverage,fuzzing,stateful"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    let generated = report
        .lines()
        .find(|l| l.contains("generated"))
        .unwrap_or_default()
        .to_owned();
    assert!(generated.contains("passed"), "{report}");
    eprintln!("schemathesis: {}", generated.trim());
}
