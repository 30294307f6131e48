//! librdkafka's own log lines, summarised: a broker that is down makes librdkafka log the
//! same failed connection several times a second (hundreds of lines in ten seconds, burying
//! the one line that says what is wrong). Each cause (the message with the durations and
//! counts in its parentheses blanked out) is logged once, then at most once a minute with how
//! often it came again meanwhile.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a cause stays quiet after it was logged.
const QUIET: Duration = Duration::from_secs(60);

/// Causes remembered at most (a client that logs ever new texts cannot grow it unbounded).
const CAUSES: usize = 1024;

/// The context of signalbus' Kafka clients: librdkafka's log lines and errors through
/// `tracing` (target `librdkafka`), one line per cause and minute.
#[derive(Debug, Default)]
pub struct LogContext {
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug)]
struct Seen {
    logged: Instant,
    again: u64,
}

impl LogContext {
    /// Whether to log a line of `cause` now, and how often it came since it was last logged.
    fn admit(&self, cause: String) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if seen.len() >= CAUSES && !seen.contains_key(&cause) {
            seen.clear();
        }
        match seen.get_mut(&cause) {
            Some(s) if now.duration_since(s.logged) < QUIET => {
                s.again += 1;
                None
            }
            Some(s) => {
                let again = std::mem::take(&mut s.again);
                s.logged = now;
                Some(again)
            }
            None => {
                seen.insert(
                    cause,
                    Seen {
                        logged: now,
                        again: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// The cause of a line: its text without librdkafka's thread prefix (`[thrd:…]: `) and
/// its own count of suppressed repetitions, with the runs of digits inside parentheses
/// blanked out (durations and counts change from one repetition to the next; the broker's
/// address outside them stays, so that two brokers' failures are two causes). An error and
/// the log line that report the same failure have one cause.
fn cause(text: &str) -> String {
    let text = match text.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ").map_or(rest, |(_, after)| after),
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let (mut depth, mut digits) = (0u32, false);
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > 0 && c.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    out.replace(", # identical error(s) suppressed", "")
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let Some(again) = self.admit(cause(log_message)) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", repeated = again, "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", repeated = again, "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", repeated = again, "{fac}: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(again) = self.admit(cause(reason)) {
            tracing::warn!(target: "librdkafka", repeated = again, "{error}: {reason}");
        }
    }
}

/// Consumers created with it (`create_with_context(LogContext::default())`) log the same way.
impl rdkafka::consumer::ConsumerContext for LogContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_and_minute() {
        let context = LogContext::default();
        let line = |ms: u32| {
            context.admit(cause(&format!(
                "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect failed \
                 (after {ms}ms in state CONNECT, {ms} identical error(s) suppressed)"
            )))
        };
        assert_eq!(line(0), Some(0), "the first is logged");
        for ms in 1..300 {
            assert_eq!(line(ms), None, "repetitions are counted, not logged");
        }
        assert_eq!(
            context.admit(cause(
                "127.0.0.1:1/bootstrap: Connect failed (after 3ms in state CONNECT)"
            )),
            None,
            "the error callback's text of the same failure is the same cause"
        );
        assert_eq!(
            context.admit(cause("1/1 brokers are down")),
            Some(0),
            "another cause is logged"
        );
        assert_eq!(
            context.admit(cause(
                "127.0.0.2:1/bootstrap: Connect failed (after 3ms in state CONNECT)"
            )),
            Some(0),
            "another broker's failure is another cause"
        );
        let mut seen = context.seen.lock().unwrap();
        let key = cause("127.0.0.1:1/bootstrap: Connect failed (after 5ms in state CONNECT)");
        assert_eq!(seen[&key].again, 300);
        seen.get_mut(&key).unwrap().logged -= QUIET;
        drop(seen);
        assert_eq!(line(7), Some(300), "a minute later: logged, with the count");
    }
}
