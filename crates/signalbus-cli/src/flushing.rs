//! The three flush commands: counting what is pending, flushing with progress lines, and
//! repeating until the caller's [`StopSignal`] fires.

use crate::args::DrainArgs;
use crate::error::CliError;
use crate::outcome::Outcome;
use crate::report;
use crate::selection::select;
use signalbus::{Backend, FlushProgress, Selection, SignalBus};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Asks running flushes to stop after their current burst, and `--repeat` loops to end.
///
/// The caller creates it and decides what fires it: the `signalbus` binary fires it on
/// SIGTERM/SIGINT, an application may use its own shutdown. Clones share one signal.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<(AtomicBool, Notify)>);

impl StopSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire: flushes stop after their current burst, `--repeat` loops end. Firing again does
    /// nothing more.
    pub fn stop(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    /// Whether it fired.
    pub fn is_stopped(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Completes once it fired (at once if it already had).
    pub async fn stopped(&self) {
        // Created before the check, so a `stop` in between still wakes it.
        let notified = self.0.1.notified();
        if !self.is_stopped() {
            notified.await;
        }
    }
}

/// Which flush.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Flush(Duration),
    Many,
    Ordered,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Flush(_) => "flush",
            Mode::Many => "flushmany",
            Mode::Ordered => "flushordered",
        }
    }
}

/// Flush once, or every `--repeat` seconds until stopped.
pub(crate) async fn repeat<DB: Backend>(
    bus: &SignalBus<DB>,
    mode: Mode,
    args: &DrainArgs,
    stop: &StopSignal,
) -> Result<Outcome, CliError> {
    let types = select(bus, &args.names, &args.exclude)?;
    let selection = Selection::only(types.iter().cloned());
    loop {
        let mut refused = false;
        match once(bus, mode, &selection, &types, stop).await {
            Ok(done) => {
                eprintln!("signalbus {}: {}", mode.name(), done.summary());
                refused = done.refused > 0;
            }
            // A relay keeps relaying: the next round tries again (nothing was lost, the rows
            // stay pending). Without --repeat the failure is the command's result.
            Err(e) if args.repeat.is_some() => {
                eprintln!(
                    "signalbus {}: {} (trying again next round)",
                    mode.name(),
                    e.render(false)
                );
            }
            Err(e) => return Err(e),
        }
        if stop.is_stopped() {
            return Ok(Outcome::Stopped);
        }
        let Some(every) = args.repeat else {
            return Ok(if refused {
                Outcome::Refused
            } else {
                Outcome::Completed
            });
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.stopped() => return Ok(Outcome::Stopped),
        }
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone)]
struct Done {
    sent: usize,
    refused: usize,
    parked: usize,
    /// `flushordered`: rows the gap-safe watermark holds back, and who holds it.
    held_back: u64,
    holder: Option<String>,
}

impl Done {
    fn summary(&self) -> String {
        let mut line = format!("sent {} signal(s)", self.sent);
        if self.refused > 0 {
            line.push_str(&format!(
                "; {} not sent (refused by the bus, or not a valid signal): kept",
                self.refused
            ));
            if self.parked < self.refused {
                line.push_str(", retried later with backoff");
            }
            if self.parked > 0 {
                line.push_str(&format!(", {} parked: see `signalbus parked`", self.parked));
            }
        }
        if self.held_back > 0 {
            line.push_str(&format!(
                "; {} held back until the oldest transaction still open on the server ends \
                 (gap-safe order: it may still write signals before them): {}; end it, or \
                 wait for it",
                self.held_back,
                self.holder.as_deref().unwrap_or("not visible to this user")
            ));
        }
        line
    }
}

/// At most one progress line per this interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

async fn once<DB: Backend>(
    bus: &SignalBus<DB>,
    mode: Mode,
    selection: &Selection,
    types: &[String],
    stop: &StopSignal,
) -> Result<Done, CliError> {
    // Counting first checks that every table is there (with an error naming it) and gives
    // the "remaining" of the progress lines.
    let pending: u64 = report::pending_stats(bus, types)
        .await?
        .iter()
        .map(|(_, _, s)| s.count)
        .sum();
    if pending == 0 {
        return Ok(Done::default());
    }
    let started = Instant::now();
    let mut last = started;
    let mut done = Done::default();
    let mut progress = |p: &FlushProgress<'_>| {
        done.sent = p.sent;
        done.refused += p.refused;
        done.parked += p.parked;
        let now = Instant::now();
        if now.duration_since(last) >= PROGRESS_EVERY {
            last = now;
            let rate = p.sent as f64 / now.duration_since(started).as_secs_f64();
            // Other flushers may be draining the same tables: "remaining" is an estimate.
            let remaining = pending.saturating_sub(p.sent as u64);
            eprintln!(
                "signalbus {}: {} sent, {rate:.0} msgs/s, ~{remaining} remaining",
                mode.name(),
                p.sent
            );
        }
        if stop.is_stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let result = match mode {
        Mode::Flush(wait) => bus.flush_with(selection, wait, &mut progress).await,
        Mode::Many => bus.flush_many_with(selection, &mut progress).await,
        Mode::Ordered => bus.flush_ordered_with(selection, &mut progress).await,
    };
    let sent_so_far = done.sent;
    if result.is_ok() && matches!(mode, Mode::Ordered) {
        // Rows pending that the ordered flush could not send yet: say why, never a bare
        // "sent 0".
        match bus.ordered_holdback(selection).await {
            Ok(held) => {
                for (_, held) in held {
                    done.held_back += held.rows;
                    if done.holder.is_none() {
                        done.holder = held.holder;
                    }
                }
            }
            // Only an explanation: the flush itself went well.
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell what the ordered watermark holds back")
            }
        }
    }
    result.map(|_| done).map_err(|e| {
        // The bursts before the failure were sent and deleted: say so, since a retry will not
        // send them again.
        let what = match sent_so_far {
            0 => format!("{} failed", mode.name()),
            n => format!(
                "{} failed after sending {n} signal(s) (deleted; the rest stay pending)",
                mode.name()
            ),
        };
        CliError::caused(what, e)
    })
}
