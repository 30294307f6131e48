//! An SQS consumer whose effects happen once per signal, however often SQS delivers it: the
//! signal's message id (attribute `signalbus-message-id`) is recorded in the inbox
//! (`signalbus_core::inbox`) in the same SQLite transaction as the effects, and the message is
//! deleted only after that commit (`signalbus_aws::consumer::consume`).
//!
//! ```sh
//! AWS_REGION=eu-west-1 cargo run -p signalbus-aws --example sqs_inbox_consumer -- \
//!     https://sqs.eu-west-1.amazonaws.com/123456789012/credits sqlite:///tmp/credits.db
//! ```
//!
//! Credentials and region come from the AWS default chain; `SQS_ENDPOINT` points it at an
//! emulator. Each message's body is a JSON object with an `amount`; the effect is a row in
//! `credits`. Messages stay invisible for 2 s after a receive (renewed while handled). With
//! `INBOX_EXAMPLE_PAUSE_BEFORE_ACK` set it waits after the commit, to be killed there: SQS
//! delivers the message again after its visibility timeout, and the inbox skips it.

use signalbus_aws::consumer::{ConsumerConfig, consume};
use signalbus_core::inbox::{Inbox, Receipt};
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [queue_url, db] = &args[..] else {
        return Err("usage: sqs_inbox_consumer QUEUE_URL SQLITE_URL".into());
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

    let bus_url = match std::env::var("SQS_ENDPOINT") {
        Ok(endpoint) => format!("sqs://?endpoint={endpoint}"),
        Err(_) => "sqs://".to_owned(),
    };
    let sqs = signalbus_aws::SqsPublisher::connect(&bus_url).await?;
    let config = ConsumerConfig::new(queue_url)
        .wait(Duration::from_secs(1))
        .visibility(Duration::from_secs(2));
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    let report = consume(
        sqs.client(),
        &config,
        4,
        |message| {
            let (pool, inbox) = (pool.clone(), inbox.clone());
            async move {
                let Some(id) = message.message_id().map(str::to_owned) else {
                    eprintln!("inbox_consumer: a message without signalbus-message-id, dropped");
                    return Ok(());
                };
                let mut tx = pool.begin().await?;
                let receipt = inbox.receive(&mut tx, &id).await?;
                if receipt == Receipt::First {
                    let credit: serde_json::Value = serde_json::from_slice(&message.body()?)?;
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
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok::<(), Failure>(())
            }
        },
        stop,
    )
    .await?;
    eprintln!(
        "inbox_consumer: stopped ({} deleted, {} rejected)",
        report.acked, report.rejected
    );
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
