//! `signalbus`: the standalone command line, for services in any language. Signal types come
//! from a TOML file (`--config` / `SIGNALBUS_CONFIG`), the database from `DATABASE_URL`, the
//! bus from `SIGNALBUS_BUS_URL`. It owns what the library leaves to its caller: SIGTERM and
//! SIGINT, the printing of errors and the exit status.
#![forbid(unsafe_code)]

use clap::Parser;
use signalbus::redact::redact_url;
use signalbus::{Backend, SignalBus, publisher::MemoryPublisher};
use signalbus_cli::config::Config;
use signalbus_cli::{CliError, Command, Outcome, SignalbusArgs, StopSignal};
use sqlx::{MySql, Postgres};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "signalbus",
    version,
    about = "Send, count and list the pending signals of a signalbus outbox"
)]
struct Cli {
    /// The TOML file declaring the signal types.
    #[arg(long, env = "SIGNALBUS_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// postgres://..., mysql://... or sqlite:PATH.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// Where flushed signals go: amqp://, nats://, kafka://, stdout:, file:PATH.
    #[arg(
        long,
        env = "SIGNALBUS_BUS_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    bus_url: Option<String>,
    /// Seconds the bus may take to confirm one burst.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECONDS")]
    publish_timeout: f64,
    /// Database connections at most (the size of the pool).
    #[arg(
        long,
        env = "SIGNALBUS_MAX_CONNECTIONS",
        global = true,
        default_value_t = 2,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_connections: u32,
    /// Threads of the async runtime (publishing and database I/O).
    #[arg(
        long,
        env = "SIGNALBUS_WORKER_THREADS",
        global = true,
        default_value_t = 2,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024)
    )]
    worker_threads: usize,
    #[command(flatten)]
    signalbus: SignalbusArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.signalbus.verbose;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| if verbose { "info" } else { "warn" }.into())
        // lapin logs every message RabbitMQ returns with its body and headers; message bodies
        // never reach our logs, whatever RUST_LOG says (the publisher reports the refusal).
        .add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("a valid directive"),
        );
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = CliError::caused("cannot start the runtime", e);
            eprintln!("{}", e.render(verbose));
            return e.exit_code();
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("{}", e.render(verbose));
            e.exit_code()
        }
    }
}

/// Fires `stop` on the first SIGTERM or SIGINT, so that a flush ends after its current burst;
/// exits at once (status 130) on the second, for a flush stuck waiting on the database. The
/// handlers are in place when this returns.
fn stop_on_terminate(stop: &StopSignal) -> std::io::Result<()> {
    let mut terminations = Terminations::new()?;
    let stop = stop.clone();
    tokio::spawn(async move {
        terminations.next().await;
        eprintln!("signalbus: stopping after the current burst");
        stop.stop();
        terminations.next().await;
        eprintln!("signalbus: stopped at once");
        std::process::exit(130);
    });
    Ok(())
}

#[cfg(unix)]
struct Terminations {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Terminations {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Terminations {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Terminations(tokio::signal::windows::CtrlC);

#[cfg(not(unix))]
impl Terminations {
    fn new() -> std::io::Result<Self> {
        Ok(Terminations(tokio::signal::windows::ctrl_c()?))
    }

