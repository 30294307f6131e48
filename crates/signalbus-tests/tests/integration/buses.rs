//! End to end through a real database and a real broker: auto-flush on commit, explicit
//! `flushmany`, and signals that the broker will not take yet staying pending until it does.
//! One fixture per bus (`bus_amqp`, `bus_nats`, `bus_kafka`) provides the destinations and
//! a consumer that reads back what arrived.

use crate::common::TestBackend;
use serde::Serialize;
use signalbus::{Selection, Signal, SignalBus};

/// A signal whose destination and routing key come from the value, so each test routes to
/// its own exchange, subject or topic.
#[derive(Debug, Clone, Serialize, Signal)]
#[signal(name = "bus_event", table = "bus_event")]
pub struct BusEvent {
    #[signal(destination)]
    pub destination: String,
    #[signal(routing_key)]
    pub key: String,
    pub n: i64,
    #[signal(header)]
    pub customer: String,
}

/// A message as a consumer read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    pub body: Vec<u8>,
    pub customer: Option<String>,
    /// The W3C trace context the message carries (feature `otel`).
    pub traceparent: Option<String>,
}

/// A route (destination, routing key) on a real broker.
pub type Route = (String, String);

pub trait BusFixture {
    /// The bus URL handed to `connect_bus`.
    fn url(&self) -> String;
    /// The publisher of the bus: `connect_bus(url)` unless the fixture needs more (given
    /// credentials, say).
    fn publisher(&self) -> impl Future<Output = signalbus::BoxPublisher> {
        async { signalbus::connect_bus(&self.url()).await.unwrap() }
    }
    /// Keys, and signals per key, of the keyed-order test through 4 relays (fewer on an
    /// emulator that takes a tenth of a second a request).
    fn keyed_scale(&self) -> (usize, u32) {
        (200, 50)
    }
    /// Whether messages to one route arrive in the order they were sent (not on a standard
    /// SQS queue).
    fn ordered(&self) -> bool {
        true
    }
    /// What a relay process of this bus needs in its environment besides the URL.
    fn process_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// A route the broker stores messages for.
    fn ready(&self) -> Route;
    /// A route the broker refuses until [`BusFixture::open_later`].
    fn later(&self) -> Route;
    fn open_later(&self) -> impl Future<Output = ()>;
    /// Everything that arrived on `route`, in order; waits until `n` arrived (or fails).
    fn received(&self, route: &Route, n: usize) -> impl Future<Output = Vec<Received>>;
    fn cleanup(self) -> impl Future<Output = ()>;
    /// Make the broker drop the publisher's connection, if this fixture can do that without
    /// stopping the shared server; returns whether it did.
    fn interrupt(&self) -> impl Future<Output = bool> {
        async { false }
    }
}

pub fn event(route: &Route, n: i64) -> BusEvent {
    BusEvent {
        destination: route.0.clone(),
        key: route.1.clone(),
        n,
        customer: format!("c{n}"),
    }
}

