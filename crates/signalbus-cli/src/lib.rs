//! The `signalbus` command line: send pending signals (`flush`, `flushmany`, `flushordered`,
//! and continuously: `relay`),
//! count them (`pending`), list the signal types (`signals`), create their tables
//! (`migrate`), and inspect, unpark or delete the signals the bus refused too often
//! (`parked`, `unpark`, `purge-parked`).
//!
//! It works two ways:
//!
//! * **Embedded** in your own binary, with your typed signals (the original's
//!   `flask signalbus ...`): mount [`SignalbusArgs`] as a clap subcommand and hand its
//!   command to [`run`] with your [`SignalBus`] and a [`StopSignal`]. The library never
//!   exits the process nor installs signal handlers: your binary decides what stops a
//!   `--repeat` loop, and prints the error and picks the exit status from what [`run`]
//!   returns:
//!
//! ```no_run
//! use clap::{Parser, Subcommand};
//! use signalbus_cli::{SignalbusArgs, StopSignal};
//! use std::process::ExitCode;
//!
//! #[derive(Parser)]
//! struct App {
//!     #[command(subcommand)]
//!     command: AppCommand,
//! }
//!
//! #[derive(Subcommand)]
//! enum AppCommand {
//!     /// Send, count and list pending signals.
//!     Signalbus(SignalbusArgs),
//!     // ... the application's own commands
//! }
//!
//! # async fn demo(bus: signalbus::SignalBus<sqlx::Postgres>) -> ExitCode {
//! match App::parse().command {
//!     AppCommand::Signalbus(args) => {
//!         // Ctrl-C ends a `--repeat` loop (or a long flush) after the current burst.
//!         let stop = StopSignal::new();
//!         let on_ctrl_c = stop.clone();
//!         tokio::spawn(async move {
//!             if tokio::signal::ctrl_c().await.is_ok() {
//!                 on_ctrl_c.stop();
//!             }
//!         });
//!         match signalbus_cli::run(&bus, &args.command, &stop).await {
//!             Ok(outcome) => outcome.exit_code(),
//!             Err(e) => {
//!                 eprintln!("{}", e.render(args.verbose));
//!                 e.exit_code()
//!             }
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! * **Standalone**, the `signalbus` binary of this crate, for services in any language:
//!   signal types are declared in a TOML file ([`config`]) and their tables follow the table
//!   contract (`docs/table-contract.md`), so a Python or Go service writes plain rows and
//!   `signalbus flushmany` sends them. It stops on SIGTERM/SIGINT (a second one exits at
//!   once, status 130).
//!
//! Exit status ([`Outcome::exit_code`], [`CliError::exit_code`]): 0 on success (also when
//! the [`StopSignal`], SIGTERM/SIGINT in the binary, ended a `--repeat` loop), 1 on any
//! failure (a one-line cause on standard error, the whole chain of causes with `-v`:
//! [`CliError::render`]), 2 on a usage error (clap's), 3 when a flush left signals the bus
//! refused (or parked) behind ([`EXIT_REFUSED`]). The commands print their output
//! (`pending`, `signals`, `parked`) on standard output, summaries, progress and warnings on standard
//! error, so that the `stdout:` bus and the output of `pending`/`signals` stay clean.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod error;
mod flushing;
mod parked;
mod relay;
mod report;

use clap::{ArgGroup, Args, Subcommand};
use signalbus::{Backend, SignalBus};
use std::process::ExitCode;

pub use error::CliError;
pub use flushing::StopSignal;
pub use relay::{RelayServer, start_relay};

