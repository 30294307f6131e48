//! Poison messages on every database (memory bus; the broker versions are in `buses.rs` and
//! the CLI tests): a refused message never holds the good ones hostage, is retried with
//! growing delays, then parked; nothing is re-sent; unpark sends it once; invalid rows are
//! parked; a bus failure spends no attempt; flushers started together split a backlog and
//! never send a claimed row; a flusher that dies holding a lease delays its rows only until
//! the lease expires; `migrate` upgrades a table of the first contract.

use crate::common::{TestBackend, TestDb};
use crate::on_every_database;
use signalbus::publisher::MemoryPublisher;
use signalbus::{
    BatchOutcome, Message, ParkedRows, PublishError, Publisher, RetryPolicy, Selection, SignalBus,
    SignalType,
};
use sqlx::AssertSqlSafe;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TABLE: &str = "poison_signal";

fn signal_type(max_attempts: u32) -> SignalType {
    SignalType::new("poison")
        .table(TABLE)
        .autoflush(false)
        .burst(100)
        .retry(RetryPolicy {
            max_attempts,
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
        })
}

async fn bus<DB: TestBackend>(
    db: &TestDb<DB>,
    publisher: impl Publisher,
    max: u32,
) -> SignalBus<DB> {
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register_type(signal_type(max))
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus
}

/// `rows` rows to `topic` (plain SQL, as another language's writer would).
async fn insert<DB: TestBackend>(db: &TestDb<DB>, topic: &str, rows: usize, headers: Option<&str>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let headers = headers.map_or("NULL".to_owned(), |h| format!("'{h}'"));
    for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("('{topic}', '{{\"n\":{i}}}', {headers})"))
            .collect();
        let sql = format!(
            "INSERT INTO {TABLE} (topic, body, headers) VALUES {}",
            values.join(", ")
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
            .unwrap();
    }
}

/// The broker, noting when each publish call that carries a message to `nowhere` began:
/// the poison row's attempts, timed where they happen (a flush that takes longer than a
/// backoff, on a loaded machine, may make two of them).
#[derive(Clone)]
struct Timed {
    outbox: MemoryPublisher,
    poison_calls: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl Publisher for Timed {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if batch.iter().any(|m| m.destination == "nowhere") {
            self.poison_calls
                .lock()
                .unwrap()
                .push(std::time::Instant::now());
        }
        self.outbox.publish(batch).await
    }
}

fn per_id(messages: &[Message]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in messages {
        *seen.entry(m.id.clone()).or_default() += 1;
    }
    seen
}

async fn stats<DB: TestBackend>(bus: &SignalBus<DB>) -> signalbus::PendingStats {
    bus.pending(&Selection::all()).await.unwrap()[0].1
}

