//! Against a real Kafka-protocol broker on 127.0.0.1:9092 (tansu, started by
//! `scripts/kafka.sh start`). Every test uses its own topics and deletes them.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use signalbus_core::{Message, Publisher};
use signalbus_kafka::KafkaPublisher;
use signalbus_testkit::kafka::{
    SERVERS, create_topic, create_topic_at, delete_topic, header, read_topic,
};
use signalbus_testkit::outcome::refused;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn message(topic: &str, n: usize) -> Message {
    Message {
        id: format!("id-{n}-{}", uuid::Uuid::new_v4().simple()),
        signal: Arc::from("order_placed"),
        destination: topic.to_owned(),
        routing_key: Some("customer-7".into()),
        headers: [("customer".to_owned(), format!("c{n}"))].into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        content_type: Some("application/json".into()),
    }
}

fn unique() -> String {
    format!("sbtest-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn batch_reads_back_in_order_with_key_id_and_headers() {
    let topic = unique();
    create_topic(&topic).await;
    let publisher = KafkaPublisher::connect(&format!("kafka://{SERVERS}?timeout_ms=5000"))
        .await
        .unwrap();
    let batch: Vec<_> = (0..40).map(|n| message(&topic, n)).collect();
    publisher.publish(&batch).await.unwrap();
    let t = topic.clone();
    let got = tokio::task::spawn_blocking(move || read_topic(&t, 40))
        .await
        .unwrap();
    assert_eq!(got.len(), 40);
    for (sent, got) in batch.iter().zip(&got) {
        assert_eq!(got.payload().unwrap(), sent.body.as_slice(), "order kept");
        assert_eq!(got.key().unwrap(), b"customer-7");
        assert_eq!(header(got, "message-id").as_deref(), Some(sent.id.as_str()));
        assert_eq!(
            header(got, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            header(got, "customer"),
            Some(sent.headers["customer"].clone())
        );
    }
    delete_topic(&topic).await;
}

/// The `message-id`s of everything in partition 0 of `topic`: read until `n` arrived (at
/// most 20 s), then 2 s more, so that an extra copy would show.
async fn stored_ids(topic: &str, n: usize) -> Vec<String> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", SERVERS)
            .set("group.id", unique())
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut deadline = Instant::now() + Duration::from_secs(20);
        let mut ids = Vec::new();
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                ids.push(header(&m.detach(), "message-id").unwrap());
                if ids.len() == n {
                    deadline = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        ids
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_missing_topic_is_refused_until_it_is_created() {
    let topic = unique();
    let publisher = KafkaPublisher::connect(&format!("kafka://{SERVERS}?timeout_ms=3000"))
        .await
        .unwrap();
    let batch = [message(&topic, 1), message(&topic, 2)];
    // librdkafka waits for the topic until the messages time out; they are then refused.
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [0, 1], "{outcome:?}");
    for r in outcome.refused() {
        assert!(r.reason.contains(&format!("no topic `{topic}`")), "{r:?}");
    }
    create_topic(&topic).await;
    let mut sent = false;
    // The producer learns about the new topic from its next metadata refresh.
    for _ in 0..20 {
        if publisher
            .publish(&batch)
            .await
            .is_ok_and(|o| o.is_all_stored())
        {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent, "publishing still fails after the topic was created");
    let t = topic.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || read_topic(&t, 2))
            .await
            .unwrap()
            .len(),
        2
    );
    delete_topic(&topic).await;
}

/// One message to a topic that does not exist, in the middle of a batch: exactly it is
/// refused, naming the topic (never the body), and the others arrive once each, in order.
#[tokio::test]
async fn one_message_to_a_missing_topic_is_refused_and_the_rest_arrive_once() {
    let topic = unique();
    create_topic(&topic).await;
    let missing = unique();
    let publisher = KafkaPublisher::connect(&format!("kafka://{SERVERS}?timeout_ms=3000"))
        .await
        .unwrap();
    let batch: Vec<_> = (0..6)
        .map(|n| message(if n == 2 { &missing } else { &topic }, n))
        .collect();
    let outcome = publisher.publish(&batch).await.unwrap();
    assert_eq!(refused(&outcome), [2], "{outcome:?}");
    let why = &outcome.refused()[0].reason;
    assert!(why.contains(&format!("no topic `{missing}`")), "{why}");
    assert!(!why.contains(r#""n":2"#), "no body in the reason: {why}");
    let expected: Vec<_> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, m)| m.id.clone())
        .collect();
    assert_eq!(stored_ids(&topic, 5).await, expected, "each once, in order");
    delete_topic(&topic).await;
}

#[tokio::test]
async fn an_unreachable_broker_is_named() {
    let e = KafkaPublisher::connect("kafka://127.0.0.1:1?timeout_ms=1500")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot reach Kafka at 127.0.0.1:1"), "{e}");
    let e = KafkaPublisher::connect("kafka://user:hunter2@127.0.0.1:9092")
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2") && e.contains("credentials"), "{e}");
}

/// A private tansu broker (the shared one is never stopped), in memory.
fn start_tansu(port: u16) -> std::process::Child {
    let home = std::env::var("HOME").unwrap_or_default();
    let listener = format!("tcp://127.0.0.1:{port}");
    std::process::Command::new(format!("{home}/.cargo/bin/tansu"))
        .args([
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tansu must be installed (scripts/kafka.sh install)")
}

async fn wait_listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("private tansu did not start on port {port}");
}

#[tokio::test]
async fn a_restarted_broker_gets_the_pending_batch_and_the_producer_reconnects() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let servers = format!("127.0.0.1:{port}");
    let mut broker = start_tansu(port);
    wait_listening(port).await;
    let topic = unique();
    create_topic_at(&servers, &topic).await;
    let publisher = KafkaPublisher::connect(&format!("kafka://{servers}?timeout_ms=2000"))
        .await
        .unwrap();
    publisher.publish(&[message(&topic, 0)]).await.unwrap();

    broker.kill().unwrap();
    broker.wait().unwrap();
    let pending = [message(&topic, 1), message(&topic, 2)];
    let e = publisher.publish(&pending).await.unwrap_err();
    assert!(e.is_retryable(), "a down broker is worth retrying: {e}");

    // In-memory storage: the restarted broker has lost the topic; create it again.
    let mut broker = start_tansu(port);
    wait_listening(port).await;
    create_topic_at(&servers, &topic).await;
    let mut last = None;
    for _ in 0..30 {
        match publisher.publish(&pending).await {
            Ok(outcome) => {
                assert!(outcome.is_all_stored(), "{outcome:?}");
                last = None;
                break;
            }
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
    assert_eq!(last, None, "the producer did not recover");
}
