//! What the operator console reads and does, on every database (memory bus; the console's
//! own tests drive it through HTTP and a browser with a real broker): filters, paging by id,
//! failure groups, one signal's detail, bulk unpark and purge bounded by the dry run's
//! highest id, and the audit log.

use crate::common::{TestBackend, TestDb};
use crate::on_every_database;
use signalbus::inspection::{AuditRecord, BulkAction, SignalFilter, SignalState};
use signalbus::publisher::MemoryPublisher;
use signalbus::{Error, RetryPolicy, Selection, SignalBus, SignalType};
use sqlx::AssertSqlSafe;
use std::time::Duration;

const TABLE: &str = "inspected_signal";
const NAME: &str = "inspected";

async fn bus<DB: TestBackend>(db: &TestDb<DB>, outbox: &MemoryPublisher) -> SignalBus<DB> {
    let once = RetryPolicy {
        max_attempts: 1,
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    bus_retrying(db, outbox, once).await
}

/// The inspected type on `db`, refused signals retried by `retry`.
async fn bus_retrying<DB: TestBackend>(
    db: &TestDb<DB>,
    outbox: &MemoryPublisher,
    retry: RetryPolicy,
) -> SignalBus<DB> {
    let ty = SignalType::new(NAME)
        .table(TABLE)
        .autoflush(false)
        .burst(100)
        .retry(retry);
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register_type(ty)
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus
}

/// `n` rows to `topic`, with a routing key equal to it, headers and an ordering key per row
/// (`key(i)`), written as another language's writer would.
async fn insert<DB: TestBackend>(
    db: &TestDb<DB>,
    topic: &str,
    n: usize,
    headers: &str,
    key: impl Fn(usize) -> String,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "('{topic}', '{topic}', '{{\"n\":{i}}}', '{headers}', '{}')",
                key(i)
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO {TABLE} (topic, routing_key, body, headers, ordering_key) VALUES {}",
        values.join(", ")
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn reads_and_acts_on_held_signals<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    outbox.refuse_destination("nowhere.eu");
    outbox.refuse_destination("nowhere.us");
    let bus = bus(&db, &outbox).await;
    insert(&db, "nowhere.eu", 30, r#"{"tenant":"eu"}"#, |i| {
        format!("k{}", i % 3)
    })
    .await;
    insert(&db, "nowhere.us", 20, r#"{"tenant":"us"}"#, |i| {
        format!("u{i}")
    })
    .await;
    // Not valid signals (headers that are not an object): parked with another error.
    insert(&db, "good", 5, "[1]", |i| format!("bad{i}")).await;
    insert(&db, "good", 100, r#"{"tenant":"eu"}"#, |i| format!("g{i}")).await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 100);

    let o = bus.overview(NAME).await.unwrap();
    assert_eq!(
        (o.stats.count, o.stats.parked, o.in_flight),
        (55, 55, 0),
        "{o:?}"
    );

    // Failure groups: "no route to `nowhere.eu`" and "… `nowhere.us`" are one.
    let held = SignalFilter::new();
    let groups = bus.failure_groups(NAME, &held).await.unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let route = &groups[0];
    assert_eq!((route.signals, route.parked), (50, 50), "{route:?}");
    assert_eq!(route.fingerprint, "no route to `{destination}`");
    assert_eq!(groups[1].signals, 5);

    // Paged by id within the group: 20 + 20 + 10, each row once, in id order.
    let by_group = SignalFilter::new().group(route.id.clone());
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = bus.list_signals(NAME, &by_group, after, 20).await.unwrap();
        assert!(page.signals.len() <= 20);
        seen.extend(page.signals.iter().map(|s| s.id));
        assert!(page.signals.iter().all(
            |s| s.state == SignalState::Parked && s.group.as_deref() == Some(route.id.as_str())
        ));
        match page.next_after {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    assert_eq!(seen.len(), 50);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    // Each filter narrows, and counts agree with lists.
    let count = |f: SignalFilter| {
        let bus = bus.clone();
        async move { bus.count_signals(NAME, &f).await.unwrap().signals }
    };
    assert_eq!(count(SignalFilter::new().header("tenant", "eu")).await, 30);
    assert_eq!(
        count(SignalFilter::new().error_contains("NO ROUTE")).await,
        50
    );
    assert_eq!(
        count(SignalFilter::new().error_contains("50%_")).await,
        0,
        "wildcards are literal"
    );
    assert_eq!(count(SignalFilter::new().ordering_key("k1")).await, 10);
    assert_eq!(
        count(SignalFilter::new().older_than(Duration::from_secs(3600))).await,
        0
    );
    assert_eq!(
        count(SignalFilter::new().newer_than(Duration::from_secs(3600))).await,
        55
    );
    assert_eq!(
        count(SignalFilter::new().state(SignalState::BackingOff)).await,
        0
    );
    assert_eq!(count(by_group.clone().header("tenant", "us")).await, 20);
    let page = bus
        .list_signals(NAME, &SignalFilter::new().header("tenant", "us"), None, 500)
        .await
        .unwrap();
    assert_eq!((page.signals.len(), page.next_after), (20, None));

    // One signal in full, with what it holds back: k1's later signals.
    let first_k1 = bus
        .list_signals(NAME, &SignalFilter::new().ordering_key("k1"), None, 1)
        .await
        .unwrap()
        .signals[0]
        .id;
    let d = bus.signal_detail(NAME, first_k1, 4).await.unwrap().unwrap();
    assert_eq!(d.summary.destination, "nowhere.eu");
    assert_eq!(d.headers.as_deref(), Some(r#"{"tenant":"eu"}"#));
    assert_eq!(
        (d.body.as_slice(), d.body_truncated),
        (&b"{\"n\""[..], true)
    );
    assert_eq!(d.summary.body_bytes, 7);
    assert_eq!(d.held_behind, 9);
    assert!(d.summary.last_error.unwrap().contains("nowhere.eu"));
    let refused_ago = d.summary.last_attempt.expect("when the bus refused it");
    assert!(refused_ago < Duration::from_secs(60), "{refused_ago:?}");
    assert!(!d.summary.in_flight);
    if DB::NAME == "PostgreSQL" {
        // A relay's burst claims a range of ids, writing none of its rows: still in flight.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO signalbus_claims (table_name, slot, token, lo, hi, lane, until) \
             VALUES ('{TABLE}', 99, 'test', {first_k1}, {first_k1}, NULL, \
             now() + interval '1 minute')"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
        let d = bus.signal_detail(NAME, first_k1, 4).await.unwrap().unwrap();
        assert!(d.summary.in_flight, "in a live range");
        sqlx::raw_sql("DELETE FROM signalbus_claims WHERE token = 'test'")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert!(
        bus.signal_detail(NAME, 1_000_000, 4)
            .await
            .unwrap()
            .is_none()
    );

    // Unpark the route group's EU signals only, bounded by the dry run's highest id: the
    // signals parked after it are left alone.
    outbox.accept_destination("nowhere.eu");
    let eu = by_group.clone().header("tenant", "eu");
    let dry = bus.count_signals(NAME, &eu).await.unwrap();
    assert_eq!((dry.signals, dry.parked), (30, 30));
    let through = dry.through_id;
    let changed = bus
        .act_on_held(NAME, &eu, BulkAction::Unpark, through, 7)
        .await
        .unwrap();
    assert_eq!(changed, 30, "in batches of 7");
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 30);
    assert_eq!(outbox.len(), 130);

    // A bound below every match changes nothing.
    let us = SignalFilter::new().header("tenant", "us");
    let changed = bus
        .act_on_held(NAME, &us, BulkAction::Purge, Some(0), 100)
        .await
        .unwrap();
    assert_eq!(changed, 0);
    // Purging the invalid rows' group.
    let bad = &groups[1];
    let changed = bus
        .act_on_held(
            NAME,
            &SignalFilter::new().group(bad.id.clone()),
            BulkAction::Purge,
            Some(bad.through_id),
            100,
        )
        .await
        .unwrap();
    assert_eq!(changed, 5);
    assert_eq!(DB::count_rows(&db.pool, TABLE).await, 20);

    // The audit log, newest first.
    for (action, changed) in [("unpark", 30), ("purge", 5)] {
        bus.record_audit(&AuditRecord {
            actor: "alice",
            role: "operator",
            action,
            signal: NAME,
            filter: "{}",
            matched: changed,
            changed,
        })
        .await
        .unwrap();
    }
    let log = bus.audit_log(10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].action.as_str(), log[0].changed), ("purge", 5));
    assert_eq!(log[1].actor, "alice");

    // Bad input is refused with the reason; nothing changes.
    let e = bus
        .list_signals(NAME, &SignalFilter::new().header("a b", "x"), None, 10)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let e = bus
        .count_signals("nope", &SignalFilter::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnknownSignal { .. }), "{e}");
    assert_eq!(DB::count_rows(&db.pool, TABLE).await, 20);
    db.cleanup().await;
}

