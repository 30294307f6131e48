//! `signalbus relay`: the always-on sender, and its HTTP endpoints (`/metrics`, `/healthz`,
//! `/readyz`).

use crate::args::{Capture, RelayArgs};
use crate::error::CliError;
use crate::flushing::StopSignal;
use crate::outcome::Outcome;
use crate::selection::select;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use signalbus::{Backend, ReadinessCheck, Relay, Selection, SignalBus, WalCapture};
use std::time::Duration;

/// Histogram buckets of the `*_seconds` metrics: from a millisecond to a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

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

    /// Serve the endpoints while `relays` run, until `stop` fires; then shut the relays down
    /// within `--shutdown-timeout`.
    pub async fn run(
        self,
        relays: Vec<Relay>,
        args: &RelayArgs,
        stop: &StopSignal,
    ) -> Result<Outcome, CliError> {
        let console = self.console;
        let server = self.http.map(|(listener, handle)| {
            let checks: Vec<_> = relays.iter().map(|r| r.readiness_check()).collect();
            let local = listener.local_addr().ok();
            if let Some(addr) = local {
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
            let probes = checks.clone();
            let mut app = Router::new()
                .route("/metrics", get(move || async move { handle.render() }))
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/readyz", get(move || ready(checks.clone())));
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
                // readiness gauge, for alerts, follows what /readyz would answer.
                tokio::spawn(async move {
                    loop {
                        record_readiness(&probes).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        upkeep.run_upkeep();
                    }
                }),
            )
        });
        let names: Vec<&str> = relays.iter().map(Relay::bus).collect();
        eprintln!(
            "signalbus relay: relaying from {} database(s): {}",
            relays.len(),
            names.join(", ")
        );
        stop.stopped().await;
        eprintln!("signalbus relay: stopping after the bursts in flight");
        let timeout = args.shutdown_timeout;
        let mut shutdowns = tokio::task::JoinSet::new();
        for relay in relays {
            shutdowns.spawn(relay.shutdown(timeout));
        }
        let mut clean = true;
        while let Some(done) = shutdowns.join_next().await {
            clean &= done.unwrap_or(false);
        }
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

/// `/readyz`: 200 when every database and the bus answer, 503 otherwise; one line per bus.
async fn ready(checks: Vec<ReadinessCheck>) -> (StatusCode, String) {
    let mut answers = tokio::task::JoinSet::new();
    for check in checks {
        answers.spawn(async move { check().await });
    }
    let mut lines = Vec::new();
    let mut all = true;
    while let Some(answer) = answers.join_next().await {
        let Ok(r) = answer else {
            all = false;
            continue;
        };
        all &= r.is_ready();
        let say = |what: &Result<(), String>| match what {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("unreachable ({e})"),
        };
        lines.push(format!(
            "{}: database {}, broker {}",
            r.bus,
            say(&r.database),
            say(&r.broker)
        ));
    }
    lines.sort();
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, lines.join("\n") + "\n")
}

/// `signalbus_relay_ready{bus}`: 1 while the database and the broker answer, else 0.
async fn record_readiness(checks: &[ReadinessCheck]) {
    for check in checks {
        let r = check().await;
        metrics::gauge!("signalbus_relay_ready", "bus" => r.bus.clone()).set(if r.is_ready() {
            1.0
        } else {
            0.0
        });
    }
}

/// Start a relay on `bus` for the types `args` selects; `url` is the database's (WAL capture
/// opens a replication connection of its own: without it, `--capture wal` is refused).
pub async fn start_relay<DB: Backend>(
    bus: &SignalBus<DB>,
    args: &RelayArgs,
    url: Option<&str>,
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

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "signalbus_relay_ready",
        "1 while the relay's database and broker answer (what /readyz says), else 0."
    );
    describe_counter!(
        "signalbus_signals_sent_total",
        "Signals the broker stored (rows deleted)."
    );
    describe_counter!(
        "signalbus_signals_refused_total",
        "Signals the broker refused (kept)."
    );
    describe_counter!(
        "signalbus_signals_retried_total",
        "Refused signals that will be tried again after a backoff."
    );
    describe_counter!(
        "signalbus_signals_parked_total",
        "Refused signals parked for an operator."
    );
    describe_counter!(
        "signalbus_signals_deferred_total",
        "Signals not stored because their part of the bus was out (one endpoint); no attempt spent."
    );
    describe_counter!(
        "signalbus_publish_failures_total",
        "Publish calls that failed as a whole (broker down, timeout)."
    );
    describe_histogram!(
        "signalbus_publish_seconds",
        metrics::Unit::Seconds,
        "Duration of one publish step."
    );
    describe_histogram!(
        "signalbus_delivery_seconds",
        metrics::Unit::Seconds,
        "From the commit (the row's created_at) to the broker's acknowledgement."
    );
    describe_gauge!(
        "signalbus_pending",
        "Rows in the signal table (backing-off and parked included)."
    );
    describe_gauge!(
        "signalbus_backing_off",
        "Signals waiting for their next attempt."
    );
    describe_gauge!(
        "signalbus_parked",
        "Parked signals, waiting for an operator."
    );
    describe_gauge!(
        "signalbus_oldest_pending_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest pending signal: the relay's lag."
    );
    describe_gauge!(
        "signalbus_capture_streaming",
        "WAL capture: 1 while this relay streams from the slot, else 0."
    );
    describe_gauge!(
        "signalbus_capture_lag_bytes",
        "WAL capture: WAL the server keeps for the slot."
    );
    describe_gauge!(
        "signalbus_capture_lag_seconds",
        metrics::Unit::Seconds,
        "WAL capture: age of the oldest transaction streamed but not yet confirmed."
    );
    describe_gauge!(
        "signalbus_ordered_held_back",
        "Ordered relays on PostgreSQL: signals the gap-safe watermark holds back behind a transaction still open on the server."
    );
    describe_gauge!(
        "signalbus_ordered_holder_age_seconds",
        metrics::Unit::Seconds,
        "Ordered relays on PostgreSQL: how long the transaction holding signals back has been open (0 when none is held)."
    );
}
