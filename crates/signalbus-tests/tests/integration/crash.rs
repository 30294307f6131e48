//! The process is killed (SIGKILL) after its commit and before the bus confirmed the send:
//! the signal must stay pending and a later flush must deliver it.
//!
//! The test re-runs this test binary as a child that commits a signal with a publisher that
//! never confirms. That publisher prints a marker with the ids it was handed from inside its
//! `publish` call, then blocks: the parent kills the child as soon as it reads the marker, so
//! the kill provably lands while the auto-flush's publish is in flight, after the commit and
//! before the auto-flush's delete could commit.

use crate::common::TestBackend;
use crate::signals::{OrderPlaced, order};
use signalbus::publisher::MemoryPublisher;
use signalbus::{Message, PublishError, Publisher, Selection, SignalBus};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_URL: &str = "SIGNALBUS_CRASH_CHILD_URL";

/// The marker [`NeverConfirms`] prints, followed by the ids it was handed.
const PUBLISHING: &str = "PUBLISHING ";

/// A broker that takes messages and never confirms them: it tells the parent which ones it
/// holds (stdout itself, flushed, not libtest's capture), then blocks until it is killed.
struct NeverConfirms;

impl Publisher for NeverConfirms {
    async fn publish(&self, batch: &[Message]) -> Result<signalbus::BatchOutcome, PublishError> {
        let ids: Vec<&str> = batch.iter().map(|m| m.id.as_str()).collect();
        print_flushed(&format!("{PUBLISHING}{}", ids.join(",")));
        std::future::pending().await
    }
}

/// One line on the process' stdout itself (not libtest's capture), flushed at once.
fn print_flushed(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").unwrap();
    stdout.flush().unwrap();
}

/// The lease of the child's auto-flush: after it, the killed child's signal is free again.
const CHILD_LEASE: Duration = Duration::from_secs(5);

async fn child<DB: TestBackend>(url: &str) {
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(3)
        .connect(url)
        .await
        .unwrap();
    let bus = SignalBus::builder(pool)
        .publisher(NeverConfirms)
        .register::<OrderPlaced>()
        // The row is written leased for the auto-flush: killed, the child holds it that long.
        .publish_timeout(Duration::from_secs(1))
        .lease(CHILD_LEASE)
        .build()
        .unwrap();
    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    let id = tx.send(&order(1)).await.unwrap();
    // Printed before the commit, so before the auto-flush can print its marker.
    print_flushed(&format!("SENT {}", id.message_id));
    let delivery = tx.commit().await.unwrap();
    // Bounded, so that a child whose auto-flush never reaches the publisher ends (and the
    // parent fails on the missing marker) instead of hanging the test.
    let report = tokio::time::timeout(Duration::from_secs(30), delivery).await;
    panic!("the parent did not kill this process during its publish: {report:?}");
}

/// Entry point of the child process; does nothing in a normal run.
#[tokio::test]
#[ignore = "run by crash tests as a child process"]
async fn crash_child() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    signalbus::with_database!(&url, |DB| child::<DB>(&url).await).unwrap();
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

    let mut child = signalbus_testkit::process::KillOnDrop(
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
    let lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let (mut message_id, mut publishing) = (None, None);
    for line in lines {
        let line = line.unwrap();
        // libtest may print its own text before ours on the same line.
        if let Some((_, id)) = line.split_once("SENT ") {
            message_id = Some(id.trim().to_owned());
        }
        if let Some((_, ids)) = line.split_once(PUBLISHING) {
            publishing = Some(ids.trim().to_owned());
            break;
        }
    }
    // The child's publisher is blocked inside `publish` now: kill it right there. SIGKILL:
    // no destructor, no rollback hook, nothing runs.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success());
    let message_id = message_id.expect("the child recorded a signal");
    let publishing =
        publishing.expect("the child's auto-flush reached its publisher before it exited");
    assert_eq!(
        publishing, message_id,
        "the publish in flight at the kill is that of the committed signal"
    );

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
    // The killed child still holds the row's lease: no flush sends it until the lease has
    // expired (a dead flusher delays its signals by one lease, never loses them).
    let killed_at = std::time::Instant::now();
    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        0
    );
    let deadline = killed_at + CHILD_LEASE + Duration::from_secs(30);
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
