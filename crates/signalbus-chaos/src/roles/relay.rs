//! A relay: the library's in-process relay on the bus' database — ordered lanes for the
//! keyed signals, plain lanes for the others — until SIGTERM.

use super::bus_for;
use crate::database::on_db;
use crate::db::{Db, HarnessDb};
use crate::signals::{Event, Keyed, Poison};
use signalbus::Selection;
use std::time::Duration;

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
}

pub async fn run(args: RelayArgs) {
    super::arm(args.failpoint.as_deref());
    on_db!(super::db_of(&args.db_url), run_on(&args));
}

async fn run_on<D: HarnessDb>(args: &RelayArgs) {
    let bus = bus_for::<D>(&args.db_url, &args.bus_url, false, args.transaction_pooler).await;
    let poll = (Duration::from_millis(10), Duration::from_millis(500));
    // Through the proxy, as the relay's pool: the replication connection faces the same
    // faults. Each of the two relays gets its own slot (named after its tables).
    let capture = || {
        args.capture_wal.then(|| {
            signalbus::WalCapture::from_url(&args.db_url).expect("a PostgreSQL URL of the harness")
        })
    };
    let ordered = start(|| {
        let relay = bus
            .relay()
            .select(Selection::of::<Keyed>())
            .ordered(true)
            .ordered_lanes(4)
            .poll(poll.0, poll.1);
        match capture() {
            Some(wal) => relay.capture_wal(wal),
            None => relay,
        }
    })
    .await;
    let plain = start(|| {
        let relay = bus
            .relay()
            .select(Selection::of::<Event>().and::<Poison>())
            .poll(poll.0, poll.1);
        match capture() {
            Some(wal) => relay.capture_wal(wal),
            None => relay,
        }
    })
    .await;
    crate::terminated().await;
    ordered.shutdown(Duration::from_secs(10)).await;
    plain.shutdown(Duration::from_secs(10)).await;
}

/// Start a relay; a database that is down at start is waited for.
async fn start<D: HarnessDb>(
    builder: impl Fn() -> signalbus::relay::RelayBuilder<D>,
) -> signalbus::relay::Relay {
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
