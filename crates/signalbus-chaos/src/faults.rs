//! The faults the harness injects, drawn at random from the run's seed.

use crate::signals::Bus;
use crate::workload::Workload;
use crate::world::World;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::time::Duration;

/// A fault the scheduler injects. Fail points are armed per process start instead (see
/// [`crate::workload::failpoint_for`]) and counted when they fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a writer at a random moment.
    KillWriter,
    /// SIGKILL a relay.
    KillRelay,
    /// SIGKILL the consumer (unacknowledged deliveries come again).
    KillConsumer,
    /// Stop the broker gracefully, start it again.
    BrokerRestart,
    /// SIGKILL the broker, start it again 1–3 s later.
    BrokerKill,
    /// A clean restart of the database server (PostgreSQL: `pg_ctl restart -m fast`;
    /// MariaDB: SIGTERM, start).
    DbRestart,
    /// A crash of the database server and its start: crash recovery, as after a failover
    /// (PostgreSQL: `pg_ctl stop -m immediate`; MariaDB: SIGKILL).
    DbCrash,
    /// Cut every connection to the database (mid-transaction, mid-batch).
    CutDb,
    /// Cut every connection to the broker (mid-publish).
    CutBroker,
    /// 200 ms on every chunk to and from the database, for 5 s.
    LatencyDb,
    /// 200 ms on every chunk to and from the broker, for 5 s.
    LatencyBroker,
    /// Nothing passes to or from the database for 10 s.
    PartitionDb,
    /// Nothing passes to or from the broker for 10 s.
    PartitionBroker,
    /// A node of a clustered broker frozen (SIGSTOP) for 10 s: to its clients and its peers
    /// alike a node partitioned away (drawn only for a cluster).
    FreezeBrokerNode,
    /// Two nodes of a clustered broker killed (SIGKILL) at once, started again 3–6 s later:
    /// the cluster has lost its majority meanwhile, so it takes no write (drawn only for a
    /// cluster).
    BrokerMajorityDown,
    /// An administrator drops the bus' replication slots under the streaming relays (their
    /// walsenders terminated first; drawn only with `--capture wal`).
    DropSlot,
    /// PgBouncer SIGKILLed, started again 0.5–2 s later (drawn only with `--pgbouncer`).
    PgbouncerKill,
    /// PgBouncer stopped with SIGTERM (an immediate shutdown up to PgBouncer 1.22; SIGKILL
    /// after 10 s otherwise), started again 0.5 s later (drawn only with `--pgbouncer`).
    PgbouncerRestart,
    /// One tenant of a bus off its relays' list for 2–6 s, then back: the fleet lets its
    /// relays go and starts them again (drawn only with `--fleet`).
    TenantAway,
    /// A new tenant's database created and listed for the writers and the relays (drawn only
    /// with `--fleet`, at most three per bus).
    TenantNew,
}

