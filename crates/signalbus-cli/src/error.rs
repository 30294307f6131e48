//! [`CliError`]: why a command failed, printed on one line.

use crate::config::ConfigError;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::process::ExitCode;

/// Why a command failed. Its `Display` is what failed; [`source`](StdError::source) is the
/// chain of causes, which [`CliError::render`] prints the way the `signalbus` binary does.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CliError(Kind);

#[derive(Debug, thiserror::Error)]
enum Kind {
    #[error("{0}")]
    Message(String),
    #[error("{context}")]
    Caused {
        context: String,
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error(transparent)]
    Bus(signalbus::Error),
    #[error(transparent)]
    Config(ConfigError),
}

impl CliError {
    /// A failure described by `message` alone.
    pub fn msg(message: impl Into<String>) -> Self {
        CliError(Kind::Message(message.into()))
    }

    /// `context` (what failed, e.g. "cannot connect to the database at `…`") because of
    /// `error`.
    pub fn caused(
        context: impl std::fmt::Display,
        error: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        CliError(Kind::Caused {
            context: context.to_string(),
            source: error.into(),
        })
    }

    /// The text to print: `error: ` and one line saying what failed and why; with `verbose`
    /// one more line per deeper cause, without it a hint that `-v` shows them.
    pub fn render(&self, verbose: bool) -> String {
        let mut line = self.to_string();
        let mut cause = self.source();
        // A context says what failed and its first cause why: both belong on the line.
        let context = matches!(
            self.0,
            Kind::Caused { .. } | Kind::Config(ConfigError::Read { .. })
        );
        if let (true, Some(first)) = (context, cause) {
            let _ = write!(line, ": {first}");
            cause = first.source();
        }
        let mut out = format!("error: {}", one_line(&line));
        if !verbose {
            if cause.is_some() {
                out.push_str(" (-v shows the causes)");
            }
            return out;
        }
        while let Some(e) = cause {
            let _ = write!(out, "\n  caused by: {}", one_line(&e.to_string()));
            cause = e.source();
        }
        out
    }

    /// The exit status of the `signalbus` binary for a failure: 1.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::FAILURE
    }
}

impl From<signalbus::Error> for CliError {
    fn from(e: signalbus::Error) -> Self {
        CliError(Kind::Bus(e))
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError(Kind::Config(e))
    }
}

/// Messages of databases and brokers may span lines; a failure is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer\n  wrapped")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn render_puts_context_and_first_cause_on_one_line_and_the_rest_under_v() {
        let inner = std::io::Error::other("deepest");
        let e = CliError::caused("cannot do it", Outer(inner));
        assert_eq!(e.to_string(), "cannot do it");
        assert_eq!(
            e.render(false),
            "error: cannot do it: outer wrapped (-v shows the causes)"
        );
        assert_eq!(
            e.render(true),
            "error: cannot do it: outer wrapped\n  caused by: deepest"
        );
        // The chain is the standard one, for applications that report errors their own way.
        assert_eq!(e.source().unwrap().to_string(), "outer\n  wrapped");
        assert_eq!(
            CliError::msg("nothing to do").render(true),
            "error: nothing to do"
        );
    }

    #[test]
    fn an_unreadable_config_says_why_once() {
        let e = crate::config::Config::load("/nonexistent/x.toml".as_ref()).unwrap_err();
        let line = CliError::from(e).render(true);
        let why = std::fs::read("/nonexistent/x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            line.starts_with("error: cannot read the configuration file `/nonexistent/x.toml`: "),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        assert_eq!(line.matches(why.as_str()).count(), 1, "{line}");
    }
}
