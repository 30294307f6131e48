//! The inbox example consumer (`examples/inbox_consumer.rs`) on the shared RabbitMQ, as a
//! process, with its effects and inbox on SQLite, PostgreSQL and MariaDB: killed with SIGKILL
//! after its commit and before its ack, it gets the message again when restarted and applies
//! nothing twice.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The example's binary, built by `cargo test --workspace` next to the test binaries.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/inbox_consumer");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace --all-features` (scripts/test.sh) or \
         `cargo build -p signalbus-amqp --example inbox_consumer`",
        bin.display()
    );
    bin
}

/// Start the consumer; wait until it printed `{what} {id}`.
fn start_until(queue: &str, db: &str, pause: bool, what: &str, id: &str) -> Child {
    let mut cmd = Command::new(example());
    cmd.args([URL, queue, db])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if pause {
        cmd.env("INBOX_EXAMPLE_PAUSE_BEFORE_ACK", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let expected = format!("{what} {id}");
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the consumer ended before printing `{expected}`"))
            .unwrap();
        if line == expected {
            break;
        }
    }
    // Keep reading in the background so the pipe never fills.
    std::thread::spawn(move || for _ in lines {});
    child
}

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

/// A database of its own on a server (`postgres://…` or `mysql://…` without a path), or an
/// SQLite file in `dir`; and the statement that drops it.
async fn database(
    server: Option<&str>,
    dir: &std::path::Path,
) -> (String, Option<(String, String)>) {
    let Some(server) = server else {
        return (
            format!("sqlite://{}", dir.join("credits.db").display()),
            None,
        );
    };
    let name = format!("sbtest_{}", uuid::Uuid::new_v4().simple());
    let admin_url = if server.starts_with("postgres") {
        format!("{server}/postgres")
    } else {
        format!("{server}/test")
    };
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("the test database server {server} must run: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    (
        format!("{server}/{name}"),
        Some((admin_url, format!("DROP DATABASE {name}"))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_sqlite() {
    killed_between_commit_and_ack(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_postgres() {
    killed_between_commit_and_ack(Some("postgres://postgres@127.0.0.1:5432")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_mariadb() {
    killed_between_commit_and_ack(Some("mysql://root@127.0.0.1:3306")).await;
}

async fn killed_between_commit_and_ack(server: Option<&str>) {
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
    let dir = tempfile::tempdir().unwrap();
    let (db, drop_db) = database(server, dir.path()).await;

    // Committed, not acknowledged: SIGKILL.
    let mut first = start_until(&queue, &db, true, "committed", &id);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        credits(&db).await,
        1,
        "the effect committed before the crash"
    );

    // RabbitMQ delivers it again; the inbox knows it: acknowledged, nothing applied.
    let mut second = start_until(&queue, &db, false, "duplicate", &id);
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(second.wait().unwrap().success(), "SIGTERM stops it cleanly");
    assert_eq!(credits(&db).await, 1, "applied once");
    let left = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(left.is_none(), "the copy was acknowledged");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    if let Some((admin, drop)) = drop_db {
        let admin = sqlx::AnyPool::connect(&admin).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&admin)
            .await
            .unwrap();
    }
}