/// How often each fault is drawn, relative to the others.
const WEIGHTS: [(Fault, u32); 20] = [
    (Fault::KillWriter, 10),
    (Fault::KillRelay, 12),
    (Fault::KillConsumer, 6),
    (Fault::BrokerRestart, 5),
    (Fault::BrokerKill, 5),
    (Fault::DbRestart, 3),
    (Fault::DbCrash, 3),
    (Fault::CutDb, 6),
    (Fault::CutBroker, 6),
    (Fault::LatencyDb, 4),
    (Fault::LatencyBroker, 4),
    (Fault::PartitionDb, 3),
    (Fault::PartitionBroker, 3),
    (Fault::FreezeBrokerNode, 4),
    (Fault::BrokerMajorityDown, 6),
    (Fault::DropSlot, 4),
    (Fault::PgbouncerKill, 4),
    (Fault::PgbouncerRestart, 3),
    (Fault::TenantAway, 12),
    (Fault::TenantNew, 3),
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillWriter => "kill_writer",
            Fault::KillRelay => "kill_relay",
            Fault::KillConsumer => "kill_consumer",
            Fault::BrokerRestart => "broker_restart",
            Fault::BrokerKill => "broker_kill",
            Fault::DbRestart => "db_restart",
            Fault::DbCrash => "db_crash_restart",
            Fault::CutDb => "cut_db_connections",
            Fault::CutBroker => "cut_broker_connections",
            Fault::LatencyDb => "db_latency_200ms",
            Fault::LatencyBroker => "broker_latency_200ms",
            Fault::PartitionDb => "db_partition_10s",
            Fault::PartitionBroker => "broker_partition_10s",
            Fault::FreezeBrokerNode => "broker_node_frozen_10s",
            Fault::BrokerMajorityDown => "broker_majority_killed",
            Fault::DropSlot => "wal_slot_dropped",
            Fault::PgbouncerKill => "pgbouncer_kill",
            Fault::PgbouncerRestart => "pgbouncer_restart",
            Fault::TenantAway => "tenant_away",
            Fault::TenantNew => "tenant_new",
        }
    }

    /// Whether a soak injects it: not one that kills a process of the workload (each lives
    /// the whole run), nor a database crash (crash recovery resets the table statistics the
    /// soak samples).
    pub fn fits_a_soak(self) -> bool {
        !matches!(
            self,
            Fault::KillWriter | Fault::KillRelay | Fault::KillConsumer | Fault::DbCrash
        )
    }

    /// Whether it hits the database server, which every bus shares (none with SQLite: no
    /// server, no connection to cut).
    pub fn everywhere(self) -> bool {
        matches!(
            self,
            Fault::DbRestart
                | Fault::DbCrash
                | Fault::CutDb
                | Fault::LatencyDb
                | Fault::PartitionDb
                | Fault::PgbouncerKill
                | Fault::PgbouncerRestart
        )
    }

    /// Whether it hits a bus' broker (one node of a cluster).
    pub fn hits_a_broker(self) -> bool {
        matches!(
            self,
            Fault::BrokerRestart
                | Fault::BrokerKill
                | Fault::CutBroker
                | Fault::LatencyBroker
                | Fault::PartitionBroker
                | Fault::FreezeBrokerNode
                | Fault::BrokerMajorityDown
        )
    }

    /// A fault drawn by weight among those `available` in this run. The faults of an option
    /// (a cluster's frozen node, WAL capture's dropped slot) are in the draw only when the
    /// run has it, so that a run without it draws the same schedule from a seed as before.
    pub fn draw(rng: &mut impl Rng, available: impl Fn(Fault) -> bool) -> Fault {
        let weights: Vec<(Fault, u32)> = WEIGHTS
            .into_iter()
            .filter(|(fault, _)| available(*fault))
            .collect();
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut at = rng.random_range(0..total);
        for (fault, weight) in weights {
            if at < weight {
                return fault;
            }
            at -= weight;
        }
        unreachable!("the weights cover the range")
    }

    /// Whether a run in `world` can inject it at all.
    pub fn available_in(self, world: &World) -> bool {
        match self {
            Fault::FreezeBrokerNode | Fault::BrokerMajorityDown => {
                world.brokers.values().any(|b| b.nodes() > 1)
            }
            Fault::DropSlot => world.capture_wal,
            Fault::PgbouncerKill | Fault::PgbouncerRestart => world.pgbouncer.is_some(),
            Fault::TenantAway | Fault::TenantNew => world.fleet.is_some(),
            _ => true,
        }
    }
}

/// Which bus a fault hits: one of the run's at random, or all for the database.
pub fn target(fault: Fault, buses: &[Bus], rng: &mut impl Rng) -> Option<Bus> {
    (!fault.everywhere()).then(|| buses[rng.random_range(0..buses.len())])
}

/// Whether `fault` can hit `bus` in `world` (a node can be frozen only in a cluster).
pub fn applies(fault: Fault, bus: Option<Bus>, world: &World) -> bool {
    match (fault, bus) {
        (Fault::FreezeBrokerNode, Some(bus)) => world.brokers[&bus].nodes() > 1,
        (Fault::BrokerMajorityDown, Some(bus)) => world.brokers[&bus].nodes() > 2,
        (Fault::FreezeBrokerNode | Fault::BrokerMajorityDown, None) => false,
        // The webhook's receiver is the consumer: `kill_consumer` kills it.
        (Fault::BrokerRestart | Fault::BrokerKill, Some(bus)) => world.brokers[&bus].has_server(),
        (Fault::TenantNew, Some(bus)) => world.fleet.as_ref().is_some_and(|f| f.can_add(bus)),
        _ => true,
    }
}

