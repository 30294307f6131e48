//! A NATS JetStream consumer whose effects happen once per signal, however often JetStream
//! delivers it: the signal's message id (`Nats-Msg-Id`) is recorded in the inbox
//! (`signalbus_core::inbox`) in the same SQLite transaction as the effects, and the message
//! is acknowledged only after that commit (`signalbus_nats::consumer::consume`).
//!
//! ```sh
//! cargo run -p signalbus-nats --example nats_inbox_consumer -- \
//!     nats://127.0.0.1:4222 CREDITS credits sqlite:///tmp/credits.db
//! ```
//!
//! It reads stream `STREAM` through the durable pull consumer `CONSUMER` (created if missing,
//! 2 s ack wait). Each message is a JSON object with an `amount`; the effect is a row in
//! `credits`. With `INBOX_EXAMPLE_PAUSE_BEFORE_ACK` set it waits after the commit, to be
//! killed there: JetStream delivers the message again, and the inbox skips it.

use async_nats::jetstream::{self, consumer::pull};
use signalbus_core::inbox::{Inbox, Receipt};
use std::io::Write;
use std::str::FromStr;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, stream, consumer, db] = &args[..] else {
        return Err("usage: nats_inbox_consumer NATS_URL STREAM CONSUMER SQLITE_URL".into());
    };
    let pause = std::env::var_os("INBOX_EXAMPLE_PAUSE_BEFORE_ACK").is_some();
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(db)?.create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS credits (message_id TEXT NOT NULL, amount INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let inbox = Inbox::<sqlx::Sqlite>::new("credits")?;
    inbox.migrate(&pool).await?;

    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    let consumer = js
        .get_stream(stream.as_str())
        .await?
        .get_or_create_consumer(
            consumer,
            pull::Config {
                durable_name: Some(consumer.clone()),
                ack_wait: std::time::Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await?;
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    let report = signalbus_nats::consumer::consume(
        &consumer,
        4,
        |message| {
            let (pool, inbox) = (pool.clone(), inbox.clone());
            async move {
                let Some(id) = signalbus_nats::message_id(&message).map(str::to_owned) else {
                    eprintln!("inbox_consumer: a message without Nats-Msg-Id, dropped");
                    return Ok(());
                };
                let mut tx = pool.begin().await?;
                let receipt = inbox.receive(&mut tx, &id).await?;
                if receipt == Receipt::First {
                    let credit: serde_json::Value = serde_json::from_slice(&message.payload)?;
                    sqlx::query("INSERT INTO credits (message_id, amount) VALUES (?, ?)")
                        .bind(&id)
                        .bind(credit["amount"].as_i64().unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                let what = if receipt.is_duplicate() {
                    "duplicate"
                } else {
                    "applied"
                };
                say(&format!("{what} {id}"));
                if pause {
                    say(&format!("committed {id}"));
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                Ok::<(), Failure>(())
            }
        },
        stop,
    )
    .await?;
    eprintln!(
        "inbox_consumer: stopped ({} acknowledged, {} rejected)",
        report.acked, report.rejected
    );
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
