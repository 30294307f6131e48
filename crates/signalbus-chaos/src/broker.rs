//! The harness' private brokers: per bus one server, or with `--cluster` three-node
//! clusters — NATS with a stream of three replicas, RabbitMQ with a quorum queue (tansu has
//! no cluster: Kafka stays one node). Every node sits behind a fault-injecting proxy
//! of its own and clients are given every node's proxy, so that a fault on one node is one
//! node's: the clients must move to another.

use crate::signals::{AWS_ENV, AWS_QUEUES, Bus, KAFKA_PARTITIONS};
use signalbus_testkit::kafka::{PrivateTansu, create_partitioned_topic};
use signalbus_testkit::moto::PrivateMoto;
use signalbus_testkit::nats::{PrivateServer, cluster_args, free_port};
use signalbus_testkit::process::wait_for_port;
use signalbus_testkit::proxy::Proxy;
use signalbus_testkit::rabbitmq::PrivateNode;
use signalbus_testkit::redis::PrivateRedis;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a server may take to come (back) up.
pub const BOOT: Duration = Duration::from_secs(60);

/// Nodes of a clustered broker.
pub const CLUSTER_NODES: usize = 3;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// A bus' broker: one node or a cluster.
pub struct Broker {
    pub bus: Bus,
    nodes: Vec<Node>,
}

/// One server and the proxy in front of it.
struct Node {
    port: u16,
    proxy: Proxy,
    server: Server,
}

