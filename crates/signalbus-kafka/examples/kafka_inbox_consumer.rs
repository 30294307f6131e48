//! A Kafka consumer whose effects happen once per signal, however often it reads the record:
//! the signal's message id (the `message-id` header) is recorded in the inbox
//! (`signalbus_core::inbox`) in the same SQLite transaction as the effects, and the record's
//! offset is committed only after that commit (`signalbus_kafka::consumer::consume`).
//!
//! ```sh
//! cargo run -p signalbus-kafka --example kafka_inbox_consumer -- \
//!     127.0.0.1:9092 credits credits-group sqlite:///tmp/credits.db
//! ```
//!
//! It reads partition 0 of `TOPIC` from the offset `GROUP` committed last (the start when
//! none). Each record is a JSON object with an `amount`; the effect is a row in `credits`.
//! With `INBOX_EXAMPLE_PAUSE_BEFORE_ACK` set it waits after the commit, to be killed there:
//! the record is read again from the committed offset, and the inbox skips it.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use signalbus_core::inbox::{Inbox, Receipt};
use std::io::Write;
use std::str::FromStr;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, group, db] = &args[..] else {
        return Err("usage: kafka_inbox_consumer BROKERS TOPIC GROUP SQLITE_URL".into());
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

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        // Offsets are committed by the runner, after each record's transaction.
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Stored)?;
    consumer.assign(&partitions)?;
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    let report = signalbus_kafka::consumer::consume(
        &consumer,
        |record| {
            let (pool, inbox) = (pool.clone(), inbox.clone());
            async move {
                let Some(id) = signalbus_kafka::message_id(&record).map(str::to_owned) else {
                    eprintln!("kafka_inbox_consumer: a record without message-id, skipped");
                    return Ok(());
                };
                let mut tx = pool.begin().await?;
                let receipt = inbox.receive(&mut tx, &id).await?;
                if receipt == Receipt::First {
                    let credit: serde_json::Value =
                        serde_json::from_slice(record.payload().unwrap_or_default())?;
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
        "kafka_inbox_consumer: stopped ({} committed, {} failed)",
        report.acked, report.rejected
    );
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
