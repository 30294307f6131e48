//! The SQS inbox example consumer (`examples/sqs_inbox_consumer.rs`) against moto, as a
//! process: killed with SIGKILL after its commit and before its delete, it gets the message
//! again when restarted (after the 2 s visibility timeout) and applies nothing twice.

use signalbus_aws::{AwsOptions, SqsPublisher};
use signalbus_core::{Message, Publisher};
use signalbus_testkit::example;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_delete_applies_nothing_twice() {
    let endpoint = signalbus_testkit::moto::endpoint();
    let options = AwsOptions::from_url(&format!("sqs://us-east-1?endpoint={endpoint}"), "sqs")
        .unwrap()
        .credentials("testing", "testing");
    let sqs = SqsPublisher::with_options(options).await.unwrap();
    let name = format!("sbtest-inbox-{}", uuid::Uuid::new_v4().simple());
    let queue_url = sqs
        .client()
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("moto must run on 127.0.0.1:4577 (scripts/moto.sh start)")
        .queue_url()
        .unwrap()
        .to_owned();
    let id = uuid::Uuid::now_v7().to_string();
    let message = Message {
        id: id.clone(),
        signal: Arc::from("credit"),
        destination: name.clone(),
        routing_key: None,
        headers: Default::default(),
        body: br#"{"amount": 5}"#.to_vec(),
        content_type: Some("application/json".into()),
    };
    assert!(sqs.publish(&[message]).await.unwrap().is_all_stored());
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("credits.db").display());
    let args = [queue_url.as_str(), db.as_str()];
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("SQS_ENDPOINT", endpoint.as_str()),
    ];
    example::kill(example::start_until_with(
        "sqs_inbox_consumer",
        &args,
        &env,
        true,
        "committed",
        &id,
    ));
    example::stop(example::start_until_with(
        "sqs_inbox_consumer",
        &args,
        &env,
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
    let _ = sqs
        .client()
        .delete_queue()
        .queue_url(queue_url)
        .send()
        .await;
}
