//! signalbus benchmarks. Each prints JSON lines: one per measured configuration.
//!
//! `signalbus-bench autoflush --database-url URL --bus memory --concurrency 32`
//! `signalbus-bench flushmany --database-url URL --bus memory --signals 100000 --processes 4`

mod autoflush;
mod flushmany;
mod raw;
mod setup;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of signalbus; results are JSON lines on standard output")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transactions per second and commit latency: business row alone vs business row + signal
    /// with auto-flush.
    Autoflush(autoflush::Args),
    /// Draining a backlog: flushmany with 1, 2, 4 processes and flushordered against the raw
    /// `DELETE … RETURNING` ceiling, plus the bus alone.
    Flushmany(flushmany::Args),
    /// The broker's raw ceiling: the same client, batch size and durability, no signalbus.
    Raw(raw::Args),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Autoflush(args) => autoflush::run(args).await,
        Command::Flushmany(args) => flushmany::run(args).await,
        Command::Raw(args) => raw::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("signalbus-bench: {e}");
        std::process::exit(1);
    }
}