enum Server {
    Amqp(PrivateNode),
    Nats {
        server: Option<PrivateServer>,
        dir: PathBuf,
        /// The cluster's options (none for a single server).
        cluster: Vec<String>,
    },
    Kafka(PrivateTansu),
    Redis {
        server: Option<PrivateRedis>,
        dir: PathBuf,
    },
    /// The webhook bus' receiver is the workload's consumer process, listening on the node's
    /// port: killing it is `kill_consumer`; no server of the harness' own.
    Webhook,
    /// moto (SQS, SNS). It keeps its queues in memory, so it is never stopped, and it does not
    /// come back from a freeze (docs/reliability.md): only its proxy's faults hit it.
    Moto {
        /// Kept to be killed when dropped.
        _server: PrivateMoto,
    },
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Broker {
    /// Start `bus`' broker under `dir` — a cluster of [`CLUSTER_NODES`] when `clustered` and
    /// the bus has one here (NATS, RabbitMQ) — and prepare what the workload needs on it.
    pub async fn start(dir: &Path, bus: Bus, clustered: bool) -> Result<Broker, Failure> {
        let bus_dir = dir.join(bus.name());
        let nodes = if clustered && bus == Bus::Nats {
            nats_cluster(&bus_dir).await?
        } else if clustered && bus == Bus::Amqp {
            rabbit_cluster(&bus_dir).await?
        } else {
            let port = free_port();
            let proxy = Proxy::start(loopback(port)).await?;
            let server = match bus {
                Bus::Amqp => Server::Amqp(PrivateNode::start(&bus_dir, port)?),
                Bus::Nats => {
                    std::fs::create_dir_all(&bus_dir)?;
                    Server::Nats {
                        server: Some(PrivateServer::start(port, &bus_dir)),
                        dir: bus_dir,
                        cluster: Vec::new(),
                    }
                }
                Bus::Kafka => Server::Kafka(PrivateTansu::start(&bus_dir, port, proxy.port())?),
                Bus::Redis => {
                    std::fs::create_dir_all(&bus_dir)?;
                    Server::Redis {
                        server: Some(PrivateRedis::start(port, &bus_dir)),
                        dir: bus_dir,
                    }
                }
                Bus::Webhook => Server::Webhook,
                Bus::Sqs | Bus::Sns => Server::Moto {
                    _server: PrivateMoto::start(port).await,
                },
            };
            vec![Node {
                port,
                proxy,
                server,
            }]
        };
        let broker = Broker { bus, nodes };
        if !broker.wait_ready().await {
            return Err(format!("the private {} broker did not start", bus.name()).into());
        }
        broker.prepare().await?;
        Ok(broker)
    }

    /// How many nodes it has.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The bus URL of this broker through its proxies (every node's).
    pub fn url(&self) -> String {
        self.bus.url(&self.hosts())
    }

    /// `host:port` of each node's proxy, comma-separated, for the consumer; for the
    /// webhook bus, where its receiver listens (behind the proxy).
    pub fn address(&self) -> String {
        match self.nodes[0].server {
            Server::Webhook => format!("127.0.0.1:{}", self.nodes[0].port),
            _ => self.hosts(),
        }
    }

    /// Whether the harness runs a server for this bus that it can stop and start with its data
    /// (not the webhook's receiver, which is the consumer; not moto, which would lose it).
    pub fn has_server(&self) -> bool {
        !matches!(self.nodes[0].server, Server::Webhook | Server::Moto { .. })
    }

    fn hosts(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.proxy.port()))
            .collect();
        hosts.join(",")
    }

    /// The proxy in front of node `n`.
    pub fn proxy(&self, n: usize) -> &Proxy {
        &self.nodes[n].proxy
    }

    /// Every node's proxy.
    pub fn proxies(&self) -> impl Iterator<Item = &Proxy> {
        self.nodes.iter().map(|n| &n.proxy)
    }

    /// The file where the broker keeps its records, when the harness can read it (tansu's
    /// SQLite store).
    pub fn store_file(&self) -> Option<PathBuf> {
        match &self.nodes[0].server {
            Server::Kafka(tansu) => Some(tansu.dir.join("tansu.db")),
            Server::Amqp(_)
            | Server::Nats { .. }
            | Server::Redis { .. }
            | Server::Webhook
            | Server::Moto { .. } => None,
        }
    }

    /// Wait until every node takes connections.
    pub async fn wait_ready(&self) -> bool {
        for n in 0..self.nodes.len() {
            if !self.wait_node(n).await {
                return false;
            }
        }
        true
    }

    async fn wait_node(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        match &node.server {
            Server::Amqp(rabbit) => rabbit.wait_ready(BOOT).await,
            Server::Nats { .. } | Server::Kafka(_) | Server::Redis { .. } | Server::Moto { .. } => {
                wait_for_port(node.port, BOOT).await
            }
            // Up when the workload's consumer is.
            Server::Webhook => true,
        }
    }

    /// Start every stopped node again, with the data it kept.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        for n in 0..self.nodes.len() {
            self.start_node_again(n)?;
        }
        Ok(())
    }

    /// Stop node `n`: gracefully, or as a crash (SIGKILL).
    pub fn stop_node(&mut self, n: usize, graceful: bool) {
        match &mut self.nodes[n].server {
            Server::Amqp(node) => node.stop(graceful),
            Server::Nats { server, .. } => {
                if let Some(s) = server.take() {
                    if graceful {
                        s.terminate();
                    } else {
                        s.stop();
                    }
                }
            }
            Server::Kafka(tansu) => tansu.stop(graceful),
            Server::Redis { server, .. } => {
                if let Some(s) = server.take() {
                    if graceful {
                        s.terminate();
                    } else {
                        s.stop();
                    }
                }
            }
            Server::Webhook | Server::Moto { .. } => {}
        }
    }

    /// Start node `n` again (after [`Broker::stop_node`]); a no-op when it runs.
    pub fn start_node_again(&mut self, n: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[n];
        match &mut node.server {
            Server::Amqp(rabbit) => rabbit.start_again(),
            Server::Nats {
                server,
                dir,
                cluster,
            } => {
                if server.is_none() {
                    let extra: Vec<&str> = cluster.iter().map(String::as_str).collect();
                    *server = Some(PrivateServer::start_with(node.port, dir, &extra));
                }
                Ok(())
            }
            Server::Kafka(tansu) => tansu.start_again(),
            Server::Redis { server, dir } => {
                if server.is_none() {
                    *server = Some(PrivateRedis::start(node.port, dir));
                }
                Ok(())
            }
            Server::Webhook | Server::Moto { .. } => Ok(()),
        }
    }

    /// Wait until node `n` takes connections again.
    pub async fn wait_node_ready(&self, n: usize) -> bool {
        self.wait_node(n).await
    }

    /// Freeze node `n` (SIGSTOP) — to its clients and its peers alike a node behind a network
    /// that drops everything — or let it run again. `false` for tansu (not frozen here).
    pub fn freeze_node(&self, n: usize, frozen: bool) -> bool {
        match &self.nodes[n].server {
            Server::Amqp(rabbit) => {
                rabbit.freeze(frozen);
                true
            }
            Server::Nats {
                server: Some(server),
                ..
            } => {
                if frozen {
                    server.freeze();
                } else {
                    server.thaw();
                }
                true
            }
            _ => false,
        }
    }

    /// What the workload's routes need: the refused route stays refused.
    async fn prepare(&self) -> Result<(), Failure> {
        let direct = format!("127.0.0.1:{}", self.nodes[0].port);
        match self.bus {
            Bus::Amqp => {
                prepare_amqp(&direct, self.nodes.len() > 1).await?;
                if self.nodes.len() > 1 {
                    let port = self.nodes[0].port;
                    let nodes = self.nodes.len();
                    tokio::task::block_in_place(|| check_rabbit_cluster(port, nodes))?;
                }
            }
            Bus::Nats => prepare_nats(&direct, self.nodes.len()).await?,
            Bus::Kafka => create_partitioned_topic(&direct, "chaos", KAFKA_PARTITIONS).await,
            Bus::Redis => {
                // The poison route: a key that holds a string, not a stream (`WRONGTYPE`).
                let client = redis::Client::open(format!("redis://{direct}"))?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let () = redis::cmd("SET")
                    .arg(Bus::Redis.poison_route().0)
                    .arg("not a stream")
                    .query_async(&mut conn)
                    .await?;
            }
            Bus::Webhook => {}
            Bus::Sqs | Bus::Sns => prepare_aws(self.bus, &direct).await?,
        }
        Ok(())
    }
}

