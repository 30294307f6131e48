//! The standalone configuration file: the signal types, declared in TOML.
//!
//! ```toml
//! [[signal]]
//! name = "order_placed"          # the name used on the command line and in messages
//! table = "order_placed_signal"  # optional, default: the name
//! burst = 1000                   # optional: signals per database transaction
//! autoflush = false              # optional, informative for the command line
//! batch = true                   # optional: publish bursts as batches
//! order_by = ["id"]              # optional: flushordered order, e.g. ["created_at DESC", "id"]
//! ordered = true                 # optional: `relay` sends this type in order (per key)
//! max_attempts = 10              # optional: refusals before a signal is parked
//! retry_base_ms = 1000           # optional: the delay after the first refusal, doubling...
//! retry_max_ms = 600000          # optional: ...up to this
//!
//! [[signal]]
//! name = "invoice_sent"
//! ```
//!
//! `max_attempts`, `retry_base_ms` and `retry_max_ms` may also stand at the top of the file,
//! before the first `[[signal]]`: the retry policy of every type that does not set its own.
//!
//! The tables follow the table contract (`docs/table-contract.md`): each row holds its own
//! destination (`topic`), routing key, headers and body, so no code is needed per type.

use serde::Deserialize;
use signalbus::{RetryPolicy, SignalType};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The databases `relay` serves when no `--database-url` is given, e.g.
    /// `databases = ["postgres://db-a/app", "postgres://db-b/app"]`.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Refusals after which a signal is parked, for every type that does not say (at least 1).
    pub max_attempts: Option<u32>,
    /// Milliseconds of the delay after the first refusal, for every type that does not say.
    pub retry_base_ms: Option<u64>,
    /// Milliseconds of the longest delay, for every type that does not say.
    pub retry_max_ms: Option<u64>,
    /// The declared signal types.
    #[serde(rename = "signal", default)]
    pub signals: Vec<SignalConfig>,
    /// The operator console (`signalbus console`, `signalbus relay --console`).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Fleet mode: where `relay` reads its list of databases while it runs.
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// The `[fleet]` table: the databases of a fleet (a database per tenant or shard), read at
/// the start and again on SIGHUP and every `reload_every` seconds, besides `databases`.
///
/// ```toml
/// [fleet]
/// databases_file = "tenants.txt"   # one URL per line (# comments); relative to this file
/// catalog_url_env = "CATALOG_URL"  # the variable that holds the catalog database's URL
/// catalog_query = "SELECT url FROM tenants WHERE active"  # one text column: the URLs
/// reload_every = 30                # seconds (default 30 when a file or catalog is set)
/// ready = "90%"                    # /readyz: `all`, `any` or a percentage (default all)
/// bursts_at_once = 16              # bursts in flight across all databases, taking turns
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// A file listing database URLs, one per line.
    pub databases_file: Option<PathBuf>,
    /// The catalog database's URL (prefer `catalog_url_env`: URLs hold passwords).
    pub catalog_url: Option<String>,
    /// The environment variable holding the catalog database's URL.
    pub catalog_url_env: Option<String>,
    /// The query that returns the databases' URLs (one text column).
    pub catalog_query: Option<String>,
    /// Seconds between reloads of the file and the catalog.
    pub reload_every: Option<u64>,
    /// When `/readyz` says ready: `all`, `any`, or a percentage such as `90%`.
    pub ready: Option<String>,
    /// Bursts in flight at once across every database (fair turns).
    pub bursts_at_once: Option<usize>,
}

/// The `[console]` table.
///
/// ```toml
/// [console]
/// hide_bodies = true               # never show signal bodies (personal data)
///
/// [[console.tokens]]
/// name = "alice"                   # who, in the audit log
/// role = "operator"                # or "viewer"
/// token_env = "ALICE_CONSOLE_TOKEN" # the variable that holds the secret (never the file)
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Never show signal bodies, not even to operators.
    #[serde(default)]
    pub hide_bodies: bool,
    /// The tokens, besides SIGNALBUS_CONSOLE_OPERATOR_TOKEN and SIGNALBUS_CONSOLE_VIEWER_TOKEN.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl FleetConfig {
    /// Whether the settings fit together.
    fn check(&self) -> Result<(), String> {
        let url = self.catalog_url.is_some() || self.catalog_url_env.is_some();
        if self.catalog_url.is_some() && self.catalog_url_env.is_some() {
            return Err("give `catalog_url` or `catalog_url_env`, not both".into());
        }
        if url != self.catalog_query.is_some() {
            return Err(
                "a catalog needs both its database (`catalog_url_env` or `catalog_url`) \
                 and `catalog_query`"
                    .into(),
            );
        }
        if self.reload_every == Some(0) {
            return Err("`reload_every` must be at least 1 (seconds)".into());
        }
        if self.bursts_at_once == Some(0) {
            return Err("`bursts_at_once` must be at least 1".into());
        }
        if let Some(ready) = &self.ready {
            ready.parse::<signalbus::fleet::ReadyPolicy>()?;
        }
        Ok(())
    }

    /// Whether the list of databases comes from a file or a catalog (it may change while the
    /// relay runs).
    pub fn is_dynamic(&self) -> bool {
        self.databases_file.is_some() || self.catalog_query.is_some()
    }
}

