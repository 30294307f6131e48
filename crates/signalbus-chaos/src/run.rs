//! `signalbus-chaos run`: the world, the workload, the faults, the drain, the verdict.

use crate::check::{self, BusVerdict, Healed};
use crate::database;
use crate::db::Db;
use crate::faults::{self, Fault};
use crate::roles::{consumer, now_ms};
use crate::signals::Bus;
use crate::workload::{self, Workload};
use crate::world::{self, World};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Buses {
    Amqp,
    Nats,
    Kafka,
    Redis,
    Webhook,
    Sqs,
    Sns,
    All,
}

/// How the relays learn of new signals besides their table scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Capture {
    /// Logical replication (the library's WAL capture mode).
    Wal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dbs {
    Postgres,
    Mysql,
    Sqlite,
    All,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Which database the buses' writers and relays use (`all`: one run after the other,
    /// each in a world of its own, each `--seconds` long).
    #[arg(long, value_enum, default_value = "postgres")]
    pub db: Dbs,
    /// How long faults are injected; the drain and the check come after.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The seed of the fault schedule and the workload (printed; default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which buses run, at once in one world: one, a comma-separated list (`amqp,nats`) or
    /// `all` (the seven).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub bus: Vec<Buses>,
    /// Where the world lives (servers' data, logs, the consumers' records); default: a new
    /// temporary directory, removed after a run that passed.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Writer processes per bus.
    #[arg(long, default_value_t = 2)]
    pub writers: u32,
    /// Relay processes per bus.
    #[arg(long, default_value_t = 2)]
    pub relays: u32,
    /// Transactions per second per writer.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// How long the drain may take once the faults stop.
    #[arg(long, default_value_t = 180)]
    pub drain_seconds: u64,
    /// Poison signals planted per bus (they must end parked, and only they).
    #[arg(long, default_value_t = 3)]
    pub poison: u32,
    /// A soak: a steady load with a fault every 30–90 s (none that kills a writer, relay or
    /// consumer, no database crash, no fail points: each process lives the whole run, and a
    /// writer or relay that starts again fails the soak), sampled every
    /// `--sample-every` seconds; fails when memory, descriptors, latency or the signal
    /// tables grow without bound (see the summary's `soak`). The run's directory is kept,
    /// with `samples.jsonl` and `soak.png`.
    #[arg(long)]
    pub soak: bool,
    /// NATS and RabbitMQ as clusters of three nodes (a stream of three replicas, a quorum
    /// queue): broker faults hit one node at a time, and a node may also be frozen (SIGSTOP,
    /// 10 s: partitioned from clients and peers). Kafka (tansu) stays one node.
    #[arg(long)]
    pub cluster: bool,
    /// The relays capture new signals from PostgreSQL's write-ahead log (`wal`: a logical
    /// replication slot per relay group, `wal_level=logical` on the private server), besides
    /// their slower table scans; the run fails unless they stream. Adds the fault
    /// `wal_slot_dropped` (an administrator drops the slots under the streaming relays).
    /// PostgreSQL only.
    #[arg(long, value_enum)]
    pub capture: Option<Capture>,
    /// Writers and relays reach PostgreSQL through a private PgBouncer in transaction
    /// pooling mode (the library's `transaction_pooler`), which reaches the server through
    /// the database's proxy, so every database fault still applies. Adds the faults
    /// `pgbouncer_kill` (SIGKILL, started again 0.5–2 s later) and `pgbouncer_restart`
    /// (SIGTERM, started again). PostgreSQL only; not with `--capture wal` (replication does
    /// not pass through PgBouncer).
    #[arg(long)]
    pub pgbouncer: bool,
    /// Fleet mode: each bus' service keeps this many tenant databases (at least 2), written
    /// to at random, and each relay process is the library's fleet over them (their bursts
    /// taking turns, four at once). Adds the faults `tenant_away` (a tenant off the relays'
    /// list for 2–6 s, then back) and `tenant_new` (a new tenant's database created and
    /// listed, up to three per bus). From 2 to 5: five buses of up to 8 tenants stay within
    /// the private servers' connections (PostgreSQL 1,000, MariaDB 500). Not with
    /// `--capture wal`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=5))]
    pub fleet: Option<u32>,
    /// The run's length in minutes (instead of `--seconds`).
    #[arg(long)]
    pub minutes: Option<u64>,
    /// Seconds between two samples of a soak.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
}

/// How long a bus may go without a new delivery, while it has signals to deliver, before
/// the watchdog restarts its broker (as a liveness probe would): longer than any fault.
const STUCK: Duration = Duration::from_secs(30);

