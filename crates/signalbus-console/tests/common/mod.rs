//! What the console's tests share: a console over a SQLite database of parked signals, on a
//! free loopback port.
#![allow(dead_code)]

use signalbus_console::{Console, Role};
use signalbus_core::publisher::MemoryPublisher;
use signalbus_core::{RetryPolicy, Selection, SignalBus, SignalType};
use std::time::Duration;

pub const OPERATOR: &str = "alice-operator-token-0123";
pub const VIEWER: &str = "bob-viewer-token-0123456";

pub struct Served {
    pub base: String,
    pub bus: SignalBus<sqlx::Sqlite>,
    pub outbox: MemoryPublisher,
    _dir: tempfile::TempDir,
}

/// A bus with 12 signals parked (6 to `nowhere.eu`, 6 to `nowhere.us`) and 3 sent, and a
/// console over it on a free loopback port.
pub async fn serve(console: impl FnOnce(Console) -> Console) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("console.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let outbox = MemoryPublisher::new();
    outbox.refuse_destination("nowhere.eu");
    outbox.refuse_destination("nowhere.us");
    let ty = SignalType::new("order_placed")
        .autoflush(false)
        .retry(RetryPolicy {
            max_attempts: 1,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
    let bus = SignalBus::builder(pool.clone())
        .name("shop")
        .publisher(outbox.clone())
        .register_type(ty)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    for (topic, n) in [("nowhere.eu", 6), ("nowhere.us", 6), ("good", 3)] {
        for i in 0..n {
            sqlx::query(
                "INSERT INTO order_placed (topic, routing_key, body, headers) VALUES (?, ?, ?, ?)",
            )
            .bind(topic)
            .bind(topic)
            .bind(format!("{{\"secret-body\":{i}}}"))
            .bind(r#"{"tenant":"eu"}"#)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    assert_eq!(bus.flush_many(&Selection::all()).await.unwrap(), 3);
    let router = console(Console::new().database(bus.clone()))
        .router()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Served {
        base,
        bus,
        outbox,
        _dir: dir,
    }
}

pub fn with_tokens(c: Console) -> Console {
    c.token("alice", Role::Operator, OPERATOR)
        .unwrap()
        .token("bob", Role::Viewer, VIEWER)
        .unwrap()
}
