//! Against real Redis: the shared server on 127.0.0.1:6379 (every test uses its own stream
//! keys and deletes them), and for the outage test a private `redis-server` on a free port.

use redis::Value;
use redis::aio::ConnectionManager;
use signalbus_core::{Message, PublishErrorKind, Publisher};
use signalbus_redis::RedisPublisher;
use signalbus_redis::consumer::{ConsumerConfig, consume};
use signalbus_testkit::nats::free_port;
use signalbus_testkit::outcome::{reason, refused};
use signalbus_testkit::redis::PrivateRedis;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const URL: &str = "redis://127.0.0.1:6379";

fn unique(prefix: &str) -> String {
    format!("sbtest-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn message(stream: &str, n: usize) -> Message {
    Message {
        id: format!("id-{n}-{}", uuid::Uuid::new_v4().simple()),
        signal: Arc::from("order_placed"),
        destination: stream.to_owned(),
        routing_key: Some("placed".into()),
        headers: [("customer".to_owned(), format!("c{n}"))].into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

async fn shared() -> (RedisPublisher, ConnectionManager) {
    let publisher = RedisPublisher::connect(URL)
        .await
        .expect("Redis must run on 127.0.0.1:6379");
    let connection = publisher.connection();
    (publisher, connection)
}

/// Every entry of `stream`: its fields as text-or-bytes, in stream order.
async fn entries(redis: &mut ConnectionManager, stream: &str) -> Vec<HashMap<String, Vec<u8>>> {
    let reply: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await
        .unwrap();
    reply.into_iter().map(|(_, fields)| fields).collect()
}

async fn delete(redis: &mut ConnectionManager, keys: &[&str]) {
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_is_stored_in_order_with_ids_headers_and_any_body() {
    let (publisher, mut redis) = shared().await;
    let stream = unique("batch");
    let mut batch: Vec<_> = (0..30).map(|n| message(&stream, n)).collect();
    batch[7].body = vec![0, 159, 146, 150, 255]; // not UTF-8: travels unchanged
    batch[8].routing_key = None;
    batch[8].content_type = None;
    let outcome = publisher.publish(&batch).await.unwrap();
    assert!(outcome.is_all_stored(), "{outcome:?}");
    let got = entries(&mut redis, &stream).await;
    assert_eq!(got.len(), 30);
    for (fields, sent) in got.iter().zip(&batch) {
        assert_eq!(fields["id"], sent.id.as_bytes(), "order kept, id travels");
        assert_eq!(fields["body"], sent.body);
        assert_eq!(fields["signal"], b"order_placed");
        assert_eq!(
            fields["header:customer"],
            sent.headers["customer"].as_bytes()
        );
        assert_eq!(
            fields.get("routing-key").map(Vec::as_slice),
            sent.routing_key.as_deref().map(str::as_bytes)
        );
        assert_eq!(
            fields.get("content-type").map(Vec::as_slice),
            sent.content_type.as_deref().map(str::as_bytes)
        );
    }
    publisher.check().await.unwrap();
    delete(&mut redis, &[&stream]).await;
}

#[tokio::test]
async fn an_entry_redis_refuses_is_refused_alone() {
    let (publisher, mut redis) = shared().await;
    let (good, taken) = (unique("good"), unique("taken"));
    let _: () = redis::cmd("SET")
        .arg(&taken)
        .arg("a string, not a stream")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut batch: Vec<_> = (0..10).map(|n| message(&good, n)).collect();
    batch[4].destination = taken.clone();
    batch[6].body = vec![b'x'; 2048];
    let url = format!("{URL}?max_bytes=1024");
    let small = RedisPublisher::connect(&url).await.unwrap();
    let outcome = small.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), vec![4, 6], "{outcome:?}");
    assert!(reason(&outcome, 4).contains("WRONGTYPE"), "{outcome:?}");
    assert!(reason(&outcome, 4).contains(&taken), "{outcome:?}");
    let by_index = |i| outcome.refused().iter().find(|r| r.index == i).unwrap();
    assert!(by_index(6).permanent && by_index(6).reason.contains("2048 bytes"));
    assert!(!by_index(4).permanent, "WRONGTYPE may be fixed");
    let got = entries(&mut redis, &good).await;
    let ids: Vec<&[u8]> = got.iter().map(|f| f["id"].as_slice()).collect();
    let expected: Vec<&[u8]> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| ![4, 6].contains(i))
        .map(|(_, m)| m.id.as_bytes())
        .collect();
    assert_eq!(ids, expected, "the others stored once, in order");
    drop(publisher);
    delete(&mut redis, &[&good, &taken]).await;
}

#[tokio::test]
async fn maxlen_and_stream_per_routing_key() {
    let (_, mut redis) = shared().await;
    let stream = unique("trim");
    let url = format!("{URL}?maxlen=10&stream=destination_key");
    let publisher = RedisPublisher::connect(&url).await.unwrap();
    for _ in 0..5 {
        let batch: Vec<_> = (0..200).map(|n| message(&stream, n)).collect();
        publisher.publish(&batch).await.unwrap();
    }
    let keyed = format!("{stream}:placed");
    let len: u64 = redis::cmd("XLEN")
        .arg(&keyed)
        .query_async(&mut redis)
        .await
        .unwrap();
    // `MAXLEN ~` trims whole nodes of the stream: about 10, never all 1000.
    assert!((10..=200).contains(&len), "{len}");
    delete(&mut redis, &[&keyed]).await;
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_say_why_without_the_password() {
    let port = free_port();
    let e = RedisPublisher::connect(&format!(
        "redis://u:hunter2@127.0.0.1:{port}?timeout_ms=500"
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("Redis") && !e.contains("hunter2"), "{e}");
    let e = RedisPublisher::connect("redis://nobody:hunter2@127.0.0.1:6379")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("credentials") && !e.contains("hunter2"),
        "the shared server has no such user: {e}"
    );
}

/// The server goes away: every publish fails as a whole (no entry refused) and the readiness
/// check says so; when it is back on the same port, the publisher reconnects by itself.
#[tokio::test]
async fn an_outage_fails_whole_calls_until_the_server_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateRedis::start(free_port(), dir.path());
    server.wait_ready().await;
    let publisher = RedisPublisher::connect(&format!("{}?timeout_ms=1000", server.url()))
        .await
        .unwrap();
    let stream = unique("outage");
    let batch: Vec<_> = (0..5).map(|n| message(&stream, n)).collect();
    publisher.publish(&batch).await.unwrap();
    let (port, path) = server.stop();
    for _ in 0..3 {
        let e = publisher.publish(&batch).await.unwrap_err();
        assert!(
            matches!(
                e.kind(),
                PublishErrorKind::Unavailable | PublishErrorKind::Timeout
            ),
            "{e}"
        );
    }
    assert!(publisher.check().await.is_err());
    let server = PrivateRedis::start(port, &path);
    server.wait_ready().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match publisher.publish(&batch).await {
            Ok(outcome) => {
                assert!(outcome.is_all_stored());
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher.check().await.unwrap();
    let mut redis = publisher.connection();
    assert_eq!(
        entries(&mut redis, &stream).await.len(),
        10,
        "appendfsync always: the first batch survived the SIGKILL"
    );
}

/// Handled entries are acknowledged; a failed handler's entry is claimed again after
/// `claim_idle`; entries a dead consumer took are claimed by a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_acks_after_ok_and_claims_what_others_left() {
    let (publisher, mut redis) = shared().await;
    let stream = unique("consume");
    let batch: Vec<_> = (0..20).map(|n| message(&stream, n)).collect();
    publisher.publish(&batch).await.unwrap();
    // A consumer that reads 5 entries and dies without acknowledging them.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();

    let client = redis::Client::open(URL).unwrap();
    let config = ConsumerConfig::new(&stream, "g", "live")
        .claim_idle(Duration::from_millis(600))
        .block(Duration::from_millis(100));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed_once: Arc<Mutex<bool>> = Arc::default();
    let poison = batch[12].id.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let (seen, failed_once) = (seen.clone(), failed_once.clone());
        let config = config.clone();
        tokio::spawn(async move {
            consume(
                &client,
                &config,
                4,
                move |entry| {
                    let (seen, failed_once, poison) =
                        (seen.clone(), failed_once.clone(), poison.clone());
                    async move {
                        let id = entry.message_id().unwrap().to_owned();
                        assert_eq!(
                            entry.header("customer").map(|c| c.starts_with('c')),
                            Some(true)
                        );
                        if id == poison
                            && !std::mem::replace(&mut *failed_once.lock().unwrap(), true)
                        {
                            return Err("the first try fails");
                        }
                        seen.lock().unwrap().push(id);
                        Ok(())
                    }
                },
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "handled {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.acked, report.rejected), (20, 1), "{report:?}");
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each entry handled once after its success");
    let pending: Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut redis)
        .await
        .unwrap();
    let Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(
        summary[0],
        Value::Int(0),
        "nothing left pending: {summary:?}"
    );
    delete(&mut redis, &[&stream]).await;
}
