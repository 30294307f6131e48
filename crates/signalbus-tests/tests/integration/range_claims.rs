//! Range claims on PostgreSQL: a burst claims the range of its ids in one slot row of
//! `signalbus_claims` instead of writing a lease into every row it takes. The rows stay as
//! they were while claimed, other flushers keep away from the whole range (rows that commit
//! late inside it too), the flusher that holds it sends those late rows before its drain ends,
//! and slots are reused, so the table of claims does not grow with the traffic.

use crate::common::{TestBackend, TestDb};
use crate::gated::Gated;
use signalbus::publisher::MemoryPublisher;
use signalbus::{Selection, SignalBus, SignalType};
use sqlx::Postgres;
use std::collections::HashMap;

const TABLE: &str = "range_event";

fn bus(
    db: &TestDb<Postgres>,
    publisher: impl signalbus::Publisher,
    burst: usize,
) -> SignalBus<Postgres> {
    SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register_type(SignalType::new(TABLE).autoflush(false).burst(burst))
        .autoflush(false)
        .build()
        .unwrap()
}

async fn insert(executor: impl sqlx::PgExecutor<'_>, body: &str) {
    sqlx::query("INSERT INTO range_event (topic, body) VALUES ('range', convert_to($1, 'UTF8'))")
        .bind(body)
        .execute(executor)
        .await
        .unwrap();
}

fn bodies(outbox: &MemoryPublisher) -> Vec<String> {
    let mut bodies: Vec<String> = outbox
        .messages()
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    bodies
}