/// The scenario: one row the broker refuses, then 1,000 good rows behind it.
async fn good_messages_are_never_held_hostage<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    outbox.refuse_destination("nowhere");
    let timed = Timed {
        outbox: outbox.clone(),
        poison_calls: Arc::default(),
    };
    let bus = bus(&db, timed.clone(), 4).await;
    insert(&db, "nowhere", 1, None).await;
    insert(&db, "good", 1000, None).await;

    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 1000);
    let seen = per_id(&outbox.messages());
    assert_eq!(seen.len(), 1000);
    assert!(
        seen.values().all(|&n| n == 1),
        "each good message exactly once"
    );
    let s = stats(&bus).await;
    assert_eq!((s.count, s.backing_off, s.parked), (1, 1, 0), "{s:?}");

    // Flushing again at once: the poison row is backing off, nothing is sent or re-sent.
    let calls = outbox.calls();
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    assert_eq!(outbox.calls(), calls, "not even tried while it backs off");

    // It is retried with growing delays, then parked.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stats(&bus).await.parked == 0 {
        bus.flush_many(&Selection::all()).await.unwrap();
        assert!(std::time::Instant::now() < deadline, "parked in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = timed.poison_calls.lock().unwrap().clone();
    let waits: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        waits.len(),
        3,
        "attempts 2, 3 and 4 after the first: {waits:?}"
    );
    // Delays of base·2^(n-1), half of it jitter: [100, 200], [200, 400], then [400, 800] ms,
    // each counted from the refusal, which ends the call timed before it. The first attempt
    // shares its flush with 1,000 rows, so only the next two are checked, less a little for
    // the clocks.
    let slack = Duration::from_millis(30);
    assert!(
        waits[1] >= Duration::from_millis(200) - slack,
        "the second delay: {waits:?}"
    );
    assert!(
        waits[2] >= Duration::from_millis(400) - slack,
        "the third: {waits:?}"
    );
    assert!(waits[2] + slack >= waits[1], "delays grow: {waits:?}");
    let parked = bus.parked(&Selection::all(), 10).await.unwrap();
    let (name, rows) = &parked[0];
    assert_eq!((name.as_str(), rows.len()), ("poison", 1));
    assert_eq!(rows[0].attempts, 4);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("no route to `nowhere`")
    );

    // Parked: never sent again.
    let calls = outbox.calls();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    assert_eq!(outbox.calls(), calls);
    assert_eq!(outbox.len(), 1000);

    // Unknown ids change nothing; unpark sends it once the route exists.
    let unknown = bus
        .unpark(&Selection::all(), ParkedRows::Ids(&[rows[0].id + 10_000]))
        .await
        .unwrap();
    assert_eq!(unknown, 0);
    outbox.accept_destination("nowhere");
    let unparked = bus
        .unpark(&Selection::all(), ParkedRows::Ids(&[rows[0].id]))
        .await
        .unwrap();
    assert_eq!(unparked, 1);
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 1);
    let seen = per_id(&outbox.messages());
    assert_eq!(seen.len(), 1001);
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(DB::count_rows(&db.pool, TABLE).await, 0);
    db.cleanup().await;
}

/// A row that is not a valid signal is parked at once; the others go out, and later
/// flushes succeed. Purging removes it for good.
async fn invalid_rows_are_parked<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(3).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, outbox.clone(), 5).await;
    insert(&db, "good", 3, None).await;
    insert(&db, "good", 1, Some("[1]")).await;
    insert(&db, "good", 3, None).await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 6);
    let s = stats(&bus).await;
    assert_eq!((s.count, s.parked), (1, 1), "{s:?}");
    assert_eq!(
        bus.flush_many(&Selection::all()).await.unwrap(),
        0,
        "and no error"
    );
    assert_eq!(
        bus.flush(&Selection::all(), Duration::ZERO).await.unwrap(),
        0
    );
    let parked = bus.parked(&Selection::all(), 10).await.unwrap();
    assert!(
        parked[0].1[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("headers must be a JSON object")
    );
    assert_eq!(
        bus.purge_parked(&Selection::all(), ParkedRows::All)
            .await
            .unwrap(),
        1
    );
    assert_eq!(DB::count_rows(&db.pool, TABLE).await, 0);
    db.cleanup().await;
}

/// The bus failing as a whole spends no attempt: the burst is given back at once and the
/// next flush sends it.
async fn a_bus_failure_spends_no_attempt<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(3).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, outbox.clone(), 1).await;
    insert(&db, "good", 5, None).await;
    outbox.set_down(true);
    for _ in 0..3 {
        assert!(bus.flush_many(&Selection::all()).await.is_err());
    }
    let s = stats(&bus).await;
    assert_eq!((s.count, s.backing_off, s.parked), (5, 0, 0), "{s:?}");
    outbox.set_down(false);
    assert_eq!(
        bus.flush_many(&Selection::all()).await.unwrap(),
        5,
        "given back at once"
    );
    db.cleanup().await;
}

/// The memory bus, whose first publish call waits (at most 2 s) for a second one: while one
/// flusher holds its first burst, another must claim and send a burst of its own. So one
/// flusher cannot drain the backlog before the others start, however the machine schedules
/// them.
struct Meeting {
    outbox: MemoryPublisher,
    calls: Arc<AtomicUsize>,
    second: Arc<tokio::sync::Barrier>,
}

impl Publisher for Meeting {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < 2 {
            // Bounded, and within SQLite's 3 s publish timeout: flushers that cannot work at
            // once fail the shares below instead of hanging.
            let wait = self.second.wait();
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
        self.outbox.publish(batch).await
    }
}

