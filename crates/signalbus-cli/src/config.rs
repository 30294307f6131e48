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
use std::path::Path;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
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

impl Config {
    /// Parse TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text)
            .map_err(|e| format!("{origin} is not a valid signalbus configuration: {e}"))?;
        if config.signals.is_empty() {
            return Err(format!(
                "{origin} declares no signal types; add a `[[signal]]` table with a `name`"
            ));
        }
        Ok(config)
    }

    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the configuration file `{}`: {e}",
                path.display()
            )
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
        let err = Config::parse("[[signal]]\nname = \"a\"\nburts = 5\n", "test").unwrap_err();
        assert!(err.contains("burts"), "{err}");
        assert!(Config::parse("", "test").unwrap_err().contains("no signal"));
    }
}
