//! Fleet mode (`--fleet N`): each bus' service keeps a database per tenant, and its relays are
//! the library's fleet (a relay per database, bursts taking turns), whose list the harness
//! changes during the faults — a tenant leaves the relays' list for a few seconds and comes
//! back (`tenant_away`: its relays let go, its signals wait in its tables), a new tenant's
//! database is created and listed (`tenant_new`: served within a second, written to at once).
//!
//! Two list files per bus, each replaced whole by a rename: the service's databases (the
//! writers write to each; a tenant's number is its place) and those the relays serve.

use crate::signals::Bus;
use crate::world::World;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tenants a run adds to a bus at most (`tenant_new`), beyond those it starts with.
const MAX_NEW: u32 = 3;

/// The tenants of each bus.
pub struct Tenants {
    dir: PathBuf,
    initial: u32,
    counts: BTreeMap<Bus, u32>,
}

impl Tenants {
    /// `n` tenants for each of `buses`, their lists under `dir`.
    pub fn new(dir: &Path, buses: &[Bus], n: u32) -> Tenants {
        Tenants {
            dir: dir.to_owned(),
            initial: n,
            counts: buses.iter().map(|&b| (b, n)).collect(),
        }
    }

    /// How many databases `bus` has now.
    pub fn count(&self, bus: Bus) -> u32 {
        self.counts.get(&bus).copied().unwrap_or(1)
    }

    /// Whether `tenant_new` may add one more to `bus`.
    pub fn can_add(&self, bus: Bus) -> bool {
        self.count(bus) < self.initial + MAX_NEW
    }

    /// The service's databases of `bus`: what its writers write to.
    pub fn service_list(&self, bus: Bus) -> PathBuf {
        self.dir.join(format!("{}-tenants.txt", bus.name()))
    }

    /// The databases of `bus` its relays serve.
    pub fn relay_list(&self, bus: Bus) -> PathBuf {
        self.dir.join(format!("{}-relayed.txt", bus.name()))
    }

    /// Write both lists of `bus`: every tenant on the service's, all but `away` on the
    /// relays'.
    pub fn write_lists(&self, world: &World, bus: Bus, away: Option<u32>) -> std::io::Result<()> {
        let urls: Vec<(u32, String)> = (0..self.count(bus))
            .map(|t| (t, world.tenant_url(bus, t)))
            .collect();
        let all = urls.iter().map(|(_, u)| u.as_str());
        replace(&self.service_list(bus), all)?;
        let relayed = urls
            .iter()
            .filter(|(t, _)| Some(*t) != away)
            .map(|(_, u)| u.as_str());
        replace(&self.relay_list(bus), relayed)
    }
}

/// Write `lines` to `path` at once: to a file beside it, then renamed over it, so that a
/// reader sees the old list or the new one, never a part.
fn replace<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
    let text: String = lines.map(|l| format!("{l}\n")).collect();
    let next = path.with_extension("next");
    std::fs::write(&next, text)?;
    std::fs::rename(&next, path)
}

/// `tenant_away`: one of `bus`' tenants off the relays' list for 2–6 s, then back.
pub async fn away(world: &World, bus: Bus, rng: &mut StdRng) {
    let Some(fleet) = &world.fleet else { return };
    let t = rng.random_range(0..fleet.count(bus));
    let gone = Duration::from_millis(rng.random_range(2000..6000));
    if let Err(e) = fleet.write_lists(world, bus, Some(t)) {
        eprintln!("chaos: cannot write the relays' list: {e}");
    }
    tokio::time::sleep(gone).await;
    if let Err(e) = fleet.write_lists(world, bus, None) {
        eprintln!("chaos: cannot write the relays' list: {e}");
    }
}

/// `tenant_new`: a new tenant's database created, with its tables, and put on both lists.
pub async fn add(world: &mut World, bus: Bus) {
    let Some(t) = world.fleet.as_ref().map(|f| f.count(bus)) else {
        return;
    };
    if let Err(e) = crate::database::prepare_tenant(world, bus, t, 0).await {
        // Not listed: the run goes on with the tenants it has (and the harness says why).
        eprintln!("chaos: cannot create tenant {t} of {}: {e}", bus.name());
        return;
    }
    if let Some(fleet) = world.fleet.as_mut() {
        fleet.counts.insert(bus, t + 1);
    }
    if let Some(fleet) = &world.fleet
        && let Err(e) = fleet.write_lists(world, bus, None)
    {
        eprintln!("chaos: cannot write the lists of {}: {e}", bus.name());
    }
}
