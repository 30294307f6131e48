//! A RabbitMQ consumer whose effects happen once per signal, however often the broker
//! delivers it: the signal's message id is recorded in the inbox (`signalbus_core::inbox`)
//! in the same database transaction as the effects, and the message is acknowledged only
//! after that transaction committed.
//!
//! ```sh
//! cargo run -p signalbus-amqp --example amqp_inbox_consumer -- \
//!     amqp://guest:guest@127.0.0.1:5672/%2f credits sqlite:///tmp/credits.db
//! ```
//!
//! The database may be SQLite (`sqlite://FILE`), PostgreSQL (`postgres://…`) or MySQL/MariaDB
//! (`mysql://…`): the effects and the inbox share its transaction whichever it is.
//!
//! It runs on `signalbus_amqp::consumer::consume`: at most 4 handlers at once, 10 messages
//! sent ahead. Each message is a JSON object with an `amount`; the effect is a row in
//! `credits`. A handler that fails rolls back, and the message is requeued. A crash
//! after the commit and before the ack (set `INBOX_EXAMPLE_PAUSE_BEFORE_ACK` to have it wait
//! there, to be killed) makes RabbitMQ deliver the message again: the inbox recognises it and
//! the copy is acknowledged without a second credit. SIGTERM stops it between messages.

use signalbus_amqp::consumer::{ConsumerOptions, consume};
use signalbus_core::Backend;
use signalbus_core::inbox::{Inbox, Receipt};
use signalbus_core::storage::{PoolSettings, open_pool};
use std::io::Write;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The effect's statement, in each database's placeholders.
trait Effects: Backend {
    const CREATE: &'static str = "CREATE TABLE IF NOT EXISTS credits (message_id VARCHAR(191) NOT NULL, amount BIGINT NOT NULL)";
    const INSERT: &'static str;
}

impl Effects for sqlx::Sqlite {
    const INSERT: &'static str = "INSERT INTO credits (message_id, amount) VALUES (?, ?)";
}

impl Effects for sqlx::Postgres {
    const INSERT: &'static str = "INSERT INTO credits (message_id, amount) VALUES ($1, $2)";
}

impl Effects for sqlx::MySql {
    const INSERT: &'static str = "INSERT INTO credits (message_id, amount) VALUES (?, ?)";
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(queue), Some(db)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: amqp_inbox_consumer AMQP_URL QUEUE DATABASE_URL".into());
    };
    let pause = std::env::var_os("INBOX_EXAMPLE_PAUSE_BEFORE_ACK").is_some();
    // An SQLite file is created on first use.
    let settings = PoolSettings::new().create_sqlite_file(true);
    signalbus_core::with_database!(&db, |DB| {
        let pool = open_pool::<DB>(&db, &settings).await?;
        run(&url, &queue, pool, pause).await
    })?
}

async fn run<DB>(url: &str, queue: &str, pool: sqlx::Pool<DB>, pause: bool) -> Result<(), Failure>
where
    DB: Effects,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'t> String: sqlx::Encode<'t, DB>,
    for<'t> i64: sqlx::Encode<'t, DB>,
    String: sqlx::Type<DB>,
    i64: sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query(DB::CREATE).execute(&pool).await?;
    let inbox = Inbox::<DB>::new("credits")?;
    inbox.migrate(&pool).await?;

    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let stop = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    // Acknowledged only after `handle` committed; rejected (requeued) when it failed.
    let options = ConsumerOptions::default().prefetch(10).concurrency(4);
    let report = consume(
        &channel,
        queue,
        options,
        |delivery| {
            let (pool, inbox) = (pool.clone(), inbox.clone());
            async move {
                // A message without an id cannot be told from its copies: this example drops it.
                let Some(id) = signalbus_amqp::message_id(&delivery).map(str::to_owned) else {
                    eprintln!("inbox_consumer: a message without message_id, dropped");
                    return Ok(());
                };
                let receipt = handle(&pool, &inbox, &id, &delivery.data).await?;
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
    conn.close(200, "stopped".into()).await?;
    Ok(())
}

/// The effects of one message, in one transaction with its inbox record.
async fn handle<DB>(
    pool: &sqlx::Pool<DB>,
    inbox: &Inbox<DB>,
    id: &str,
    body: &[u8],
) -> Result<Receipt, Failure>
where
    DB: Effects,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'t> String: sqlx::Encode<'t, DB>,
    for<'t> i64: sqlx::Encode<'t, DB>,
    String: sqlx::Type<DB>,
    i64: sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    #[derive(serde::Deserialize)]
    struct Credit {
        amount: i64,
    }
    let mut tx = pool.begin().await?;
    let receipt = inbox.receive(&mut tx, id).await?;
    if receipt == Receipt::First {
        let credit: Credit = serde_json::from_slice(body)?;
        sqlx::query(DB::INSERT)
            .bind(id.to_owned())
            .bind(credit.amount)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(receipt)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
