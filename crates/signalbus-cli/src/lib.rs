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

mod args;
pub mod config;
mod connect;
#[cfg(feature = "console")]
pub mod console;
mod error;
mod flushing;
mod outcome;
mod parked;
mod relay;
mod report;
mod selection;

use selection::select;
use signalbus::{Backend, SignalBus};
use std::time::Duration;

pub use args::{
    Command, DrainArgs, FlushArgs, ParkedArgs, PendingArgs, PurgeArgs, RelayArgs, SettleArgs,
    SignalbusArgs, SignalsArgs, positive_seconds,
};
#[cfg(feature = "console")]
pub use args::{ConsoleArgs, ConsoleOptions};
pub use connect::Connect;
pub use error::CliError;
pub use flushing::StopSignal;
pub use outcome::{EXIT_REFUSED, EXIT_STATUS_HELP, Outcome};
pub use relay::{Hangups, RelayServer, Reload, Sources, Tenants, start_relay};

/// Check a relay's signal names against `bus`' types: fails when none of the names given is
/// known or every type is excluded (the relay would have nothing to do), before any database
/// is reached.
pub fn check_selection<DB: Backend>(bus: &SignalBus<DB>, args: &RelayArgs) -> Result<(), CliError> {
    select(bus, &args.names, &args.exclude).map(drop)
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
            #[allow(unused_mut)]
            let mut server = RelayServer::bind(args).await?;
            #[cfg(feature = "console")]
            if args.console {
                let console = console::console(&args.console_options, None)?.database(bus.clone());
                server = server.with_console(console)?;
            }
            // A fleet of one: a relay that cannot start (the database down, the tables not
            // there yet) is tried again until it can, as in the binary.
            select(bus, &args.names, &args.exclude)?;
            let (one, relay_args) = (bus.clone(), args.clone());
            let fleet = signalbus::fleet::Fleet::builder(move |_: String| {
                let (bus, args) = (one.clone(), relay_args.clone());
                async move { start_relay(&bus, &args, None, None).await }
            })
            .retry(Duration::from_secs(1), args.database_retry_max)
            .shutdown_timeout(args.shutdown_timeout)
            .build();
            fleet.update([bus.name().to_owned()]);
            let policy = args.ready_policy.unwrap_or_default();
            server.run(fleet, None, policy, args, stop).await
        }
        #[cfg(feature = "console")]
        Command::Console(args) => {
            let console = console::console(&args.options, None)?.database(bus.clone());
            console::serve(console, &args.listen, stop).await
        }
        Command::Parked(args) => parked::list(bus, args).await,
        Command::Unpark(args) => parked::unpark(bus, args).await,
        Command::PurgeParked(args) => parked::purge(bus, args).await,
    }
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
