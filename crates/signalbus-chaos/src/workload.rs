//! The workload's processes of one bus: writers, relays and the consumer, each in a slot
//! that restarts it, each writer and relay start with a fail point drawn for it.

use crate::signals::Bus;
use crate::supervisor::Slot;
use crate::world::World;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// What a bus' workload is made of (from the run's arguments).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Writer processes.
    pub writers: u32,
    /// Relay processes.
    pub relays: u32,
    /// Transactions per second per writer.
    pub rate: u32,
    /// Whether writers and relays start with a fail point (not in a soak: its processes
    /// live the whole run, so that their memory is one process' history).
    pub failpoints: bool,
    /// Whether the relays capture from the WAL.
    pub capture_wal: bool,
    /// Whether writers and relays reach the database through a pooler in transaction mode.
    pub transaction_pooler: bool,
}

/// A fleet's list files of one bus (fleet mode): the writers' and the relays'.
struct Lists {
    service: PathBuf,
    relayed: PathBuf,
}

/// The processes of one bus.
pub struct Workload {
    pub writers: Vec<Slot>,
    pub relays: Vec<Slot>,
    pub consumer: Slot,
    /// The consumer's record of every delivery.
    pub records: PathBuf,
    /// Ids of the transactions the writers rolled back.
    pub rolled_back: PathBuf,
}

pub fn start(
    world: &World,
    bus: Bus,
    spec: Spec,
    seed: u64,
    dir: &Path,
    events: &Path,
) -> Workload {
    let broker = &world.brokers[&bus];
    let exe = std::env::current_exe().expect("this binary's path");
    let records = dir.join(format!("{}-deliveries.txt", bus.name()));
    let rolled_back = dir.join(format!("{}-rolled-back.txt", bus.name()));
    let base = |name: &str| {
        let exe = exe.clone();
        let events = events.to_owned();
        let log = dir.join("logs").join(format!("{name}.log"));
        move || {
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.env("CHAOS_EVENTS", &events)
                .env("CHAOS_BUS", bus.name())
                .envs(crate::signals::AWS_ENV)
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null());
            if let Ok(f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                cmd.stderr(f);
            }
            cmd
        }
    };
    // Each slot draws its fail points from a generator of its own, seeded from the run's.
    let lists = world.fleet.as_ref().map(|f| Lists {
        service: f.service_list(bus),
        relayed: f.relay_list(bus),
    });
    let slot_rng = |n: u64| StdRng::seed_from_u64(seed ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let bus_n = bus as u64;
    let writers = (0..spec.writers)
        .map(|id| {
            let name = format!("{}-writer-{id}", bus.name());
            let mut rng = slot_rng(bus_n * 1000 + u64::from(id));
            let new = base(&name);
            let (db, url, rb, rate) = (
                world.db_url(bus),
                broker.url(),
                rolled_back.clone(),
                spec.rate.min(bus.max_rate()),
            );
            let list = lists.as_ref().map(|l| l.service.clone());
            Slot::start(
                name,
                Box::new(move |n| {
                    let mut cmd = new();
                    cmd.args(["writer", "--bus", bus.name(), "--id", &id.to_string()])
                        .args([
                            "--db-url",
                            &db,
                            "--bus-url",
                            &url,
                            "--rate",
                            &rate.to_string(),
                        ])
                        .arg("--rolled-back")
                        .arg(&rb)
                        .args([
                            "--seed",
                            &(seed ^ u64::from(n) ^ (u64::from(id) << 32)).to_string(),
                        ]);
                    if spec.transaction_pooler {
                        cmd.arg("--transaction-pooler");
                    }
                    if let Some(list) = &list {
                        cmd.arg("--tenants-file").arg(list);
                    }
                    if let Some(fp) = failpoint_for("writer", &mut rng).filter(|_| spec.failpoints)
                    {
                        cmd.args(["--failpoint", &fp]);
                    }
                    cmd
                }),
            )
        })
        .collect();
    let relays = (0..spec.relays)
        .map(|id| {
            let name = format!("{}-relay-{id}", bus.name());
            let mut rng = slot_rng(bus_n * 1000 + 100 + u64::from(id));
            let new = base(&name);
            let (db, url) = (world.db_url(bus), broker.url());
            let list = lists.as_ref().map(|l| l.relayed.clone());
            Slot::start(
                name,
                Box::new(move |_| {
                    let mut cmd = new();
                    cmd.args(["relay", "--db-url", &db, "--bus-url", &url]);
                    if spec.capture_wal {
                        cmd.arg("--capture-wal");
                    }
                    if spec.transaction_pooler {
                        cmd.arg("--transaction-pooler");
                    }
                    if let Some(list) = &list {
                        cmd.arg("--tenants-file").arg(list);
                    }
                    if let Some(fp) = failpoint_for("relay", &mut rng).filter(|_| spec.failpoints) {
                        cmd.args(["--failpoint", &fp]);
                    }
                    cmd
                }),
            )
        })
        .collect();
    let consumer = {
        let name = format!("{}-consumer", bus.name());
        let new = base(&name);
        let (address, out) = (broker.address(), records.clone());
        Slot::start(
            name,
            Box::new(move |_| {
                let mut cmd = new();
                cmd.args(["consumer", "--bus", bus.name(), "--broker", &address])
                    .arg("--out")
                    .arg(&out);
                cmd
            }),
        )
    };
    Workload {
        writers,
        relays,
        consumer,
        records,
        rolled_back,
    }
}

/// The fail points of signalbus a process of `role` passes.
fn failpoints(role: &str) -> &'static [&'static str] {
    match role {
        "writer" => &[
            "signalbus::after-commit",
            "signalbus::mid-burst",
            "signalbus::after-publish",
        ],
        "relay" => &[
            "signalbus::mid-burst",
            "signalbus::after-publish",
            "signalbus::ordered-locks",
        ],
        _ => &[],
    }
}

/// For a new process of `role`: with even odds, one fail point that crashes it after a
/// random number of passes (`name=N*off->1*panic`, the `fail` crate's syntax).
pub fn failpoint_for(role: &str, rng: &mut impl Rng) -> Option<String> {
    let points = failpoints(role);
    if points.is_empty() || !rng.random_bool(0.5) {
        return None;
    }
    let name = points[rng.random_range(0..points.len())];
    // The ordered lanes pass their fail point at every poll, the others once per burst.
    let passes: u32 = if name.ends_with("ordered-locks") {
        rng.random_range(100..3000)
    } else {
        rng.random_range(20..600)
    };
    Some(format!("{name}={passes}*off->1*panic"))
}
