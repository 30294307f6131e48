//! The operator console of [signalbus](https://docs.rs/signalbus): what is stuck, since
//! when and why, and acting on it, in a browser and through a JSON API.
//!
//! * **Overview** per database and signal type: pending, in flight, backing off, parked, the
//!   age of the oldest of each, and (beside a relay: [`Console::metrics_text`]) the send and
//!   refuse rates.
//! * **Lists** of held signals with filters (state, ordering key, header value, error text,
//!   age range, failure group), paged by row id on the server.
//! * **Failure groups**: held signals grouped by a normalised fingerprint of their last error
//!   ([`signalbus_core::inspection::error_fingerprint`]).
//! * **A signal's detail**: headers, attempts, last error, ages, the signals of its key it
//!   holds back, and its body (capped; hidden from viewers, or from everyone with
//!   [`Console::hide_bodies`]).
//! * **Actions** (operators only): unpark or purge parked signals, or retry backing-off ones
//!   now (their backoff cut short, attempts kept) — one signal, a failure group, or everything
//!   a filter matches; each first shows how many it will touch (a dry run), then runs in
//!   bounded batches up to the highest id the dry run saw, and is written to the audit log
//!   (the table `signalbus_console_audit` of that database, and the log target
//!   `signalbus_console::audit`).
//!
//! Everything is under `/console`: the pages, `/console/api/…` (described by
//! `/console/api/openapi.json`) and `/console/login`.
//!
//! ```no_run
//! # async fn demo(bus: signalbus_core::SignalBus<sqlx::Sqlite>) -> Result<(), Box<dyn std::error::Error>> {
//! use signalbus_console::{Console, Role};
//! let console = Console::new()
//!     .database(bus)
//!     .token("alice", Role::Operator, &std::env::var("ALICE_CONSOLE_TOKEN")?)?
//!     .token("grafana", Role::Viewer, &std::env::var("VIEWER_CONSOLE_TOKEN")?)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9187").await?;
//! console.check_address(&listener.local_addr()?)?;
//! axum::serve(listener, console.router()?).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod api;
mod error;
mod guard;
mod pages;
mod query;
mod rates;
mod source;

pub use access::{MIN_TOKEN_LEN, Role};

use access::Access;
use axum::Router;
use signalbus_core::{Backend, SignalBus};
use source::Source;
use std::net::SocketAddr;
use std::sync::Arc;

/// The largest body shown by default, in bytes.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;
/// Rows changed per transaction by a bulk action, by default.
pub const DEFAULT_BATCH: usize = 1000;

/// A console over one or more databases; [`Console::router`] serves it.
pub struct Console {
    sources: Vec<Arc<dyn Source>>,
    access: Access,
    hide_bodies: bool,
    body_cap: usize,
    batch: usize,
    metrics: Option<rates::MetricsText>,
    errors: Vec<String>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
        f.debug_struct("Console")
            .field("databases", &names)
            .field("access", &self.access)
            .field("hide_bodies", &self.hide_bodies)
            .finish_non_exhaustive()
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

/// A console that cannot be served as configured.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Console {
    /// A console over no database yet, open to anyone on loopback until a token is added.
    pub fn new() -> Self {
        Console {
            sources: Vec::new(),
            access: Access::new(),
            hide_bodies: false,
            body_cap: DEFAULT_BODY_CAP,
            batch: DEFAULT_BATCH,
            metrics: None,
            errors: Vec::new(),
        }
    }

    /// Show the signal types of `bus`, under its name ([`SignalBus::name`]).
    pub fn database<DB: Backend>(mut self, bus: SignalBus<DB>) -> Self {
        if self.sources.iter().any(|s| s.name() == bus.name()) {
            self.errors.push(format!(
                "two databases are named `{}`: name each bus (SignalBusBuilder::name)",
                bus.name()
            ));
        }
        self.sources.push(Arc::new(bus));
        self
    }

    /// Let the holder of `secret` in as `name` with `role`. Once any token is added, every
    /// request needs one. Secrets shorter than [`MIN_TOKEN_LEN`] are refused.
    pub fn token(mut self, name: &str, role: Role, secret: &str) -> Result<Self, ConfigError> {
        self.access.add(name, role, secret).map_err(ConfigError)?;
        Ok(self)
    }

