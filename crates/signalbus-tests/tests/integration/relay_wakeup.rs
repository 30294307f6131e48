//! The relay's wake-up on PostgreSQL without NOTIFY in busy writers' commits: the insert
//! trigger notifies only while a relay is idle (holds the table's idle lock), so writers that
//! commit while every relay is busy skip the notification and the database-wide lock it takes
//! at commit; an idle relay still wakes at once (its poll is 30 s here), and nothing is lost.
//! An ordered relay's tasks of one type are not idle while one of them sends the only lane
//! with rows (signals without a key): they wait for it, and the writers still skip NOTIFY.

use crate::common::{TestBackend, TestDb};
use signalbus::publisher::MemoryPublisher;
use signalbus::{BatchOutcome, Message, PublishError, Publisher, Relay, SignalBus, SignalType};
use sqlx::Postgres;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TABLE: &str = "wake_event";

/// A broker that takes this long per call (20 ms: the relay is busy while writers go on).
#[derive(Clone)]
struct Slow(MemoryPublisher, Duration);

impl Publisher for Slow {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        tokio::time::sleep(self.1).await;
        self.0.publish(batch).await
    }
}

/// A database of its own, and a bus on it (auto-flush off, bursts of 50) whose broker is
/// [`Slow`] (20 ms a call).
async fn setup(connections: u32) -> (TestDb<Postgres>, SignalBus<Postgres>, MemoryPublisher) {
    setup_with(connections, Duration::from_millis(20), 50).await
}

async fn setup_with(
    connections: u32,
    publish_takes: Duration,
    burst: usize,
) -> (TestDb<Postgres>, SignalBus<Postgres>, MemoryPublisher) {
    let db = <Postgres as TestBackend>::create(connections).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(Slow(outbox.clone(), publish_takes))
        .register_type(SignalType::new(TABLE).autoflush(false).burst(burst))
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    (db, bus, outbox)
}

/// A relay whose poll (30 s) is far longer than any test waits: only a wake-up is in time
/// (for an unordered relay; an ordered one looks again soon after it went idle, backing off
/// to the poll, since a row may be held back by an older transaction); `ordered`: with its
/// 4 tasks of the type.
async fn start_relay(bus: &SignalBus<Postgres>, ordered: bool) -> Relay {
    bus.relay()
        .ordered(ordered)
        .poll(Duration::from_millis(10), Duration::from_secs(30))
        .start()
        .await
        .unwrap()
}

async fn insert_one(pool: &sqlx::PgPool, n: usize) {
    sqlx::query(
        "INSERT INTO wake_event (topic, body) VALUES ('wake', convert_to($1::text, 'UTF8'))",
    )
    .bind(n.to_string())
    .execute(pool)
    .await
    .unwrap();
}

