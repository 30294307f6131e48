//! The consumer runner on the shared NATS (JetStream): acknowledged after the handler
//! succeeded, nak'ed and delivered again when it failed, and a stop that lets the handlers
//! in flight finish.

use async_nats::jetstream::{self, consumer::pull, stream};
use signalbus_nats::consumer::consume;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_after_success_naks_failures_and_stops_cleanly() {
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS must run on 127.0.0.1:4222 with -js");
    let js = jetstream::new(client);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("SBTEST_CONSUME_{suffix}");
    let subject = format!("sbtest_consume_{suffix}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    for n in 0..20 {
        js.publish(subject.clone(), format!("{n}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("runner".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let succeeded = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (attempts, succeeded, done) = (attempts.clone(), succeeded.clone(), done.clone());
        move |message: jetstream::Message| {
            let (attempts, succeeded, done) = (attempts.clone(), succeeded.clone(), done.clone());
            async move {
                let body = String::from_utf8(message.payload.to_vec()).unwrap();
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let n = a.entry(body.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                if body == "7" && n == 1 {
                    return Err("the handler failed once".to_owned());
                }
                if succeeded.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    done.notify_one();
                }
                Ok(())
            }
        }
    };
    let stop = {
        let done = done.clone();
        async move { done.notified().await }
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        consume(&consumer, 3, handler, stop),
    )
    .await
    .expect("the consumer stops when asked")
    .unwrap();
    assert_eq!((report.acked, report.rejected), (20, 1), "{report:?}");
    assert_eq!(attempts.lock().unwrap()["7"], 2, "the failed one came back");
    // Everything acknowledged: nothing left for the consumer (acks reach the server a
    // moment later).
    let mut consumer = consumer;
    let mut left = (u64::MAX, usize::MAX);
    for _ in 0..50 {
        let info = consumer.info().await.unwrap();
        left = (info.num_pending, info.num_ack_pending);
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, (0, 0), "pending, unacknowledged");
    js.delete_stream(&name).await.unwrap();
}