/// Inject `fault` (on `bus`, when it is not the database's) and wait until it is over. A
/// broker fault hits one node of a cluster, drawn at random: the node it hit is returned.
pub async fn inject(
    fault: Fault,
    bus: Option<Bus>,
    world: &mut World,
    workloads: &BTreeMap<Bus, Workload>,
    rng: &mut StdRng,
) -> Option<usize> {
    let node = bus
        .filter(|_| fault.hits_a_broker())
        .map(|b| world.brokers[&b].nodes())
        .filter(|&nodes| nodes > 1)
        .map(|nodes| rng.random_range(0..nodes));
    let n = node.unwrap_or(0);
    let pick = |slots: &[crate::supervisor::Slot], rng: &mut StdRng| {
        rng.random_range(0..slots.len().max(1))
    };
    let w = bus.map(|b| &workloads[&b]);
    tracing::info!(fault = fault.name(), bus = ?bus, "inject");
    match fault {
        Fault::KillWriter => {
            let w = w.expect("a bus");
            w.writers[pick(&w.writers, rng)].kill();
        }
        Fault::KillRelay => {
            let w = w.expect("a bus");
            w.relays[pick(&w.relays, rng)].kill();
        }
        Fault::KillConsumer => w.expect("a bus").consumer.kill(),
        Fault::BrokerRestart | Fault::BrokerKill => {
            let broker = world
                .brokers
                .get_mut(&bus.expect("a bus"))
                .expect("its broker");
            let graceful = fault == Fault::BrokerRestart;
            tokio::task::block_in_place(|| broker.stop_node(n, graceful));
            let down = if graceful {
                500
            } else {
                rng.random_range(1000..3000)
            };
            tokio::time::sleep(Duration::from_millis(down)).await;
            if let Err(e) = tokio::task::block_in_place(|| broker.start_node_again(n)) {
                eprintln!("chaos: cannot restart the broker: {e}");
            }
            broker.wait_node_ready(n).await;
        }
        Fault::DbRestart | Fault::DbCrash => {
            let restarted = tokio::task::block_in_place(|| {
                if fault == Fault::DbRestart {
                    world.db.restart()
                } else {
                    world.db.crash_restart()
                }
            });
            if let Err(e) = restarted {
                eprintln!("chaos: {e}");
            }
            world.db.wait_ready().await;
        }
        Fault::CutDb => world.db.proxy().expect("a database server").cut(),
        Fault::CutBroker => world.brokers[&bus.expect("a bus")].proxy(n).cut(),
        Fault::LatencyDb | Fault::LatencyBroker => {
            let proxy = match bus {
                None => world.db.proxy().expect("a database server"),
                Some(b) => world.brokers[&b].proxy(n),
            };
            proxy.set_latency(Duration::from_millis(200));
            tokio::time::sleep(Duration::from_secs(5)).await;
            proxy.set_latency(Duration::ZERO);
        }
        Fault::PartitionDb | Fault::PartitionBroker => {
            let proxy = match bus {
                None => world.db.proxy().expect("a database server"),
                Some(b) => world.brokers[&b].proxy(n),
            };
            proxy.set_partitioned(true);
            tokio::time::sleep(Duration::from_secs(10)).await;
            proxy.set_partitioned(false);
        }
        Fault::DropSlot => {
            let url = world.direct_db_url(bus.expect("a bus"));
            if let Err(e) = drop_slots(&url).await {
                eprintln!("chaos: cannot drop the replication slots: {e}");
            }
        }
        Fault::PgbouncerKill => {
            let down = Duration::from_millis(rng.random_range(500..2000));
            world.bounce_pgbouncer(true, down).await;
        }
        Fault::PgbouncerRestart => {
            world
                .bounce_pgbouncer(false, Duration::from_millis(500))
                .await;
        }
        Fault::TenantAway => crate::tenants::away(world, bus.expect("a bus"), rng).await,
        Fault::TenantNew => crate::tenants::add(world, bus.expect("a bus")).await,
        Fault::BrokerMajorityDown => {
            let broker = world
                .brokers
                .get_mut(&bus.expect("a bus"))
                .expect("its broker");
            // The drawn node and the next one: two of three.
            let both = [n, (n + 1) % broker.nodes()];
            for m in both {
                tokio::task::block_in_place(|| broker.stop_node(m, false));
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(3000..6000))).await;
            for m in both {
                if let Err(e) = tokio::task::block_in_place(|| broker.start_node_again(m)) {
                    eprintln!("chaos: cannot restart the broker's node {m}: {e}");
                }
            }
            for m in both {
                broker.wait_node_ready(m).await;
            }
        }
        Fault::FreezeBrokerNode => {
            let broker = &world.brokers[&bus.expect("a bus")];
            if broker.freeze_node(n, true) {
                tokio::time::sleep(Duration::from_secs(10)).await;
                broker.freeze_node(n, false);
            }
        }
    }
    node
}

/// Drop every replication slot of the database at `url`, as an administrator would:
/// terminate the walsender holding it, then drop it before a standing-by relay takes it
/// (tried again for up to 5 s while one does).
async fn drop_slots(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    // The slots there are now: those are dropped (relays that start meanwhile make new ones).
    let slots: Vec<String> = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()",
    )
    .fetch_all(&mut conn)
    .await?;
    let began = std::time::Instant::now();
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = ANY($1) AND active_pid IS NOT NULL",
        )
        .bind(&slots)
        .execute(&mut conn)
        .await?;
        // A slot a relay took again meanwhile is active: not dropped this time round.
        let _ = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = ANY($1) AND NOT active",
        )
        .bind(&slots)
        .execute(&mut conn)
        .await;
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1)",
        )
        .bind(&slots)
        .fetch_one(&mut conn)
        .await?;
        if left == 0 || began.elapsed() > Duration::from_secs(5) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
