//! signalbus in one minute, on SQLite in a temporary file, no server needed:
//!
//! 1. an order and its signal are written in one transaction; after the commit the signal is
//!    delivered (here: printed as a JSON line) and its row deleted;
//! 2. with auto-flush off the signal stays pending, survives in the table, and an explicit
//!    flush delivers it.
//!
//! `cargo run --example quickstart`

use serde::Serialize;
use signalbus::publisher::StdoutPublisher;
use signalbus::{DEFAULT_FLUSH_WAIT, Selection, Signal, SignalBus};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use std::time::Duration;

/// The message "an order was placed". Its rows live in the table `order_placed`; each becomes
/// a message to destination `orders` with routing key `order.placed`.
#[derive(Serialize, Signal)]
#[signal(destination = "orders", routing_key = "order.placed")]
struct OrderPlaced {
    order_id: i64,
    #[signal(header)]
    customer: String,
    total_cents: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shop.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total_cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;

    let bus = SignalBus::builder(pool.clone())
        .publisher(StdoutPublisher::new()) // a real service would use amqp://, nats://, ...
        .register::<OrderPlaced>()
        .build()?;
    bus.migrate().await?; // creates the signal table `order_placed`
    println!("database: {}", path.display());

    // 1. Business write and signal in one transaction; auto-flush after commit.
    println!("\n1. order 1 and its signal in one transaction, auto-flushed after commit:");
    let mut tx = bus.begin().await?;
    sqlx::query("INSERT INTO orders (id, customer, total_cents) VALUES (1, 'ada', 4200)")
        .execute(&mut *tx)
        .await?;
    tx.send(&OrderPlaced {
        order_id: 1,
        customer: "ada".into(),
        total_cents: 4200,
    })
    .await?;
    let report = tx.commit_and_wait().await?;
    println!("   sent: {}, left pending: {}", report.sent, report.pending);
    println!(
        "   rows left in order_placed: {}",
        pending_rows(&pool).await?
    );

    // 2. Auto-flush off: the signal stays pending until an explicit flush.
    println!("\n2. auto-flush off: order 2's signal stays pending");
    bus.set_autoflush(false);
    let mut tx = bus.begin().await?;
    sqlx::query("INSERT INTO orders (id, customer, total_cents) VALUES (2, 'grace', 990)")
        .execute(&mut *tx)
        .await?;
    tx.send(&OrderPlaced {
        order_id: 2,
        customer: "grace".into(),
        total_cents: 990,
    })
    .await?;
    let report = tx.commit_and_wait().await?;
    println!("   sent: {}, left pending: {}", report.sent, report.pending);
    for (name, stats) in bus.pending(&Selection::all()).await? {
        println!("   pending {name}: {} signal(s)", stats.count);
    }

    println!("\n   explicit flush (what `signalbus flush` does):");
    // A short wait: in a service, DEFAULT_FLUSH_WAIT lets in-flight auto-flushes finish first.
    let sent = bus
        .flush(
            &Selection::all(),
            DEFAULT_FLUSH_WAIT.min(Duration::from_millis(100)),
        )
        .await?;
    println!(
        "   flushed: {sent}, rows left in order_placed: {}",
        pending_rows(&pool).await?
    );
    Ok(())
}

async fn pending_rows(pool: &sqlx::SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM order_placed")
        .fetch_one(pool)
        .await
}
