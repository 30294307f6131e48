//! `signalbus`: the standalone command line, for services in any language. Signal types come
//! from a TOML file (`--config` / `SIGNALBUS_CONFIG`, else `./signalbus.toml`), the database
//! from `DATABASE_URL` (else the file's `databases`, each in turn), the bus from
//! `SIGNALBUS_BUS_URL`. It owns what the library leaves to its caller: SIGTERM and
//! SIGINT, the printing of errors and the exit status.
#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches, Parser};
use signalbus::fleet::ReadyPolicy;
use signalbus::redact::redact_url;
use signalbus::storage::DatabaseKind;
use signalbus::{BoxPublisher, BurstShare, PublisherExt, SignalBus, publisher::MemoryPublisher};
use signalbus_cli::config::Config;
use signalbus_cli::{
    CliError, Command, Connect, Outcome, RelayServer, Reload, SignalbusArgs, Sources, StopSignal,
    Tenants, positive_seconds,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "signalbus",
    version,
    about = "Send, count and list the pending signals of a signalbus outbox",
    after_help = signalbus_cli::EXIT_STATUS_HELP
)]
struct Cli {
    /// The TOML file declaring the signal types (default: ./signalbus.toml, when there).
    #[arg(long, env = "SIGNALBUS_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// postgres://..., mysql://... or sqlite:PATH; `relay` takes it more than once (or the
    /// configuration's `databases`) to serve several databases.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Vec<String>,
    /// Where flushed signals go: amqp://, nats://, kafka://, redis://, https://, sqs://, sns://, stdout:, file:PATH.
    #[arg(
        long,
        env = "SIGNALBUS_BUS_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    bus_url: Option<String>,
    /// Seconds the bus may take to confirm one burst.
    #[arg(long, env = "SIGNALBUS_PUBLISH_TIMEOUT", global = true, default_value = "30",
          value_name = "SECONDS", value_parser = positive_seconds, allow_negative_numbers = true)]
    publish_timeout: Duration,
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
    /// Seconds a flush's claim keeps other flushers away from its rows (default: twice the
    /// publish timeout plus 10): a flusher killed while sending delays its rows this long.
    #[arg(long, env = "SIGNALBUS_LEASE", global = true, value_name = "SECONDS",
          value_parser = positive_seconds, allow_negative_numbers = true)]
    lease: Option<Duration>,
    /// The databases are reached through a pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`): no session state is relied on (relays poll, ordered
    /// flushers take turns per burst, statements are unnamed).
    #[arg(long, env = "SIGNALBUS_TRANSACTION_POOLER", global = true)]
    transaction_pooler: bool,
    /// Log lines as text or as JSON objects (standard error); text is coloured only on a
    /// terminal.
    #[arg(long, env = "SIGNALBUS_LOG_FORMAT", global = true, value_enum,
          default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    signalbus: SignalbusArgs,
    /// Whether `--database-url` came from the environment (`DATABASE_URL`).
    #[arg(skip)]
    database_url_from_env: bool,
}

/// The configuration file used when none is named.
const DEFAULT_CONFIG: &str = "signalbus.toml";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The binary's whole command line: the commands, and `completions` and `manpage`, which
/// print what packagers install from the same definition.
fn command_line() -> clap::Command {
    Cli::command()
        .subcommand(
            clap::Command::new("completions")
                .about("Print the shell completions of this command (e.g. `signalbus completions bash > /usr/share/bash-completion/completions/signalbus`)")
                .arg(
                    clap::Arg::new("shell")
                        .required(true)
                        .value_parser(clap::value_parser!(clap_complete::Shell)),
                ),
        )
        .subcommand(
            clap::Command::new("manpage")
                .about("Print the manual page of this command, in roff (e.g. `signalbus manpage > /usr/share/man/man1/signalbus.1`)"),
        )
}

