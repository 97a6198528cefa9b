//! Result output: the JSON result file (DESIGN §7), the human summary, the `.hgrm` percentile
//! distribution text, and the base64 HdrHistogram V2 (deflate) codec.
//! Pure functions, called on the main thread once a run is over.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::{LoadResult, HIST_SIGFIG};

/// Percentile ticks per half distance in `.hgrm` output (HdrHistogram's default).
const HGRM_TICKS: u32 = 5;

/// A result file failed to read, decode or write.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("cannot write {path}: {err}")]
    Write { path: String, err: std::io::Error },
    #[error("{path} is not a ringlb-bench result (JSON): {err}")]
    Json {
        path: String,
        err: serde_json::Error,
    },
    #[error("{path}: the \"histogram\" field is not a base64 HdrHistogram V2 histogram: {why}")]
    Histogram { path: String, why: String },
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatencyUs {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The result JSON (DESIGN §7) plus extensions; scenario runs fill the optional fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunJson {
    pub url: String,
    pub connections: u64,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency_us: LatencyUs,
    pub histogram: String,
    #[serde(default)]
    pub errors_by_kind: BTreeMap<String, u64>,
    #[serde(default)]
    pub threads: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The client's I/O backend: "uring" or "epoll".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<String>,
    /// "HTTP/1.1" or "HTTP/2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// HTTP/2: concurrent streams per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Scenario runs always carry it: `null` when there is no subject process ("direct").
    pub subject_cpu_us_per_req: Option<Option<f64>>,
    /// The kernel's part of `subject_cpu_us_per_req` (the process's stime from /proc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_sys_us_per_req: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
}

pub fn latency_of(h: &Histogram<u64>) -> LatencyUs {
    LatencyUs {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

impl RunJson {
    pub fn from_result(r: &LoadResult) -> RunJson {
        RunJson {
            url: r.url.clone(),
            connections: r.connections as u64,
            duration_s: r.duration.as_secs_f64(),
            requests: r.requests,
            errors: r.errors.total(),
            rps: r.rps(),
            latency_us: latency_of(&r.hist),
            histogram: encode_histogram(&r.hist),
            errors_by_kind: r
                .errors
                .by_kind()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            threads: r.threads as u64,
            rate: r.rate,
            mode: Some(if r.close { "close" } else { "keepalive" }.into()),
            io: Some(
                match r.io {
                    crate::io::IoKind::Uring => "uring",
                    crate::io::IoKind::Epoll => "epoll",
                }
                .into(),
            ),
            protocol: Some(if r.http2 { "HTTP/2" } else { "HTTP/1.1" }.into()),
            streams: r.http2.then_some(r.streams as u64),
            subject: None,
            config: None,
            subject_cpu_us_per_req: None,
            subject_sys_us_per_req: None,
            round: None,
            cell: None,
        }
    }

    /// Reads a result file.
    pub fn read(path: &Path) -> Result<RunJson, ReportError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ReportError::Read {
            path: p.clone(),
            err,
        })?;
        serde_json::from_str(&text).map_err(|err| ReportError::Json { path: p, err })
    }

    /// Decodes the embedded histogram.
    pub fn histogram(&self, path: &Path) -> Result<Histogram<u64>, ReportError> {
        decode_histogram(&self.histogram).map_err(|why| ReportError::Histogram {
            path: path.display().to_string(),
            why,
        })
    }
}

pub fn write_json(path: &Path, j: &RunJson) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(j).map_err(|err| ReportError::Json {
        path: path.display().to_string(),
        err,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|err| ReportError::Write {
        path: path.display().to_string(),
        err,
    })
}

/// Base64 of the V2-deflate serialized histogram.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec cannot fail for a histogram within its own bounds.
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_histogram(b64: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("{e:?}"))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The summary printed after `load`.
pub fn summary(r: &LoadResult) -> String {
    let l = latency_of(&r.hist);
    let mut s = String::new();
    let mode = if r.close { "close" } else { "keep-alive" };
    let proto = if r.http2 {
        format!("HTTP/2 ×{} streams", r.streams)
    } else {
        "HTTP/1.1".into()
    };
    let _ = writeln!(
        s,
        "{}: {proto}, {} connections, {} threads, {:.1}s, {mode}{}, io={:?}",
        r.url,
        r.connections,
        r.threads,
        r.duration.as_secs_f64(),
        r.rate
            .map(|x| format!(", rate {x} req/s"))
            .unwrap_or_default(),
        r.io,
    );
    let _ = writeln!(
        s,
        "  requests {}  rps {:.1}  errors {}",
        r.requests,
        r.rps(),
        r.errors.total()
    );
    if r.errors.total() > 0 {
        let kinds: Vec<String> = r
            .errors
            .by_kind()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "  errors by kind: {}", kinds.join(" "));
        if let Some(e) = &r.first_error {
            let _ = writeln!(s, "  first error: {e}");
        }
        if r.errors.0[crate::client::ErrKind::Tls as usize] > 0 {
            let alpn = r
                .first_error
                .as_deref()
                .is_some_and(|e| e.contains("ALPN") || e.contains("NoApplicationProtocol"));
            let hint = if alpn {
                "(the server does not offer HTTP/2 by ALPN h2)"
            } else {
                "(a self-signed or private-CA server certificate needs --insecure)"
            };
            let _ = writeln!(s, "  {hint}");
        }
    }
    let _ = writeln!(
        s,
        "  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    );
    s
}

/// HdrHistogram's percentile distribution text (values in ms), as its plotter reads it.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(HGRM_TICKS) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(i32::from(HIST_SIGFIG))).log2().ceil() as u32);
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

/// Parses `.hgrm` text back into (value ms, percentile 0..1) rows.
#[cfg(test)]
pub fn parse_hgrm(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let v = it.next()?.parse().ok()?;
            let p = it.next()?.parse().ok()?;
            Some((v, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trips_through_base64() {
        let mut h = crate::load::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 3).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(latency_of(&back), latency_of(&h));
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("aGVsbG8=").is_err());
    }

    #[test]
    fn hgrm_table_has_header_rows_and_footer() {
        let mut h = crate::load::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        let rows = parse_hgrm(&text);
        assert_eq!(rows.first().map(|r| r.1), Some(0.0));
        assert_eq!(rows.last().map(|r| r.1), Some(1.0));
        let p50 = rows.iter().find(|r| r.1 >= 0.5).unwrap().0;
        assert!((p50 - 500.0).abs() < 1.0, "{p50}");
        let mean_line = text
            .lines()
            .find(|l| l.starts_with("#[Mean    = "))
            .unwrap();
        let mean: f64 = mean_line[12..]
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((mean - 500.5).abs() < 1.0, "{mean_line}");
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }
}
