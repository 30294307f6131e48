//! The harness' own world: a private database server (PostgreSQL or MariaDB; SQLite files
//! have none) and, per bus, a private broker, each behind a fault-injecting proxy; every
//! client goes through the proxies. Nothing of it is shared with the machine's services, so
//! it may be killed and restarted at will.

use crate::db::Db;
use crate::signals::{Bus, KAFKA_PARTITIONS};
use signalbus_testkit::kafka::{PrivateTansu, create_partitioned_topic};
use signalbus_testkit::mariadb::PrivateMariadb;
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
    pub db: Database,
    pub brokers: BTreeMap<Bus, Broker>,
}

/// The run's database: a private server behind a proxy, or a directory of SQLite files (one
/// per bus).
pub enum Database {
    Postgres {
        server: PrivatePostgres,
        proxy: Proxy,
    },
    Mariadb {
        server: PrivateMariadb,
        proxy: Proxy,
    },
    Sqlite {
        dir: PathBuf,
    },
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
    /// Start the database server of `db` and the brokers of `buses` under `dir`, and prepare
    /// what the workload needs on each broker (exchange and queue, stream, topic).
    pub async fn start(dir: &Path, db: Db, buses: &[Bus]) -> Result<World, Failure> {
        let db = Database::start(dir, db).await?;
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
        Ok(World { db, brokers })
    }

    /// The URL of `bus`' database, through the proxy (what writers and relays use).
    pub fn db_url(&self, bus: Bus) -> String {
        self.db.url(bus, true)
    }

    /// The URL of `bus`' database, straight to the server (the harness' own checks).
    pub fn direct_db_url(&self, bus: Bus) -> String {
        self.db.url(bus, false)
    }

    /// Every proxy back to passing everything.
    pub fn heal(&self) {
        if let Some(proxy) = self.db.proxy() {
            proxy.heal();
        }
        for b in self.brokers.values() {
            b.proxy.heal();
        }
    }
}

impl Database {
    async fn start(dir: &Path, db: Db) -> Result<Database, Failure> {
        if db == Db::Sqlite {
            let dir = dir.join("sqlite");
            std::fs::create_dir_all(&dir)?;
            return Ok(Database::Sqlite { dir });
        }
        let port = free_port();
        let started = match db {
            Db::Postgres => Database::Postgres {
                server: PrivatePostgres::start(&dir.join("postgres"), port)?,
                proxy: Proxy::start(loopback(port)).await?,
            },
            Db::Mysql => Database::Mariadb {
                server: PrivateMariadb::start(&dir.join("mariadb"), port)?,
                proxy: Proxy::start(loopback(port)).await?,
            },
            Db::Sqlite => unreachable!("SQLite has no server"),
        };
        if !wait_for_port(port, BOOT).await {
            return Err(format!("the private {} server did not start", db.name()).into());
        }
        Ok(started)
    }

    pub fn kind(&self) -> Db {
        match self {
            Database::Postgres { .. } => Db::Postgres,
            Database::Mariadb { .. } => Db::Mysql,
            Database::Sqlite { .. } => Db::Sqlite,
        }
    }

    /// The proxy in front of the server (none for SQLite).
    pub fn proxy(&self) -> Option<&Proxy> {
        match self {
            Database::Postgres { proxy, .. } | Database::Mariadb { proxy, .. } => Some(proxy),
            Database::Sqlite { .. } => None,
        }
    }

    /// The URL of `bus`' database, through the proxy or straight to the server.
    fn url(&self, bus: Bus, proxied: bool) -> String {
        let port = |server: u16, proxy: &Proxy| if proxied { proxy.port() } else { server };
        match self {
            Database::Postgres { server, proxy } => {
                server.url(port(server.port, proxy), &bus.database())
            }
            Database::Mariadb { server, proxy } => {
                server.url(port(server.port, proxy), &bus.database())
            }
            Database::Sqlite { dir } => {
                format!(
                    "sqlite://{}",
                    dir.join(format!("{}.db", bus.database())).display()
                )
            }
        }
    }

    /// Wait until the server accepts connections again (after a restart; PostgreSQL's
    /// `pg_ctl -w` has waited already).
    pub async fn wait_ready(&self) -> bool {
        match self {
            Database::Mariadb { server, .. } => wait_for_port(server.port, BOOT).await,
            Database::Postgres { .. } | Database::Sqlite { .. } => true,
        }
    }

    /// The server's own URL for administration (`CREATE DATABASE`), when it has one.
    pub fn admin_url(&self) -> Option<String> {
        match self {
            Database::Postgres { server, .. } => Some(server.url(server.port, "postgres")),
            Database::Mariadb { server, .. } => Some(server.url(server.port, "")),
            Database::Sqlite { .. } => None,
        }
    }

    /// A clean restart of the server (sessions ended, data kept).
    pub fn restart(&mut self) -> std::io::Result<()> {
        match self {
            Database::Postgres { server, .. } => server.restart(),
            Database::Mariadb { server, .. } => server.restart(),
            Database::Sqlite { .. } => Ok(()),
        }
    }

    /// A crash of the server and its start: crash recovery.
    pub fn crash_restart(&mut self) -> std::io::Result<()> {
        match self {
            Database::Postgres { server, .. } => server.crash_restart(),
            Database::Mariadb { server, .. } => server.crash_restart(),
            Database::Sqlite { .. } => Ok(()),
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

    /// The file where the broker keeps its records, when the harness can read it (tansu's
    /// SQLite store).
    pub fn store_file(&self) -> Option<PathBuf> {
        match &self.server {
            Server::Kafka(tansu) => Some(tansu.dir.join("tansu.db")),
            Server::Amqp(_) | Server::Nats { .. } => None,
        }
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
