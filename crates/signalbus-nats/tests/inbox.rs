//! The NATS inbox example consumer (`examples/nats_inbox_consumer.rs`) on the shared NATS, as a
//! process: killed with SIGKILL after its commit and before its ack, it gets the message
//! again when restarted (after the consumer's 2 s ack wait) and applies nothing twice.

use async_nats::jetstream::{self, stream};
use signalbus_testkit::example;

const URL: &str = "nats://127.0.0.1:4222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_applies_nothing_twice() {
    let js = jetstream::new(
        async_nats::connect(URL)
            .await
            .expect("NATS must run on 127.0.0.1:4222 with -js"),
    );
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (name, subject) = (
        format!("SBTEST_INBOX_{suffix}"),
        format!("sbtest_inbox_{suffix}"),
    );
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    js.publish_with_headers(subject, headers, r#"{"amount": 5}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("credits.db").display());
    let args = [URL, name.as_str(), "credits", db.as_str()];

    example::kill(example::start_until(
        "nats_inbox_consumer",
        &args,
        true,
        "committed",
        &id,
    ));
    example::stop(example::start_until(
        "nats_inbox_consumer",
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
    js.delete_stream(&name).await.unwrap();
}
