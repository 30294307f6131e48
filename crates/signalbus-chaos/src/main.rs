//! `signalbus-chaos`: signalbus' fault-injection harness (scripts/chaos.sh runs it).
//!
//! `signalbus-chaos run --seconds N [--seed S] [--bus amqp|nats|kafka|all]
//! [--db postgres|mysql|sqlite|all]` starts a world of its own (a private PostgreSQL or
//! MariaDB, or SQLite files, and brokers behind fault-injecting proxies), runs writers,
//! relays and a consumer per bus as processes of this binary, injects faults scheduled from
//! the seed, then heals everything, drains, checks what arrived and prints one JSON line.
//! It exits with status 1 when a signal was lost, delivered out of its key's order, or
//! delivered without being committed.
#![forbid(unsafe_code)]

mod broker;
mod broker_store;
mod check;
mod database;
mod db;
mod faults;
mod plot;
mod roles;
mod run;
mod signals;
mod soak;
mod supervisor;
mod tenants;
mod workload;
mod world;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "signalbus-chaos", about = "signalbus' fault-injection harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and check it (the harness).
    Run(run::RunArgs),
    /// A writer process (started by `run`).
    Writer(roles::writer::WriterArgs),
    /// A relay process (started by `run`).
    Relay(roles::relay::RelayArgs),
    /// A consumer process (started by `run`).
    Consumer(roles::consumer::ConsumerArgs),
}

/// Resolves on SIGTERM or SIGINT.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// In a workload process, any panic — a fail point firing, or a bug — ends the process at
/// once, as SIGKILL would: no destructor, no flush, no goodbye to the servers. It is logged
/// first to the run's event log (`CHAOS_EVENTS`), where the harness counts it.
fn crash_on_panic(role: &'static str) {
    let events = std::env::var_os("CHAOS_EVENTS");
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        if let Some(path) = &events
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            use std::io::Write;
            let bus = std::env::var("CHAOS_BUS").unwrap_or_else(|_| "-".into());
            let _ = writeln!(
                f,
                "{} {bus} {role} {}",
                roles::now_ms(),
                message.replace('\n', " ")
            );
        }
        std::process::abort();
    }));
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Writer(args) => {
                crash_on_panic("writer");
                roles::writer::run(args).await;
                std::process::ExitCode::SUCCESS
            }
            Command::Relay(args) => {
                crash_on_panic("relay");
                roles::relay::run(args).await;
                std::process::ExitCode::SUCCESS
            }
            Command::Consumer(args) => {
                crash_on_panic("consumer");
                match roles::consumer::run(args).await {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("chaos consumer: {e}");
                        std::process::ExitCode::from(2)
                    }
                }
            }
        }
    })
}
