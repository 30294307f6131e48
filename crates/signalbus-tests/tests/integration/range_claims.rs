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
    let written: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM range_event WHERE claim IS NOT NULL OR next_attempt_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(written, 0, "a range claim writes no row");
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
            async move { bus.flush(&Selection::all(), std::time::Duration::ZERO).await }
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