on_every_database!(reads_and_acts_on_held_signals);

/// A big incident whose errors each name the message's own destination: 10,050 distinct
/// (error, destination) triples, one fingerprint. They are read as one failure group (streamed
/// and merged, never "narrow the filter"), and the group's dry run and unpark work on it.
async fn a_group_of_ten_thousand_distinct_errors_is_one<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    const N: usize = 10_050;
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    outbox.refuse_destination("gone");
    let bus = bus(&db, &outbox).await;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1_000) {
        let values = vec!["('gone', '{}')"; chunk.len()];
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO {TABLE} (topic, body) VALUES {}",
            values.join(", ")
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    // As if each had gone to a destination of its own, and been refused as such (one UPDATE
    // per distinct reason would make the setup itself slow).
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {TABLE} SET topic = CONCAT('gone.', id), \
         last_error = CONCAT('no route to `gone.', id, '`')"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let groups = bus
        .failure_groups(NAME, &SignalFilter::new())
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "{:?}", &groups[..groups.len().min(3)]);
    let group = &groups[0];
    assert_eq!((group.signals, group.parked), (N as u64, N as u64));
    assert_eq!(group.fingerprint, "no route to `{destination}`");

    let by_group = SignalFilter::new().group(group.id.clone());
    let dry = bus.count_signals(NAME, &by_group).await.unwrap();
    assert_eq!(dry.signals, N as u64);
    let changed = bus
        .act_on_held(NAME, &by_group, BulkAction::Unpark, dry.through_id, 1_000)
        .await
        .unwrap();
    assert_eq!(changed, N as u64);
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), N);
    assert_eq!(DB::count_rows(&db.pool, TABLE).await, 0);
    db.cleanup().await;
}

