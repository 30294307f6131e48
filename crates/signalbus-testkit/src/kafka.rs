//! Kafka topics for a test, and reading back what was published (rdkafka).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// The shared broker (tansu, started by `scripts/kafka.sh start`).
pub const SERVERS: &str = "127.0.0.1:9092";

fn admin(servers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap()
}

/// Create `name` (one partition) on the shared broker; tansu does not auto-create topics.
pub async fn create_topic(name: &str) {
    create_topic_at(SERVERS, name).await
}

/// Create `name` (one partition) on the broker at `servers`.
pub async fn create_topic_at(servers: &str, name: &str) {
    let results = admin(servers)
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("a Kafka broker must run on {servers} (scripts/kafka.sh start): {e}")
        });
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

/// Delete `name` from the shared broker, if it is there.
pub async fn delete_topic(name: &str) {
    let _ = admin(SERVERS)
        .delete_topics(&[name], &AdminOptions::new())
        .await;
}

/// The first `n` messages of partition 0 of `topic` on the shared broker, read from the
/// beginning; fewer if they do not all arrive within 20 s. Blocks: call it from
/// `spawn_blocking` in async tests.
pub fn read_topic(topic: &str, n: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", SERVERS)
        .set(
            "group.id",
            format!("sbtest-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

/// The value of header `name` of `m`, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A private tansu broker on a port of its own, keeping its topics in an SQLite file of its
/// own directory (tansu's `libsql` engine, which `scripts/kafka.sh install` builds in), so a
/// test may kill and restart it and find its messages again. The shared broker on 9092 is
/// never touched.
pub struct PrivateTansu {
    child: Option<std::process::Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The port it tells clients to use (a proxy in front of it, say).
    pub advertised: u16,
    /// Where its SQLite file and log are.
    pub dir: std::path::PathBuf,
}

impl PrivateTansu {
    /// Start one on `port`, advertising `advertised` to clients.
    pub fn start(dir: &std::path::Path, port: u16, advertised: u16) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut broker = PrivateTansu {
            child: None,
            port,
            advertised,
            dir: dir.to_owned(),
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let home = std::env::var_os("HOME").unwrap_or_default();
        let tansu = std::path::Path::new(&home).join(".cargo/bin/tansu");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let child = std::process::Command::new(&tansu)
            .current_dir(&self.dir)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.advertised))
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start {} (scripts/kafka.sh install): {e}",
                    tansu.display()
                ))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Wait until it accepts connections (at most `limit`).
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        crate::process::wait_for_port(self.port, limit).await
    }

    /// Stop it: SIGTERM (graceful) or SIGKILL.
    pub fn stop(&mut self, graceful: bool) {
        if let Some(mut child) = self.child.take() {
            crate::process::stop_child(&mut child, graceful, Duration::from_secs(10));
        }
    }

    /// Start it again after [`PrivateTansu::stop`], with the topics it kept.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// Create `name` with `partitions` partitions on the broker at `servers`.
pub async fn create_partitioned_topic(servers: &str, name: &str, partitions: i32) {
    let results = admin(servers)
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("a Kafka broker must run on {servers}: {e}"));
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}
