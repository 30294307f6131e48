//! The subcommands and their options, as clap parses them (and the value parsers they use).

use clap::{ArgGroup, Args, Subcommand};

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
    /// Serve the operator console (pages and JSON API under /console) until SIGTERM/SIGINT:
    /// what is held back and why, failure groups, unpark and purge with a dry run and an
    /// audit log. Sends nothing itself: a relay or a flush sends what it unparks.
    #[cfg(feature = "console")]
    Console(ConsoleArgs),
}

/// Options of `console`.
#[cfg(feature = "console")]
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Serve on this address (HOST:PORT). Other than loopback only with console tokens
    /// (SIGNALBUS_CONSOLE_OPERATOR_TOKEN, SIGNALBUS_CONSOLE_VIEWER_TOKEN, [[console.tokens]]).
    #[arg(long, env = "SIGNALBUS_CONSOLE_LISTEN", value_name = "HOST:PORT",
          default_value = "127.0.0.1:9187", value_parser = host_port)]
    pub listen: String,
    /// The console's options.
    #[command(flatten)]
    pub options: ConsoleOptions,
}

/// What the console shows, for `console` and `relay --console`.
#[cfg(feature = "console")]
#[derive(Debug, Clone, Default, Args)]
pub struct ConsoleOptions {
    /// Never show signal bodies, not even to operators (also `hide_bodies = true` under
    /// [console] in the configuration).
    #[arg(long, env = "SIGNALBUS_CONSOLE_HIDE_BODIES")]
    pub hide_bodies: bool,
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
    /// Where the relay learns of new signals: `table` (it looks in the tables, woken by
    /// notifications on PostgreSQL) or `wal` (PostgreSQL only: it streams committed inserts
    /// from a logical replication slot, in commit order, and falls back to `table`, saying
    /// why, when the server cannot stream: wal_level must be logical).
    #[arg(long, env = "SIGNALBUS_CAPTURE", value_enum, default_value_t = Capture::Table)]
    pub capture: Capture,
    /// With --capture wal: the replication slot and publication (default
    /// signalbus_<database>_<hash of the relayed tables>); relays with the same slot are one
    /// group (they must relay the same signal types): one streams, the others stand by.
    #[arg(long, env = "SIGNALBUS_SLOT", value_name = "NAME")]
    pub slot: Option<String>,
    /// With --capture wal: seconds between scans of the tables for what the stream does not
    /// bring (rows written before the slot, retries, leases an auto-flush gave up).
    #[arg(long, env = "SIGNALBUS_CAPTURE_SCAN", value_name = "SECONDS",
          value_parser = positive_seconds, default_value = "2", allow_negative_numbers = true)]
    pub capture_scan: std::time::Duration,
    /// Serve the operator console under /console on the --listen address too (see
    /// `signalbus console --help`).
    #[cfg(feature = "console")]
    #[arg(long, env = "SIGNALBUS_CONSOLE", requires = "listen")]
    pub console: bool,
    /// The console's options.
    #[cfg(feature = "console")]
    #[command(flatten)]
    pub console_options: ConsoleOptions,
    /// Seconds between refreshes of the pending, backing-off and parked gauges.
    #[arg(long, env = "SIGNALBUS_STATS_INTERVAL", value_name = "SECONDS",
          value_parser = positive_seconds, default_value = "5", allow_negative_numbers = true)]
    pub stats_interval: std::time::Duration,
    /// When /readyz says ready: `all` databases and the bus answer, `any` does, or a
    /// percentage such as `90%` (default: the configuration's `[fleet] ready`, else `all`).
    #[arg(long, env = "SIGNALBUS_READY_POLICY", value_name = "POLICY")]
    pub ready_policy: Option<signalbus::fleet::ReadyPolicy>,
    /// Seconds between reads of the list of databases (`[fleet]` file and catalog; also on
    /// SIGHUP). Default: the configuration's `reload_every`, else 30.
    #[arg(long, env = "SIGNALBUS_RELOAD_EVERY", value_name = "SECONDS",
          value_parser = positive_seconds, allow_negative_numbers = true)]
    pub reload_every: Option<std::time::Duration>,
    /// Bursts in flight at once across every database, taken in turns (first come, first
    /// served), so that one database's backlog never delays another's new signals by more
    /// than a burst each. Default: the configuration's `[fleet] bursts_at_once`; else 16 when
    /// the list comes from a file or a catalog, unlimited otherwise.
    #[arg(long, env = "SIGNALBUS_BURSTS_AT_ONCE", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub bursts_at_once: Option<usize>,
    /// The longest wait, in seconds, between two attempts to start the relay of a database
    /// that cannot be reached (or is not migrated); attempts begin 1 s apart and double.
    #[arg(long, env = "SIGNALBUS_DATABASE_RETRY_MAX", value_name = "SECONDS", default_value = "60",
          value_parser = positive_seconds, allow_negative_numbers = true)]
    pub database_retry_max: std::time::Duration,
}

/// Where a relay learns of new signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Capture {
    /// From the tables (every database).
    Table,
    /// From PostgreSQL's write-ahead log.
    Wal,
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
