//! The soak (`run --soak`): a steady load for a long time with occasional faults (those that
//! leave the workload's processes alive, so that their memory is one process' history), a
//! sample every `--sample-every` seconds, and a verdict on the trends: memory, descriptors,
//! latency and the signal tables must not grow without bound.
//!
//! Each trend is the Theil–Sen slope (the median of the slopes between every two samples:
//! a fault's spike does not bend it) over the run's second half, the first being warm-up.
//! A metric fails when that slope, over the second half's length, would add more than its
//! allowance: a share of its median or a floor, whichever is larger ([`ALLOWANCES`]).

use crate::roles::consumer::Delivery;
use crate::signals::{Bus, TABLES};
use crate::workload::Workload;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// One sample. Sums over the run's buses; `None` where the source could not be read (a
/// database down for a fault).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the soak began.
    pub t_s: f64,
    pub relay_rss_mib: f64,
    pub writer_rss_mib: f64,
    pub relay_fds: f64,
    pub writer_fds: f64,
    /// Commit-to-confirm latency of the deliveries recorded since the last sample: from the
    /// signal's write to the broker's stored timestamp where the broker gives one (NATS,
    /// Kafka), else to the consumer's receipt (RabbitMQ). The consumer's own delays stay out
    /// where they can.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub delivered: u64,
    /// The signal tables (`pg_total_relation_size`, `pg_stat_user_tables`).
    pub table_mib: Option<f64>,
    pub live_tuples: Option<f64>,
    pub dead_tuples: Option<f64>,
    /// The oldest signal not parked, in seconds.
    pub oldest_pending_s: Option<f64>,
}

/// What the sampler reads: the processes' ids, the consumers' records, the databases.
struct Sources {
    relays: Vec<Arc<AtomicU32>>,
    writers: Vec<Arc<AtomicU32>>,
    records: Vec<PathBuf>,
    databases: Vec<String>,
}

/// A running sampler; [`Sampler::finish`] stops it and returns the samples.
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Sample every `every`, appending each sample to `out` (JSON lines) as it is taken.
    pub fn start(
        workloads: &BTreeMap<Bus, Workload>,
        databases: Vec<String>,
        every: Duration,
        out: PathBuf,
    ) -> Sampler {
        let sources = Sources {
            relays: workloads
                .values()
                .flat_map(|w| w.relays.iter().map(|s| s.pid.clone()))
                .collect(),
            writers: workloads
                .values()
                .flat_map(|w| w.writers.iter().map(|s| s.pid.clone()))
                .collect(),
            records: workloads.values().map(|w| w.records.clone()).collect(),
            databases,
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut offsets = vec![0u64; sources.records.len()];
            let mut samples = Vec::new();
            let mut file = std::fs::File::create(&out).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return samples,
                }
                let sample = take(&sources, &mut offsets, started.elapsed()).await;
                if let Some(f) = &mut file {
                    use std::io::Write;
                    let _ = writeln!(f, "{}", serde_json::to_string(&sample).unwrap_or_default());
                }
                samples.push(sample);
            }
        });
        Sampler { stop, task }
    }

    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

async fn take(sources: &Sources, offsets: &mut [u64], at: Duration) -> Sample {
    let (relay_rss, relay_fds) = processes(&sources.relays);
    let (writer_rss, writer_fds) = processes(&sources.writers);
    let mut latencies = Vec::new();
    for (path, offset) in sources.records.iter().zip(offsets.iter_mut()) {
        latencies.extend(new_deliveries(path, offset).iter().map(|d| {
            let confirmed = d.stored_ms.unwrap_or(d.received_ms);
            #[allow(clippy::cast_precision_loss)] // milliseconds, far below 2^52
            let ms = (confirmed - d.at_ms).max(0) as f64;
            ms
        }));
    }
    latencies.sort_by(f64::total_cmp);
    let tables = tables(&sources.databases).await;
    Sample {
        t_s: at.as_secs_f64(),
        relay_rss_mib: relay_rss / 1024.0,
        writer_rss_mib: writer_rss / 1024.0,
        relay_fds,
        writer_fds,
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        delivered: latencies.len() as u64,
        table_mib: tables.map(|t| t.0 / (1024.0 * 1024.0)),
        live_tuples: tables.map(|t| t.1),
        dead_tuples: tables.map(|t| t.2),
        oldest_pending_s: tables.map(|t| t.3),
    }
}

/// RSS (KiB) and open descriptors, summed over the running processes.
fn processes(pids: &[Arc<AtomicU32>]) -> (f64, f64) {
    let (mut rss, mut fds) = (0.0, 0.0);
    for pid in pids {
        let pid = pid.load(Ordering::Relaxed);
        if pid == 0 {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        rss += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss)] // a count of descriptors
        let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count) as f64;
        fds += open;
    }
    (rss, fds)
}

