//! PNG plots of a [`Report`], drawn with `plotters` (bitmap backend, text through `ab_glyph`
//! with a TrueType font read from disk, so no fontconfig is needed):
//!
//! - `pickup_latency.png`: the distribution (empirical CDF, log time axis) of every pickup
//!   sample: Runnel with and without long polling, and the Rust peer;
//! - `throughput_concurrency.png`: trivial jobs per second against `concurrent` (median with
//!   min–max bars), the alternated Runnel and Rust peer points at 4 and 16;
//! - `rss_running_jobs.png`: runner RSS against running jobs, from the scale scenario's ramp.
//!
//! A plot whose data the run did not produce is skipped (and named in the returned list).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Report;
use crate::stats::Summary;

/// The font used when `--plot-font` is not given (Debian's `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const SIZE: (u32, u32) = (960, 600);
const FAMILY: &str = "sans-serif";

/// Why plotting failed.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The font file could not be read.
    #[error("cannot read the plot font {path}: {source}")]
    FontRead {
        /// The font path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The font file is not a usable TrueType/OpenType font.
    #[error("{path} is not a usable TrueType font")]
    FontInvalid {
        /// The font path.
        path: PathBuf,
    },
    /// The output directory could not be created.
    #[error("cannot create the plot directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Drawing or encoding a PNG failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The PNG being drawn.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
}

/// Registers `font` for the plots. Call once before [`write_all`].
pub fn load_font(font: &Path) -> Result<(), PlotError> {
    let bytes = std::fs::read(font).map_err(|source| PlotError::FontRead {
        path: font.to_owned(),
        source,
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        PlotError::FontInvalid {
            path: font.to_owned(),
        }
    })
}

