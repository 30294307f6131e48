//! The Kafka inbox example consumer (`examples/kafka_inbox_consumer.rs`) on the shared
//! Kafka-protocol broker (tansu), as a process: killed with SIGKILL after its commit and
//! before its offset commit, it reads the record again when restarted (from the offset
//! committed before it) and applies nothing twice.

use signalbus_testkit::example;
use signalbus_testkit::kafka::{SERVERS, create_topic, delete_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_applies_nothing_twice() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = format!("sbtest-inbox-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic).await;
    let id = uuid::Uuid::now_v7().to_string();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: signalbus_kafka::MESSAGE_ID_HEADER,
        value: Some(id.as_str()),
    });
    producer
        .send(
            FutureRecord::<(), _>::to(&topic)
                .payload(r#"{"amount": 5}"#)
                .headers(headers),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("credits.db").display());
    let group = format!("sbtest-{}", uuid::Uuid::new_v4().simple());
    let args = [SERVERS, topic.as_str(), group.as_str(), db.as_str()];

    example::kill(example::start_until(
        "kafka_inbox_consumer",
        &args,
        true,
        "committed",
        &id,
    ));
    example::stop(example::start_until(
        "kafka_inbox_consumer",
        &args,
        false,
        "duplicate",
        &id,
    ));

    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM credits")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "applied once");
    delete_topic(&topic).await;
}
