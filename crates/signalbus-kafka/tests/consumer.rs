//! The consumer runner on the shared Kafka-protocol broker (tansu): offsets committed after
//! the handler succeeded, a failed record sought back and handled again, a stop between
//! records.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use signalbus_kafka::consumer::consume;
use signalbus_testkit::kafka::{SERVERS, create_topic, delete_topic};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_after_success_seeks_back_on_failure_and_stops_cleanly() {
    let topic = format!("sbtest-consume-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .create()
        .unwrap();
    for n in 0..10 {
        let body = format!("{n}");
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&body),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let group = format!("sbtest-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();

    // Record 3 fails the first time; the run ends once all ten were handled.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (seen, done) = (seen.clone(), done.clone());
        move |record: rdkafka::message::OwnedMessage| {
            let (seen, done) = (seen.clone(), done.clone());
            async move {
                let body = String::from_utf8(record.payload().unwrap().to_vec()).unwrap();
                let mut seen = seen.lock().unwrap();
                let first = !seen.contains(&body);
                seen.push(body.clone());
                if body == "3" && first {
                    return Err("the handler failed once");
                }
                if body == "9" {
                    done.notify_one();
                }
                Ok(())
            }
        }
    };
    let stop = async move { done.notified().await };
    let report = tokio::time::timeout(Duration::from_secs(60), consume(&consumer, handler, stop))
        .await
        .expect("the consumer stops when asked")
        .unwrap();
    assert_eq!((report.acked, report.rejected), (10, 1), "{report:?}");
    let order = seen.lock().unwrap().clone();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for b in &order {
        *counts.entry(b.as_str()).or_default() += 1;
    }
    assert_eq!(counts["3"], 2, "the failed record came again: {order:?}");
    assert_eq!(
        order.iter().filter(|b| b.as_str() != "3").count(),
        9,
        "the others once each: {order:?}"
    );
    // Committed: the group resumes after the last record.
    let mut committed = Offset::Invalid;
    for _ in 0..50 {
        let offsets = consumer
            .committed_offsets(assignment.clone(), Duration::from_secs(5))
            .unwrap();
        committed = offsets.find_partition(&topic, 0).unwrap().offset();
        if committed == Offset::Offset(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(committed, Offset::Offset(10));
    drop(consumer);
    delete_topic(&topic).await;
}
