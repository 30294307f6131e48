//! Latency samples and the JSON lines the benchmarks print.

use std::time::Duration;

/// Latencies of one run, merged from every task.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile in milliseconds (nearest rank).
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        // Nearest rank: ceil(p/100 × n), found without a float-to-int cast.
        let n = self.0.len();
        let rank = (1..=n)
            .find(|&r| r as f64 >= (p / 100.0) * n as f64)
            .unwrap_or(n);
        let idx = rank.clamp(1, n) - 1;
        self.0[idx].as_secs_f64() * 1000.0
    }
}

/// Round to 2 decimals for readable JSON.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The tokio runtime's name, added to every result line.
static RUNTIME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Name the tokio runtime in every line emitted from now on.
pub fn set_runtime(label: &'static str) {
    let _ = RUNTIME.set(label);
}

/// The tokio runtime's name, as `--runtime` takes it.
pub fn runtime() -> &'static str {
    RUNTIME.get().copied().unwrap_or("multi-thread")
}

/// Print one result as a JSON line.
pub fn emit(mut value: serde_json::Value) {
    if let (Some(object), Some(runtime)) = (value.as_object_mut(), RUNTIME.get()) {
        object.insert("runtime".into(), (*runtime).into());
    }
    println!("{value}");
}