/// The watchdog's view of a bus: when its consumer last recorded something.
struct Progress {
    recorded: u64,
    since: Instant,
    restarts: usize,
    /// Each span the broker was wedged: from the last delivery before a watchdog restart to
    /// the end of that restart (Unix ms).
    wedges: Vec<(i64, i64)>,
}

#[derive(Debug, Serialize)]
struct Summary {
    passed: bool,
    seed: u64,
    db: Db,
    seconds: u64,
    buses: Vec<Bus>,
    transactions_committed: usize,
    rolled_back: usize,
    signals_committed: usize,
    signals_delivered: usize,
    deliveries: usize,
    faults_injected: usize,
    faults: BTreeMap<String, usize>,
    lost: usize,
    /// Of the lost, those neither still rows in the tables nor in the broker's store.
    lost_unaccounted: usize,
    phantom: usize,
    duplicates: usize,
    id_mismatches: usize,
    order_violations: usize,
    left_in_tables: i64,
    parked_planted: i64,
    unexpected_panics: usize,
    /// Brokers the watchdog restarted because they stopped delivering (see `STUCK`).
    watchdog_restarts: BTreeMap<Bus, usize>,
    /// Processes started, restarts included (writers, relays, consumers).
    process_starts: u32,
    max_recovery_ms: i64,
    drain_ms: u128,
    per_bus: BTreeMap<Bus, BusVerdict>,
    /// A soak's trends (`--soak`).
    #[serde(skip_serializing_if = "Option::is_none")]
    soak: Option<crate::soak::Verdict>,
}

pub async fn run(mut args: RunArgs) -> ExitCode {
    if let Some(minutes) = args.minutes {
        args.seconds = minutes * 60;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chaos: seed {seed} (replay the same schedule with --seed {seed})");
    let dbs: Vec<Db> = match args.db {
        Dbs::Postgres => vec![Db::Postgres],
        Dbs::Mysql => vec![Db::Mysql],
        Dbs::Sqlite => vec![Db::Sqlite],
        Dbs::All => Db::ALL.to_vec(),
    };
    if args.capture.is_some() && dbs != [Db::Postgres] {
        eprintln!("chaos: --capture wal runs on PostgreSQL only (--db postgres)");
        return ExitCode::from(2);
    }
    if args.pgbouncer && (dbs != [Db::Postgres] || args.capture.is_some()) {
        eprintln!("chaos: --pgbouncer runs on PostgreSQL only (--db postgres), without --capture");
        return ExitCode::from(2);
    }
    if args.fleet.is_some() && args.capture.is_some() {
        eprintln!("chaos: --fleet runs without --capture wal");
        return ExitCode::from(2);
    }
    if args.soak && dbs != [Db::Postgres] {
        // The soak samples PostgreSQL's table statistics (pg_stat_user_tables).
        eprintln!("chaos: a soak runs on PostgreSQL only (--db postgres)");
        return ExitCode::from(2);
    }
    // The highest status of the runs: 3 (could not start) over 1 (failed) over 0.
    let mut worst = 0;
    for db in dbs {
        // The run's directory: the one given (a subdirectory per database for `--db all`),
        // or a temporary one, removed after a run that passed (a soak's is kept).
        let (dir, temp) = match &args.dir {
            Some(d) if args.db == Dbs::All => (d.join(db.name()), None),
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("signalbus-chaos-{}-", db.name()))
                    .tempdir()
                    .expect("a temporary directory");
                (t.path().to_owned(), Some(t))
            }
        };
        // Interrupted (Ctrl-C, SIGTERM): the run's servers and processes are stopped, not
        // left behind (their owners' destructors when the run is dropped here, and the
        // runtime's end for the processes), and its directory is kept.
        let status = tokio::select! {
            status = run_on(&args, db, seed, &dir) => Some(status),
            () = crate::terminated() => None,
        };
        match status {
            None => {
                keep(temp, "interrupted");
                return ExitCode::from(130);
            }
            Some(0) if args.soak => {
                if let Some(t) = temp {
                    let kept = t.keep();
                    eprintln!(
                        "chaos: the soak's samples and plot are kept in {}",
                        kept.display()
                    );
                }
            }
            Some(0) => {}
            Some(_) => keep(temp, "FAILED"),
        }
        worst = worst.max(status.unwrap_or_default());
    }
    ExitCode::from(worst)
}

