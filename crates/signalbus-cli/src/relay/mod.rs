//! `signalbus relay`: the always-on sender over one database or a fleet of them
//! ([`signalbus::fleet`]), and its HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).

mod metrics;
mod sources;
mod tenants;

use crate::args::{Capture, RelayArgs};
use crate::error::CliError;
use crate::flushing::StopSignal;
use crate::outcome::Outcome;
use crate::selection::select;
use ::metrics::gauge;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::{BUCKETS, describe_metrics, only_members};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use signalbus::fleet::{Fleet, ReadyPolicy};
use signalbus::{Backend, BurstShare, Relay, Selection, SignalBus, WalCapture};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sources::Sources;
pub use tenants::Tenants;

/// The HTTP side of a relay, bound before any relay starts so that a bad `--listen` fails
/// first and alone.
#[derive(Debug)]
pub struct RelayServer {
    http: Option<(tokio::net::TcpListener, PrometheusHandle)>,
    /// The operator console's routes, served beside the others.
    console: Option<Router>,
}

impl RelayServer {
    /// Bind `--listen` (when given) and install the Prometheus recorder there; nothing when
    /// it is not given.
    pub async fn bind(args: &RelayArgs) -> Result<Self, CliError> {
        let Some(addr) = args.listen.as_deref() else {
            return Ok(RelayServer {
                http: None,
                console: None,
            });
        };
        // A host name is resolved here (tokio binds the first address it resolves to).
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::caused(format!("cannot listen on {addr}"), e))?;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .map_err(|e| CliError::caused("cannot set up the metrics", e))?
            .install_recorder()
            .map_err(|e| {
                CliError::caused(
                    "cannot serve metrics: this process already has a metrics recorder \
                     (serve it yourself, and leave out --listen)",
                    e,
                )
            })?;
        describe_metrics();
        Ok(RelayServer {
            http: Some((listener, handle)),
            console: None,
        })
    }

    /// Serve `console` under /console beside the relay's endpoints (`--console`); refused
    /// without `--listen`, and on an address other than loopback without console tokens.
    #[cfg(feature = "console")]
    pub fn with_console(mut self, console: signalbus::console::Console) -> Result<Self, CliError> {
        let Some((listener, handle)) = &self.http else {
            return Err(CliError::msg("--console needs --listen HOST:PORT"));
        };
        // The overview's send and refuse rates come from this relay's own counters.
        let metrics = handle.clone();
        let console = console.metrics_text(move || metrics.render());
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::caused("cannot read the relay's address", e))?;
        console
            .check_address(&addr)
            .map_err(|e| CliError::msg(e.to_string()))?;
        self.console = Some(console.router().map_err(|e| CliError::msg(e.to_string()))?);
        Ok(self)
    }

    /// Serve the endpoints while the `fleet`'s relays run, until `stop` fires; then shut them
    /// down within `--shutdown-timeout`. With `sources`, the list of databases is read again
    /// on SIGHUP and every `reload_every`.
    pub async fn run(
        self,
        fleet: Fleet,
        sources: Option<Reload>,
        policy: ReadyPolicy,
        args: &RelayArgs,
        stop: &StopSignal,
    ) -> Result<Outcome, CliError> {
        let console = self.console;
        // Why the last read of the list failed (the first read's included), for /readyz.
        let failed = sources
            .as_ref()
            .and_then(|r| r.sources.last_error().map(str::to_owned));
        if sources.as_ref().is_some_and(|r| r.sources.is_dynamic()) {
            gauge!("signalbus_fleet_catalog_ok").set(if failed.is_some() { 0.0 } else { 1.0 });
        }
        let catalog = Arc::new(Mutex::new(failed));
        let server = self.http.map(|(listener, handle)| {
            if let Ok(addr) = listener.local_addr() {
                eprintln!(
                    "signalbus relay: serving /metrics, /healthz and /readyz{} on http://{addr}",
                    if console.is_some() {
                        " and the console (/console)"
                    } else {
                        ""
                    }
                );
            }
            let upkeep = handle.clone();
            let (probes, said, listed) = (fleet.clone(), catalog.clone(), fleet.clone());
            let fleet = fleet.clone();
            let mut app = Router::new()
                .route(
                    "/metrics",
                    get(move || async move {
                        let names: std::collections::HashSet<String> =
                            listed.names().into_iter().collect();
                        only_members(&handle.render(), |bus| names.contains(bus))
                    }),
                )
                .route("/healthz", get(|| async { "ok\n" }))
                .route(
                    "/readyz",
                    get(move || {
                        let (fleet, catalog) = (fleet.clone(), said.clone());
                        async move { ready(&fleet, policy, &catalog).await }
                    }),
                );
            if let Some(console) = console {
                app = app.merge(console);
            }
            (
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the relay's HTTP server stopped");
                    }
                }),
                // Histograms are kept in buckets that need draining now and then; and the
                // readiness gauges, for alerts, follow what /readyz would answer.
                tokio::spawn(async move {
                    loop {
                        record_readiness(&probes).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        upkeep.run_upkeep();
                    }
                }),
            )
        });
        let names: Vec<String> = fleet.status().into_iter().map(|d| d.name).collect();
        eprintln!(
            "signalbus relay: relaying from {} database(s){}{}",
            names.len(),
            if names.len() > 10 { "" } else { ": " },
            if names.len() > 10 {
                String::new()
            } else {
                names.join(", ")
            }
        );
        match sources {
            Some(reload) => {
                tokio::select! {
                    () = reload.run(&fleet, &catalog) => {}
                    () = stop.stopped() => {}
                }
            }
            None => stop.stopped().await,
        }
        eprintln!("signalbus relay: stopping after the bursts in flight");
        let timeout = args.shutdown_timeout;
        let clean = fleet.shutdown(timeout).await;
        if let Some((server, upkeep)) = server {
            server.abort();
            upkeep.abort();
        }
        if clean {
            eprintln!("signalbus relay: stopped");
        } else {
            eprintln!(
                "signalbus relay: stopped at the {timeout:?} deadline with bursts in flight; \
                 their signals stay pending and are sent again when their lease expires"
            );
        }
        Ok(Outcome::Stopped)
    }
}

