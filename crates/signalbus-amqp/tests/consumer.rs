//! The consumer runner on the shared RabbitMQ: acknowledged after the handler succeeded,
//! requeued when it failed, never more handlers at once than asked, and a stop that lets the
//! handler in flight finish and acknowledges it.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use signalbus_amqp::consumer::{ConsumerOptions, consume};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection to the shared broker, and a new queue (`prefix-<uuid>`) holding the messages
/// `0`..`n` (bodies), each with the message id `m<n>`, confirmed.
async fn filled_queue(prefix: &str, n: i64) -> (lapin::Connection, lapin::Channel, String) {
    let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (rabbitmq-server -detached)");
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for n in 0..n {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("{n}").as_bytes(),
                lapin::BasicProperties::default().with_message_id(format!("m{n}").into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    (conn, channel, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_after_success_requeues_failures_bounds_concurrency_and_stops_cleanly() {
    let (conn, channel, queue) = filled_queue("sbtest-consume", 20).await;

    // Message 7 fails the first time; every handler takes a moment, to overlap.
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let consumer = conn.create_channel().await.unwrap();
    let handler = {
        let (attempts, now, most, done) =
            (attempts.clone(), now.clone(), most.clone(), done.clone());
        let succeeded = succeeded.clone();
        move |delivery: lapin::message::Delivery| {
            let (attempts, now, most, done) =
                (attempts.clone(), now.clone(), most.clone(), done.clone());
            let now_done = succeeded.clone();
            async move {
                let body = String::from_utf8(delivery.data).unwrap();
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let n = a.entry(body.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                if body == "7" && n == 1 {
                    return Err("the handler failed once".to_owned());
                }
                // The last of the 20 to succeed ends the run.
                if now_done.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    done.notify_one();
                }
                Ok(())
            }
        }
    };
    let stop = {
        let done = done.clone();
        async move {
            done.notified().await;
            // Let the last acks go out.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let options = ConsumerOptions::default().prefetch(10).concurrency(3);
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        consume(&consumer, &queue, options, handler, stop),
    )
    .await
    .expect("the consumer stops when asked")
    .unwrap();
    assert_eq!((report.acked, report.rejected), (20, 1), "{report:?}");
    assert_eq!(attempts.lock().unwrap()["7"], 2, "the failed one came back");
    let most = most.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "handlers at once: {most}");
    consumer.close(200, "done".into()).await.unwrap();
    let left = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(left.is_none(), "every message acknowledged");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// A consumer whose connection is cut twice mid-run (the test kit's proxy in front of the
/// shared RabbitMQ) connects again by itself and handles every message; the deliveries it
/// had not acknowledged come back, and the inbox (SQLite, in the handler's transaction)
/// applies each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cut_off_reconnects_and_applies_each_message_once() {
    use signalbus_core::consume::{Reconnect, reconnecting};
    use signalbus_core::inbox::{Inbox, Receipt};
    const MESSAGES: i64 = 300;
    // The sessions' ends and reconnects, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("signalbus=debug,lapin=warn")
        .with_test_writer()
        .try_init();
    let (_conn, channel, queue) = filled_queue("sbtest-reconnect", MESSAGES).await;
    let proxy = signalbus_testkit::proxy::Proxy::start(([127, 0, 0, 1], 5672).into())
        .await
        .unwrap();
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());

    let dir = tempfile::tempdir().unwrap();
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("inbox.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("CREATE TABLE applied (n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let inbox = Inbox::<sqlx::Sqlite>::new("reconnect").unwrap();
    inbox.migrate(&pool).await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (pool, inbox, handled) = (pool.clone(), inbox.clone(), handled.clone());
        move |delivery: lapin::message::Delivery| {
            let (pool, inbox, handled) = (pool.clone(), inbox.clone(), handled.clone());
            async move {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .ok_or("no message id")?;
                let n: i64 = String::from_utf8_lossy(&delivery.data).parse().unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                if inbox
                    .receive(&mut tx, &id)
                    .await
                    .map_err(|e| e.to_string())?
                    == Receipt::First
                {
                    sqlx::query("INSERT INTO applied (n) VALUES (?)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                tx.commit().await.map_err(|e| e.to_string())?;
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn({
        let (queue, handler) = (queue.clone(), handler.clone());
        reconnecting(
            move |stop| {
                let (url, queue, handler) = (via_proxy.clone(), queue.clone(), handler.clone());
                async move {
                    let conn =
                        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                            .await?;
                    let channel = conn.create_channel().await?;
                    let options = ConsumerOptions::default().prefetch(20).concurrency(4);
                    consume(&channel, &queue, options, handler, stop).await
                }
            },
            Reconnect::new(Duration::from_millis(50), Duration::from_millis(500)),
            async move {
                let _ = stop_rx.await;
            },
        )
    });
    // Cut at a third and at two thirds of the way.
    for at in [MESSAGES / 3, 2 * MESSAGES / 3] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let at = usize::try_from(at).unwrap();
        while handled.load(Ordering::SeqCst) < at {
            assert!(std::time::Instant::now() < deadline, "stuck before {at}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.cut();
    }
    let applied = || async {
        sqlx::query_as::<_, (i64, i64)>("SELECT COUNT(*), COUNT(DISTINCT n) FROM applied")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while applied().await.1 < MESSAGES {
        assert!(
            std::time::Instant::now() < deadline,
            "applied after the cuts: {:?}",
            applied().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    let report = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer stops when asked")
        .unwrap();
    assert!(report.reconnects >= 2, "{report:?}");
    assert_eq!(
        applied().await,
        (MESSAGES, MESSAGES),
        "each message applied once"
    );
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// A connection cut while handlers are working (their acks come after the cut) ends the
/// session with an error soon, every time. lapin does not always end the delivery stream
/// after a cut: a session that waited on it (or on an ack lapin never answers) would never
/// reconnect — it did, now and then, before the runner watched its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_while_handlers_work_ends_the_session_soon() {
    let (_conn, channel, queue) = filled_queue("sbtest-cut", 200).await;
    let proxy = signalbus_testkit::proxy::Proxy::start(([127, 0, 0, 1], 5672).into())
        .await
        .unwrap();
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    for round in 0..8 {
        let started = Arc::new(AtomicUsize::new(0));
        let session = {
            let (url, queue, started) = (via_proxy.clone(), queue.clone(), started.clone());
            tokio::spawn(async move {
                let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                    .await?;
                let channel = conn.create_channel().await?;
                let options = ConsumerOptions::default().prefetch(16).concurrency(8);
                let handler = move |_delivery: lapin::message::Delivery| {
                    let started = started.clone();
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<(), String>(())
                    }
                };
                consume(&channel, &queue, options, handler, std::future::pending()).await
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while started.load(Ordering::SeqCst) < 8 {
            assert!(std::time::Instant::now() < deadline, "no deliveries");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.cut();
        let ended = tokio::time::timeout(Duration::from_secs(15), session)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the session did not end after the cut"))
            .unwrap();
        assert!(
            ended.is_err(),
            "round {round}: a cut is an error: {ended:?}"
        );
    }
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
