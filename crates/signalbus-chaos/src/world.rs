//! The harness' own world: a private PostgreSQL cluster and, per bus, a private broker, each
//! behind a fault-injecting proxy; every client goes through the proxies. Nothing of it is
//! shared with the machine's services, so it may be killed and restarted at will.

use crate::signals::{Bus, KAFKA_PARTITIONS};
use signalbus_testkit::kafka::{PrivateTansu, create_partitioned_topic};
use signalbus_testkit::nats::{PrivateServer, free_port};
use signalbus_testkit::postgres::PrivatePostgres;
use signalbus_testkit::process::wait_for_port;
use signalbus_testkit::proxy::Proxy;
use signalbus_testkit::rabbitmq::PrivateNode;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a server may take to come (back) up.
const BOOT: Duration = Duration::from_secs(60);

pub struct World {
    pub pg: PrivatePostgres,
    pub pg_proxy: Proxy,
    pub brokers: BTreeMap<Bus, Broker>,
}

/// A private broker and the proxy in front of it.
pub struct Broker {
    pub bus: Bus,
    pub port: u16,
    pub proxy: Proxy,
    server: Server,
}

enum Server {
    Amqp(PrivateNode),
    Nats {
        server: Option<PrivateServer>,
        dir: PathBuf,
    },
    Kafka(PrivateTansu),
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl World {
    /// Start PostgreSQL and the brokers of `buses` under `dir`, and prepare what the
    /// workload needs on each (databases, exchange and queue, stream, topic).
    pub async fn start(dir: &Path, buses: &[Bus]) -> Result<World, Failure> {
        let pg_port = free_port();
        let pg = PrivatePostgres::start(&dir.join("postgres"), pg_port)?;
        if !wait_for_port(pg_port, BOOT).await {
            return Err("the private PostgreSQL did not start".into());
        }
        let pg_proxy = Proxy::start(loopback(pg_port)).await?;
        let mut brokers = BTreeMap::new();
        for &bus in buses {
            let port = free_port();
            let proxy = Proxy::start(loopback(port)).await?;
            let bus_dir = dir.join(bus.name());
            let server = match bus {
                Bus::Amqp => Server::Amqp(PrivateNode::start(&bus_dir, port)?),
                Bus::Nats => {
                    std::fs::create_dir_all(&bus_dir)?;
                    Server::Nats {
                        server: Some(PrivateServer::start(port, &bus_dir)),
                        dir: bus_dir,
                    }
                }
                Bus::Kafka => Server::Kafka(PrivateTansu::start(&bus_dir, port, proxy.port())?),
            };
            let broker = Broker {
                bus,
                port,
                proxy,
                server,
            };
            if !broker.wait_ready().await {
                return Err(format!("the private {} broker did not start", bus.name()).into());
            }
            broker.prepare().await?;
            brokers.insert(bus, broker);
        }
        Ok(World {
            pg,
            pg_proxy,
            brokers,
        })
    }

    /// The URL of `bus`' database, through the proxy (what writers and relays use).
    pub fn db_url(&self, bus: Bus) -> String {
        self.pg.url(self.pg_proxy.port(), &bus.database())
    }

    /// The URL of `bus`' database, straight to the server (the harness' own checks).
    pub fn direct_db_url(&self, bus: Bus) -> String {
        self.pg.url(self.pg.port, &bus.database())
    }

    /// Every proxy back to passing everything.
    pub fn heal(&self) {
        self.pg_proxy.heal();
        for b in self.brokers.values() {
            b.proxy.heal();
        }
    }
}

impl Broker {
    /// The bus URL of this broker through its proxy.
    pub fn url(&self) -> String {
        self.bus.url(self.proxy.port())
    }

    /// `host:port` of the proxy, for the consumer.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port())
    }

    pub async fn wait_ready(&self) -> bool {
        match &self.server {
            Server::Amqp(node) => node.wait_ready(BOOT).await,
            Server::Nats { .. } | Server::Kafka(_) => wait_for_port(self.port, BOOT).await,
        }
    }

    /// Stop the broker: gracefully, or as a crash (SIGKILL).
    pub fn stop(&mut self, graceful: bool) {
        match &mut self.server {
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
        }
    }

    /// Start it again (after [`Broker::stop`]) with the data it kept; a no-op when it runs.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        match &mut self.server {
            Server::Amqp(node) => node.start_again(),
            Server::Nats { server, dir } => {
                if server.is_none() {
                    *server = Some(PrivateServer::start(self.port, dir));
                }
                Ok(())
            }
            Server::Kafka(tansu) => tansu.start_again(),
        }
    }

    /// What the workload's routes need: the refused route stays refused.
    async fn prepare(&self) -> Result<(), Failure> {
        let direct = format!("127.0.0.1:{}", self.port);
        match self.bus {
            Bus::Amqp => {
                use lapin::options::{
                    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
                };
                use lapin::types::FieldTable;
                let url = format!("amqp://guest:guest@{direct}/%2f");
                let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                    .await?;
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
                channel
                    .queue_declare(
                        "chaos".into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
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
            }
            Bus::Nats => {
                use async_nats::jetstream::stream;
                let client = async_nats::connect(format!("nats://{direct}")).await?;
                let js = async_nats::jetstream::new(client);
                js.create_stream(stream::Config {
                    name: "CHAOS".into(),
                    subjects: vec!["chaos".into(), "chaos.>".into()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await?;
            }
            Bus::Kafka => create_partitioned_topic(&direct, "chaos", KAFKA_PARTITIONS).await,
        }
        Ok(())
    }
}