async fn flushmany_sends<DB: TestBackend>(bus: &SignalBus<DB>, expected: usize) {
    // A broker that just got the route (a new topic, say) may refuse for a moment more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut sent = 0;
    while sent < expected {
        let last = bus.flush_many(&Selection::all()).await;
        sent += last.as_ref().copied().unwrap_or(0);
        if sent < expected {
            assert!(
                std::time::Instant::now() < deadline,
                "sent {sent} of {expected}; last flushmany: {last:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(sent, expected);
}

pub async fn end_to_end<DB: TestBackend, F: BusFixture>(fx: F) {
    let db = DB::create(5).await;
    DB::create_business_table(&db.pool).await;
    let publisher = fx.publisher().await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(publisher)
        .register::<BusEvent>()
        // Above the fixtures' own broker timeouts (as the bus crates advise), so that the
        // broker's error, not the bus' cut-off, is what a refused route reports.
        .publish_timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let ready = fx.ready();
    let mut ids = Vec::new();

    // Auto-flush: the commit sends and deletes.
    let mut tx = bus.begin().await.unwrap();
    DB::insert_business(&mut tx, 1).await.unwrap();
    for n in 0..3 {
        ids.push(tx.send(&event(&ready, n)).await.unwrap().message_id);
    }
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!(report.sent, 3, "{report:?}");
    assert_eq!(DB::count_rows(&db.pool, "bus_event").await, 0);

    // Explicit: pending rows sent by flushmany.
    bus.set_autoflush(false);
    let mut tx = bus.begin().await.unwrap();
    for n in 3..8 {
        ids.push(tx.send(&event(&ready, n)).await.unwrap().message_id);
    }
    tx.commit_and_wait().await.unwrap();
    assert_eq!(DB::count_rows(&db.pool, "bus_event").await, 5);
    flushmany_sends(&bus, 5).await;
    assert_eq!(DB::count_rows(&db.pool, "bus_event").await, 0);

    let got = fx.received(&ready, 8).await;
    assert_eq!(got.len(), 8, "{got:?}");
    for (n, (got, id)) in got.iter().zip(&ids).enumerate() {
        assert_eq!(&got.id, id, "stable id travels, order kept");
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["n"], i64::try_from(n).unwrap());
        assert_eq!(got.customer.as_deref(), Some(format!("c{n}").as_str()));
    }

    // The broker refuses: nothing is lost, the rows stay (one attempt spent, backing off)
    // until the route exists, and a flush meanwhile neither fails nor sends them again.
    bus.set_autoflush(true);
    let later = fx.later();
    let mut tx = bus.begin().await.unwrap();
    for n in 0..2 {
        tx.send(&event(&later, n)).await.unwrap();
    }
    let report = tx.commit_and_wait().await.unwrap();
    assert_eq!((report.sent, report.pending), (0, 2), "{report:?}");
    assert!(report.error.is_some());
    let stats = bus.pending(&Selection::all()).await.unwrap()[0].1;
    assert_eq!((stats.count, stats.backing_off), (2, 2), "{stats:?}");
    assert_eq!(
        bus.flush_many(&Selection::all()).await.unwrap(),
        0,
        "backing off"
    );
    assert_eq!(DB::count_rows(&db.pool, "bus_event").await, 2);
    fx.open_later().await;
    flushmany_sends(&bus, 2).await;
    assert_eq!(DB::count_rows(&db.pool, "bus_event").await, 0);
    assert_eq!(fx.received(&later, 2).await.len(), 2);

    // The broker drops the connection: nothing is lost, the publisher reconnects by itself
    // and a later flush sends whatever the commit could not.
    if fx.interrupt().await {
        let mut tx = bus.begin().await.unwrap();
        let mut ids = Vec::new();
        for n in 10..13 {
            ids.push(tx.send(&event(&ready, n)).await.unwrap().message_id);
        }
        let report = tx.commit_and_wait().await.unwrap();
        eprintln!("commit after the broker closed the connection: {report:?}");
        flushmany_sends(&bus, report.pending).await;
        assert_eq!(DB::count_rows(&db.pool, "bus_event").await, 0);
        let got = fx.received(&ready, 3).await;
        for id in &ids {
            assert!(got.iter().any(|r| &r.id == id), "{id} lost: {got:?}");
        }
    }

    fx.cleanup().await;
    db.cleanup().await;
}

/// Keyed messages (JSON bodies with `account` and `seq`) in the order they arrived: every
/// key's numbers from 0 in order, a number seen again counted as a duplicate. Returns how
/// many arrived in order per key, and the duplicates.
pub fn key_order(got: &[Received]) -> (std::collections::HashMap<String, u32>, usize) {
    let mut next: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut duplicates = 0;
    for message in got {
        let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
        let account = body["account"].as_str().unwrap().to_owned();
        let seq = u32::try_from(body["seq"].as_u64().unwrap()).unwrap();
        let expected = next.entry(account.clone()).or_insert(0);
        if seq < *expected {
            duplicates += 1;
            continue;
        }
        assert_eq!(seq, *expected, "{account}: {seq} arrived before {expected}");
        *expected += 1;
    }
    (next, duplicates)
}

/// [`BusEvent`]'s twin for the poison scenario: three attempts, short backoff, flushed by hand.
#[derive(Debug, Clone, Serialize, Signal)]
#[signal(
    name = "bus_poison",
    table = "bus_poison",
    autoflush = false,
    max_attempts = 3,
    retry_base_ms = 50,
    retry_max_ms = 200
)]
pub struct PoisonEvent {
    #[signal(destination)]
    pub destination: String,
    #[signal(routing_key)]
    pub key: String,
    pub n: i64,
    #[signal(header)]
    pub customer: String,
}

/// One message the broker refuses among 1,000 (to the fixture's `later` route, never
/// opened): the 999 others arrive exactly once, in order; the refused one is tried three
/// times and parked, with the broker's reason; nothing is sent twice.
pub async fn poison_scenario<DB: TestBackend, F: BusFixture>(fx: F) {
    let db = DB::create(5).await;
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(fx.publisher().await)
        .register::<PoisonEvent>()
        .publish_timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let (ready, later) = (fx.ready(), fx.later());
    let mut ids = Vec::new();
    let mut tx = bus.begin().await.unwrap();
    for n in 0..1000 {
        let route = if n == 500 { &later } else { &ready };
        let e = PoisonEvent {
            destination: route.0.clone(),
            key: route.1.clone(),
            n,
            customer: format!("c{n}"),
        };
        let id = tx.send(&e).await.unwrap().message_id;
        if n != 500 {
            ids.push(id);
        }
    }
    tx.commit_and_wait().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut sent = 0;
    let stats = loop {
        sent += bus.flush_many(&Selection::all()).await.unwrap_or(0);
        let stats = bus.pending(&Selection::all()).await.unwrap()[0].1;
        if stats.parked == 1 && stats.count == 1 {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not parked in time: sent {sent}, {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(sent, 999, "{stats:?}");
    let got = fx.received(&ready, 999).await;
    let mut got_ids: Vec<&String> = got.iter().map(|r| &r.id).collect();
    let mut sent_ids: Vec<&String> = ids.iter().collect();
    if !fx.ordered() {
        got_ids.sort();
        sent_ids.sort();
    }
    // Compared without printing 1,000 ids.
    assert_eq!(got_ids.len(), sent_ids.len(), "each once");
    assert!(
        got_ids == sent_ids,
        "each once (in order where the bus keeps it)"
    );
    let parked = bus.parked(&Selection::all(), 10).await.unwrap();
    let parked = &parked[0].1[0];
    assert_eq!(parked.attempts, 3, "{parked:?}");
    let reason = parked.last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&later.0),
        "the reason names the route: {reason}"
    );
    fx.cleanup().await;
    db.cleanup().await;
}
