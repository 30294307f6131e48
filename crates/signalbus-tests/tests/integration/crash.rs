//! The process is killed (SIGKILL) after its commit and before the bus confirmed the send:
//! the signal must stay pending and a later flush must deliver it.
//!
//! The test re-runs this test binary as a child that commits a signal with a publisher that
//! never confirms, prints the committed message id, and waits; the parent kills it there.

use crate::common::TestBackend;
use crate::signals::{OrderPlaced, order};
use signalbus::publisher::MemoryPublisher;
use signalbus::{Message, PublishError, Publisher, Selection, SignalBus};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_URL: &str = "SIGNALBUS_CRASH_CHILD_URL";

/// A broker that takes messages and never confirms them.
struct NeverConfirms;

impl Publisher for NeverConfirms {
    async fn publish(&self, _batch: &[Message]) -> Result<(), PublishError> {
        std::future::pending().await
    }
}

async fn child<DB: TestBackend>(url: &str) {
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(3)
        .connect(url)
        .await
        .unwrap();
    let bus = SignalBus::builder(pool)
        .publisher(NeverConfirms)
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    let id = tx.send(&order(1)).await.unwrap();
    let delivery = tx.commit().await.unwrap();
    println!("COMMITTED {}", id.message_id);
    // Give the auto-flush time to lock the row and start publishing, then report it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("PUBLISHING");
    delivery.await;
    unreachable!("the publisher never confirms");
}

/// Entry point of the child process; does nothing in a normal run.
#[tokio::test]
#[ignore = "run by crash tests as a child process"]
async fn crash_child() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    match url.split(':').next() {
        Some("postgres") => child::<sqlx::Postgres>(&url).await,
        Some("mysql") => child::<sqlx::MySql>(&url).await,
        _ => child::<sqlx::Sqlite>(&url).await,
    }
}

async fn killed_after_commit_loses_nothing<DB: TestBackend>() {
    let db = DB::create(3).await;
    DB::create_business_table(&db.pool).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    bus.migrate().await.unwrap();

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, &db.url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut message_id = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        // libtest may print its own text before ours on the same line.
        if let Some((_, id)) = line.split_once("COMMITTED ") {
            message_id = Some(id.trim().to_owned());
        }
        if line.contains("PUBLISHING") {
            break;
        }
    }
    let message_id = message_id.expect("child committed a signal");
    child.0.kill().unwrap(); // SIGKILL: no destructor, no rollback hook, nothing runs
    let status = child.0.wait().unwrap();
    assert!(!status.success());

    assert_eq!(
        DB::count_business(&db.pool).await,
        1,
        "the business write committed"
    );
    assert_eq!(
        DB::count_rows(&db.pool, "order_placed_signal").await,
        1,
        "the signal is pending"
    );
    // The killed child's server session may hold the row for a moment after the kill, and
    // flushing skips locked rows: retry over that moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bus.flush(&Selection::all(), Duration::ZERO).await.unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pending signal was never flushed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = outbox.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].id, message_id,
        "same stable id as the child recorded"
    );
    assert_eq!(DB::count_rows(&db.pool, "order_placed_signal").await, 0);
    db.cleanup().await;
}

crate::on_every_database!(killed_after_commit_loses_nothing);

/// Kills the child when the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
