//! The Redis inbox example consumer (`examples/redis_inbox_consumer.rs`) on the shared Redis,
//! as a process: killed with SIGKILL after its commit and before its `XACK`, it reads the
//! entry again when restarted under the same consumer name and applies nothing twice.

use signalbus_testkit::example;

const URL: &str = "redis://127.0.0.1:6379";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_applies_nothing_twice() {
    let client = redis::Client::open(URL).unwrap();
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must run on 127.0.0.1:6379");
    let stream = format!("sbtest-inbox-{}", uuid::Uuid::new_v4().simple());
    let id = uuid::Uuid::now_v7().to_string();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("id")
        .arg(&id)
        .arg("body")
        .arg(r#"{"amount": 5}"#)
        .query_async(&mut redis)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("credits.db").display());
    let args = [URL, stream.as_str(), "credits", db.as_str()];

    example::kill(example::start_until(
        "redis_inbox_consumer",
        &args,
        true,
        "committed",
        &id,
    ));
    example::stop(example::start_until(
        "redis_inbox_consumer",
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
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("credits")
        .query_async(&mut redis)
        .await
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(
        summary[0],
        redis::Value::Int(0),
        "acknowledged: {summary:?}"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .unwrap();
}