/// The queues of the SQS and SNS buses ([`AWS_QUEUES`]: standard and FIFO); on SNS, topics
/// of the same names, each with its queue subscribed with raw delivery (the message
/// attributes arrive as the queue's).
async fn prepare_aws(bus: Bus, direct: &str) -> Result<(), Failure> {
    use signalbus::aws::{AwsOptions, SnsPublisher, SqsPublisher};
    let [(_, key), _] = AWS_ENV;
    let options = |bus: Bus| -> Result<AwsOptions, Failure> {
        Ok(AwsOptions::from_url(&bus.url(direct), bus.name())?.credentials(key, key))
    };
    let sqs = SqsPublisher::with_options(options(Bus::Sqs)?).await?;
    let sns = SnsPublisher::with_options(options(Bus::Sns)?).await?;
    for name in AWS_QUEUES {
        let fifo = name.ends_with(".fifo");
        let mut queue = sqs.client().create_queue().queue_name(name);
        if fifo {
            queue = queue.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
        }
        let queue_url = queue.send().await?.queue_url.ok_or("no queue URL")?;
        if bus != Bus::Sns {
            continue;
        }
        let queue_arn = sqs
            .client()
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .ok_or("no queue ARN")?;
        let mut topic = sns.client().create_topic().name(name);
        if fifo {
            topic = topic.attributes("FifoTopic", "true");
        }
        let topic_arn = topic.send().await?.topic_arn.ok_or("no topic ARN")?;
        sns.client()
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await?;
    }
    Ok(())
}

/// Three nats-servers in one cluster, each with its JetStream store, advertising its proxy
/// to clients (so that the servers a client learns of are proxied too). The routes between
/// them are direct: a partitioned node is a frozen one ([`Broker::freeze_node`]).
async fn nats_cluster(dir: &Path) -> Result<Vec<Node>, Failure> {
    let ports: Vec<u16> = (0..CLUSTER_NODES).map(|_| free_port()).collect();
    let cluster_ports: Vec<u16> = (0..CLUSTER_NODES).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (n, &port) in ports.iter().enumerate() {
        let proxy = Proxy::start(loopback(port)).await?;
        let advertise = format!("127.0.0.1:{}", proxy.port());
        let cluster = cluster_args(n, &cluster_ports, Some(&advertise));
        let node_dir = dir.join(format!("n{n}"));
        std::fs::create_dir_all(&node_dir)?;
        let extra: Vec<&str> = cluster.iter().map(String::as_str).collect();
        let server = PrivateServer::start_with(port, &node_dir, &extra);
        nodes.push(Node {
            port,
            proxy,
            server: Server::Nats {
                server: Some(server),
                dir: node_dir,
                cluster,
            },
        });
    }
    Ok(nodes)
}

/// Three RabbitMQ nodes in one cluster, started one after the other so that each joins the
/// first (see [`PrivateNode::start_in_cluster`]).
async fn rabbit_cluster(dir: &Path) -> Result<Vec<Node>, Failure> {
    let ports: Vec<u16> = (0..CLUSTER_NODES).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (n, &port) in ports.iter().enumerate() {
        let proxy = Proxy::start(loopback(port)).await?;
        let node = PrivateNode::start_in_cluster(&dir.join(format!("n{n}")), port, &ports)?;
        if !node.wait_ready(BOOT).await {
            return Err(format!("RabbitMQ node {n} of the cluster did not start").into());
        }
        nodes.push(Node {
            port,
            proxy,
            server: Server::Amqp(node),
        });
    }
    tokio::task::block_in_place(|| join_rabbit_cluster(&ports))?;
    Ok(nodes)
}

