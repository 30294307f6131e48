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
//!
//! [[signal]]
//! name = "invoice_sent"
//! ```
//!
//! The tables follow the table contract (`docs/table-contract.md`): each row holds its own
//! destination (`topic`), routing key, headers and body, so no code is needed per type.

use serde::Deserialize;
use signalbus::SignalType;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The databases `relay` serves when no `--database-url` is given, e.g.
    /// `databases = ["postgres://db-a/app", "postgres://db-b/app"]`.
    #[serde(default)]
    pub databases: Vec<String>,
    /// The declared signal types.
    #[serde(rename = "signal", default)]
    pub signals: Vec<SignalConfig>,
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
        Ok(config)
    }

    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &format!("`{}`", path.display()))
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
             [[signal]]\nname = \"b\"\ntable = \"s.b_signal\"\n",
            "test",
        )
        .unwrap();
        let types = c.signal_types();
        assert_eq!(types[0].burst_size(), 5);
        assert!(types[0].order_columns()[0].descending);
        assert_eq!(types[1].table_name(), "s.b_signal");
        let err = Config::parse("[[signal]]\nname = \"a\"\nburts = 5\n", "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("burts"), "{err}");
        let err = Config::parse("", "test").unwrap_err().to_string();
        assert!(err.contains("no signal"), "{err}");
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
