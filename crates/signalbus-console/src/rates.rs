//! Send and refuse rates for the overview, from the metrics of the process the console runs
//! in (a relay's: `Console::metrics_text`). The database keeps no trace of what was sent (the
//! rows are deleted), so the rates come from the counters `signalbus_signals_sent_total` and
//! `signalbus_signals_refused_total`, sampled every few seconds; a rate is the change over
//! the last minute of samples.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the counters are read, and how far back a rate looks.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(60);

/// The counters of one sample: (metric, bus, signal) → value.
type Counters = HashMap<(&'static str, String, String), f64>;

const SENT: &str = "signalbus_signals_sent_total";
const REFUSED: &str = "signalbus_signals_refused_total";

/// Where the metrics come from: the Prometheus text of this process.
pub(crate) type MetricsText = Box<dyn Fn() -> String + Send + Sync>;

/// The samples taken so far.
pub(crate) struct Rates {
    text: MetricsText,
    samples: Mutex<VecDeque<(Instant, Counters)>>,
}

/// A type's rates, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct TypeRates {
    pub sent: f64,
    pub refused: f64,
}

impl Rates {
    pub fn new(text: MetricsText) -> Self {
        Rates {
            text,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Read the counters now.
    pub fn sample(&self) {
        let counters = parse(&(self.text)());
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, counters));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW + SAMPLE_EVERY)
        {
            samples.pop_front();
        }
    }

    /// The rates of `signal` on `bus` over the samples kept, `None` until two samples a
    /// second apart exist.
    pub fn of(&self, bus: &str, signal: &str) -> Option<TypeRates> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (first_at, first) = samples.front()?;
        let (last_at, last) = samples.back()?;
        let seconds = last_at.duration_since(*first_at).as_secs_f64();
        if seconds < 1.0 {
            return None;
        }
        let rate = |metric: &'static str| {
            let key = (metric, bus.to_owned(), signal.to_owned());
            let end = last.get(&key).copied().unwrap_or(0.0);
            let start = first.get(&key).copied().unwrap_or(0.0);
            // A counter that went down was reset (a restart): count from zero.
            let delta = if end >= start { end - start } else { end };
            delta / seconds
        };
        Some(TypeRates {
            sent: rate(SENT),
            refused: rate(REFUSED),
        })
    }
}

/// The sent and refused counters in Prometheus' text format.
fn parse(text: &str) -> Counters {
    let mut out = Counters::new();
    for line in text.lines() {
        let Some(metric) = [SENT, REFUSED].into_iter().find(|m| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.starts_with('{'))
        }) else {
            continue;
        };
        let rest = &line[metric.len() + 1..];
        let Some((labels, value)) = split_labels(rest) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        if let (Some(bus), Some(signal)) = (label("bus"), label("signal")) {
            out.insert((metric, bus, signal), value);
        }
    }
    out
}

/// `a="x",b="y\"z"} 12` → the labels, and what follows the closing brace.
fn split_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((name.trim().to_owned(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn counters_are_read_from_the_prometheus_text() {
        let text = "# TYPE signalbus_signals_sent_total counter\n\
            signalbus_signals_sent_total{bus=\"postgres://db/app\",signal=\"order\"} 42\n\
            signalbus_signals_sent_total_other{bus=\"x\",signal=\"y\"} 1\n\
            signalbus_signals_refused_total{signal=\"a \\\"quoted\\\" one\",bus=\"b\"} 3\n\
            signalbus_pending{bus=\"b\",signal=\"a\"} 9\n";
        let c = parse(text);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[&(SENT, "postgres://db/app".into(), "order".into())], 42.0);
        assert_eq!(c[&(REFUSED, "b".into(), "a \"quoted\" one".into())], 3.0);
    }

    #[test]
    fn a_rate_is_the_change_over_the_samples_kept() {
        let sent = Arc::new(AtomicU64::new(100));
        let counter = sent.clone();
        let rates = Rates::new(Box::new(move || {
            format!(
                "signalbus_signals_sent_total{{bus=\"b\",signal=\"s\"}} {}\n",
                counter.load(Ordering::SeqCst)
            )
        }));
        rates.sample();
        assert_eq!(rates.of("b", "s"), None, "one sample: no rate yet");
        // Two samples 1.1 s apart, 220 more sent: 200/s.
        std::thread::sleep(Duration::from_millis(1100));
        sent.store(320, Ordering::SeqCst);
        rates.sample();
        let r = rates.of("b", "s").unwrap();
        assert!((r.sent - 200.0).abs() < 25.0, "{r:?}");
        assert_eq!(r.refused, 0.0);
        assert_eq!(rates.of("b", "other").unwrap().sent, 0.0);
    }
}
