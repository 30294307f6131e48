//! `rediss://` and `https://` sinks, end to end from the command line. The shared Redis and the
//! test kit's webhook receiver listen without TLS, so the test puts a TLS proxy with a CA of its
//! own in front of each. `signalbus flushmany` trusts that CA only when told to
//! (`SSL_CERT_FILE`, which the loader of the system's root certificates reads); without it the
//! handshake fails with an error that says so (the whole bus for Redis; that endpoint for
//! webhooks), and every signal stays pending with no attempt spent.

use crate::Scratch;
use signalbus_testkit::tls::{TestCa, proxy};
use signalbus_testkit::webhook::Receiver;
use std::io::{BufRead, BufReader, Write};
use std::process::Output;

const CONFIG: &str = "[[signal]]\nname = \"bulk\"\n";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Rows of `bulk` to `destination`, as any service would write them.
async fn insert(pool: &sqlx::SqlitePool, destination: &str, n: usize) {
    for i in 0..n {
        sqlx::query("INSERT INTO bulk (topic, body) VALUES (?, ?)")
            .bind(destination)
            .bind(format!("{{\"n\":{i}}}").into_bytes())
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Pending rows of `bulk`, and how many have had an attempt.
async fn pending(pool: &sqlx::SqlitePool) -> (i64, i64) {
    sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0) FROM bulk")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `XLEN key` on the shared Redis, over a plain connection of its own.
fn stream_length(key: &str) -> i64 {
    let mut redis = std::net::TcpStream::connect("127.0.0.1:6379").expect("Redis on 6379");
    write!(redis, "XLEN {key}\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(&redis).read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix(':')
        .unwrap_or_else(|| panic!("XLEN answered {line:?}"))
        .parse()
        .unwrap()
}

fn delete_key(key: &str) {
    let mut redis = std::net::TcpStream::connect("127.0.0.1:6379").unwrap();
    write!(redis, "DEL {key}\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(&redis).read_line(&mut line).unwrap();
}

/// `signalbus flushmany` to `bus`, trusting the CA in `ca_file` when given (and otherwise
/// only the system's roots).
fn flush(s: &Scratch, url: &str, bus: &str, ca_file: Option<&std::path::Path>) -> Output {
    let mut cmd = s.cmd(url);
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("SIGNALBUS_WEBHOOK_SECRET")
        .args(["--bus-url", bus, "--publish-timeout", "10", "flushmany"]);
    if let Some(ca) = ca_file {
        cmd.env("SSL_CERT_FILE", ca);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_with_the_trusted_roots() {
    let s = Scratch::new(CONFIG);
    let (url, pool) = s.migrated_sqlite().await;
    let ca = TestCa::new(&s.path(""));
    let port = proxy(ca.server(), "127.0.0.1:6379").await;
    let key = format!("sbtest-tls-{}", uuid::Uuid::new_v4().simple());
    insert(&pool, &key, 20).await;
    let bus = format!("rediss://127.0.0.1:{port}");

    let out = flush(&s, &url, &bus, None);
    let err = crate::text(&out.stderr);
    assert!(!out.status.success(), "an untrusted server is not sent to");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(
        pending(&pool).await,
        (20, 0),
        "all pending, no attempt spent"
    );
    assert_eq!(stream_length(&key), 0);

    let out = flush(&s, &url, &bus, Some(&ca.ca_file()));
    assert!(out.status.success(), "{}", crate::text(&out.stderr));
    assert_eq!(pending(&pool).await, (0, 0));
    assert_eq!(stream_length(&key), 20, "each signal once, over TLS");
    delete_key(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_verify_the_endpoint_with_the_trusted_roots() {
    let s = Scratch::new(CONFIG);
    let (url, pool) = s.migrated_sqlite().await;
    let ca = TestCa::new(&s.path(""));
    let receiver = Receiver::start(SECRET).await;
    let port = proxy(ca.server(), &format!("127.0.0.1:{}", receiver.port)).await;
    insert(&pool, "orders", 20).await;
    let bus = format!("https://localhost:{port}/hooks/?secret={SECRET}&timeout_ms=5000");

    // One endpoint out is not the whole bus out: its signals are deferred, and the flush
    // ends having sent nothing.
    let out = flush(&s, &url, &bus, None);
    let err = crate::text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sent 0 signal(s)"), "{err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer") && err.contains("no attempt spent"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert_eq!(
        pending(&pool).await,
        (20, 0),
        "all pending, no attempt spent"
    );
    assert!(receiver.requests().is_empty());

    // Deferred for the endpoint's pause (1 s after a first failure).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let out = flush(&s, &url, &bus, Some(&ca.ca_file()));
    assert!(out.status.success(), "{}", crate::text(&out.stderr));
    assert_eq!(pending(&pool).await, (0, 0));
    let got = receiver.accepted("/hooks/orders");
    assert_eq!(got.len(), 20, "each signal once, signed, over TLS");
}
