//! `compare`: reads result JSON files and prints a markdown table (rps, errors, percentiles, and
//! each run's rps and p99 ratio to the first), optionally plotting their percentile spectra.
//! Runs on the main thread.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::{ReportError, RunJson};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Svg(#[from] crate::svg::SvgError),
}

/// The label of a run: its "subject" (plus cell) if present, else the file stem.
pub fn label(j: &RunJson, path: &Path) -> String {
    match (&j.subject, &j.cell) {
        (Some(s), Some(c)) => format!("{s} {c}"),
        (Some(s), None) => s.clone(),
        _ => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    }
}

fn ratio(a: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", a / base)
    } else {
        "-".into()
    }
}

/// Builds the table (and the SVG when asked).
pub fn run(paths: &[std::path::PathBuf], svg: Option<&Path>) -> Result<String, CompareError> {
    let mut runs = Vec::with_capacity(paths.len());
    for p in paths {
        let j = RunJson::read(p)?;
        let h = j.histogram(p)?;
        runs.push((label(&j, p), j, h));
    }
    let mut t = String::new();
    t.push_str("| run | rps | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | rps ratio | p99 ratio |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let (base_rps, base_p99) = runs
        .first()
        .map(|(_, j, _)| (j.rps, j.latency_us.p99 as f64))
        .unwrap_or((0.0, 0.0));
    for (label, j, _) in &runs {
        let l = &j.latency_us;
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let _ = writeln!(
            t,
            "| {label} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
            j.rps,
            j.errors,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            ratio(j.rps, base_rps),
            ratio(l.p99 as f64, base_p99),
        );
    }
    if let Some(path) = svg {
        let series: Vec<crate::svg::Series<'_>> = runs
            .iter()
            .map(|(label, _, h)| crate::svg::Series {
                label: label.clone(),
                hist: h,
            })
            .collect();
        crate::svg::write(path, "Latency by percentile", &series)?;
    }
    Ok(t)
}