/// The `signalbus` subcommands with their common options; mount it in your clap parser.
#[derive(Debug, Clone, Args)]
pub struct SignalbusArgs {
    /// Print the whole chain of causes of an error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `signalbus` subcommand.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// List the signal types.
    Signals(SignalsArgs),
    /// Count the pending signals per type, the total, and the age of the oldest; also the
    /// backing-off and parked ones.
    Pending(PendingArgs),
    /// Send the signals pending now, after waiting for auto-flushes in flight.
    Flush(FlushArgs),
    /// Send every pending signal, burst after burst; several processes may run at once.
    Flushmany(DrainArgs),
    /// Send every pending signal in order (the type's order_by; default insertion order).
    Flushordered(DrainArgs),
    /// Send pending signals continuously until SIGTERM/SIGINT: woken by PostgreSQL
    /// notifications, polling elsewhere; serves /metrics, /healthz and /readyz with --listen.
    Relay(RelayArgs),
    /// Create the tables of the signal types (and, on PostgreSQL, the relay's wake-up
    /// trigger), if they do not exist.
    Migrate,
    /// List the parked signals (refused too often, or not valid signals) per type.
    Parked(ParkedArgs),
    /// Unpark parked signals: their attempts start again and the next flush sends them.
    Unpark(SettleArgs),
    /// Delete parked signals for good (needs --yes).
    PurgeParked(PurgeArgs),
}

/// Options of `signals`.
#[derive(Debug, Clone, Args)]
pub struct SignalsArgs {
    /// One JSON array on standard output, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Options of `parked`.
#[derive(Debug, Clone, Args)]
pub struct ParkedArgs {
    /// Only these signal types (default: all).
    #[arg(value_name = "SIGNAL_NAMES")]
    pub names: Vec<String>,
    /// Leave out this signal type (repeatable).
    #[arg(short, long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// List at most N parked signals per type (the lowest ids).
    #[arg(
        short,
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub limit: usize,
    /// Print one JSON document, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Which parked signals `unpark` and `purge-parked` act on: `--id` (of one named type) or
/// `--all` (of the selected types), exactly one of them.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["ids", "all"])))]
pub struct SettleArgs {
    /// Only these signal types (default: all); `--id` needs exactly one.
    #[arg(value_name = "SIGNAL_NAMES")]
    pub names: Vec<String>,
    /// Leave out this signal type (repeatable; with `--all`).
    #[arg(short, long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// The parked signals with these row ids, of the one signal type named (repeatable,
    /// or comma-separated). Every id must be a parked signal of that type, or nothing
    /// changes.
    #[arg(
        long = "id",
        value_name = "ID",
        value_delimiter = ',',
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub ids: Vec<i64>,
    /// Every parked signal of the selected types.
    #[arg(long)]
    pub all: bool,
}

/// Options of `purge-parked`.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Which parked signals.
    #[command(flatten)]
    pub which: SettleArgs,
    /// Really delete them; without it nothing is deleted and the command says how many
    /// would be.
    #[arg(short, long)]
    pub yes: bool,
}

/// Options of `pending`.
#[derive(Debug, Clone, Args)]
pub struct PendingArgs {
    /// Only these signal types (default: all).
    #[arg(value_name = "SIGNAL_NAMES")]
    pub names: Vec<String>,
    /// Leave out this signal type (repeatable).
    #[arg(short, long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Options of `flushmany` and `flushordered`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Only these signal types (default: all).
    #[arg(value_name = "SIGNAL_NAMES")]
    pub names: Vec<String>,
    /// Leave out this signal type (repeatable).
    #[arg(short, long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// Flush again every SECONDS until SIGTERM or SIGINT (which finish the current burst).
    #[arg(short, long, value_name = "SECONDS", value_parser = positive_seconds)]
    pub repeat: Option<std::time::Duration>,
}

/// Options of `relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Only these signal types (default: all).
    #[arg(value_name = "SIGNAL_NAMES")]
    pub names: Vec<String>,
    /// Leave out this signal type (repeatable).
    #[arg(short, long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// Send every type in order, as flushordered does (a type can also say so itself:
    /// `ordered = true` in the configuration).
    #[arg(long, env = "SIGNALBUS_ORDERED")]
    pub ordered: bool,
    /// With --ordered: bursts of one signal type sent at once, each with other ordering
    /// keys (never two signals of one key at the same time).
    #[arg(long, env = "SIGNALBUS_ORDERED_LANES", value_name = "N", default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub ordered_lanes: usize,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address: HOST:PORT, the host
    /// a name or an IP address, e.g. 127.0.0.1:9464, localhost:9464 or [::1]:9464.
    #[arg(long, env = "SIGNALBUS_LISTEN", value_name = "HOST:PORT", value_parser = host_port)]
    pub listen: Option<String>,
    /// Seconds a SIGTERM waits for the bursts in flight before the relay exits anyway
    /// (their signals stay pending).
    #[arg(long, env = "SIGNALBUS_SHUTDOWN_TIMEOUT", value_name = "SECONDS",
          value_parser = seconds, default_value = "10", allow_negative_numbers = true)]
    pub shutdown_timeout: std::time::Duration,
    /// Seconds of the shortest poll, after a round that found nothing.
    #[arg(long, env = "SIGNALBUS_POLL_MIN", value_name = "SECONDS",
          value_parser = positive_seconds, default_value = "0.01", allow_negative_numbers = true)]
    pub poll_min: std::time::Duration,
    /// Seconds of the longest poll, while idle (on PostgreSQL: the fallback behind the
    /// notifications).
    #[arg(long, env = "SIGNALBUS_POLL_MAX", value_name = "SECONDS",
          value_parser = positive_seconds, default_value = "1", allow_negative_numbers = true)]
    pub poll_max: std::time::Duration,
    /// Seconds between refreshes of the pending, backing-off and parked gauges.
    #[arg(long, env = "SIGNALBUS_STATS_INTERVAL", value_name = "SECONDS",
          value_parser = positive_seconds, default_value = "5", allow_negative_numbers = true)]
    pub stats_interval: std::time::Duration,
}