impl RunArgs {
    /// The buses of `--bus`, each once, in the order of [`Bus::ALL`].
    fn buses(&self) -> Vec<Bus> {
        let chosen = |bus: Bus| {
            self.bus.iter().any(|b| {
                *b == Buses::All
                    || matches!(
                        (b, bus),
                        (Buses::Amqp, Bus::Amqp)
                            | (Buses::Nats, Bus::Nats)
                            | (Buses::Kafka, Bus::Kafka)
                            | (Buses::Redis, Bus::Redis)
                            | (Buses::Webhook, Bus::Webhook)
                            | (Buses::Sqs, Bus::Sqs)
                            | (Buses::Sns, Bus::Sns)
                    )
            })
        };
        Bus::ALL.into_iter().filter(|&bus| chosen(bus)).collect()
    }
}

/// One run of the harness on `db`: its exit status.
async fn run_on(args: &RunArgs, db: Db, seed: u64, dir: &Path) -> u8 {
    let buses = args.buses();
    std::fs::create_dir_all(dir.join("logs")).expect("the run directory");
    eprintln!("chaos: {} world in {}", db.name(), dir.display());
    let wal = args.capture == Some(Capture::Wal);
    let options = world::Options {
        clustered: args.cluster,
        capture_wal: wal,
        pgbouncer: args.pgbouncer,
        fleet: args.fleet,
    };
    let mut world = match World::start(dir, db, &buses, options).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("chaos: cannot start the world: {e}");
            return 3;
        }
    };
    for &bus in &buses {
        if let Err(e) = database::prepare(&world, bus, args.poison).await {
            eprintln!("chaos: cannot prepare the {} database: {e}", bus.name());
            return 3;
        }
    }
    let events = dir.join("events.log");
    let spec = workload::Spec {
        writers: args.writers,
        relays: args.relays,
        rate: args.rate,
        failpoints: !args.soak,
        capture_wal: wal,
        transaction_pooler: args.pgbouncer,
    };
    let mut workloads = BTreeMap::new();
    for &bus in &buses {
        workloads.insert(bus, workload::start(&world, bus, spec, seed, dir, &events));
    }
    if wal {
        for &bus in &buses {
            if let Err(e) = database::wal_streaming(&world, bus, Duration::from_secs(60)).await {
                eprintln!("chaos: {e}");
                return 3;
            }
        }
    }
    eprintln!(
        "chaos: {} s of faults on {:?} over {}",
        args.seconds,
        buses,
        db.name()
    );
    let sampler = args.soak.then(|| {
        let databases = buses
            .iter()
            .flat_map(|&b| world.direct_db_urls(b))
            .collect();
        crate::soak::Sampler::start(
            &workloads,
            databases,
            Duration::from_secs(args.sample_every.max(1)),
            dir.join("samples.jsonl"),
        )
    });

    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut healed = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut fault_log = std::fs::File::create(dir.join("faults.log")).expect("the fault log");
    let mut progress: BTreeMap<Bus, Progress> = buses
        .iter()
        .map(|&b| {
            let p = Progress {
                recorded: 0,
                since: Instant::now(),
                restarts: 0,
                wedges: Vec::new(),
            };
            (b, p)
        })
        .collect();
    loop {
        let gap = if args.soak {
            Duration::from_secs(rng.random_range(30..90))
        } else {
            Duration::from_millis(rng.random_range(1000..4000))
        };
        if Instant::now() + gap >= deadline {
            break;
        }
        tokio::time::sleep(gap).await;
        // The writers never stop in this phase: a bus without deliveries is stuck.
        for &bus in &buses {
            watchdog(
                &mut world,
                bus,
                &workloads[&bus],
                &mut progress,
                &mut fault_log,
            )
            .await;
        }
        let (fault, bus) = loop {
            let fault = Fault::draw(&mut rng, |f| f.available_in(&world));
            let fits = !args.soak || fault.fits_a_soak();
            // SQLite has no server to restart, cut or slow down.
            if !fits || (!db.has_server() && fault.everywhere()) {
                continue;
            }
            let bus = faults::target(fault, &buses, &mut rng);
            if faults::applies(fault, bus, &world) {
                break (fault, bus);
            }
        };
        let began = now_ms();
        let node = faults::inject(fault, bus, &mut world, &workloads, &mut rng).await;
        *counts.entry(fault.name().to_owned()).or_default() += 1;
        let ended = now_ms();
        // The schedule as it ran, to read beside the processes' logs.
        let _ = writeln!(
            fault_log,
            "{began} {ended} {} {}{}",
            fault.name(),
            bus.map_or("all", |b| b.name()),
            node.map_or_else(String::new, |n| format!(" node {n}"))
        );
        healed.push(Healed {
            kind: fault.name().to_owned(),
            bus,
            began_ms: began,
            healed_ms: ended,
        });
    }
    tokio::time::sleep_until(deadline.into()).await;
    let soak = match sampler {
        Some(sampler) => {
            let samples = sampler.finish().await;
            let plot = dir.join("soak.png");
            if let Err(e) = crate::plot::draw(&samples, &plot) {
                eprintln!("chaos: cannot draw the soak's plot: {e}");
            } else {
                eprintln!("chaos: soak plot in {}", plot.display());
            }
            let mut verdict = crate::soak::judge(&samples);
            verdict.restarted = workloads
                .iter()
                .flat_map(|(bus, w)| {
                    let writers = w
                        .writers
                        .iter()
                        .enumerate()
                        .map(|(n, s)| (format!("writer {n}"), s));
                    let relays = w
                        .relays
                        .iter()
                        .enumerate()
                        .map(|(n, s)| (format!("relay {n}"), s));
                    writers
                        .chain(relays)
                        .filter(|(_, s)| s.starts.load(std::sync::atomic::Ordering::Relaxed) > 1)
                        .map(move |(name, _)| format!("{} {name}", bus.name()))
                })
                .collect();
            Some(verdict)
        }
        None => None,
    };

    // Heal, stop writing, drain.
    eprintln!("chaos: faults stop; draining");
    world.heal();
    for broker in world.brokers.values_mut() {
        let _ = tokio::task::block_in_place(|| broker.start_again());
        broker.wait_ready().await;
    }
    for w in workloads.values() {
        for writer in &w.writers {
            writer.stop().await;
        }
    }
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(args.drain_seconds);
    loop {
        let mut done = true;
        for (&bus, w) in &workloads {
            let drained = database::drained(&world, bus, w, args.poison)
                .await
                .unwrap_or(false);
            if !drained {
                watchdog(&mut world, bus, w, &mut progress, &mut fault_log).await;
            }
            done &= drained;
        }
        if done || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drain_ms = drain_started.elapsed().as_millis();
    for w in workloads.values() {
        for slot in w.relays.iter().chain([&w.consumer]) {
            slot.stop().await;
        }
    }

    // Fail points that fired, and any other crash.
    let mut unexpected_panics = 0;
    let mut failpoints = Vec::new();
    for line in std::fs::read_to_string(&events).unwrap_or_default().lines() {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let [ms, bus, role, message] = f[..] else {
            continue;
        };
        let bus = buses.iter().copied().find(|b| b.name() == bus);
        let kind = match message
            .strip_prefix("failpoint ")
            .and_then(|m| m.strip_suffix(" panic"))
        {
            Some(point) => format!(
                "failpoint_{}_{role}",
                point.trim_start_matches("signalbus::")
            ),
            None => {
                eprintln!("chaos: UNEXPECTED PANIC in a {role}: {message}");
                unexpected_panics += 1;
                format!("panic_{role}")
            }
        };
        *counts.entry(kind.clone()).or_default() += 1;
        let at: i64 = ms.parse().unwrap_or(0);
        // A crash in the middle of a scheduled fault on its bus recovers when that ends.
        let healed_ms = healed
            .iter()
            .filter(|f| f.began_ms <= at && at <= f.healed_ms)
            .filter(|f| f.bus.is_none() || f.bus == bus)
            .map(|f| f.healed_ms)
            .max()
            .unwrap_or(at);
        failpoints.push(Healed {
            kind,
            bus,
            began_ms: at,
            healed_ms,
        });
    }

    healed.extend(failpoints);
    let mut per_bus = BTreeMap::new();
    for (&bus, w) in &workloads {
        let committed = match database::committed(&world, bus, w, true).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("chaos: cannot read the {} database: {e}", bus.name());
                return 3;
            }
        };
        let deliveries = consumer::read_all(&w.records);
        let wedges = &progress[&bus].wedges;
        let mut verdict = check::check(bus, &committed, deliveries, &healed, wedges);
        if !verdict.lost_all.is_empty() {
            if let Some(file) = world.brokers[&bus].store_file() {
                match crate::broker_store::in_tansu_store(&file, &verdict.lost_all).await {
                    Ok(stored) => {
                        verdict.lost_but_in_broker_store = Some(stored.len());
                        verdict.lost_unaccounted = verdict
                            .lost_all
                            .iter()
                            .filter(|k| !committed.pending.contains(k) && !stored.contains(k))
                            .count();
                    }
                    Err(e) => eprintln!("chaos: cannot read {}: {e}", file.display()),
                }
            }
            // Every lost signal, one `tx i` a line, to look up in the broker's store.
            let lines: String = verdict
                .lost_all
                .iter()
                .map(|(tx, i)| format!("{tx} {i}\n"))
                .collect();
            let _ = std::fs::write(dir.join(format!("{}-lost.txt", bus.name())), lines);
        }
        per_bus.insert(bus, verdict);
    }
    let sum = |f: fn(&BusVerdict) -> usize| per_bus.values().map(f).sum::<usize>();
    let passed = !per_bus.values().any(check::failed)
        && unexpected_panics == 0
        && soak.as_ref().is_none_or(crate::soak::Verdict::passed);
    let summary = Summary {
        passed,
        seed,
        db,
        seconds: args.seconds,
        buses: buses.clone(),
        transactions_committed: sum(|v| v.transactions_committed),
        rolled_back: sum(|v| v.rolled_back),
        signals_committed: sum(|v| v.signals_committed),
        signals_delivered: sum(|v| v.signals_delivered),
        deliveries: sum(|v| v.deliveries),
        faults_injected: counts.values().sum(),
        faults: counts,
        lost: sum(|v| v.lost),
        lost_unaccounted: sum(|v| v.lost_unaccounted),
        phantom: sum(|v| v.phantom),
        duplicates: sum(|v| v.duplicates),
        id_mismatches: sum(|v| v.id_mismatches),
        order_violations: sum(|v| v.order_violations),
        left_in_tables: per_bus.values().map(|v| v.left_in_tables).sum(),
        parked_planted: per_bus.values().map(|v| v.parked).sum(),
        unexpected_panics,
        watchdog_restarts: progress.iter().map(|(b, p)| (*b, p.restarts)).collect(),
        process_starts: workloads
            .values()
            .flat_map(|w| w.writers.iter().chain(&w.relays).chain([&w.consumer]))
            .map(|s| s.starts.load(std::sync::atomic::Ordering::Relaxed))
            .sum(),
        max_recovery_ms: per_bus
            .values()
            .map(|v| v.max_recovery_ms)
            .max()
            .unwrap_or(0),
        drain_ms,
        per_bus,
        soak,
    };
    println!(
        "{}",
        serde_json::to_string(&summary).expect("a JSON summary")
    );
    drop(world);
    if passed { 0 } else { 1 }
}