/// Four flushers started together on one backlog split it: at least two of them send
/// bursts of their own, and no row goes out twice.
async fn concurrent_flushers_split_the_work<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    const ROWS: usize = 4000;
    let db = DB::create(10).await;
    let outbox = MemoryPublisher::new();
    let meeting = Meeting {
        outbox: outbox.clone(),
        calls: Arc::default(),
        second: Arc::new(tokio::sync::Barrier::new(2)),
    };
    let bus = bus(&db, meeting, 3).await;
    insert(&db, "good", ROWS, None).await;
    let start = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (bus, start) = (bus.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                bus.flush_many(&Selection::all()).await.unwrap()
            })
        })
        .collect();
    let mut shares = Vec::new();
    for t in tasks {
        shares.push(t.await.unwrap());
    }
    assert_eq!(shares.iter().sum::<usize>(), ROWS, "{shares:?}");
    // A burst (100 rows) is the unit of the split. A flusher that took every row leaves the
    // others at 0, and fails this however fast it was.
    let working = shares.iter().filter(|&&sent| sent >= 100).count();
    assert!(working >= 2, "the backlog was not split: {shares:?}");
    let seen = per_id(&outbox.messages());
    assert_eq!(seen.len(), ROWS);
    assert!(seen.values().all(|&n| n == 1), "no row sent twice");
    db.cleanup().await;
}

/// Never confirms: a flusher that hangs (or died) while holding its claim.
struct Hangs;

impl Publisher for Hangs {
    async fn publish(&self, _: &[Message]) -> Result<BatchOutcome, PublishError> {
        std::future::pending().await
    }
}

/// A flusher that dies holding a claim keeps other flushers away only until its lease
/// expires; then another sends every row.
async fn a_dead_flushers_lease_expires<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let lease = Duration::from_secs(2);
    let stuck = SignalBus::builder(db.pool.clone())
        .publisher(Hangs)
        .register_type(signal_type(3))
        .autoflush(false)
        .publish_timeout(Duration::from_secs(1))
        .lease(lease)
        .build()
        .unwrap();
    stuck.migrate().await.unwrap();
    insert(&db, "good", 50, None).await;
    let dying = tokio::spawn({
        let stuck = stuck.clone();
        async move { stuck.flush_many(&Selection::all()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    dying.abort(); // dies mid-publish: no settle, no give-back
    let outbox = MemoryPublisher::new();
    let other = bus(&db, outbox.clone(), 3).await;
    assert_eq!(
        other.flush_many(&Selection::all()).await.unwrap(),
        0,
        "leased"
    );
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert_eq!(other.flush_many(&Selection::all()).await.unwrap(), 50);
    assert_eq!(per_id(&outbox.messages()).len(), 50);
    db.cleanup().await;
}

/// A table of the first contract (no attempts, next_attempt_at, last_error, parked_at,
/// claim) is upgraded in place by `migrate`; its rows are sent.
async fn migrate_upgrades_an_old_table<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(3).await;
    let old = match DB::NAME {
        "PostgreSQL" => {
            "CREATE TABLE poison_signal (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             message_id TEXT NOT NULL DEFAULT gen_random_uuid()::text, topic TEXT NOT NULL, \
             routing_key TEXT, headers TEXT, body BYTEA NOT NULL, content_type TEXT, \
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
             txid xid8 NOT NULL DEFAULT pg_current_xact_id())"
        }
        "MySQL" => {
            "CREATE TABLE poison_signal (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             message_id VARCHAR(64) NOT NULL DEFAULT (UUID()), topic VARCHAR(255) NOT NULL, \
             routing_key VARCHAR(255) NULL, headers TEXT NULL, body LONGBLOB NOT NULL, \
             content_type VARCHAR(255) NULL, \
             created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
        }
        _ => {
            "CREATE TABLE poison_signal (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             message_id TEXT NOT NULL DEFAULT (lower(hex(randomblob(16)))), topic TEXT NOT NULL, \
             routing_key TEXT, headers TEXT, body BLOB NOT NULL, content_type TEXT, \
             created_at INTEGER NOT NULL \
             DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)))"
        }
    };
    sqlx::raw_sql(old).execute(&db.pool).await.unwrap();
    insert(&db, "good", 3, None).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, outbox.clone(), 3).await; // migrates
    bus.migrate().await.unwrap(); // and again: idempotent
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 3);
    insert(&db, "nowhere", 1, None).await;
    outbox.refuse_destination("nowhere");
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    assert_eq!(stats(&bus).await.backing_off, 1, "the new columns work");
    db.cleanup().await;
}