/// Options of `flush`.
#[derive(Debug, Clone, Args)]
pub struct FlushArgs {
    /// Names, exclusions and repetition.
    #[command(flatten)]
    pub drain: DrainArgs,
    /// Seconds to wait for auto-flushes in flight before sending.
    #[arg(short, long, value_name = "SECONDS", value_parser = seconds, default_value = "3")]
    pub wait: std::time::Duration,
}

/// A duration option that must be more than zero (`--repeat`: a loop never hammers the
/// database; `--publish-timeout`, `--lease`, the relay's polls), and at most a week.
pub fn positive_seconds(text: &str) -> Result<std::time::Duration, String> {
    let d = seconds(text)?;
    if d.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(d)
}

fn seconds(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!(
            "`{text}` is negative: give a number of seconds, 0 or more"
        ));
    }
    if secs > MAX_SECONDS {
        return Err(format!(
            "`{text}` seconds is more than a week ({MAX_SECONDS} s), the most this takes"
        ));
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a valid number of seconds"))
}

/// The longest duration any option takes: past it a value is a typo (`1e30`), not a plan.
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// `HOST:PORT` for `--listen`: checked here so that a bad value is blamed on the option; the
/// host name is resolved when the relay binds.
fn host_port(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` has no port: give HOST:PORT, e.g. 127.0.0.1:9464"))?;
    if host.is_empty() {
        return Err(format!(
            "`{text}` has no host: give HOST:PORT, e.g. 127.0.0.1:9464 (0.0.0.0:PORT for every interface)"
        ));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{port}` is not a port number (0 to 65535)"))?;
    Ok(text.to_owned())
}

/// The exit status of a flush that left signals the bus refused (or parked) behind.
pub const EXIT_REFUSED: u8 = 3;