    /// Never show signal bodies, not even to operators (for personal data).
    pub fn hide_bodies(mut self, hide: bool) -> Self {
        self.hide_bodies = hide;
        self
    }

    /// Show at most `bytes` of a body (default [`DEFAULT_BODY_CAP`]).
    pub fn body_cap(mut self, bytes: usize) -> Self {
        self.body_cap = bytes.max(1);
        self
    }

    /// Rows a bulk action changes per transaction (default [`DEFAULT_BATCH`]).
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.clamp(1, 10_000);
        self
    }

    /// Where the overview's send and refuse rates come from: the Prometheus text of this
    /// process' metrics (`PrometheusHandle::render` of a relay's recorder), read every 5 s;
    /// a rate is the change of `signalbus_signals_sent_total` and
    /// `signalbus_signals_refused_total` over the last minute. Without it (a console on its
    /// own) the overview has no rates: the database keeps no trace of what was sent.
    pub fn metrics_text(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Box::new(render));
        self
    }

    /// Whether any token was added.
    pub fn has_tokens(&self) -> bool {
        self.access.required()
    }

    /// Refuse to serve without tokens on an address other than loopback: an open console
    /// lets anyone who reaches it purge signals.
    pub fn check_address(&self, addr: &SocketAddr) -> Result<(), ConfigError> {
        if self.access.required() || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(ConfigError(format!(
            "the console would be open to anyone on {addr}: add console tokens \
             (SIGNALBUS_CONSOLE_OPERATOR_TOKEN, SIGNALBUS_CONSOLE_VIEWER_TOKEN or \
             [[console.tokens]] in the configuration), or listen on 127.0.0.1"
        )))
    }

    /// The console's routes, all under `/console`, to serve or merge into an application's
    /// router.
    pub fn router(self) -> Result<Router, ConfigError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(ConfigError(e));
        }
        if self.sources.is_empty() {
            return Err(ConfigError(
                "the console has no database: add one with Console::database".to_owned(),
            ));
        }
        let rates = self.metrics.map(|text| Arc::new(rates::Rates::new(text)));
        if let Some(rates) = &rates {
            rates.sample();
            // Sampled while the console is served; the task ends with the last clone of the
            // router (its state).
            let weak = Arc::downgrade(rates);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(rates::SAMPLE_EVERY).await;
                        match weak.upgrade() {
                            Some(rates) => rates.sample(),
                            None => return,
                        }
                    }
                });
            }
        }
        let state = Arc::new(State {
            sources: self.sources,
            access: self.access,
            hide_bodies: self.hide_bodies,
            body_cap: self.body_cap,
            batch: self.batch,
            rates,
        });
        Ok(Router::new()
            .merge(api::routes())
            .merge(pages::routes())
            .layer(axum::middleware::map_response(guard::security_headers))
            .with_state(state))
    }
}

/// What every handler shares.
pub(crate) struct State {
    pub sources: Vec<Arc<dyn Source>>,
    pub access: Access,
    pub hide_bodies: bool,
    pub body_cap: usize,
    pub batch: usize,
    /// The send and refuse rates, beside a relay.
    pub rates: Option<Arc<rates::Rates>>,
}

pub(crate) type Shared = Arc<State>;

impl State {
    /// The database `name` and its signal type `signal`, or why not.
    pub fn find(&self, name: &str, signal: &str) -> Result<&Arc<dyn Source>, error::ConsoleError> {
        let source = self
            .sources
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.sources.iter().map(|s| s.name()).collect();
                error::ConsoleError::NotFound(format!(
                    "no database `{name}` in this console; known: {}",
                    known.join(", ")
                ))
            })?;
        if !source.signals().iter().any(|s| s == signal) {
            return Err(error::ConsoleError::NotFound(format!(
                "database `{name}` has no signal type `{signal}`; known: {}",
                source.signals().join(", ")
            )));
        }
        Ok(source)
    }
}