on_every_database!(
    good_messages_are_never_held_hostage,
    invalid_rows_are_parked,
    a_bus_failure_spends_no_attempt,
    a_permanent_refusal_is_parked_at_once,
    a_deferred_message_spends_no_attempt,
    concurrent_flushers_split_the_work,
    a_dead_flushers_lease_expires,
    migrate_upgrades_an_old_table,
);

/// A broker that refuses every message to `too-large` as one it can never take (as NATS does
/// a message over its `max_payload`), and stores the rest in memory.
#[derive(Clone)]
struct Unsendable(MemoryPublisher);

impl Publisher for Unsendable {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut outcome = BatchOutcome::all_stored();
        let mut good = Vec::new();
        for (i, message) in batch.iter().enumerate() {
            if message.destination == "too-large" {
                outcome.refuse_permanently(i, "larger than the server allows");
            } else {
                good.push(message.clone());
            }
        }
        self.0.publish(&good).await?;
        Ok(outcome)
    }
}

/// A refusal that would come back on every attempt parks the signal at once, with its reason,
/// instead of spending the type's ten attempts over minutes; the others go out.
async fn a_permanent_refusal_is_parked_at_once<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, Unsendable(outbox.clone()), 10).await;
    insert(&db, "too-large", 1, None).await;
    insert(&db, "good", 10, None).await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 10);
    assert_eq!(outbox.len(), 10);
    let s = stats(&bus).await;
    assert_eq!(
        (s.count, s.parked),
        (1, 1),
        "parked after one attempt: {s:?}"
    );
    let parked = bus.parked(&Selection::all(), 10).await.unwrap();
    let row = &parked[0].1[0];
    assert_eq!(row.attempts, 1);
    assert_eq!(
        row.last_error.as_deref(),
        Some("larger than the server allows")
    );
    db.cleanup().await;
}

/// A bus with one part out (a webhook endpoint answering 503, say): messages to `down` are
/// deferred for 300 ms while `up` is open, the others stored.
#[derive(Clone)]
struct PartlyDown {
    stored: MemoryPublisher,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Publisher for PartlyDown {
    async fn publish(&self, batch: &[Message]) -> Result<BatchOutcome, PublishError> {
        let mut outcome = BatchOutcome::all_stored();
        let mut good = Vec::new();
        let up = self.up.load(Ordering::SeqCst);
        for (i, message) in batch.iter().enumerate() {
            if message.destination == "down" && !up {
                outcome.defer(i, "HTTP 503 from down", Duration::from_millis(300));
            } else {
                good.push(message.clone());
            }
        }
        self.stored.publish(&good).await?;
        Ok(outcome)
    }
}

/// A deferred message stays pending with no attempt spent (however often it is deferred),
/// is not sent again before its delay, and never holds the others back; it goes out once its
/// part of the bus is back.
async fn a_deferred_message_spends_no_attempt<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let partly = PartlyDown {
        stored: outbox.clone(),
        up: up.clone(),
    };
    let bus = bus(&db, partly, 2).await;
    insert(&db, "down", 3, None).await;
    insert(&db, "good", 100, None).await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 100);
    let s = stats(&bus).await;
    assert_eq!((s.count, s.backing_off, s.parked), (3, 3, 0), "{s:?}");
    // Not tried again before the delay.
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    // Deferred again and again: more often than max_attempts (2), still never parked.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
        let s = stats(&bus).await;
        assert_eq!((s.count, s.parked), (3, 0), "{s:?}");
    }
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 3);
    assert_eq!(outbox.len(), 103);
    assert_eq!(DB::count_rows(&db.pool, TABLE).await, 0);
    db.cleanup().await;
}
