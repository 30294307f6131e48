//! A custom publisher in a few lines: POST each batch to an HTTP webhook as JSON lines, and
//! count it as sent only on a 2xx answer. Runs without any server: it starts a tiny webhook
//! receiver of its own. `cargo run -p signalbus --example webhook`
//!
//! Any type that implements [`Publisher`] can be a bus: return `Ok` only when the other
//! side has stored the whole batch, `PublishError::unavailable` when trying again later can
//! help, `PublishError::rejected` when it cannot.

use serde::Serialize;
use signalbus::{BatchOutcome, Message, PublishError, Publisher, Signal, SignalBus};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// POSTs batches to `http://{addr}{path}`.
struct Webhook {
    addr: String,
    path: String,
}

impl Publisher for Webhook {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let down =
            |e: std::io::Error| PublishError::unavailable(format!("webhook {}: {e}", self.addr));
        let lines: Vec<String> = batch
            .iter()
            .filter_map(|m| serde_json::to_string(m).ok())
            .collect();
        let body = lines.join("\n");
        let mut stream = TcpStream::connect(&self.addr).await.map_err(down)?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(down)?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.map_err(down)?;
        match response.split_whitespace().nth(1) {
            Some(status) if status.starts_with('2') => Ok(BatchOutcome::all_stored()),
            // All or nothing: the flush engine then sends the messages one by one to find
            // the one the webhook refuses, and retries or parks only that one.
            Some(status) if status.starts_with('4') => Err(PublishError::rejected(format!(
                "webhook refused the batch with HTTP {status}"
            ))),
            status => Err(PublishError::unavailable(format!(
                "webhook answered {status:?}; the batch stays pending"
            ))),
        }
    }
}

#[derive(Serialize, Signal)]
#[signal(destination = "orders")]
struct OrderPlaced {
    order_id: i64,
}

/// A webhook receiver that prints what it gets and answers 204.
async fn receiver() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut stream = BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while stream.read_line(&mut line).await.is_ok_and(|n| n > 2) {
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_ok() {
                println!("webhook received: {}", String::from_utf8_lossy(&body));
                let _ = stream
                    .get_mut()
                    .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await;
            }
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = receiver().await?;
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    let bus = SignalBus::builder(pool)
        .publisher(Webhook {
            addr,
            path: "/signals".into(),
        })
        .register::<OrderPlaced>()
        .build()?;
    bus.migrate().await?;

    let mut tx = bus.begin().await?;
    tx.send(&OrderPlaced { order_id: 1 }).await?;
    let report = tx.commit_and_wait().await?;
    assert_eq!(report.sent, 1, "{report:?}");
    println!("sent {} signal(s) through the webhook", report.sent);
    Ok(())
}