async fn until_sent(outbox: &MemoryPublisher, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    while outbox.len() < n {
        assert!(
            started.elapsed() < limit,
            "{} of {n} sent after {limit:?}",
            outbox.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_writers_skip_notifying_and_an_idle_relay_still_wakes_at_once() {
    busy_writers_skip_notifying(false).await;
}

/// Before its tasks waited for each other, three of the four went idle while the fourth
/// sent, so the writers notified at every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_writers_skip_notifying_while_one_task_of_an_ordered_relay_sends() {
    busy_writers_skip_notifying(true).await;
}

async fn busy_writers_skip_notifying(ordered: bool) {
    let (db, bus, outbox) = setup(16).await;
    // Every notification the writers send.
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("signalbus").await.unwrap();
    let heard = Arc::new(AtomicUsize::new(0));
    let counting = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while listener.recv().await.is_ok() {
                heard.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let relay = start_relay(&bus, ordered).await;

    // Idle: one row is sent at once (the poll would take 30 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    insert_one(&db.pool, 0).await;
    let took = until_sent(&outbox, 1, Duration::from_secs(10)).await;
    assert!(
        took < Duration::from_secs(3),
        "an idle relay woke after {took:?}"
    );
    // An idle relay has the writers notify.
    let listening = Instant::now();
    while heard.load(Ordering::SeqCst) == 0 {
        assert!(
            listening.elapsed() < Duration::from_secs(5),
            "no notification for a row written while the relay was idle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Busy: 8 writers, one row per transaction, while the relay publishes slowly.
    heard.store(0, Ordering::SeqCst);
    let (writers, per_writer) = (8, 150);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let pool = db.pool.clone();
        tasks.spawn(async move {
            for i in 0..per_writer {
                insert_one(&pool, 1 + w * per_writer + i).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let transactions = writers * per_writer;
    until_sent(&outbox, 1 + transactions, Duration::from_secs(60)).await;
    let notified = heard.load(Ordering::SeqCst);
    println!("{notified} notifications for {transactions} transactions");
    assert!(
        notified * 4 < transactions,
        "writers notified {notified} times for {transactions} transactions while the relay was busy"
    );

    // Idle again: the next row is sent at once, and nothing was lost or sent twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    insert_one(&db.pool, 1 + transactions).await;
    let took = until_sent(&outbox, 2 + transactions, Duration::from_secs(10)).await;
    assert!(
        took < Duration::from_secs(3),
        "an idle relay woke after {took:?}"
    );
    let mut bodies: Vec<String> = outbox
        .messages()
        .iter()
        .map(|m| m.body_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 2 + transactions, "each signal once");
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    counting.abort();
    db.cleanup().await;
}

/// A writer that skipped notifying (the relay was busy when it inserted) and commits just
/// after the relay went idle: the relay's lock waits for its commit, and the look after it
/// finds the row, long before the 30 s poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_that_skipped_notifying_is_found_when_the_relay_goes_idle() {
    let (db, bus, outbox) = setup(8).await;
    let relay = start_relay(&bus, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let sent = outbox.len();
        // Busy for about 4 publish calls of 20 ms.
        for n in 0..200 {
            insert_one(&db.pool, 10_000 * round + n).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut late = db.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO wake_event (topic, body) VALUES ('wake', 'late')")
            .execute(&mut *late)
            .await
            .unwrap();
        // Past the relay's last burst, within its 200 ms wait for the lock.
        tokio::time::sleep(Duration::from_millis(120)).await;
        late.commit().await.unwrap();
        let took = until_sent(&outbox, sent + 201, Duration::from_secs(40)).await;
        assert!(
            took < Duration::from_secs(5),
            "round {round}: the late writer's row was sent after {took:?}"
        );
    }
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    db.cleanup().await;
}

/// How often the signal table was scanned (sequential and index scans), from the statistics.
async fn table_scans(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT (COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0))::bigint \
         FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(TABLE)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The ordered tasks that wait for a sibling wait for the lane it sends, not for the lanes
/// they looked at themselves: with most lanes holding only rows that back off (nothing to
/// send there) and a sibling sending a slow burst of another lane, the waiting tasks look at
/// the table a few times per burst, not in a loop. (The first version of the wait woke a
/// task when it gave back the lanes it had looked at: tens of thousands of scans here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_tasks_waiting_for_a_sibling_do_not_look_in_a_loop() {
    // A burst of 5 rows of one key goes out in 5 publish calls (one per round): 1.5 s.
    let (db, bus, outbox) = setup_with(16, Duration::from_millis(300), 5).await;
    // 64 keys whose rows back off for an hour: most of the 8 lanes have rows, none to send.
    sqlx::query(
        "INSERT INTO wake_event (topic, body, ordering_key, next_attempt_at) \
         SELECT 'wake', 'later', 'k' || g, now() + interval '1 hour' \
         FROM generate_series(1, 64) AS g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // One key to send: 4 bursts of 5.
    sqlx::query(
        "INSERT INTO wake_event (topic, body, ordering_key) \
         SELECT 'wake', convert_to(g::text, 'UTF8'), 'hot' FROM generate_series(1, 20) AS g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before = table_scans(&db.pool).await;
    let relay = start_relay(&bus, true).await;
    let took = until_sent(&outbox, 20, Duration::from_secs(30)).await;
    // A server process reports its counts when it ends at the latest: the relay's lanes'
    // connections close with it (pooled ones it used may report theirs later: fewer here).
    assert!(relay.shutdown(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let scans = table_scans(&db.pool).await - before;
    println!("{scans} scans of the table in {took:?} of slow bursts");
    assert!(
        scans < 5_000,
        "the relay scanned the table {scans} times in {took:?} while one task sent slow bursts"
    );
    let bodies: Vec<String> = outbox
        .messages()
        .iter()
        .map(|m| m.body_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=20).map(|n| n.to_string()).collect();
    assert_eq!(bodies, expected, "the key's signals once each, in order");
    db.cleanup().await;
}
