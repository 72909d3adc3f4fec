//! The chart `bench load --scale` draws (issue 17): p95 search latency
//! against the searched tenant's chunks, Keel per mode over HTTP and Keel's
//! hybrid search beside the peer's in the database, as an SVG under `docs/`
//! that the README shows. Both axes are logarithmic: the sizes span 7k to
//! 100k chunks and the latencies a few to hundreds of milliseconds.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

/// Where `bench load --scale` writes the chart.
pub const PATH: &str = "docs/search-latency.svg";

/// Series of (chunks in the searched tenant, p95 in ms), by name.
#[derive(Default)]
pub struct LatencyChart {
    series: BTreeMap<String, Vec<(f64, f64)>>,
}

impl LatencyChart {
    pub fn add(&mut self, series: &str, chunks: i64, p95_ms: f64) {
        self.series
            .entry(series.to_owned())
            .or_default()
            .push((chunks as f64, p95_ms));
    }

    /// Draws every series into an SVG at `path`.
    pub fn draw(&self, path: &Path, caption: &str) -> anyhow::Result<()> {
        let points = || self.series.values().flatten();
        let (min_x, max_x) = bounds(points().map(|p| p.0));
        let (min_y, max_y) = bounds(points().map(|p| p.1));
        let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (min_x * 0.8..max_x * 1.25).log_scale(),
                (min_y * 0.7..max_y * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("chunks in the searched tenant")
            .y_desc("p95 latency, ms")
            .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        let colors = [BLUE, GREEN, RED, MAGENTA, BLACK, CYAN];
        for ((name, points), color) in self.series.iter().zip(colors.iter().cycle()) {
            let color = color.to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .iter()
                    .map(|&point| Circle::new(point, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// The smallest and largest of `values` (1 and 1 when there are none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi { (1.0, 1.0) } else { (lo, hi) }
}