/// One `[[console.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it.
    pub name: String,
    /// `viewer` or `operator`.
    pub role: String,
    /// The environment variable that holds the secret.
    pub token_env: String,
}

/// One `[[signal]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalConfig {
    /// Name of the signal type.
    pub name: String,
    /// Its table (default: the name); may be `schema.table`.
    pub table: Option<String>,
    /// Whether the writing service auto-flushes it (informative here).
    pub autoflush: Option<bool>,
    /// Signals sent and deleted per database transaction.
    pub burst: Option<usize>,
    /// Publish bursts as batches (default) or one message at a time.
    pub batch: Option<bool>,
    /// Columns of the `flushordered` order.
    pub order_by: Option<Vec<String>>,
    /// `relay` sends this type in order (per ordering key), without `--ordered`.
    pub ordered: Option<bool>,
    /// Refusals after which a signal is parked (at least 1; over the file's setting).
    pub max_attempts: Option<u32>,
    /// Milliseconds of the delay after the first refusal (more than 0); it doubles after each.
    pub retry_base_ms: Option<u64>,
    /// Milliseconds of the longest delay (at least `retry_base_ms`).
    pub retry_max_ms: Option<u64>,
}

impl SignalConfig {
    fn retry(&self) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts,
            retry_base_ms: self.retry_base_ms,
            retry_max_ms: self.retry_max_ms,
        }
    }
}

/// A retry policy, or parts of one (the rest: the file's, then the default).
#[derive(Debug, Clone, Copy, Default)]
struct RetryConfig {
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
}

impl RetryConfig {
    /// This policy's settings over `under`'s.
    fn over(self, under: RetryConfig) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts.or(under.max_attempts),
            retry_base_ms: self.retry_base_ms.or(under.retry_base_ms),
            retry_max_ms: self.retry_max_ms.or(under.retry_max_ms),
        }
    }

    /// The policy, over the default; why it cannot work otherwise.
    fn policy(self) -> Result<RetryPolicy, String> {
        let default = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts),
            base: self
                .retry_base_ms
                .map_or(default.base, Duration::from_millis),
            max: self.retry_max_ms.map_or(default.max, Duration::from_millis),
        };
        if policy.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if policy.base.is_zero() {
            return Err("retry_base_ms must be more than 0".into());
        }
        if policy.max < policy.base {
            return Err(format!(
                "retry_max_ms ({} ms) must be at least retry_base_ms ({} ms)",
                policy.max.as_millis(),
                policy.base.as_millis()
            ));
        }
        Ok(policy)
    }
}

/// Why a configuration cannot be used. Its message names the file and, for a parse error,
/// the line and column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not fit the [`Config`] schema.
    #[error("{origin}{}: not a valid signalbus configuration: {message}", at(*.location))]
    Invalid {
        /// What the text is, e.g. the file name in backquotes.
        origin: String,
        /// Line and column (both from 1) where the error is, when known.
        location: Option<(usize, usize)>,
        /// What is wrong there, e.g. ``invalid type: integer `5`, expected a sequence``.
        message: String,
    },
    /// There is no `[[signal]]`.
    #[error("{origin} declares no signal types; add a `[[signal]]` table with a `name`")]
    NoSignals {
        /// What the text is, e.g. the file name in backquotes.
        origin: String,
    },
}

fn at(location: Option<(usize, usize)>) -> String {
    location
        .map(|(line, column)| format!(", line {line}, column {column}"))
        .unwrap_or_default()
}

/// Line and column (from 1, the column in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

