//! Message ids have one documented format on every database: canonical UUID text, v7 when
//! signalbus writes the row, v4 from the table's default when another writer leaves it out.

use crate::common::TestBackend;
use crate::on_every_database;
use crate::signals::{OrderPlaced, order};
use signalbus::publisher::MemoryPublisher;
use signalbus::{Selection, SignalBus};

/// `8-4-4-4-12` lowercase hex with the given version digit and the RFC 9562 variant.
fn assert_uuid(id: &str, version: char) {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
    assert!(
        id.chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "lowercase hex: {id}"
    );
    assert_eq!(groups[2].chars().next(), Some(version), "version of {id}");
    assert!(
        "89ab".contains(groups[3].chars().next().unwrap()),
        "variant of {id}"
    );
}

async fn message_ids_are_canonical_uuids<DB: TestBackend>()
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let db = DB::create(3).await;
    let outbox = MemoryPublisher::new();
    let bus = SignalBus::builder(db.pool.clone())
        .publisher(outbox.clone())
        .register::<OrderPlaced>()
        .autoflush(false)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let mut tx = bus.begin().await.unwrap();
    let written = tx.send(&order(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_uuid(&written.message_id, '7');
    // Rows of another language's writer, without a message id.
    for _ in 0..20 {
        sqlx::raw_sql("INSERT INTO order_placed_signal (topic, body) VALUES ('orders', 'x')")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(
        bus.flush_many(&Selection::of::<OrderPlaced>())
            .await
            .unwrap(),
        21
    );
    let messages = outbox.messages();
    assert_eq!(messages[0].id, written.message_id);
    let mut ids: Vec<&str> = messages[1..].iter().map(|m| m.id.as_str()).collect();
    for id in &ids {
        assert_uuid(id, '4');
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "random ids differ");
    db.cleanup().await;
}

on_every_database!(message_ids_are_canonical_uuids);
