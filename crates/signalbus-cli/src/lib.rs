//! The `signalbus` command line: send pending signals (`flush`, `flushmany`, `flushordered`),
//! count them (`pending`), list the signal types (`signals`) and create their tables
//! (`migrate`).
//!
//! It works two ways:
//!
//! * **Embedded** in your own binary, with your typed signals (the original's
//!   `flask signalbus ...`): mount [`SignalbusArgs`] as a clap subcommand and hand it to
//!   [`run`] with your [`SignalBus`]:
//!
//! ```no_run
//! use clap::{Parser, Subcommand};
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
//!     Signalbus(signalbus_cli::SignalbusArgs),
//!     // ... the application's own commands
//! }
//!
//! # async fn demo(bus: signalbus::SignalBus<sqlx::Postgres>) {
//! match App::parse().command {
//!     AppCommand::Signalbus(args) => std::process::exit(signalbus_cli::run(&bus, &args).await),
//! }
//! # }
//! ```
//!
//! * **Standalone**, the `signalbus` binary of this crate, for services in any language:
//!   signal types are declared in a TOML file ([`config`]) and their tables follow the table
//!   contract (`docs/table-contract.md`), so a Python or Go service writes plain rows and
//!   `signalbus flushmany` sends them.
//!
//! Exit status: 0 on success (also when SIGTERM/SIGINT ended a `--repeat` loop), 1 on any
//! failure (a one-line cause on standard error, the whole chain of causes with `-v`), 2 on a
//! usage error. Summaries and progress go to standard error, so that the `stdout:` bus and
//! the output of `pending`/`signals` stay clean on standard output.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod flushing;
mod report;

use clap::{Args, Subcommand};
use signalbus::{Backend, SignalBus};
use std::fmt::Write as _;

pub use flushing::StopSignal;

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
    Signals,
    /// Count the pending signals per type, the total, and the age of the oldest.
    Pending(PendingArgs),
    /// Send the signals pending now, after waiting for auto-flushes in flight.
    Flush(FlushArgs),
    /// Send every pending signal, burst after burst; several processes may run at once.
    Flushmany(DrainArgs),
    /// Send every pending signal in order (the type's order_by; default insertion order).
    Flushordered(DrainArgs),
    /// Create the tables of the signal types, if they do not exist.
    Migrate,
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

/// A pause between `--repeat` rounds: more than zero, so a loop never hammers the database.
fn positive_seconds(text: &str) -> Result<std::time::Duration, String> {
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
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a valid number of seconds"))
}

/// A failure of a command: what to print, and that the exit status is non-zero.
#[derive(Debug)]
pub struct CliError {
    message: String,
    chain: Vec<String>,
}

impl CliError {
    /// A failure described by `message` alone.
    pub fn msg(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            chain: Vec::new(),
        }
    }

    /// A failure caused by `error`, described as `context: error`.
    pub fn caused(context: impl std::fmt::Display, error: &dyn std::error::Error) -> Self {
        let mut chain = Vec::new();
        let mut source = error.source();
        while let Some(e) = source {
            chain.push(one_line(&e.to_string()));
            source = e.source();
        }
        CliError {
            message: one_line(&format!("{context}: {error}")),
            chain,
        }
    }

    /// The text to print: one line, or with `verbose` one more line per cause.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = format!("error: {}", self.message);
        if verbose {
            for cause in &self.chain {
                let _ = write!(out, "\n  caused by: {cause}");
            }
        } else if !self.chain.is_empty() {
            out.push_str(" (-v shows the causes)");
        }
        out
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<signalbus::Error> for CliError {
    fn from(e: signalbus::Error) -> Self {
        let mut err = CliError::caused("", &e);
        err.message = one_line(&e.to_string());
        err
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Run `args` against `bus`; returns the process exit status (errors are printed on
/// standard error). SIGTERM and SIGINT stop a flush after its current burst.
pub async fn run<DB: Backend>(bus: &SignalBus<DB>, args: &SignalbusArgs) -> i32 {
    let stop = StopSignal::on_terminate();
    match execute(bus, &args.command, &stop).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}", e.render(args.verbose));
            1
        }
    }
}

/// Run `command` against `bus`, stopping flushes when `stop` fires.
pub async fn execute<DB: Backend>(
    bus: &SignalBus<DB>,
    command: &Command,
    stop: &StopSignal,
) -> Result<(), CliError> {
    match command {
        Command::Signals => {
            print!("{}", report::signals(bus.signal_types()));
            Ok(())
        }
        Command::Pending(args) => {
            let types = select(bus, &args.names, &args.exclude)?;
            let stats = report::pending_stats(bus, &types).await?;
            if args.json {
                println!("{}", report::pending_json(&stats));
            } else {
                print!("{}", report::pending_text(&stats));
            }
            Ok(())
        }
        Command::Migrate => {
            bus.migrate()
                .await
                .map_err(|e| CliError::caused("cannot create the signal tables", &e))?;
            let n = bus.signal_types().count();
            eprintln!("signalbus: {n} signal table(s) ready");
            Ok(())
        }
        Command::Flush(args) => {
            let mode = flushing::Mode::Flush(args.wait);
            flushing::repeat(bus, mode, &args.drain, stop).await
        }
        Command::Flushmany(args) => flushing::repeat(bus, flushing::Mode::Many, args, stop).await,
        Command::Flushordered(args) => {
            flushing::repeat(bus, flushing::Mode::Ordered, args, stop).await
        }
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