/// The list of databases read again on SIGHUP and every `every` (fleet mode).
#[derive(Debug)]
pub struct Reload {
    /// Where the list comes from.
    pub sources: Sources,
    /// How often it is read again, besides SIGHUP.
    pub every: Option<Duration>,
    /// SIGHUP, handled from [`Reload::hangups`] on (before it, SIGHUP would end the process).
    pub hangups: Hangups,
}

impl Reload {
    /// Handle SIGHUP from now on: call it first thing, so that a reload sent while the relay
    /// starts (`systemctl reload`) is not the default action, which ends the process.
    pub fn hangups() -> Hangups {
        hangups()
    }

    /// Read the list on SIGHUP and every `every`, and hand it to `fleet`; runs until
    /// dropped. `catalog` keeps why the last read failed, for /readyz.
    async fn run(mut self, fleet: &Fleet, catalog: &Mutex<Option<String>>) {
        let mut hangups = self.hangups;
        let mut ticks = self.every.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let why = tokio::select! {
                () = next_hangup(&mut hangups) => "SIGHUP",
                _ = async { match &mut ticks { Some(t) => t.tick().await, None => std::future::pending().await } } => "period",
            };
            let list = self.sources.load().await;
            if let Ok(mut said) = catalog.lock() {
                *said = self.sources.last_error().map(str::to_owned);
            }
            gauge!("signalbus_fleet_catalog_ok").set(if self.sources.last_error().is_some() {
                0.0
            } else {
                1.0
            });
            let change = fleet.update(list);
            if !change.added.is_empty() || !change.removed.is_empty() {
                tracing::info!(
                    reload = why,
                    added = change.added.len(),
                    removed = change.removed.len(),
                    kept = change.kept,
                    "fleet: the list of databases changed"
                );
                eprintln!(
                    "signalbus relay: list of databases read again ({why}): {} added, {} removed, {} kept",
                    change.added.len(),
                    change.removed.len(),
                    change.kept
                );
            }
        }
    }
}

/// The SIGHUP stream of a relay (none where the platform has no SIGHUP).
#[cfg(unix)]
#[derive(Debug, Default)]
pub struct Hangups(Option<tokio::signal::unix::Signal>);
/// The SIGHUP stream of a relay (none where the platform has no SIGHUP).
#[cfg(not(unix))]
#[derive(Debug, Default)]
pub struct Hangups;

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    Hangups(
        signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot handle SIGHUP; the list is read again on its period only"))
            .ok(),
    )
}

