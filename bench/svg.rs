//! Percentile-spectrum plots (as HdrHistogram's plotter draws them): x is the percentile on a
//! log "nines" axis (0%, 90%, 99%, 99.9%, ...), y the latency in ms, one labelled line per run.
//! Drawn with plotters' SVG backend on the calling (main) thread.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Nines shown on the x axis (6 = 99.9999%).
const MAX_NINES: f64 = 6.0;
/// Quantile ticks per half distance when sampling the spectrum.
const TICKS: u32 = 10;
const SIZE: (u32, u32) = (1100, 650);

/// A line to draw.
pub struct Series<'a> {
    pub label: String,
    pub hist: &'a Histogram<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {why}")]
pub struct SvgError {
    path: String,
    why: String,
}

/// x position of quantile `q` on the nines axis.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (-(1.0 - q).log10()).clamp(0.0, MAX_NINES)
    }
}

fn axis_label(x: &f64) -> String {
    let n = x.round() as i32;
    if (x - n as f64).abs() > 1e-6 {
        return String::new();
    }
    match n {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        n => format!("99.{}%", "9".repeat((n - 2).max(0) as usize)),
    }
}

/// The spectrum points (nines, ms) of one histogram.
pub fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(TICKS)
        .map(|v| {
            (
                nines(v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .filter(|(x, _)| *x <= MAX_NINES)
        .collect()
}

/// Writes the plot to `path`.
pub fn write(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), SvgError> {
    let err = |why: String| SvgError {
        path: path.display().to_string(),
        why,
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.label.clone(), points(s.hist)))
        .collect();
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..MAX_NINES, 0.0..ymax)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_labels(MAX_NINES as usize + 1)
        .x_label_formatter(&axis_label)
        .x_desc("Percentile")
        .y_desc("Latency (ms)")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (label, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
        assert_eq!(axis_label(&0.0), "0%");
        assert_eq!(axis_label(&3.0), "99.9%");
        assert_eq!(axis_label(&5.0), "99.999%");
    }
}