/// Make sure every node runs in the first one's cluster: peer discovery at boot is a race
/// (a node that does not reach its peers in time forms a cluster of its own), so a node
/// missing from the first one's running nodes is reset and joined to it explicitly.
fn join_rabbit_cluster(ports: &[u16]) -> Result<(), Failure> {
    let first = PrivateNode::node_name(ports[0]);
    let running = || rabbit_running_nodes(ports[0]);
    for &port in &ports[1..] {
        let name = PrivateNode::node_name(port);
        if running()?.contains(&name) {
            continue;
        }
        eprintln!("chaos: RabbitMQ node {name} formed a cluster of its own; joining it to {first}");
        rabbitmqctl(port, &["stop_app"])?;
        rabbitmqctl(port, &["reset"])?;
        rabbitmqctl(port, &["join_cluster", &first])?;
        rabbitmqctl(port, &["start_app"])?;
    }
    let began = std::time::Instant::now();
    loop {
        let up = running()?;
        if up.len() == ports.len() {
            return Ok(());
        }
        if began.elapsed() > BOOT {
            return Err(format!(
                "the RabbitMQ cluster runs {} of {} nodes: {up:?}",
                up.len(),
                ports.len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The nodes the RabbitMQ node on `port` sees running in its cluster.
fn rabbit_running_nodes(port: u16) -> Result<Vec<String>, Failure> {
    let status: serde_json::Value = serde_json::from_str(&rabbitmqctl(
        port,
        &["cluster_status", "--formatter", "json"],
    )?)?;
    Ok(status["running_nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// `rabbitmqctl` against the private node on `port` (it shares the nodes' Erlang cookie: same
/// user): its output, or an error with its stderr.
fn rabbitmqctl(port: u16, args: &[&str]) -> Result<String, Failure> {
    let out = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .args(["-n", &PrivateNode::node_name(port), "-q"])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exchange and queue `chaos`; in a cluster a quorum queue (a replica on every node; a
/// message is confirmed once a majority stored it).
async fn prepare_amqp(direct: &str, clustered: bool) -> Result<(), Failure> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let url = format!("amqp://guest:guest@{direct}/%2f");
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            "chaos".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    if clustered {
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            "chaos".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    // Events by their routing key, keyed signals with none.
    for key in [Bus::Amqp.event_route().1, ""] {
        channel
            .queue_bind(
                "chaos".into(),
                "chaos".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    conn.close(200, "prepared".into()).await?;
    Ok(())
}

/// The stream `CHAOS`, with a replica on each node of a cluster. A cluster that has just
/// started may have no JetStream leader yet: try for [`BOOT`].
async fn prepare_nats(direct: &str, replicas: usize) -> Result<(), Failure> {
    use async_nats::jetstream::stream;
    let client = async_nats::connect(format!("nats://{direct}")).await?;
    let js = async_nats::jetstream::new(client);
    let config = stream::Config {
        name: "CHAOS".into(),
        subjects: vec!["chaos".into(), "chaos.>".into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let began = std::time::Instant::now();
    let mut stream = loop {
        match js.create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(e) if began.elapsed() < BOOT => {
                tracing::info!(error = %e, "the NATS cluster has no JetStream leader yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // A cluster's stream: a leader and every other node a current replica, or the run would
    // test less than it says.
    if replicas == 1 {
        return Ok(());
    }
    loop {
        // A stream just created may have no leader to answer yet.
        let info = match stream.info().await {
            Ok(info) => Some(info),
            Err(e) if began.elapsed() < BOOT => {
                tracing::info!(error = %e, "the NATS stream has no leader yet");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let cluster = info.and_then(|i| i.cluster.clone());
        let current = cluster.as_ref().map_or(0, |c| {
            usize::from(c.leader.is_some()) + c.replicas.iter().filter(|r| r.current).count()
        });
        if current == replicas {
            return Ok(());
        }
        if began.elapsed() > BOOT {
            return Err(format!(
                "the NATS stream has {current} of {replicas} replicas current: {cluster:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fail unless the RabbitMQ node on `port` sees a cluster of `nodes` running nodes and the
/// queue `chaos` as a quorum queue with a member on each.
fn check_rabbit_cluster(port: u16, nodes: usize) -> Result<(), Failure> {
    let running = rabbit_running_nodes(port)?;
    if running.len() != nodes {
        return Err(format!(
            "the RabbitMQ cluster runs {} of {nodes} nodes: {running:?}",
            running.len()
        )
        .into());
    }
    let queues: serde_json::Value = serde_json::from_str(&rabbitmqctl(
        port,
        &[
            "list_queues",
            "name",
            "type",
            "members",
            "--formatter",
            "json",
        ],
    )?)?;
    let chaos = queues
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "chaos"))
        .ok_or("the RabbitMQ cluster has no queue `chaos`")?;
    let members = chaos["members"].as_array().map_or(0, Vec::len);
    if chaos["type"] != "quorum" || members != nodes {
        return Err(
            format!("the queue `chaos` is not a quorum queue on {nodes} nodes: {chaos}").into(),
        );
    }
    Ok(())
}
