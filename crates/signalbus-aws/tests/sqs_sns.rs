//! Against moto's server on 127.0.0.1:4577 (`scripts/moto.sh start`; the real AWS wire
//! protocol to the real SDK): every test makes its own queues and topics.

use aws_sdk_sqs::types::QueueAttributeName;
use signalbus_aws::consumer::{ConsumerConfig, Received, consume};
use signalbus_aws::{AwsOptions, SnsPublisher, SqsPublisher};
use signalbus_core::{Message, ORDERING_KEY_HEADER, PublishErrorKind, Publisher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MOTO: &str = "http://127.0.0.1:4577";

fn options(scheme: &str, endpoint: &str) -> AwsOptions {
    AwsOptions::from_url(
        &format!("{scheme}://us-east-1?endpoint={endpoint}&timeout_ms=5000"),
        scheme,
    )
    .unwrap()
    .credentials("testing", "testing")
}

async fn sqs() -> SqsPublisher {
    SqsPublisher::with_options(options("sqs", MOTO))
        .await
        .unwrap()
}

fn unique(prefix: &str) -> String {
    format!("sbtest-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn message(destination: &str, n: usize) -> Message {
    Message {
        id: uuid::Uuid::now_v7().to_string(),
        signal: Arc::from("order_placed"),
        destination: destination.to_owned(),
        routing_key: None,
        headers: [("customer".to_owned(), format!("c{n}"))].into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

async fn create_queue(sqs: &SqsPublisher, name: &str) -> String {
    let mut create = sqs.client().create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    create
        .send()
        .await
        .expect("moto must run on 127.0.0.1:4577 (scripts/moto.sh start)")
        .queue_url()
        .unwrap()
        .to_owned()
}

/// A consumer's shutdown: once `items` holds `n`, or after `limit`.
async fn until_len<T>(items: Arc<Mutex<Vec<T>>>, n: usize, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while items.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything `queue_url` holds now, through the consumer runner (deleted as read).
async fn drain(sqs: &SqsPublisher, queue_url: &str, expected: usize) -> Vec<Received> {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let config = ConsumerConfig::new(queue_url).wait(Duration::from_secs(1));
    let collected = got.clone();
    let stop = {
        let got = got.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while got.lock().unwrap().len() < expected && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    consume(
        sqs.client(),
        &config,
        4,
        move |m| {
            collected.lock().unwrap().push(m);
            async { Ok::<(), String>(()) }
        },
        stop,
    )
    .await
    .unwrap();
    got.lock().unwrap().clone()
}

#[tokio::test]
async fn a_batch_arrives_with_ids_headers_and_any_body() {
    let sqs = sqs().await;
    let name = unique("batch");
    let url = create_queue(&sqs, &name).await;
    let mut batch: Vec<_> = (0..25).map(|n| message(&name, n)).collect();
    batch[3].body = vec![0, 159, 146, 150, 255];
    batch[4].body = b"tab\tok, bell\x07 not".to_vec();
    for h in 0..9 {
        batch[5]
            .headers
            .insert(format!("extra{h}"), format!("v{h}"));
    }
    batch[6].destination = url.clone(); // a queue URL works as well as its name
    batch[7].body = Vec::new(); // SQS takes no empty body: sent as `-`, read back empty
    let outcome = sqs.publish(&batch).await.unwrap();
    assert!(outcome.is_all_stored(), "{outcome:?}");
    let got = drain(&sqs, &url, 25).await;
    assert_eq!(got.len(), 25);
    for sent in &batch {
        let r = got
            .iter()
            .find(|r| r.message_id() == Some(sent.id.as_str()))
            .expect("arrived, with its id");
        assert_eq!(r.body().unwrap(), sent.body, "bodies arrive as they were");
        assert_eq!(r.header("customer"), sent.headers.get("customer").cloned());
        assert_eq!(r.attribute("signalbus-signal"), Some("order_placed"));
    }
    let many = got
        .iter()
        .find(|r| r.message_id() == Some(batch[5].id.as_str()))
        .unwrap();
    assert_eq!(
        many.header("extra8").as_deref(),
        Some("v8"),
        "13 headers: as one JSON"
    );
    assert!(many.attribute("signalbus-headers").is_some());
    sqs.check().await.unwrap();
}

#[tokio::test]
async fn refusals_are_the_messages_own() {
    let sqs = sqs().await;
    let name = unique("refusals");
    let url = create_queue(&sqs, &name).await;
    let mut batch: Vec<_> = (0..4).map(|n| message(&name, n)).collect();
    batch[1].destination = unique("missing");
    batch[2].body = vec![b'x'; 300 * 1024];
    let outcome = sqs.publish(&batch).await.unwrap();
    let refused: Vec<(usize, bool)> = {
        let mut r: Vec<_> = outcome
            .refused()
            .iter()
            .map(|r| (r.index, r.permanent))
            .collect();
        r.sort();
        r
    };
    assert_eq!(refused, [(1, false), (2, true)], "{outcome:?}");
    let reason = |i| {
        &outcome
            .refused()
            .iter()
            .find(|r| r.index == i)
            .unwrap()
            .reason
    };
    assert!(reason(1).contains("does not exist"), "{}", reason(1));
    assert!(reason(2).contains("max_bytes"), "{}", reason(2));
    assert_eq!(drain(&sqs, &url, 2).await.len(), 2);
}

#[tokio::test]
async fn fifo_groups_by_ordering_key_and_drops_copies() {
    let sqs = sqs().await;
    let name = format!("{}.fifo", unique("fifo"));
    let url = create_queue(&sqs, &name).await;
    let mut batch = Vec::new();
    for n in 0..30 {
        let mut m = message(&name, n);
        if n % 3 != 0 {
            m.headers
                .insert(ORDERING_KEY_HEADER.to_owned(), format!("acct-{}", n % 3));
        }
        batch.push(m);
    }
    assert!(sqs.publish(&batch).await.unwrap().is_all_stored());
    // A re-send (a flush that failed after SQS stored the messages): dropped by id.
    assert!(sqs.publish(&batch[..10]).await.unwrap().is_all_stored());
    let got = drain(&sqs, &url, 30).await;
    assert_eq!(got.len(), 30, "each once");
    // Per group, in the order sent (the runner hands them over as received).
    for key in ["acct-1", "acct-2"] {
        let sent: Vec<&str> = batch
            .iter()
            .filter(|m| m.headers.get(ORDERING_KEY_HEADER).map(String::as_str) == Some(key))
            .map(|m| m.id.as_str())
            .collect();
        let arrived: Vec<&str> = got
            .iter()
            .filter(|r| r.header(ORDERING_KEY_HEADER).as_deref() == Some(key))
            .filter_map(Received::message_id)
            .collect();
        assert_eq!(arrived, sent, "{key} in order");
    }
}

#[tokio::test]
async fn the_consumer_deletes_after_ok_and_redelivers_after_err() {
    let sqs = sqs().await;
    let name = unique("consume");
    let url = create_queue(&sqs, &name).await;
    let batch: Vec<_> = (0..12).map(|n| message(&name, n)).collect();
    sqs.publish(&batch).await.unwrap();
    let poison = batch[5].id.clone();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed = Arc::new(Mutex::new(false));
    let config = ConsumerConfig::new(&url)
        .wait(Duration::from_secs(1))
        .retry_after(Duration::from_secs(0));
    let stop = until_len(seen.clone(), 12, Duration::from_secs(20));
    let handled = seen.clone();
    let report = consume(
        sqs.client(),
        &config,
        3,
        move |m| {
            let (seen, failed, poison) = (handled.clone(), failed.clone(), poison.clone());
            async move {
                let id = m.message_id().unwrap().to_owned();
                if id == poison && !std::mem::replace(&mut *failed.lock().unwrap(), true) {
                    assert_eq!(m.receive_count(), Some(1));
                    return Err("the first try fails");
                }
                seen.lock().unwrap().push(id);
                Ok(())
            }
        },
        stop,
    )
    .await
    .unwrap();
    assert_eq!((report.acked, report.rejected), (12, 1), "{report:?}");
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert!(drain(&sqs, &url, 0).await.is_empty(), "all deleted");
}

/// Handlers that take their time, side by side: each group's messages are still handled in
/// their order, and after a failure the rest of its group waits for it to come back.
#[tokio::test]
async fn the_consumer_handles_a_fifo_group_in_order_with_many_handlers() {
    let sqs = sqs().await;
    let name = format!("{}.fifo", unique("fifo-consume"));
    let url = create_queue(&sqs, &name).await;
    let mut batch = Vec::new();
    for n in 0..30 {
        let mut m = message(&name, n);
        m.headers
            .insert(ORDERING_KEY_HEADER.to_owned(), format!("acct-{}", n % 3));
        batch.push(m);
    }
    assert!(sqs.publish(&batch).await.unwrap().is_all_stored());
    // The fourth message of acct-1 fails its first try.
    let poison = batch[10].id.clone();
    let handled: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(false));
    let config = ConsumerConfig::new(&url)
        .wait(Duration::from_secs(1))
        .retry_after(Duration::from_secs(0));
    let stop = until_len(handled.clone(), 30, Duration::from_secs(30));
    let record = handled.clone();
    consume(
        sqs.client(),
        &config,
        8,
        move |m| {
            let (handled, failed, poison) = (record.clone(), failed.clone(), poison.clone());
            async move {
                let id = m.message_id().unwrap().to_owned();
                let group = m.group_id().expect("a FIFO message's group").to_owned();
                // Later messages finish first, unless they wait for their turn.
                let n: u64 = id.bytes().map(u64::from).sum();
                tokio::time::sleep(Duration::from_millis(40 - n % 40)).await;
                if id == poison && !std::mem::replace(&mut *failed.lock().unwrap(), true) {
                    return Err("the first try fails");
                }
                handled.lock().unwrap().push((group, id));
                Ok(())
            }
        },
        stop,
    )
    .await
    .unwrap();
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 30, "each once: {handled:?}");
    for key in ["acct-0", "acct-1", "acct-2"] {
        let sent: Vec<&str> = batch
            .iter()
            .filter(|m| m.headers.get(ORDERING_KEY_HEADER).map(String::as_str) == Some(key))
            .map(|m| m.id.as_str())
            .collect();
        let done: Vec<&str> = handled
            .iter()
            .filter(|(g, _)| g == key)
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(done, sent, "{key} handled in order");
    }
}

#[tokio::test]
async fn an_unreachable_service_fails_the_whole_call() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = options("sqs", &format!("http://127.0.0.1:{port}"));
    o.timeout = Duration::from_millis(1500);
    let dead = SqsPublisher::with_options(o).await.unwrap();
    let batch = vec![message("https://127.0.0.1/000000000000/q", 0)];
    let e = dead.publish(&batch).await.unwrap_err();
    assert_eq!(e.kind(), PublishErrorKind::Unavailable, "{e}");
    assert!(dead.check().await.is_err());
}

#[tokio::test]
async fn sns_delivers_to_a_subscribed_queue_and_refuses_missing_topics() {
    let sqs = sqs().await;
    let sns = SnsPublisher::with_options(options("sns", MOTO))
        .await
        .unwrap();
    for fifo in [false, true] {
        let suffix = if fifo { ".fifo" } else { "" };
        let topic = format!("{}{suffix}", unique("topic"));
        let mut create = sns.client().create_topic().name(&topic);
        if fifo {
            create = create.attributes("FifoTopic", "true");
        }
        let arn = create.send().await.unwrap().topic_arn().unwrap().to_owned();
        let queue = format!("{}{suffix}", unique("sub"));
        let url = create_queue(&sqs, &queue).await;
        let queue_arn = sqs
            .client()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        sns.client()
            .subscribe()
            .topic_arn(&arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .unwrap();
        let mut batch: Vec<_> = (0..15).map(|n| message(&topic, n)).collect();
        batch[2].body = vec![0, 1, 2, 255];
        batch[3].destination = arn.clone();
        batch[4].destination = unique("no-such-topic");
        let outcome = sns.publish(&batch).await.unwrap();
        assert_eq!(outcome.refused().len(), 1, "{outcome:?}");
        assert_eq!(outcome.refused()[0].index, 4);
        assert!(outcome.refused()[0].reason.contains("does not exist"));
        let got = drain(&sqs, &url, 14).await;
        assert_eq!(got.len(), 14, "fifo {fifo}");
        let binary = got
            .iter()
            .find(|r| r.message_id() == Some(batch[2].id.as_str()))
            .unwrap();
        assert_eq!(binary.body().unwrap(), batch[2].body);
    }
    sns.check().await.unwrap();
}
