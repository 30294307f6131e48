//! signalbus benchmarks. Each prints JSON lines: one per measured configuration.
//!
//! `signalbus-bench autoflush --database-url URL --bus memory --concurrency 32`
//! `signalbus-bench flushmany --database-url URL --bus memory --signals 100000 --processes 4`
//! `signalbus-bench relay --database-url URL --bus amqp://... --rate 500`
//! `signalbus-bench ordered --database-url URL --bus memory --keys 1000 --processes 4`
//! `signalbus-bench fleet --tenants 10,100,200 --backlog 1000000`

mod autoflush;
mod console;
mod fleet;
mod flushmany;
mod ordered;
mod raw;
mod raw_sinks;
mod relay;
mod setup;
mod stats;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Benchmarks of signalbus; results are JSON lines on standard output")]
struct Cli {
    /// The tokio runtime to run on. On a small machine that the database and the broker
    /// share, `current-thread` saves the cross-thread wake-ups of `multi-thread` (tokio's
    /// default); compare both at concurrency 1.
    #[arg(long, value_enum, default_value_t = Runtime::MultiThread, global = true)]
    runtime: Runtime,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Runtime {
    MultiThread,
    CurrentThread,
}

#[derive(Subcommand)]
enum Command {
    /// Transactions per second and commit latency: business row alone vs business row + signal
    /// with auto-flush.
    Autoflush(autoflush::Args),
    /// Draining a backlog: flushmany with 1, 2, 4 processes and flushordered against the raw
    /// `DELETE … RETURNING` ceiling, plus the bus alone.
    Flushmany(flushmany::Args),
    /// Per-key ordered flushing against flushmany on one backlog, with 1, 2, 4 processes.
    Ordered(ordered::Args),
    /// The relay: commit-to-acknowledgement latency at a fixed rate, CPU per message, a
    /// backlog against flushmany, memory while draining.
    Relay(relay::Args),
    /// The broker's raw ceiling: the same client, batch size and durability, no signalbus.
    Raw(raw::Args),
    /// One relay process over 10, 100, 200 tenant databases (a private PostgreSQL cluster):
    /// memory, connections and CPU per tenant, and a quiet tenant's latency while another
    /// drains a backlog.
    Fleet(fleet::Args),
    /// The operator console's reads on a million parked signals (PostgreSQL).
    Console(console::Args),
    /// An HTTP endpoint that answers every POST with 204, for the webhook benchmarks.
    Receiver {
        /// Its port on 127.0.0.1.
        #[arg(long, default_value_t = 8099)]
        port: u16,
    },
}

fn main() {
    let cli = Cli::parse();
    // Diagnostics on standard error only when asked for (`RUST_LOG`), so that the JSON lines
    // on standard output stay the only output of a benchmark.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let (mut builder, label) = match cli.runtime {
        Runtime::MultiThread => (tokio::runtime::Builder::new_multi_thread(), "multi-thread"),
        Runtime::CurrentThread => (
            tokio::runtime::Builder::new_current_thread(),
            "current-thread",
        ),
    };
    stats::set_runtime(label);
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("signalbus-bench: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(cli.command));
}

async fn run(command: Command) {
    let result = match command {
        Command::Autoflush(args) => autoflush::run(args).await,
        Command::Flushmany(args) => flushmany::run(args).await,
        Command::Raw(args) => raw::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
        Command::Receiver { port } => raw_sinks::receiver(port).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Ordered(args) => ordered::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("signalbus-bench: {e}");
        std::process::exit(1);
    }
}