/// The exit statuses, as `signalbus --help` lists them.
pub const EXIT_STATUS_HELP: &str = "Exit status:
  0    done (also when SIGTERM/SIGINT ended a --repeat loop)
  1    failed: one line on standard error says why (-v: the whole chain of causes)
  2    usage error (a bad option or value)
  3    a flush ran, but the bus refused some signals, or some were parked: they stay in
       their table (`signalbus parked` lists the parked ones)
  130  a second SIGTERM/SIGINT stopped a flush at once";

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It ran to its end.
    Completed,
    /// A flush ran to its end, and the bus refused some signals (or some were not valid
    /// signals): they stay in their table, retried later with backoff or parked. Exit
    /// status 3, so that a script or a supervisor sees it.
    Refused,
    /// The [`StopSignal`] fired before it ended: a `--repeat` loop stopped between rounds,
    /// or a flush after its current burst (what it sent is deleted, the rest stays pending).
    Stopped,
}

impl Outcome {
    /// The exit status of the `signalbus` binary: 0 when it ran to its end or was stopped
    /// (stopping is how a supervisor ends a `--repeat` loop), 3 when a flush left refused
    /// or parked signals behind.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Completed | Outcome::Stopped => ExitCode::SUCCESS,
            Outcome::Refused => ExitCode::from(EXIT_REFUSED),
        }
    }
}

/// Run `command` against `bus`. Flushes stop after their current burst, and `--repeat` loops
/// end, when `stop` fires.
///
/// Prints what the command shows (standard output) and its summaries, progress and warnings
/// (standard error), but not the error it returns: print that with [`CliError::render`].
pub async fn run<DB: Backend>(
    bus: &SignalBus<DB>,
    command: &Command,
    stop: &StopSignal,
) -> Result<Outcome, CliError> {
    match command {
        Command::Signals(args) => {
            if args.json {
                println!("{}", report::signals_json(bus.signal_types()));
            } else {
                print!("{}", report::signals(bus.signal_types()));
            }
            Ok(Outcome::Completed)
        }
        Command::Pending(args) => {
            let types = select(bus, &args.names, &args.exclude)?;
            let stats = report::pending_stats(bus, &types).await?;
            if args.json {
                println!("{}", report::pending_json(&stats));
            } else {
                print!("{}", report::pending_text(&stats));
            }
            Ok(Outcome::Completed)
        }
        Command::Migrate => {
            bus.migrate()
                .await
                .map_err(|e| CliError::caused("cannot create the signal tables", e))?;
            let n = bus.signal_types().count();
            eprintln!("signalbus: {n} signal table(s) ready");
            Ok(Outcome::Completed)
        }
        Command::Flush(args) => {
            let mode = flushing::Mode::Flush(args.wait);
            flushing::repeat(bus, mode, &args.drain, stop).await
        }
        Command::Flushmany(args) => flushing::repeat(bus, flushing::Mode::Many, args, stop).await,
        Command::Flushordered(args) => {
            flushing::repeat(bus, flushing::Mode::Ordered, args, stop).await
        }
        Command::Relay(args) => {
            let server = RelayServer::bind(args).await?;
            let relay = start_relay(bus, args).await?;
            server.run(vec![relay], args, stop).await
        }
        Command::Parked(args) => parked::list(bus, args).await,
        Command::Unpark(args) => parked::unpark(bus, args).await,
        Command::PurgeParked(args) => parked::purge(bus, args).await,
    }
}

impl Command {
    /// Whether it sends signals (`flush`, `flushmany`, `flushordered`, `relay`): the
    /// commands that need a bus, and that a [`StopSignal`] stops.
    pub fn is_flush(&self) -> bool {
        matches!(
            self,
            Command::Flush(_)
                | Command::Flushmany(_)
                | Command::Flushordered(_)
                | Command::Relay(_)
        )
    }
}

