//! A Redis Streams consumer whose effects happen once per signal, however often the stream
//! delivers it: the signal's message id (the entry's `id` field) is recorded in the inbox
//! (`signalbus_core::inbox`) in the same SQLite transaction as the effects, and the entry is
//! acknowledged (`XACK`) only after that commit (`signalbus_redis::consumer::consume`).
//!
//! ```sh
//! cargo run -p signalbus-redis --example redis_inbox_consumer -- \
//!     redis://127.0.0.1:6379 credits-stream credits sqlite:///tmp/credits.db
//! ```
//!
//! It reads stream `STREAM` in consumer group `GROUP` (created if missing) as consumer
//! `inbox-example`. Each entry's body is a JSON object with an `amount`; the effect is a row in
//! `credits`. With `INBOX_EXAMPLE_PAUSE_BEFORE_ACK` set it waits after the commit, to be
//! killed there: restarted under the same consumer name, it reads its unacknowledged entry
//! again, and the inbox skips it.

use signalbus_core::inbox::{Inbox, Receipt};
use signalbus_redis::consumer::{ConsumerConfig, consume};
use std::io::Write;
use std::str::FromStr;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, stream, group, db] = &args[..] else {
        return Err("usage: redis_inbox_consumer REDIS_URL STREAM GROUP SQLITE_URL".into());
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

    let client = redis::Client::open(url.as_str())?;
    let config = ConsumerConfig::new(stream, group, "inbox-example");
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    let report = consume(
        &client,
        &config,
        4,
        |entry| {
            let (pool, inbox) = (pool.clone(), inbox.clone());
            async move {
                let Some(id) = entry.message_id().map(str::to_owned) else {
                    eprintln!("inbox_consumer: an entry without an `id` field, dropped");
                    return Ok(());
                };
                let mut tx = pool.begin().await?;
                let receipt = inbox.receive(&mut tx, &id).await?;
                if receipt == Receipt::First {
                    let credit: serde_json::Value = serde_json::from_slice(entry.body())?;
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