/// Writes every plot the report has data for into `dir`; returns the files written and the
/// plots skipped for lack of data.
pub fn write_all(
    report: &Report,
    dir: &Path,
) -> Result<(Vec<PathBuf>, Vec<&'static str>), PlotError> {
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    let plots: [(&'static str, PlotFn); 3] = [
        ("pickup_latency.png", pickup_latency),
        ("throughput_concurrency.png", throughput_concurrency),
        ("rss_running_jobs.png", rss_running_jobs),
    ];
    for (name, plot) in plots {
        let path = dir.join(name);
        if plot(report, &path)? {
            written.push(path);
        } else {
            skipped.push(name);
        }
    }
    Ok((written, skipped))
}

type PlotFn = fn(&Report, &Path) -> Result<bool, PlotError>;

fn draw_error(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |error| PlotError::Draw {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

const PICKUP_SERIES: [(&str, &str); 6] = [
    (
        "pickup_long_poll_ci1_ms",
        "Runnel, long polling, check_interval 1 s",
    ),
    (
        "pickup_long_poll_ci3_ms",
        "Runnel, long polling, check_interval 3 s",
    ),
    (
        "pickup_no_long_poll_ci1_ms",
        "Runnel, no long polling, 1 s (to running PUT)",
    ),
    (
        "pickup_no_long_poll_ci3_ms",
        "Runnel, no long polling, 3 s (to running PUT)",
    ),
    (
        "peers_runnel_pickup_ms",
        "Runnel, no long polling, 1 s (to hand-out)",
    ),
    (
        "peers_rust_pickup_ms",
        "gitlab-runner crate peer, polling 1 s (to hand-out)",
    ),
];

fn pickup_latency(report: &Report, path: &Path) -> Result<bool, PlotError> {
    let series: Vec<(&str, Vec<f64>)> = PICKUP_SERIES
        .iter()
        .filter_map(|(metric, label)| {
            let mut samples = report.samples(metric).to_vec();
            samples.retain(|v| v.is_finite());
            samples.sort_by(f64::total_cmp);
            (!samples.is_empty()).then_some((*label, samples))
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let low = series
        .iter()
        .filter_map(|(_, s)| s.first())
        .fold(f64::INFINITY, |a, &b| a.min(b))
        .max(0.01);
    let high = series
        .iter()
        .filter_map(|(_, s)| s.last())
        .fold(0.0, |a: f64, &b| a.max(b))
        .max(low * 10.0);
    let low = 10_f64.powf(low.log10().floor());
    let high = 10_f64.powf(high.log10().ceil());
    let err = draw_error(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Job pickup latency (empirical CDF)", (FAMILY, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_label_formatter(&one_two_five)
        .x_desc("ms from enqueue (log scale)")
        .y_desc("fraction of jobs picked up")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (index, (label, samples)) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        #[allow(clippy::cast_precision_loss)]
        let n = samples.len() as f64;
        #[allow(clippy::cast_precision_loss)]
        let points: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .map(|(i, &v)| (v.max(low), (i + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{label} (n={})", samples.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

fn throughput_concurrency(report: &Report, path: &Path) -> Result<bool, PlotError> {
    let runnel: Vec<(f64, Summary)> = [
        (4.0, "throughput_c4_jobs_per_s"),
        (16.0, "throughput_c16_jobs_per_s"),
        (64.0, "throughput_c64_jobs_per_s"),
    ]
    .into_iter()
    .filter_map(|(c, metric)| Some((c, Summary::of(report.samples(metric))?)))
    .collect();
    // (concurrent, which: 0 Runnel, 1 the peer, summary)
    let peer: Vec<(f64, usize, Summary)> = [
        (4.0, 0, "peers_runnel_throughput_c4_jobs_per_s"),
        (4.0, 1, "peers_rust_throughput_c4_jobs_per_s"),
        (16.0, 0, "peers_runnel_throughput_c16_jobs_per_s"),
        (16.0, 1, "peers_rust_throughput_c16_jobs_per_s"),
    ]
    .into_iter()
    .filter_map(|(c, which, metric)| Some((c, which, Summary::of(report.samples(metric))?)))
    .collect();
    if runnel.is_empty() && peer.is_empty() {
        return Ok(false);
    }
    let top = runnel
        .iter()
        .map(|(_, s)| s.max)
        .chain(peer.iter().map(|(_, _, s)| s.max))
        .fold(1.0, f64::max)
        * 1.15;
    let err = draw_error(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Trivial-job throughput against concurrency", (FAMILY, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(1.0_f64..7.0, 0.0..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|v: &f64| format!("{}", 2_f64.powf(v.round())))
        .x_desc("concurrent (log2 scale)")
        .y_desc("jobs per second (median, min-max bar)")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    let blue = BLUE.to_rgba();
    if !runnel.is_empty() {
        chart
            .draw_series(LineSeries::new(
                runnel.iter().map(|(c, s)| (c.log2(), s.median)),
                blue.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("Runnel (throughput scenario)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
            });
        chart
            .draw_series(runnel.iter().map(|(c, s)| {
                ErrorBar::new_vertical(c.log2(), s.min, s.median, s.max, blue.filled(), 8)
            }))
            .map_err(|e| err(&e))?;
    }
    let labels = [
        "Runnel (peers scenario, alternated)",
        "gitlab-runner crate peer (alternated)",
    ];
    let mut labelled = [false; 2];
    for (c, which, s) in &peer {
        let which = *which;
        let color = if which == 0 {
            GREEN.to_rgba()
        } else {
            RED.to_rgba()
        };
        // Side by side, just right of their concurrency.
        #[allow(clippy::cast_precision_loss)]
        let x = c.log2() + 0.08 * (which as f64 + 1.0);
        let series = chart
            .draw_series(std::iter::once(ErrorBar::new_vertical(
                x,
                s.min,
                s.median,
                s.max,
                color.filled(),
                8,
            )))
            .map_err(|e| err(&e))?;
        if let (Some(first), Some(label)) = (labelled.get_mut(which), labels.get(which))
            && !*first
        {
            *first = true;
            series
                .label(*label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
        }
        chart
            .draw_series(std::iter::once(Circle::new(
                (x, s.median),
                5,
                color.filled(),
            )))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

fn rss_running_jobs(report: &Report, path: &Path) -> Result<bool, PlotError> {
    let runner = report.points("scale_runner_rss_kib");
    let tree = report.points("scale_tree_rss_kib");
    if runner.is_empty() {
        return Ok(false);
    }
    let max_jobs = runner.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_runner = runner.iter().map(|p| p.1 / 1024.0).fold(1.0, f64::max) * 1.15;
    let max_tree = tree.iter().map(|p| p.1 / 1024.0).fold(1.0, f64::max) * 1.15;
    let err = draw_error(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Memory against running jobs (shell executor, `sleep`)",
            (FAMILY, 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0.0..max_jobs * 1.05, 0.0..max_runner)
        .map_err(|e| err(&e))?
        .set_secondary_coord(0.0..max_jobs * 1.05, 0.0..max_tree);
    chart
        .configure_mesh()
        .x_desc("running jobs")
        .y_desc("runner RSS, MiB")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("runner + job processes RSS, MiB")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    let blue = BLUE.to_rgba();
    let red = RED.to_rgba();
    chart
        .draw_series(
            runner
                .iter()
                .map(|&(x, y)| Circle::new((x, y / 1024.0), 3, blue.filled())),
        )
        .map_err(|e| err(&e))?
        .label("Runnel process RSS (left axis)")
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, blue.filled()));
    chart
        .draw_secondary_series(
            tree.iter()
                .map(|&(x, y)| Cross::new((x, y / 1024.0), 3, red)),
        )
        .map_err(|e| err(&e))?
        .label("whole tree RSS (right axis)")
        .legend(move |(x, y)| Cross::new((x + 10, y), 4, red));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

/// Labels only 1, 2 and 5 times a power of ten (a log axis otherwise crowds its labels).
fn one_two_five(value: &f64) -> String {
    let exponent = value.log10().floor();
    let leading = (value / 10_f64.powf(exponent)).round();
    if ![1.0, 2.0, 5.0].contains(&leading) {
        return String::new();
    }
    let rounded = leading * 10_f64.powf(exponent);
    if rounded >= 1.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_labels_only_one_two_five() {
        let labels: Vec<String> = [0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 7.0, 20.0, 1000.0]
            .iter()
            .map(one_two_five)
            .collect();
        assert_eq!(labels, ["0.1", "", "1", "2", "", "5", "", "20", "1000"]);
    }
}