/// The known names among `names` minus `exclude`, in registration order; unknown names get a
/// warning. Fails when names were given and none is known, or nothing is left.
fn select<DB: Backend>(
    bus: &SignalBus<DB>,
    names: &[String],
    exclude: &[String],
) -> Result<Vec<String>, CliError> {
    let known: Vec<String> = bus.signal_types().map(|t| t.name().to_owned()).collect();
    for name in names.iter().chain(exclude) {
        if !known.contains(name) {
            eprintln!(
                "warning: unknown signal name `{name}` ignored; known signals: {}",
                if known.is_empty() {
                    "(none)".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let chosen: Vec<String> = known
        .iter()
        .filter(|k| names.is_empty() || names.contains(k))
        .filter(|k| !exclude.contains(k))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(CliError::msg(if known.is_empty() {
            "no signal types are declared".to_owned()
        } else if !names.is_empty() && !names.iter().any(|n| known.contains(n)) {
            "none of the given signal names is known; nothing to do".to_owned()
        } else {
            "every signal type is excluded; nothing to do".to_owned()
        }));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalbus::SignalType;
    use signalbus::publisher::MemoryPublisher;
    use std::time::Duration;

    /// A bus on a fresh SQLite file with `rows` pending `a` signals (bursts of one).
    async fn bus_with_pending(
        dir: &tempfile::TempDir,
        rows: usize,
    ) -> (SignalBus<sqlx::Sqlite>, MemoryPublisher) {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("db.sqlite"))
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let outbox = MemoryPublisher::new();
        let bus = SignalBus::builder(pool.clone())
            .publisher(outbox.clone())
            .register_type(SignalType::new("a").burst(1))
            .autoflush(false)
            .build()
            .unwrap();
        bus.migrate().await.unwrap();
        for _ in 0..rows {
            sqlx::query("INSERT INTO a (topic, body) VALUES ('t', x'00')")
                .execute(&pool)
                .await
                .unwrap();
        }
        (bus, outbox)
    }

    fn flushmany(repeat: Option<Duration>) -> Command {
        Command::Flushmany(DrainArgs {
            names: Vec::new(),
            exclude: Vec::new(),
            repeat,
        })
    }

    #[tokio::test]
    async fn without_a_stop_a_flush_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, outbox) = bus_with_pending(&dir, 3).await;
        let outcome = run(&bus, &flushmany(None), &StopSignal::new()).await;
        assert_eq!(outcome.unwrap(), Outcome::Completed);
        assert_eq!(outbox.len(), 3);
    }

    #[tokio::test]
    async fn the_callers_stop_signal_ends_a_repeat_loop_while_it_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, outbox) = bus_with_pending(&dir, 2).await;
        let stop = StopSignal::new();
        let fire = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            fire.stop();
        });
        // An hour between rounds: only the stop signal can end it in time.
        let command = flushmany(Some(Duration::from_secs(3600)));
        let outcome = tokio::time::timeout(Duration::from_secs(20), run(&bus, &command, &stop))
            .await
            .expect("the stop signal ends the loop");
        assert_eq!(outcome.unwrap(), Outcome::Stopped);
        assert_eq!(outbox.len(), 2, "the first round ran");
    }

    #[tokio::test]
    async fn a_fired_stop_signal_ends_a_flush_after_its_first_burst() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, outbox) = bus_with_pending(&dir, 3).await;
        let stop = StopSignal::new();
        stop.stop();
        stop.stopped().await; // completes at once once fired
        let outcome = run(&bus, &flushmany(None), &stop).await;
        assert_eq!(outcome.unwrap(), Outcome::Stopped);
        assert_eq!(outbox.len(), 1, "one burst of one");
        let left = bus.pending(&signalbus::Selection::all()).await.unwrap();
        assert_eq!(left[0].1.count, 2);
    }

    #[tokio::test]
    async fn failures_are_returned_not_printed_or_exited() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, _) = bus_with_pending(&dir, 0).await;
        let command = Command::Pending(PendingArgs {
            names: vec!["nope".into()],
            exclude: Vec::new(),
            json: false,
        });
        let e = run(&bus, &command, &StopSignal::new()).await.unwrap_err();
        assert_eq!(
            e.render(false),
            "error: none of the given signal names is known; nothing to do"
        );
    }
}