#[cfg(not(unix))]
fn hangups() -> Hangups {
    Hangups
}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    match &mut hangups.0 {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending().await
}

/// `/readyz`: 200 when the policy holds (by default: every database and the bus answer), 503
/// otherwise; one line per database, then a summary.
async fn ready(
    fleet: &Fleet,
    policy: ReadyPolicy,
    catalog: &Mutex<Option<String>>,
) -> (StatusCode, String) {
    let readiness = fleet.readiness(policy).await;
    let say = |what: &Result<(), String>| match what {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("unreachable ({e})"),
    };
    let mut lines: Vec<String> = readiness
        .databases
        .iter()
        .map(|(name, r)| match r {
            Ok(r) => format!(
                "{name}: database {}, broker {}",
                say(&r.database),
                say(&r.broker)
            ),
            Err(why) => format!("{name}: database down ({why})"),
        })
        .collect();
    lines.push(format!(
        "{} of {} database(s) ready; policy {}: {}",
        readiness.up,
        readiness.databases.len(),
        policy_name(policy),
        if readiness.ready {
            "ready"
        } else {
            "not ready"
        }
    ));
    if let Some(e) = catalog.lock().ok().and_then(|c| c.clone()) {
        lines.push(format!(
            "list of databases: the last read failed ({e}); the previous list stays"
        ));
    }
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, lines.join("\n") + "\n")
}

fn policy_name(policy: ReadyPolicy) -> String {
    match policy {
        ReadyPolicy::All => "all".into(),
        ReadyPolicy::Any => "any".into(),
        ReadyPolicy::AtLeastPercent(p) => format!("{p}%"),
        _ => format!("{policy:?}"),
    }
}

/// `signalbus_relay_ready{bus}` (1 while the database and the broker answer, else 0),
/// `signalbus_database_up{bus}` and the fleet's counts.
async fn record_readiness(fleet: &Fleet) {
    let readiness = fleet.readiness(ReadyPolicy::All).await;
    for (bus, r) in &readiness.databases {
        let ready = r.as_ref().is_ok_and(signalbus::Readiness::is_ready);
        gauge!("signalbus_relay_ready", "bus" => bus.clone()).set(if ready { 1.0 } else { 0.0 });
        gauge!("signalbus_database_up", "bus" => bus.clone()).set(if r.is_ok() {
            1.0
        } else {
            0.0
        });
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    {
        gauge!("signalbus_fleet_databases").set(readiness.databases.len() as f64);
        gauge!("signalbus_fleet_databases_up").set(readiness.up as f64);
    }
}

/// Start a relay on `bus` for the types `args` selects; `url` is the database's (WAL capture
/// opens a replication connection of its own: without it, `--capture wal` is refused); with
/// `share`, its bursts take turns with other relays'.
pub async fn start_relay<DB: Backend>(
    bus: &SignalBus<DB>,
    args: &RelayArgs,
    url: Option<&str>,
    share: Option<BurstShare>,
) -> Result<Relay, CliError> {
    let types = select(bus, &args.names, &args.exclude)?;
    let cannot = |e| CliError::caused(format!("cannot start the relay on `{}`", bus.name()), e);
    let mut relay = bus
        .relay()
        .select(Selection::only(types))
        .ordered(args.ordered)
        .ordered_lanes(args.ordered_lanes)
        .poll(args.poll_min, args.poll_max)
        .stats_interval(args.stats_interval);
    if let Some(share) = share {
        relay = relay.share(share);
    }
    if args.capture == Capture::Wal {
        let Some(url) = url else {
            return Err(CliError::msg(
                "--capture wal needs the database URL, which an embedded command does not have: \
                 start the relay with RelayBuilder::capture_wal instead",
            ));
        };
        let mut wal = WalCapture::from_url(url)
            .map_err(cannot)?
            .scan_every(args.capture_scan);
        if let Some(slot) = &args.slot {
            wal = wal.slot(slot);
        }
        relay = relay.capture_wal(wal);
    }
    relay.start().await.map_err(cannot)
}