/// The deliveries appended to `path` since `offset` (complete lines only), moving it on.
fn new_deliveries(path: &std::path::Path, offset: &mut u64) -> Vec<Delivery> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut reader = std::io::BufReader::new(file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut line) {
        if n == 0 || line.last() != Some(&b'\n') {
            break; // a line still being written is read next time
        }
        *offset += n as u64;
        if let Some(d) = Delivery::parse(String::from_utf8_lossy(&line).trim_end()) {
            out.push(d);
        }
        line.clear();
    }
    out
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[at])
}

/// (bytes, live tuples, dead tuples, oldest pending seconds) of the signal tables, summed
/// over the databases; `None` when one cannot be read.
async fn tables(databases: &[String]) -> Option<(f64, f64, f64, f64)> {
    let mut sum = (0.0, 0.0, 0.0, 0.0f64);
    for url in databases {
        let read = async {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let (bytes, live, dead): (i64, i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(pg_total_relation_size(relid)), 0)::int8, \
                 COALESCE(SUM(n_live_tup), 0)::int8, COALESCE(SUM(n_dead_tup), 0)::int8 \
                 FROM pg_stat_user_tables WHERE relname = ANY($1)",
            )
            .bind(TABLES.to_vec())
            .fetch_one(&mut conn)
            .await?;
            // The harness' own table names (constants): no input reaches the statement.
            let oldest: f64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COALESCE(EXTRACT(EPOCH FROM now() - MIN(created_at)), 0)::float8 \
                 FROM ({}) AS pending",
                TABLES
                    .iter()
                    .map(|t| format!("SELECT created_at FROM {t} WHERE parked_at IS NULL"))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
            )))
            .fetch_one(&mut conn)
            .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>((bytes, live, dead, oldest))
        };
        let (bytes, live, dead, oldest) = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()?
            .ok()?;
        #[allow(clippy::cast_precision_loss)] // sizes and counts far below 2^52
        {
            sum.0 += bytes as f64;
            sum.1 += live as f64;
            sum.2 += dead as f64;
        }
        sum.3 = sum.3.max(oldest);
    }
    Some(sum)
}

/// How much a metric may grow over the second half: `share` of its median there, or
/// `floor`, whichever is larger. Oldest pending age is reported, not judged (a fault holds
/// signals back by design).
pub const ALLOWANCES: [(&str, f64, f64); 7] = [
    ("relay_rss_mib", 0.10, 8.0),
    ("writer_rss_mib", 0.10, 8.0),
    ("relay_fds", 0.10, 16.0),
    ("writer_fds", 0.10, 16.0),
    ("p99_ms", 0.50, 200.0),
    ("dead_tuples", 1.00, 20_000.0),
    ("table_mib", 0.50, 8.0),
];

/// A metric's trend over the second half.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub median: f64,
    /// Theil–Sen slope, per hour.
    pub slope_per_hour: f64,
    /// The slope over the second half's length.
    pub growth: f64,
    /// `None`: reported only.
    pub allowed: Option<f64>,
    pub grows: bool,
}

/// The soak's verdict: each metric's trend, which grow beyond their allowance, and which
/// could not be judged (too few samples with a value in the second half).
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub samples: usize,
    pub minutes: f64,
    pub trends: BTreeMap<String, Trend>,
    pub growing: Vec<String>,
    pub unjudged: Vec<String>,
    /// Writers and relays started more than once (set by the run): a process that died
    /// and came back fresh would hide its own leak.
    pub restarted: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.growing.is_empty() && self.unjudged.is_empty() && self.restarted.is_empty()
    }
}

/// Points of a trend at most (evenly thinned beyond): Theil–Sen sorts every pair's slope.
const MOST_POINTS: usize = 1_000;

/// Samples with a value a judged metric needs in the second half.
const FEWEST_POINTS: usize = 3;

fn value(sample: &Sample, metric: &str) -> Option<f64> {
    match metric {
        "relay_rss_mib" => Some(sample.relay_rss_mib),
        "writer_rss_mib" => Some(sample.writer_rss_mib),
        "relay_fds" => Some(sample.relay_fds),
        "writer_fds" => Some(sample.writer_fds),
        "p50_ms" => sample.p50_ms,
        "p99_ms" => sample.p99_ms,
        "dead_tuples" => sample.dead_tuples,
        "live_tuples" => sample.live_tuples,
        "table_mib" => sample.table_mib,
        "oldest_pending_s" => sample.oldest_pending_s,
        _ => None,
    }
}

