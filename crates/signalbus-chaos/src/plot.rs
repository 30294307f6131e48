//! The soak's samples as one PNG: six panels over time (memory, descriptors, latency,
//! tuples, table size, oldest pending), drawn with plotters.

use crate::soak::Sample;
use plotters::prelude::*;
use std::path::Path;

/// The font the labels are drawn in (Debian package fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Failure = Box<dyn std::error::Error>;

/// A panel: its title, its unit, and its series (name, value of a sample).
type Series = (&'static str, fn(&Sample) -> Option<f64>);

const PANELS: [(&str, &str, &[Series]); 6] = [
    (
        "Memory (RSS)",
        "MiB",
        &[
            ("relays", |s| Some(s.relay_rss_mib)),
            ("writers", |s| Some(s.writer_rss_mib)),
        ],
    ),
    (
        "Open descriptors",
        "count",
        &[
            ("relays", |s| Some(s.relay_fds)),
            ("writers", |s| Some(s.writer_fds)),
        ],
    ),
    (
        "Commit-to-confirm latency",
        "ms",
        &[("p50", |s| s.p50_ms), ("p99", |s| s.p99_ms)],
    ),
    (
        "Signal tables: tuples",
        "rows",
        &[("live", |s| s.live_tuples), ("dead", |s| s.dead_tuples)],
    ),
    (
        "Signal tables: size",
        "MiB",
        &[("tables and indexes", |s| s.table_mib)],
    ),
    (
        "Oldest pending signal",
        "s",
        &[("age", |s| s.oldest_pending_s)],
    ),
];

/// Draw `samples` to `path` (PNG, 1600×1200).
pub fn draw(samples: &[Sample], path: &Path) -> Result<(), Failure> {
    let font = std::fs::read(FONT).map_err(|e| {
        format!("the plot needs the font {FONT} (Debian package fonts-dejavu-core): {e}")
    })?;
    // Registered once per process; plotters keeps the bytes for the run's length.
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "the font could not be read")?;
    let root = BitMapBackend::new(path, (1600, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let minutes = samples.last().map_or(1.0, |s| s.t_s / 60.0).max(1.0 / 6.0);
    for ((title, unit, series), area) in PANELS.iter().zip(root.split_evenly((3, 2))) {
        let top = samples
            .iter()
            .flat_map(|s| series.iter().filter_map(|(_, f)| f(s)))
            .fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(*title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..minutes, 0.0..(top * 1.1).max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc(*unit)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (n, (name, f)) in series.iter().enumerate() {
            let colour = Palette99::pick(n).to_rgba();
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t_s / 60.0, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_drawn_to_a_png() {
        let samples: Vec<Sample> = (0..30)
            .map(|i| Sample {
                t_s: f64::from(i) * 10.0,
                relay_rss_mib: 30.0 + f64::from(i % 3),
                writer_rss_mib: 20.0,
                p99_ms: (i % 5 != 0).then_some(50.0),
                ..Sample::default()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.png");
        draw(&samples, &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 10_000, "a picture, not an empty canvas");
    }
}