    async fn next(&mut self) {
        self.0.recv().await;
    }
}

async fn main_async(cli: Cli) -> Result<Outcome, CliError> {
    let path = cli.config.clone().ok_or_else(|| {
        CliError::msg(
            "no configuration file: pass --config FILE or set SIGNALBUS_CONFIG \
             (a TOML file with one [[signal]] table per signal type)",
        )
    })?;
    let config = Config::load(&path)?;
    // `signals` only lists the configuration: it needs no database, reachable or named.
    let lazy = matches!(cli.signalbus.command, Command::Signals);
    let url = match (cli.database_url.clone(), lazy) {
        (Some(url), _) => url,
        (None, true) => "sqlite::memory:".to_owned(),
        (None, false) => {
            return Err(CliError::msg(
                "no database: pass --database-url URL or set DATABASE_URL",
            ));
        }
    };
    let stop = StopSignal::new();
    // Only flushes stop after a burst; the other commands keep the default (end at once).
    if cli.signalbus.command.is_flush() {
        stop_on_terminate(&stop)
            .map_err(|e| CliError::caused("cannot handle SIGTERM and SIGINT", e))?;
    }
    match url.split(':').next().unwrap_or_default() {
        "postgres" | "postgresql" => {
            let pool = connect::<Postgres>(&url, lazy, cli.max_connections).await?;
            with_bus(pool, &cli, &config, &stop).await
        }
        "mysql" | "mariadb" => {
            let pool = connect::<MySql>(&url, lazy, cli.max_connections).await?;
            with_bus(pool, &cli, &config, &stop).await
        }
        "sqlite" => {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().map_err(|e| {
                CliError::caused(format!("bad database URL `{}`", redact_url(&url)), e)
            })?;
            let options = options
                .create_if_missing(matches!(cli.signalbus.command, Command::Migrate))
                .busy_timeout(Duration::from_secs(30));
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(cli.max_connections)
                .acquire_timeout(Duration::from_secs(30));
            let pool = if lazy {
                pool.connect_lazy_with(options)
            } else {
                pool.connect_with(options)
                    .await
                    .map_err(|e| cannot_connect(&url, e))?
            };
            with_bus(pool, &cli, &config, &stop).await
        }
        _ => Err(CliError::msg(format!(
            "unsupported database URL `{}`: use postgres://, mysql:// or sqlite:PATH",
            redact_url(&url)
        ))),
    }
}

fn cannot_connect(url: &str, e: sqlx::Error) -> CliError {
    CliError::caused(
        format!("cannot connect to the database at `{}`", redact_url(url)),
        e,
    )
}

async fn connect<DB: sqlx::Database>(
    url: &str,
    lazy: bool,
    max_connections: u32,
) -> Result<sqlx::Pool<DB>, CliError> {
    let options = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30));
    if lazy {
        options
            .connect_lazy(url)
            .map_err(|e| cannot_connect(url, e))
    } else {
        options
            .connect(url)
            .await
            .map_err(|e| cannot_connect(url, e))
    }
}

async fn with_bus<DB: Backend>(
    pool: sqlx::Pool<DB>,
    cli: &Cli,
    config: &Config,
    stop: &StopSignal,
) -> Result<Outcome, CliError> {
    let flushing = cli.signalbus.command.is_flush();
    let timeout = Duration::try_from_secs_f64(cli.publish_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| CliError::msg("--publish-timeout must be a positive number of seconds"))?;
    let publisher = match (&cli.bus_url, flushing) {
        (Some(url), true) => {
            let at = || format!("cannot connect to the bus at `{}`", redact_url(url));
            // A broker that accepts the connection and then says nothing must not hang us.
            match tokio::time::timeout(timeout, signalbus::connect_bus(url)).await {
                Ok(Ok(publisher)) => publisher,
                Ok(Err(e)) => return Err(CliError::caused(at(), e)),
                Err(e) => return Err(CliError::caused(at(), e)),
            }
        }
        (None, true) => {
            return Err(CliError::msg(
                "no bus: pass --bus-url URL or set SIGNALBUS_BUS_URL \
                 (e.g. amqp://host, nats://host, stdout:, file:PATH)",
            ));
        }
        // Counting and listing send nothing.
        (_, false) => signalbus::PublisherExt::boxed(MemoryPublisher::new()),
    };
    let mut builder = SignalBus::builder(pool)
        .publisher(publisher)
        .publish_timeout(timeout)
        .autoflush(false);
    for ty in config.signal_types() {
        builder = builder.register_type(ty);
    }
    let bus = builder
        .build()
        .map_err(|e| CliError::caused("the configuration declares invalid signal types", e))?;
    signalbus_cli::run(&bus, &cli.signalbus.command, stop).await
}