/// The trends of the samples' second half.
pub fn judge(samples: &[Sample]) -> Verdict {
    let half = &samples[samples.len() / 2..];
    let span_h = match (half.first(), half.last()) {
        (Some(a), Some(b)) => (b.t_s - a.t_s) / 3600.0,
        _ => 0.0,
    };
    let mut trends = BTreeMap::new();
    let mut growing = Vec::new();
    let mut unjudged = Vec::new();
    let judged: Vec<(&str, Option<(f64, f64)>)> = ALLOWANCES
        .iter()
        .map(|(m, share, floor)| (*m, Some((*share, *floor))))
        .chain(["p50_ms", "live_tuples", "oldest_pending_s"].map(|m| (m, None)))
        .collect();
    for (metric, allowance) in judged {
        let mut points: Vec<(f64, f64)> = half
            .iter()
            .filter_map(|s| value(s, metric).map(|v| (s.t_s / 3600.0, v)))
            .collect();
        if points.len() < FEWEST_POINTS {
            if allowance.is_some() {
                unjudged.push(metric.to_owned());
            }
            continue;
        }
        if points.len() > MOST_POINTS {
            let step = points.len().div_ceil(MOST_POINTS);
            points = points.into_iter().step_by(step).collect();
        }
        let slope = theil_sen(&points);
        let mut values: Vec<f64> = points.iter().map(|p| p.1).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        let growth = slope * span_h;
        let allowed = allowance.map(|(share, floor)| (median * share).max(floor));
        let grows = allowed.is_some_and(|a| growth > a);
        if grows {
            growing.push(metric.to_owned());
        }
        trends.insert(
            metric.to_owned(),
            Trend {
                median,
                slope_per_hour: slope,
                growth,
                allowed,
                grows,
            },
        );
    }
    Verdict {
        samples: samples.len(),
        minutes: samples.last().map_or(0.0, |s| s.t_s / 60.0),
        trends,
        growing,
        unjudged,
        restarted: Vec::new(),
    }
}

/// The median of the slopes between every two points of distinct times.
pub fn theil_sen(points: &[(f64, f64)]) -> f64 {
    let mut slopes = Vec::with_capacity(points.len() * points.len() / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if (b.0 - a.0).abs() > f64::EPSILON {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_by(f64::total_cmp);
    slopes[slopes.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(f: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..120)
            .map(|i| {
                let t_s = f64::from(i) * 30.0;
                Sample {
                    t_s,
                    relay_rss_mib: f(t_s),
                    writer_rss_mib: 40.0,
                    relay_fds: 30.0,
                    writer_fds: 20.0,
                    p50_ms: Some(20.0),
                    // A fault's spike now and then bends nothing.
                    p99_ms: Some(if i % 17 == 0 { 5_000.0 } else { 80.0 }),
                    dead_tuples: Some(1_000.0),
                    table_mib: Some(2.0),
                    ..Sample::default()
                }
            })
            .collect()
    }

    #[test]
    fn flat_metrics_with_spikes_pass_and_a_leak_fails() {
        let flat = judge(&samples(|_| 60.0));
        assert!(flat.growing.is_empty(), "{flat:?}");
        assert!(flat.trends["p99_ms"].slope_per_hour.abs() < 1e-9);
        // 1 MiB a minute: 30 MiB over the second half of an hour, against 8 allowed.
        assert!(flat.passed() && flat.unjudged.is_empty());
        let leak = judge(&samples(|t| 60.0 + t / 60.0));
        assert_eq!(leak.growing, ["relay_rss_mib"]);
        assert!(!leak.passed());
        // Nothing to judge is no pass: too few samples, or a source never read.
        assert!(!judge(&samples(|_| 60.0)[..4]).passed());
        let blind: Vec<Sample> = samples(|_| 60.0)
            .into_iter()
            .map(|s| Sample {
                dead_tuples: None,
                ..s
            })
            .collect();
        assert_eq!(judge(&blind).unjudged, ["dead_tuples"]);
        let trend = &leak.trends["relay_rss_mib"];
        assert!((trend.slope_per_hour - 60.0).abs() < 1e-6, "{trend:?}");
    }

    #[test]
    fn new_lines_are_read_once_and_a_line_being_written_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let line = "1 0 k 0 1000 1030 1020 - m 0\n";
        std::fs::write(&path, format!("{line}{line}1 1 k")).unwrap();
        let mut offset = 0;
        assert_eq!(new_deliveries(&path, &mut offset).len(), 2);
        assert_eq!(new_deliveries(&path, &mut offset).len(), 0);
        std::fs::write(&path, format!("{line}{line}1 1 k 1 1000 1050 - - m 0\n")).unwrap();
        let fresh = new_deliveries(&path, &mut offset);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].received_ms - fresh[0].at_ms, 50);
        assert_eq!(new_deliveries(&path, &mut 0)[0].stored_ms, Some(1020));
    }
}
