//! How a command ended, and the exit status that says so.

use std::process::ExitCode;

/// The exit status of a flush that left signals the bus refused (or parked) behind.
pub const EXIT_REFUSED: u8 = 3;

/// The exit statuses, as `signalbus --help` lists them.
pub const EXIT_STATUS_HELP: &str = "Exit status:
  0    done (also when SIGTERM/SIGINT ended a --repeat loop)
  1    failed: one line on standard error says why (-v: the whole chain of causes)
  2    usage error (a bad option or value)
  3    a flush ran, but the bus refused some signals, or some were parked: they stay in
       their table (`signalbus parked` lists the parked ones)
  130  a second SIGTERM/SIGINT stopped a flush at once";

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It ran to its end.
    Completed,
    /// A flush ran to its end, and the bus refused some signals (or some were not valid
    /// signals): they stay in their table, retried later with backoff or parked. Exit
    /// status 3, so that a script or a supervisor sees it.
    Refused,
    /// The [`StopSignal`] fired before it ended: a `--repeat` loop stopped between rounds,
    /// or a flush after its current burst (what it sent is deleted, the rest stays pending).
    Stopped,
}

impl Outcome {
    /// The exit status of the `signalbus` binary: 0 when it ran to its end or was stopped
    /// (stopping is how a supervisor ends a `--repeat` loop), 3 when a flush left refused
    /// or parked signals behind.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Completed | Outcome::Stopped => ExitCode::SUCCESS,
            Outcome::Refused => ExitCode::from(EXIT_REFUSED),
        }
    }
}