on_every_database!(a_group_of_ten_thousand_distinct_errors_is_one);

on_every_database!(a_header_filter_passes_over_headers_that_are_not_json);

/// A writer in another language may put anything in the headers' text column: a header
/// filter reads past what is not a JSON object of strings (here: not JSON, cut short, an
/// escape PostgreSQL's jsonb refuses, nested values) instead of failing the whole query.
async fn a_header_filter_passes_over_headers_that_are_not_json<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    let bus = bus(&db, &outbox).await;
    for headers in [
        "not json",
        r#"{"tenant":"eu""#,
        r#"{"tenant":"eu\u0000"}"#,
        r#"{"tenant":{"eu":"eu"}}"#,
        r#"{"region":"eu"}"#,
        r#"{ "tenant" : "eu" , "region": "x" }"#,
        r#"{"tenant":"eu/x"}"#,
    ] {
        insert(&db, "t", 2, headers, |i| format!("k{i}")).await;
    }
    let pending = SignalFilter::new().state(SignalState::Pending);
    let eu = pending.clone().header("tenant", "eu");
    assert_eq!(bus.count_signals(NAME, &pending).await.unwrap().signals, 14);
    assert_eq!(bus.count_signals(NAME, &eu).await.unwrap().signals, 2);
    let page = bus.list_signals(NAME, &eu, None, 10).await.unwrap();
    assert_eq!(page.signals.len(), 2);
    // A value JSON writers may escape differently is read from the parsed headers alone.
    let slash = pending.clone().header("tenant", "eu/x");
    assert_eq!(bus.count_signals(NAME, &slash).await.unwrap().signals, 2);
}

on_every_database!(backing_off_signals_are_retried_now);

/// Retry: backing-off signals (an hour of backoff ahead) of one failure group are made due at
/// once and go out at the next flush, their attempts kept; the other group's keep waiting;
/// parked ones are not touched, and one signal can be retried by id.
async fn backing_off_signals_are_retried_now<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(4).await;
    let outbox = MemoryPublisher::new();
    outbox.refuse_destination("nowhere.eu");
    outbox.refuse_destination("nowhere.us");
    let an_hour = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    let bus = bus_retrying(&db, &outbox, an_hour).await;
    insert(&db, "nowhere.eu", 6, r#"{"tenant":"eu"}"#, |i| {
        format!("e{i}")
    })
    .await;
    insert(&db, "nowhere.us", 4, r#"{"tenant":"us"}"#, |i| {
        format!("u{i}")
    })
    .await;
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    let backing_off = SignalFilter::new().state(SignalState::BackingOff);
    assert_eq!(
        bus.count_signals(NAME, &backing_off).await.unwrap().signals,
        10
    );

    // The broker takes them now; they would wait an hour.
    outbox.accept_destination("nowhere.eu");
    outbox.accept_destination("nowhere.us");
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 0);
    let eu = SignalFilter::new().header("tenant", "eu");
    let dry = bus
        .count_signals(NAME, &eu.clone().state(SignalState::BackingOff))
        .await
        .unwrap();
    assert_eq!(dry.signals, 6);
    let retried = bus
        .act_on_held(NAME, &eu, BulkAction::Retry, dry.through_id, 4)
        .await
        .unwrap();
    assert_eq!(retried, 6);
    // Unpark changes none of them: they are not parked.
    assert_eq!(
        bus.act_on_held(NAME, &SignalFilter::new(), BulkAction::Unpark, None, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 6);
    let sent = outbox.take();
    assert_eq!(sent.len(), 6);
    assert!(sent.iter().all(|m| m.destination == "nowhere.eu"));

    // One by id; a row that is not backing off (already sent) changes nothing.
    let left = bus
        .list_signals(NAME, &backing_off, None, 10)
        .await
        .unwrap()
        .signals;
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|s| s.attempts == 1));
    let only = Selection::only([NAME]);
    assert_eq!(bus.retry_now(&only, &[left[0].id]).await.unwrap(), 1);
    assert_eq!(bus.retry_now(&only, &[left[0].id]).await.unwrap(), 0);
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 1);
    assert_eq!(
        bus.count_signals(NAME, &backing_off).await.unwrap().signals,
        3
    );
}
