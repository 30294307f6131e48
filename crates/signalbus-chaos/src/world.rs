//! The harness' own world: a private database server (PostgreSQL or MariaDB; SQLite files
//! have none) and, per bus, a private broker (see [`crate::broker`]), each behind a
//! fault-injecting proxy; every client goes through the proxies. Nothing of it is shared with the machine's services, so
//! it may be killed and restarted at will.

use crate::broker::{BOOT, Broker, loopback};
use crate::db::Db;
use crate::signals::Bus;
use crate::tenants::Tenants;
use signalbus_testkit::mariadb::PrivateMariadb;
use signalbus_testkit::nats::free_port;
use signalbus_testkit::pgbouncer::PrivatePgBouncer;
use signalbus_testkit::postgres::PrivatePostgres;
use signalbus_testkit::process::wait_for_port;
use signalbus_testkit::proxy::Proxy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct World {
    pub db: Database,
    pub brokers: BTreeMap<Bus, Broker>,
    /// Whether the relays capture from the WAL (`--capture wal`).
    pub capture_wal: bool,
    /// The PgBouncer between writers and relays and the database's proxy (`--pgbouncer`).
    pub pgbouncer: Option<PrivatePgBouncer>,
    /// Fleet mode (`--fleet`): each bus' databases, one per tenant, and which of them the
    /// relays serve.
    pub fleet: Option<Tenants>,
}

/// What the world is made of, besides its database and buses.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// RabbitMQ and NATS as three-node clusters.
    pub clustered: bool,
    /// PostgreSQL with `wal_level=logical`, for relays that capture from the WAL.
    pub capture_wal: bool,
    /// A PgBouncer in transaction pooling mode in front of the database's proxy.
    pub pgbouncer: bool,
    /// Fleet mode: this many tenant databases per bus at the start.
    pub fleet: Option<u32>,
}

/// Server connections PgBouncer pools per bus' database: fewer than its clients (writers'
/// and relays' pools), so that transactions share server sessions.
const PGBOUNCER_SERVER_CONNECTIONS: u32 = 10;

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

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl World {
    /// Start the database server of `db` (see [`Options`]) and the brokers of `buses` under
    /// `dir`, and prepare what the workload needs on each broker.
    pub async fn start(
        dir: &Path,
        db: Db,
        buses: &[Bus],
        options: Options,
    ) -> Result<World, Failure> {
        let db = Database::start(dir, db, options).await?;
        let pgbouncer = match (&db, options.pgbouncer) {
            (Database::Postgres { proxy, .. }, true) => {
                let port = free_port();
                let bouncer =
                    PrivatePgBouncer::start(proxy.port(), port, PGBOUNCER_SERVER_CONNECTIONS)?;
                if !wait_for_port(port, BOOT).await {
                    return Err("the private PgBouncer did not start".into());
                }
                Some(bouncer)
            }
            (_, true) => return Err("PgBouncer stands in front of PostgreSQL only".into()),
            (_, false) => None,
        };
        let mut brokers = BTreeMap::new();
        for &bus in buses {
            brokers.insert(bus, Broker::start(dir, bus, options.clustered).await?);
        }
        Ok(World {
            db,
            brokers,
            capture_wal: options.capture_wal,
            pgbouncer,
            fleet: options.fleet.map(|n| Tenants::new(dir, buses, n)),
        })
    }

    /// The URL of `bus`' database as writers and relays reach it: through PgBouncer when the
    /// run has one, else through the proxy.
    pub fn db_url(&self, bus: Bus) -> String {
        self.tenant_url(bus, 0)
    }

    /// The URL of tenant `t`'s database of `bus` (tenant 0: the bus' only database outside
    /// fleet mode) as writers and relays reach it.
    pub fn tenant_url(&self, bus: Bus, t: u32) -> String {
        let name = bus.tenant_database(t);
        match &self.pgbouncer {
            Some(bouncer) => bouncer.url(&name),
            None => self.db.url(&name, true),
        }
    }

    /// How many databases `bus` has now (one outside fleet mode).
    pub fn tenants(&self, bus: Bus) -> u32 {
        self.fleet.as_ref().map_or(1, |f| f.count(bus))
    }

    /// The URLs of every database of `bus`, straight to the server (the harness' checks).
    pub fn direct_db_urls(&self, bus: Bus) -> Vec<String> {
        (0..self.tenants(bus))
            .map(|t| self.db.url(&bus.tenant_database(t), false))
            .collect()
    }

    /// Kill PgBouncer (SIGKILL, or SIGTERM when not `hard`), and start it again after
    /// `down`; every client connection through it drops.
    pub async fn bounce_pgbouncer(&self, hard: bool, down: std::time::Duration) {
        let Some(bouncer) = &self.pgbouncer else {
            return;
        };
        tokio::task::block_in_place(|| bouncer.stop_with(if hard { "KILL" } else { "TERM" }));
        tokio::time::sleep(down).await;
        if let Err(e) = tokio::task::block_in_place(|| bouncer.start_again()) {
            eprintln!("chaos: cannot start PgBouncer again: {e}");
        }
        // It binds its port after it has gone to the background: a start that failed shows
        // only here (the run then fails on what stays undelivered).
        if !wait_for_port(bouncer.port, BOOT).await {
            eprintln!(
                "chaos: PgBouncer did not come back on port {}: {}",
                bouncer.port,
                bouncer.log()
            );
        }
    }

    /// The URL of `bus`' (first) database, straight to the server (the harness' own checks).
    pub fn direct_db_url(&self, bus: Bus) -> String {
        self.db.url(&bus.database(), false)
    }

    /// Every proxy back to passing everything, and a fleet's every tenant on its relays' list.
    pub fn heal(&self) {
        if let Some(fleet) = &self.fleet {
            for &bus in self.brokers.keys() {
                if let Err(e) = fleet.write_lists(self, bus, None) {
                    eprintln!("chaos: cannot write the lists of {}: {e}", bus.name());
                }
            }
        }
        if let Some(proxy) = self.db.proxy() {
            proxy.heal();
        }
        for proxy in self.brokers.values().flat_map(Broker::proxies) {
            proxy.heal();
        }
    }
}

impl Database {
    async fn start(dir: &Path, db: Db, options: Options) -> Result<Database, Failure> {
        if db == Db::Sqlite {
            let dir = dir.join("sqlite");
            std::fs::create_dir_all(&dir)?;
            return Ok(Database::Sqlite { dir });
        }
        let port = free_port();
        let started = match db {
            Db::Postgres => Database::Postgres {
                server: {
                    let mut settings = Vec::new();
                    if options.capture_wal {
                        settings.extend([
                            "wal_level=logical",
                            "max_replication_slots=40",
                            "max_wal_senders=40",
                        ]);
                    }
                    if options.fleet.is_some() {
                        // Every tenant's relays hold a listener and an idle-lock connection
                        // besides their pools: 400 is too few for five buses of 4–7
                        // tenants (a 10-minute run ran out).
                        settings.push("max_connections=1000");
                    }
                    PrivatePostgres::start_with(&dir.join("postgres"), port, &settings)?
                },
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

    /// The URL of the database `name`, through the proxy or straight to the server.
    pub fn url(&self, name: &str, proxied: bool) -> String {
        let port = |server: u16, proxy: &Proxy| if proxied { proxy.port() } else { server };
        match self {
            Database::Postgres { server, proxy } => server.url(port(server.port, proxy), name),
            Database::Mariadb { server, proxy } => server.url(port(server.port, proxy), name),
            Database::Sqlite { dir } => {
                format!("sqlite://{}", dir.join(format!("{name}.db")).display())
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
