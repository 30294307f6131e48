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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_after_success_requeues_failures_bounds_concurrency_and_stops_cleanly() {
    let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (rabbitmq-server -detached)");
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("sbtest-consume-{}", uuid::Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for n in 0..20 {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("{n}").as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
    }

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