impl Config {
    fn retry(&self) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts,
            retry_base_ms: self.retry_base_ms,
            retry_max_ms: self.retry_max_ms,
        }
    }

    /// Parse TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        // toml's own Display spreads over several lines (with a snippet); one line that
        // names the place fits the command line's one-line errors.
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            location: e.span().map(|span| line_column(text, span.start)),
            message: e.message().trim().to_owned(),
        })?;
        if config.signals.is_empty() {
            return Err(ConfigError::NoSignals {
                origin: origin.to_owned(),
            });
        }
        for signal in &config.signals {
            if let Err(message) = signal.retry().over(config.retry()).policy() {
                return Err(ConfigError::Invalid {
                    origin: origin.to_owned(),
                    location: None,
                    message: format!("signal `{}`: {message}", signal.name),
                });
            }
        }
        if let Err(message) = config.fleet.check() {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                location: None,
                message: format!("[fleet]: {message}"),
            });
        }
        Ok(config)
    }

    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, &format!("`{}`", path.display()))?;
        // A relative list file is beside the configuration, wherever the relay runs from.
        if let Some(file) = &config.fleet.databases_file
            && file.is_relative()
            && let Some(dir) = path.parent()
        {
            config.fleet.databases_file = Some(dir.join(file));
        }
        Ok(config)
    }

    /// The signal types, to register with a bus (which validates them).
    pub fn signal_types(&self) -> Vec<SignalType> {
        self.signals
            .iter()
            .map(|s| {
                let mut t = SignalType::new(s.name.clone())
                    .table(s.table.clone().unwrap_or_else(|| s.name.clone()));
                if let Some(on) = s.autoflush {
                    t = t.autoflush(on);
                }
                if let Some(burst) = s.burst {
                    t = t.burst(burst);
                }
                if let Some(on) = s.batch {
                    t = t.batch(on);
                }
                if let Some(order) = &s.order_by {
                    t = t.order_by(order);
                }
                if let Some(on) = s.ordered {
                    t = t.ordered(on);
                }
                // Checked by `parse`.
                if let Ok(policy) = s.retry().over(self.retry()).policy() {
                    t = t.retry(policy);
                }
                t
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals_and_rejects_typos() {
        let c = Config::parse(
            "[[signal]]\nname = \"a\"\nburst = 5\norder_by = [\"created_at DESC\"]\n\
             [[signal]]\nname = \"b\"\ntable = \"s.b_signal\"\nordered = true\n",
            "test",
        )
        .unwrap();
        let types = c.signal_types();
        assert_eq!(types[0].burst_size(), 5);
        assert!(types[0].order_columns()[0].descending);
        assert_eq!(types[1].table_name(), "s.b_signal");
        assert!(types[1].is_ordered() && !types[0].is_ordered());
        let err = Config::parse("[[signal]]\nname = \"a\"\nburts = 5\n", "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("burts"), "{err}");
        let err = Config::parse("", "test").unwrap_err().to_string();
        assert!(err.contains("no signal"), "{err}");
    }

    #[test]
    fn retry_policies_per_type_over_the_files() {
        let c = Config::parse(
            "max_attempts = 3\nretry_base_ms = 50\n\
             [[signal]]\nname = \"a\"\n\
             [[signal]]\nname = \"b\"\nmax_attempts = 1\nretry_max_ms = 100\n",
            "test",
        )
        .unwrap();
        let types = c.signal_types();
        let a = types[0].retry_policy();
        assert_eq!((a.max_attempts, a.base.as_millis()), (3, 50));
        assert_eq!(a.max, RetryPolicy::default().max);
        let b = types[1].retry_policy();
        assert_eq!(
            (b.max_attempts, b.base.as_millis(), b.max.as_millis()),
            (1, 50, 100)
        );
        let plain = Config::parse("[[signal]]\nname = \"x\"\n", "test").unwrap();
        assert_eq!(
            *plain.signal_types()[0].retry_policy(),
            RetryPolicy::default()
        );
        for (text, expect) in [
            ("[[signal]]\nname = \"x\"\nmax_attempts = 0\n", "at least 1"),
            (
                "retry_base_ms = 0\n[[signal]]\nname = \"x\"\n",
                "more than 0",
            ),
            (
                "[[signal]]\nname = \"x\"\nretry_base_ms = 500\nretry_max_ms = 100\n",
                "must be at least retry_base_ms",
            ),
            ("[[signal]]\nname = \"x\"\nmax_atempts = 2\n", "max_atempts"),
        ] {
            let err = Config::parse(text, "test").unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn parse_errors_name_line_and_column_on_one_line() {
        let err =
            Config::parse("[[signal]]\nname = \"é\"\nburst = \"x\"\n", "`s.toml`").unwrap_err();
        let ConfigError::Invalid { location, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*location, Some((3, 9)));
        let text = err.to_string();
        assert!(
            text.starts_with("`s.toml`, line 3, column 9: not a valid signalbus configuration: "),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        // Columns count characters, not bytes.
        assert_eq!(line_column("a\néé = 1", 7), (2, 4));
        assert_eq!(line_column("x", 0), (1, 1));
    }
}
