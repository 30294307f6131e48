//! A relay: the library's in-process relay on the bus' database — ordered lanes for the
//! keyed signals, plain lanes for the others — until SIGTERM. In fleet mode
//! (`--tenants-file`), the library's fleet of such relays, one per database listed in the
//! file, their bursts taking turns.

use super::bus_for;
use crate::database::on_db;
use crate::db::{Db, HarnessDb};
use crate::signals::{Event, Keyed, Poison};
use signalbus::fleet::Fleet;
use signalbus::relay::{Relay, RelayBuilder};
use signalbus::{BurstShare, Selection, SignalBus};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the relays poll their tables besides the wake-ups (least, most).
const POLL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(500));
/// Bursts in flight at once across a fleet relay's databases: fewer than its lanes, so that
/// bursts wait for turns (and miss them when a fault holds a turn past a claim's safe wait).
const FLEET_BURSTS: usize = 4;
/// How often a fleet relay reads its list again.
const RELIST: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    #[arg(long)]
    pub db_url: String,
    #[arg(long)]
    pub bus_url: String,
    #[arg(long)]
    pub failpoint: Option<String>,
    /// Learn of new signals from the WAL (a replication slot per relay: ordered and plain).
    #[arg(long)]
    pub capture_wal: bool,
    /// The database is reached through a pooler in transaction mode (PgBouncer).
    #[arg(long)]
    pub transaction_pooler: bool,
    /// Fleet mode: relay from every database listed in this file (one URL a line), read
    /// again twice a second; `--db-url` then only says the database type.
    #[arg(long)]
    pub tenants_file: Option<PathBuf>,
}

pub async fn run(args: RelayArgs) {
    super::arm(args.failpoint.as_deref());
    match &args.tenants_file {
        Some(list) => on_db!(super::db_of(&args.db_url), run_fleet(&args, list)),
        None => on_db!(super::db_of(&args.db_url), run_on(&args)),
    }
}

/// The relay of the keyed signals: ordered lanes.
fn ordered<D: HarnessDb>(bus: &SignalBus<D>) -> RelayBuilder<D> {
    bus.relay()
        .select(Selection::of::<Keyed>())
        .ordered(true)
        .ordered_lanes(4)
        .poll(POLL.0, POLL.1)
}

/// The relay of the other signals (and the poison, which it parks).
fn plain<D: HarnessDb>(bus: &SignalBus<D>) -> RelayBuilder<D> {
    bus.relay()
        .select(Selection::of::<Event>().and::<Poison>())
        .poll(POLL.0, POLL.1)
}

async fn run_on<D: HarnessDb>(args: &RelayArgs) {
    let bus = bus_for::<D>(
        &args.db_url,
        &args.bus_url,
        false,
        args.transaction_pooler,
        super::POOL,
    )
    .await;
    // Through the proxy, as the relay's pool: the replication connection faces the same
    // faults. Each of the two relays gets its own slot (named after its tables).
    let capture = |relay: RelayBuilder<D>| {
        if !args.capture_wal {
            return relay;
        }
        relay.capture_wal(
            signalbus::WalCapture::from_url(&args.db_url).expect("a PostgreSQL URL of the harness"),
        )
    };
    let ordered = start(|| capture(ordered(&bus))).await;
    let plain = start(|| capture(plain(&bus))).await;
    crate::terminated().await;
    ordered.shutdown(Duration::from_secs(10)).await;
    plain.shutdown(Duration::from_secs(10)).await;
}

/// Fleet mode: two fleets, of the ordered and of the plain relays, over the databases the
/// file lists, sharing [`FLEET_BURSTS`] turns; a database that cannot be reached is the
/// fleet's to retry (every 0.3 s, doubling up to 2 s), not this process'.
async fn run_fleet<D: HarnessDb>(args: &RelayArgs, list: &Path) {
    let share = BurstShare::new(FLEET_BURSTS);
    let fleet = |build: fn(&SignalBus<D>) -> RelayBuilder<D>| {
        let (bus_url, pooler, share) =
            (args.bus_url.clone(), args.transaction_pooler, share.clone());
        Fleet::builder(move |db_url: String| {
            let (bus_url, share) = (bus_url.clone(), share.clone());
            async move {
                let bus = super::connect::<D>(&db_url, &bus_url, false, pooler, super::FLEET_POOL)
                    .await?;
                build(&bus).share(share).start().await
            }
        })
        .retry(Duration::from_millis(300), Duration::from_secs(2))
        .build()
    };
    let fleets = [fleet(ordered), fleet(plain)];
    let mut listed = Vec::new();
    let mut stop = std::pin::pin!(crate::terminated());
    loop {
        // A list that cannot be read keeps the last one (as the CLI's fleet does).
        if let Some(now) = super::read_list(list)
            && now != listed
        {
            for f in &fleets {
                let change = f.update(now.iter().cloned());
                tracing::info!(?change, "fleet list changed");
            }
            listed = now;
        }
        tokio::select! {
            () = tokio::time::sleep(RELIST) => {}
            () = &mut stop => break,
        }
    }
    let timeout = Duration::from_secs(10);
    tokio::join!(fleets[0].shutdown(timeout), fleets[1].shutdown(timeout));
}

/// Start a relay; a database that is down at start is waited for.
async fn start<D: HarnessDb>(builder: impl Fn() -> RelayBuilder<D>) -> Relay {
    loop {
        match builder().start().await {
            Ok(relay) => return relay,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot start yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
