//! The inbox example consumer (`examples/amqp_inbox_consumer.rs`) on the shared RabbitMQ, as a
//! process, with its effects and inbox on SQLite, PostgreSQL and MariaDB: killed with SIGKILL
//! after its commit and before its ack, it gets the message again when restarted and applies
//! nothing twice.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use signalbus_testkit::database::{TestDb, TestServer};
use signalbus_testkit::example;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How many credits the consumer applied.
async fn credits(db: &str) -> i64 {
    let pool = sqlx::AnyPool::connect(db).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM credits")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_sqlite() {
    killed_between_commit_and_ack::<sqlx::Sqlite>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_postgres() {
    killed_between_commit_and_ack::<sqlx::Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_mariadb() {
    killed_between_commit_and_ack::<sqlx::MySql>().await;
}

async fn killed_between_commit_and_ack<DB: TestServer>() {
    sqlx::any::install_default_drivers();
    let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (rabbitmq-server -detached)");
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("sbtest-inbox-{}", uuid::Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"amount": 5}"#,
            lapin::BasicProperties::default().with_message_id(id.as_str().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let db = TestDb::<DB>::new(1).await;

    // Committed, not acknowledged: SIGKILL.
    let args = [URL, queue.as_str(), db.url.as_str()];
    example::kill(example::start_until(
        "amqp_inbox_consumer",
        &args,
        true,
        "committed",
        &id,
    ));
    assert_eq!(
        credits(&db.url).await,
        1,
        "the effect committed before the crash"
    );

    // RabbitMQ delivers it again; the inbox knows it: acknowledged, nothing applied.
    example::stop(example::start_until(
        "amqp_inbox_consumer",
        &args,
        false,
        "duplicate",
        &id,
    ));
    assert_eq!(credits(&db.url).await, 1, "applied once");
    let left = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(left.is_none(), "the copy was acknowledged");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    db.cleanup().await;
}