/// `completions` and `manpage`: print, and the exit status; `None` for every other command.
fn print_generated(matches: &clap::ArgMatches) -> Option<ExitCode> {
    let mut out = std::io::stdout();
    match matches.subcommand() {
        Some(("completions", args)) => {
            let shell = *args
                .get_one::<clap_complete::Shell>("shell")
                .expect("a required argument");
            clap_complete::generate(shell, &mut command_line(), "signalbus", &mut out);
            Some(ExitCode::SUCCESS)
        }
        Some(("manpage", _)) => Some(
            match clap_mangen::Man::new(command_line()).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot print the manual page: {e}");
                    ExitCode::FAILURE
                }
            },
        ),
        _ => None,
    }
}

fn main() -> ExitCode {
    let matches = command_line().get_matches();
    if let Some(done) = print_generated(&matches) {
        return done;
    }
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.database_url_from_env =
        matches.value_source("database_url") == Some(clap::parser::ValueSource::EnvVariable);
    let verbose = cli.signalbus.verbose;
    // lapin logs a failure three times at `error` before the publisher reports it in one
    // clear line: left out unless asked for (-v, RUST_LOG). librdkafka's lines are summarised
    // by the Kafka publisher itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| if verbose { "info" } else { "warn,lapin=off" }.into())
        // lapin logs every message RabbitMQ returns with its body and headers; message bodies
        // never reach our logs, whatever RUST_LOG says (the publisher reports the refusal).
        .add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("a valid directive"),
        );
    // Colour codes only where a person reads them: not in files, pipes or journald.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
    // Like cargo's Cargo.toml: the file in the current directory when none is named.
    let here = PathBuf::from(DEFAULT_CONFIG);
    let path = cli
        .config
        .clone()
        .or_else(|| here.is_file().then_some(here))
        .ok_or_else(|| {
            CliError::msg(format!(
                "no configuration file: pass --config FILE, set SIGNALBUS_CONFIG, or put a \
                 {DEFAULT_CONFIG} in the current directory (a TOML file with one [[signal]] \
                 table per signal type)"
            ))
        })?;
    let config = Config::load(&path)?;
    // `signals` only lists the configuration: it needs no database, reachable or named.
    let lazy = matches!(cli.signalbus.command, Command::Signals(_));
    let mut urls = cli.database_url.clone();
    if urls.is_empty() {
        urls = config.databases.clone();
    } else if cli.database_url_from_env && !config.databases.is_empty() {
        // The usual order (command line, environment, file), but never silently.
        eprintln!(
            "signalbus: using DATABASE_URL from the environment, not the {} database(s) that \
             `{}` lists; unset DATABASE_URL (or pass --database-url) to choose",
            config.databases.len(),
            path.display()
        );
    }
    // A fleet's relay may start with no database yet: its file or catalog lists them.
    let listed = matches!(cli.signalbus.command, Command::Relay(_)) && config.fleet.is_dynamic();
    if urls.is_empty() && !listed {
        if !lazy {
            return Err(CliError::msg(
                "no database: pass --database-url URL or set DATABASE_URL",
            ));
        }
        urls.push("sqlite::memory:".to_owned());
    }
    let relay = match &cli.signalbus.command {
        Command::Relay(args) => Some(args),
        _ => None,
    };
    let stop = StopSignal::new();
    #[cfg(feature = "console")]
    let serving_console = matches!(cli.signalbus.command, Command::Console(_));
    #[cfg(not(feature = "console"))]
    let serving_console = false;
    // Only flushes stop after a burst, and the console after its requests; the other
    // commands keep the default (end at once).
    if cli.signalbus.command.is_flush() || serving_console {
        stop_on_terminate(&stop)
            .map_err(|e| CliError::caused("cannot handle SIGTERM and SIGINT", e))?;
    }
    let settings = Settings::of(&cli)?;
    #[cfg(feature = "console")]
    if let Command::Console(args) = &cli.signalbus.command {
        // One console over every database; it sends nothing.
        let publisher = settings.publisher(&cli, false).await?;
        let mut console = signalbus_cli::console::console(&args.options, Some(&config.console))?;
        for url in &urls {
            let connect = settings.connect(&cli, false);
            console = signalbus::with_database!(url, |DB| {
                let pool = connect.pool::<DB>(url).await?;
                console.database(connect.bus(pool, &config, publisher.clone(), url)?)
            })
            .map_err(|e| CliError::msg(e.to_string()))?;
        }
        return signalbus_cli::console::serve(console, &args.listen, &stop).await;
    }
    let Some(args) = relay else {
        // Every other command runs on each database in turn (the configuration's
        // `databases`, or several --database-url), stopping at the first failure.
        let publisher = settings
            .publisher(&cli, cli.signalbus.command.is_flush())
            .await?;
        // Row ids are per database: an id given on the command line names a row of one.
        let by_id = match &cli.signalbus.command {
            Command::Unpark(settle) => !settle.ids.is_empty(),
            Command::PurgeParked(purge) => !purge.which.ids.is_empty(),
            _ => false,
        };
        if by_id && urls.len() > 1 {
            return Err(CliError::msg(format!(
                "--id names rows of one database, and {} are given: choose it with \
                 --database-url",
                urls.len()
            )));
        }
        // Listing the configuration needs no database: once.
        if matches!(cli.signalbus.command, Command::Signals(_)) {
            urls.truncate(1);
        }
        let mut outcome = Outcome::Completed;
        let connect = settings.connect(&cli, lazy);
        for url in &urls {
            if urls.len() > 1 {
                eprintln!("signalbus: database `{}`", redact_url(url));
            }
            let done = signalbus::with_database!(url, |DB| {
                let pool = connect.pool::<DB>(url).await?;
                let bus = connect.bus(pool, &config, publisher.clone(), url)?;
                signalbus_cli::run(&bus, &cli.signalbus.command, &stop).await
            })
            .map_err(|e| CliError::msg(e.to_string()))??;
            match done {
                Outcome::Stopped => return Ok(Outcome::Stopped),
                Outcome::Refused => outcome = Outcome::Refused,
                _ => {}
            }
        }
        return Ok(outcome);
    };
    // SIGHUP reads the list again: handled from the start (its default would end us).
    let hangups = Reload::hangups();
    // A bad --listen fails before anything connects.
    #[allow(unused_mut)]
    let mut server = RelayServer::bind(args).await?;
    let publisher = settings.publisher(&cli, true).await?;
    // Every URL given is checked at once; a database that cannot be reached is not fatal
    // (its relay starts when it can), a URL that is not one is.
    for url in &urls {
        DatabaseKind::of(url)
            .map_err(|e| CliError::caused(format!("bad database URL `{}`", redact_url(url)), e))?;
    }
    // The relay's names and settings are checked before any database is reached.
    config_check(&config, args, &settings, &publisher)?;
    // The configuration's own list is read again on SIGHUP; one given on the command line
    // stays as given.
    let from_config = cli.database_url.is_empty().then(|| path.clone());
    let mut sources = Sources::new(urls.clone(), from_config, &config.fleet)?;
    let dynamic = sources.is_dynamic();
    let mut connect = settings.connect(&cli, false);
    // A quiet database of a fleet keeps the connection its polls use, no more.
    connect.idle_timeout = Some(Duration::from_secs(60));
    #[cfg(feature = "console")]
    if args.console && cli.transaction_pooler {
        return Err(CliError::msg(
            "--console does not work through a pooler in transaction mode yet (its reads use \
             prepared statements): leave out --console, and run `signalbus console` with the \
             databases' direct URLs",
        ));
    }
    #[cfg(feature = "console")]
    let mut console = match args.console {
        true => Some(signalbus_cli::console::console(
            &args.console_options,
            Some(&config.console),
        )?),
        false => None,
    };
    // The console shows the databases of the command line and the configuration (opened
    // lazily: one that is down shows as such); those of a file or catalog are not in it yet.
    #[cfg(feature = "console")]
    if let Some(mut with) = console.take() {
        let lazy = Connect {
            lazy: true,
            ..connect.clone()
        };
        for url in &urls {
            with = signalbus::with_database!(url, |DB| {
                let pool = lazy.pool::<DB>(url).await?;
                with.database(lazy.bus(pool, &config, publisher.clone(), url)?)
            })
            .map_err(|e| CliError::msg(e.to_string()))?;
        }
        server = server.with_console(with)?;
    }
    let share = args
        .bursts_at_once
        .or(config.fleet.bursts_at_once)
        .or(dynamic.then_some(16))
        .map(BurstShare::new);
    let policy = match (&args.ready_policy, &config.fleet.ready) {
        (Some(policy), _) => *policy,
        (None, Some(text)) => text.parse().map_err(CliError::msg)?,
        (None, None) => ReadyPolicy::All,
    };
    let every = args
        .reload_every
        .or(config.fleet.reload_every.map(Duration::from_secs))
        .unwrap_or(Duration::from_secs(30));
    let fleet = Tenants {
        connect,
        config: config.clone(),
        publisher,
        args: args.clone(),
        share,
    }
    .fleet(args.database_retry_max)
    .build();
    let list = sources.load().await;
    if let Some(e) = sources.last_error() {
        eprintln!("signalbus relay: warning: {e}; trying again on the next reload");
    }
    fleet.update(list);
    let reload = Reload {
        sources,
        every: dynamic.then_some(every),
        hangups,
    };
    server.run(fleet, Some(reload), policy, args, &stop).await
}