/// Keep a failed (or interrupted) run's temporary directory for a look: the servers' logs (a server that did
/// not start says why there), the records, the processes' stderr.
fn keep(temp: Option<tempfile::TempDir>, why: &str) {
    if let Some(t) = temp {
        let kept = t.keep();
        eprintln!("chaos: {why}; the run is kept in {}", kept.display());
    }
}

/// Restart `bus`' broker when its consumer recorded nothing for [`STUCK`] while the bus has
/// signals to deliver. (tansu 0.6's SQLite engine can wedge after a restart: every request
/// fails until the broker is restarted; see docs/reliability.md.)
async fn watchdog(
    world: &mut World,
    bus: Bus,
    w: &Workload,
    progress: &mut BTreeMap<Bus, Progress>,
    log: &mut std::fs::File,
) {
    let p = progress.get_mut(&bus).expect("every bus is watched");
    let recorded = std::fs::metadata(&w.records).map_or(0, |m| m.len());
    if recorded != p.recorded {
        p.recorded = recorded;
        p.since = Instant::now();
        return;
    }
    if p.since.elapsed() < STUCK {
        return;
    }
    eprintln!(
        "chaos: nothing delivered on {} for {} s: the watchdog restarts its broker",
        bus.name(),
        STUCK.as_secs()
    );
    let began = now_ms();
    let broker = world.brokers.get_mut(&bus).expect("its broker");
    if !broker.has_server() {
        // The webhook's receiver is the consumer; moto would lose its queues: the consumer
        // is what can be started afresh.
        w.consumer.kill();
    }
    // One node at a time: a cluster keeps its majority.
    for n in 0..broker.nodes() {
        tokio::task::block_in_place(|| broker.stop_node(n, false));
        if let Err(e) = tokio::task::block_in_place(|| broker.start_node_again(n)) {
            eprintln!("chaos: cannot restart the broker: {e}");
        }
        broker.wait_node_ready(n).await;
    }
    let _ = writeln!(
        log,
        "{began} {} watchdog_broker_restart {}",
        now_ms(),
        bus.name()
    );
    p.restarts += 1;
    let stuck_ms = i64::try_from(STUCK.as_millis()).unwrap_or(i64::MAX);
    p.wedges.push((began - stuck_ms, now_ms()));
    p.since = Instant::now();
}