/// Rows of the table a claim wrote (a token or a lease): none, where bursts claim ranges.
async fn rows_written(db: &TestDb<Postgres>) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM range_event WHERE claim IS NOT NULL OR next_attempt_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// (live slots, all slots) of the table in `signalbus_claims`.
async fn slots(db: &TestDb<Postgres>) -> (i64, i64) {
    sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE until > clock_timestamp()), COUNT(*) \
         FROM signalbus_claims WHERE table_name = $1",
    )
    .bind(TABLE)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claimed_range_keeps_others_away_and_its_late_rows_are_sent_by_its_holder() {
    let db = <Postgres as TestBackend>::create(8).await;
    let gated = Gated::new(MemoryPublisher::new());
    let holder = bus(&db, gated.clone(), 1000);
    holder.migrate().await.unwrap();
    let other_outbox = MemoryPublisher::new();
    let other = bus(&db, other_outbox.clone(), 1000);

    // Row "a" committed; "late" takes the next id in a transaction left open; "c" committed.
    insert(&db.pool, "a").await;
    let mut late = db.pool.begin().await.unwrap();
    insert(&mut *late, "late").await;
    insert(&db.pool, "c").await;

    let drain = tokio::spawn({
        let holder = holder.clone();
        async move { holder.flush_many(&Selection::all()).await.unwrap() }
    });
    gated.entered().await;
    // Claimed: "a" and "c", the range from the one to the other. The rows were not written.
    let mut held: Vec<String> = gated.held();
    held.sort();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(rows_written(&db).await, 0, "a range claim writes no row");
    assert_eq!(slots(&db).await.0, 1);

    // "late" commits inside the claimed range: another flusher leaves it, and the claimed rows.
    late.commit().await.unwrap();
    assert_eq!(other.flush_many(&Selection::all()).await.unwrap(), 0);
    assert!(other_outbox.is_empty());

    // The holder sends its burst, then the late row before its drain ends.
    gated.open();
    assert_eq!(drain.await.unwrap(), 3);
    assert_eq!(bodies(&gated.outbox), ["a", "c", "late"]);
    assert_eq!(
        slots(&db).await,
        (0, 1),
        "the slot is free once the drain ends"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_drains_send_each_row_once_and_reuse_their_slots() {
    let db = <Postgres as TestBackend>::create(12).await;
    let outbox = MemoryPublisher::new();
    let first = bus(&db, outbox.clone(), 50);
    first.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO range_event (topic, body) \
         SELECT 'range', convert_to(n::text, 'UTF8') FROM generate_series(1, 5000) AS n",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let drains: Vec<_> = (0..3)
        .map(|_| {
            let bus = bus(&db, outbox.clone(), 50);
            tokio::spawn(async move { bus.flush_many(&Selection::all()).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for drain in drains {
        total += drain.await.unwrap();
    }
    assert_eq!(total, 5000);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for body in bodies(&outbox) {
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.len(), 5000);
    assert!(seen.values().all(|&n| n == 1), "a row was sent twice");
    // 100 bursts, one slot row per drain at most: nothing grows with the traffic.
    let (live, all) = slots(&db).await;
    assert_eq!(live, 0);
    assert!((1..=3).contains(&all), "{all} slots for 3 drains");
    db.cleanup().await;
}

/// The futures of a bus of a concrete database type can be spawned (a compile-time check:
/// the transaction-beginning statements once made them not provably `Send`).
#[tokio::test]
async fn the_futures_of_a_postgres_bus_can_be_spawned() {
    let db = <Postgres as TestBackend>::create(4).await;
    let bus = bus(&db, MemoryPublisher::new(), 1000);
    bus.migrate().await.unwrap();
    let tasks = vec![
        tokio::spawn({
            let bus = bus.clone();
            async move {
                bus.flush(&Selection::all(), std::time::Duration::ZERO)
                    .await
            }
        }),
        tokio::spawn({
            let bus = bus.clone();
            async move { bus.flush_ordered(&Selection::all()).await }
        }),
        tokio::spawn({
            let bus = bus.clone();
            async move { bus.begin().await?.commit().await.map(|_| 0) }
        }),
    ];
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    db.cleanup().await;
}

#[tokio::test]
async fn a_database_not_migrated_for_range_claims_says_to_migrate() {
    let db = <Postgres as TestBackend>::create(2).await;
    let bus = bus(&db, MemoryPublisher::new(), 1000);
    bus.migrate().await.unwrap();
    sqlx::query("DROP TABLE signalbus_claims")
        .execute(&db.pool)
        .await
        .unwrap();
    insert(&db.pool, "x").await;
    let error = bus.flush_many(&Selection::all()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("signalbus_claims") && text.contains("signalbus migrate"),
        "{text}"
    );
    // Migrate again, and the row goes out.
    bus.migrate().await.unwrap();
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 1);
    db.cleanup().await;
}

/// `future`, or a failure naming `what` after 20 s.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(20), future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within 20 s"),
    }
}

/// A bus of ordered flushes with this publish timeout (an ordered flush waits twice that for
/// another flusher's burst in flight).
fn ordered_bus(
    db: &TestDb<Postgres>,
    publisher: impl signalbus::Publisher,
    publish_timeout: u64,
) -> SignalBus<Postgres> {
    SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register_type(SignalType::new(TABLE).autoflush(false))
        .autoflush(false)
        .publish_timeout(std::time::Duration::from_secs(publish_timeout))
        .build()
        .unwrap()
}

/// An ordered burst claims the range of its lane: it writes no row, and another ordered
/// flusher sends the other lanes' keys meanwhile, never a row of the lane in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordered_burst_claims_its_lane_only_and_writes_no_row() {
    let db = <Postgres as TestBackend>::create(10).await;
    let gated = Gated::new(MemoryPublisher::new());
    let holder = ordered_bus(&db, gated.clone(), 60);
    holder.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO range_event (topic, body, ordering_key) \
         SELECT 'range', convert_to('k' || n, 'UTF8'), 'k' || n FROM generate_series(0, 31) AS n",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // Ordered flushes send nothing while a transaction older than the rows is open anywhere
    // on the server (the gap-safe watermark; other tests run beside this one): look again.
    let first = tokio::spawn({
        let holder = holder.clone();
        async move {
            loop {
                let sent = holder.flush_ordered(&Selection::all()).await.unwrap();
                if sent > 0 {
                    return sent;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    });
    within("the first burst to reach the broker", gated.entered()).await;
    let in_flight: Vec<String> = gated.held();
    assert_eq!(
        rows_written(&db).await,
        0,
        "an ordered range claim writes no row"
    );
    let lanes: Vec<Option<i32>> = sqlx::query_scalar(
        "SELECT lane FROM signalbus_claims WHERE table_name = $1 AND until > clock_timestamp()",
    )
    .bind(TABLE)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(matches!(lanes[..], [Some(_)]), "{lanes:?}");

    // Another ordered flusher: every other lane's keys, none of the lane in flight.
    let other_outbox = MemoryPublisher::new();
    let other = ordered_bus(&db, other_outbox.clone(), 1);
    let others = 32 - in_flight.len();
    let sent = within("the other flusher", async {
        let mut sent = 0;
        while sent < others {
            sent += other.flush_ordered(&Selection::all()).await.unwrap();
        }
        sent
    })
    .await;
    assert_eq!(sent, others);
    let in_flight_ids: std::collections::HashSet<String> = in_flight.into_iter().collect();
    assert!(
        other_outbox
            .messages()
            .iter()
            .all(|m| !in_flight_ids.contains(&m.id)),
        "a row of the lane in flight was sent twice"
    );

    gated.open();
    assert_eq!(
        within("the first flusher", first).await.unwrap(),
        in_flight_ids.len()
    );
    assert_eq!(
        slots(&db).await.0,
        0,
        "the slot is freed once the burst is settled"
    );
    db.cleanup().await;
}

/// A signal the auto-flush sends for a transaction the caller began is written leased: no
/// range claim can hold it, so a burst in flight whose range covers its id does not keep the
/// auto-flush from sending it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_auto_flush_is_not_held_by_a_range_around_its_row() {
    use crate::signals::{OrderPlaced, order};
    let db = <Postgres as TestBackend>::create(10).await;
    let gated = Gated::new(MemoryPublisher::new());
    let drainer = SignalBus::builder(db.pool.clone())
        .publisher(gated.clone())
        .register::<OrderPlaced>()
        .autoflush(false)
        .build()
        .unwrap();
    drainer.migrate().await.unwrap();
    let auto_outbox = MemoryPublisher::new();
    let auto = SignalBus::builder(db.pool.clone())
        .publisher(auto_outbox.clone())
        .register::<OrderPlaced>()
        .build()
        .unwrap();
    let plain = "INSERT INTO order_placed_signal (topic, body) VALUES ('orders', '\\x7b7d')";
    sqlx::query(plain).execute(&db.pool).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let mut recorder = auto.recorder();
    recorder.send(&mut *tx, &order(2)).await.unwrap();
    sqlx::query(plain).execute(&db.pool).await.unwrap();

    let drain = tokio::spawn({
        let drainer = drainer.clone();
        async move { drainer.flush_many(&Selection::all()).await.unwrap() }
    });
    gated.entered().await;
    assert_eq!(gated.held().len(), 2, "the burst took the rows around it");
    tx.commit().await.unwrap();
    let report = recorder.after_commit().await;
    assert_eq!((report.sent, report.elsewhere), (1, 0), "{report:?}");
    assert_eq!(auto_outbox.len(), 1);

    gated.open();
    assert_eq!(drain.await.unwrap(), 2);
    db.cleanup().await;
}