/// The bus settings of the command line, checked once.
struct Settings {
    publish_timeout: Duration,
    lease: Option<Duration>,
}

impl Settings {
    fn of(cli: &Cli) -> Result<Self, CliError> {
        if let Some(lease) = cli.lease
            && lease <= cli.publish_timeout
        {
            return Err(CliError::msg(format!(
                "--lease ({} s) must be longer than --publish-timeout ({} s): a claim must \
                 outlive its publish",
                lease.as_secs_f64(),
                cli.publish_timeout.as_secs_f64()
            )));
        }
        Ok(Settings {
            publish_timeout: cli.publish_timeout,
            lease: cli.lease,
        })
    }

    /// How this command reaches its databases; `lazy` for commands that need none.
    fn connect(&self, cli: &Cli, lazy: bool) -> Connect {
        Connect {
            max_connections: cli.max_connections,
            idle_timeout: None,
            lazy,
            create_sqlite_file: matches!(cli.signalbus.command, Command::Migrate),
            publish_timeout: self.publish_timeout,
            lease: self.lease,
            transaction_pooler: cli.transaction_pooler,
        }
    }

    /// The bus of `--bus-url` for commands that send; a stand-in for the others.
    async fn publisher(&self, cli: &Cli, sending: bool) -> Result<BoxPublisher, CliError> {
        if !sending {
            // Counting and listing send nothing.
            return Ok(MemoryPublisher::new().boxed());
        }
        let Some(url) = &cli.bus_url else {
            return Err(CliError::msg(
                "no bus: pass --bus-url URL or set SIGNALBUS_BUS_URL \
                 (e.g. amqp://host, nats://host, stdout:, file:PATH)",
            ));
        };
        let at = || format!("cannot connect to the bus at `{}`", redact_url(url));
        // A broker that accepts the connection and then says nothing must not hang us.
        match tokio::time::timeout(self.publish_timeout, signalbus::connect_bus(url)).await {
            Ok(Ok(publisher)) => Ok(publisher),
            Ok(Err(e)) => Err(CliError::caused(at(), e)),
            Err(_) => Err(CliError::msg(format!(
                "{}: no answer within {} s (--publish-timeout); the log above may say why",
                at(),
                self.publish_timeout.as_secs_f64()
            ))),
        }
    }
}

/// Fail at once on what no database can mend: signal names the configuration does not
/// declare, invalid settings (checked on a bus over no database).
fn config_check(
    config: &Config,
    args: &signalbus_cli::RelayArgs,
    settings: &Settings,
    publisher: &BoxPublisher,
) -> Result<(), CliError> {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_lazy("sqlite::memory:")
        .map_err(|e| CliError::caused("cannot check the configuration", e))?;
    let connect = Connect {
        max_connections: 1,
        idle_timeout: None,
        lazy: true,
        create_sqlite_file: false,
        publish_timeout: settings.publish_timeout,
        lease: settings.lease,
        transaction_pooler: false,
    };
    let bus: SignalBus<sqlx::Sqlite> =
        connect.bus(pool, config, publisher.clone(), "sqlite::memory:")?;
    signalbus_cli::check_selection(&bus, args)
}
