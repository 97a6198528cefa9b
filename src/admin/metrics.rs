//! `/metrics` (Prometheus text exposition format 0.0.4) and `/latency` (HdrHistogram's classic
//! `.hgrm` percentile distribution).
//!
//! Runs on the admin thread, on request: sums the workers' padded counter slots and the merged
//! latency histograms (`ListenerStats::with_latency`); owns nothing between requests.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;

use crate::metrics::{ListenerStats, ERROR_KINDS};
use crate::runtime::Shared;
use crate::target::{State, Target, CHECK_OUTCOMES};

/// Upper bounds (seconds) of the request latency histogram's buckets; `+Inf` follows.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Percentile steps per halving of the distance to 100% in `.hgrm` output (HdrHistogram's default).
pub const HGRM_TICKS_PER_HALF: u32 = 5;

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(self.name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Every target of every group with its group name.
fn targets(shared: &Shared) -> Vec<(String, std::sync::Arc<Target>)> {
    let mut all = Vec::new();
    for g in &shared.snapshot().table.groups {
        for t in g.members().targets.iter() {
            all.push((g.name.clone(), t.clone()));
        }
    }
    all
}

/// The whole `/metrics` page.
pub fn prometheus(shared: &Shared) -> String {
    let mut out = String::with_capacity(8192);
    let listeners = &shared.snapshot().listeners;

    let mut f = Family::new(
        &mut out,
        "ringlb_responses_total",
        "counter",
        "Responses sent to clients, by listener, target group and status class.",
    );
    for l in listeners {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = l.stats.sum(|s| &s.responses[i + 1]);
            f.sample(
                "",
                &[
                    ("listener", &l.name),
                    ("target_group", &l.group.name),
                    ("class", class),
                ],
                n,
            );
        }
    }

    let mut f = Family::new(
        &mut out,
        "ringlb_request_duration_seconds",
        "histogram",
        "Request latency (head received to response sent), merged across workers.",
    );
    for l in listeners {
        latency_histogram(&mut f, &l.name, &l.stats);
    }

    let mut f = Family::new(
        &mut out,
        "ringlb_connections_active",
        "gauge",
        "Client connections open now, by listener.",
    );
    for l in listeners {
        f.sample(
            "",
            &[("listener", &l.name)],
            l.stats.sum(|s| &s.connections_open),
        );
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_connections_total",
        "counter",
        "Client connections accepted, by listener.",
    );
    for l in listeners {
        f.sample(
            "",
            &[("listener", &l.name)],
            l.stats.sum(|s| &s.connections_total),
        );
    }
    for (name, kind, help, pick) in [
        (
            "ringlb_http2_connections_active",
            "gauge",
            "Client connections speaking HTTP/2 now, by listener.",
            0,
        ),
        (
            "ringlb_http2_connections_total",
            "counter",
            "Client connections that spoke HTTP/2 (h2 by ALPN or h2c), by listener.",
            1,
        ),
        (
            "ringlb_http2_streams_total",
            "counter",
            "HTTP/2 streams (requests) taken from clients, by listener.",
            2,
        ),
        (
            "ringlb_http2_streams_refused_total",
            "counter",
            "HTTP/2 streams refused or reset by ringlb's limits (too many in flight, floods), by listener.",
            3,
        ),
    ] {
        let mut f = Family::new(&mut out, name, kind, help);
        for l in listeners {
            f.sample(
                "",
                &[("listener", &l.name)],
                l.stats.sum(|s| match pick {
                    0 => &s.h2_connections_open,
                    1 => &s.h2_connections_total,
                    2 => &s.h2_streams_total,
                    _ => &s.h2_streams_refused,
                }),
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_errors_total",
        "counter",
        "Failures by listener and kind.",
    );
    for l in listeners {
        for kind in ERROR_KINDS {
            f.sample(
                "",
                &[("listener", &l.name), ("kind", kind.label())],
                l.stats.sum(|s| &s.errors[kind as usize]),
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_tls_handshake_failures_total",
        "counter",
        "Failed TLS handshakes with clients by listener and reason (no_certificate, unknown_ca, revoked, expired, bad_certificate: a client certificate refused by mutual TLS; other: timeouts, protocol errors, closed connections).",
    );
    for l in listeners
        .iter()
        .filter(|l| l.protocol == crate::config::ListenerProtocol::Https)
    {
        for r in crate::tls::client_auth::FAILURE_REASONS {
            f.sample(
                "",
                &[("listener", &l.name), ("reason", r.label())],
                l.stats.sum(|s| &s.tls_failures[r as usize]),
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_rejections_total",
        "counter",
        "Connections and requests refused at the door (limits, ACLs, malformed requests), by listener and kind.",
    );
    for l in listeners {
        for r in crate::guard::REJECTIONS {
            f.sample(
                "",
                &[("listener", &l.name), ("kind", r.label())],
                l.stats.sum(|s| &s.rejections[r as usize]),
            );
        }
    }
    for (name, help, pick) in [
        (
            "ringlb_received_bytes_total",
            "Bytes read from clients, by listener.",
            0,
        ),
        (
            "ringlb_sent_bytes_total",
            "Bytes written to clients, by listener.",
            1,
        ),
    ] {
        let mut f = Family::new(&mut out, name, "counter", help);
        for l in listeners {
            let n = if pick == 0 {
                l.stats.sum(|s| &s.bytes_in)
            } else {
                l.stats.sum(|s| &s.bytes_out)
            };
            f.sample("", &[("listener", &l.name)], n);
        }
    }

    let all = targets(shared);
    let mut f = Family::new(
        &mut out,
        "ringlb_target_healthy",
        "gauge",
        "1 when the target takes traffic (healthy), else 0.",
    );
    for (g, t) in &all {
        let addr = t.addr.to_string();
        let up = u8::from(t.state() == State::Healthy);
        f.sample("", &[("group", g), ("target", &addr)], up);
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_target_state",
        "gauge",
        "1 for the target's current state (initial, healthy, unhealthy, draining).",
    );
    for (g, t) in &all {
        let addr = t.addr.to_string();
        let now = t.state();
        for s in [
            State::Initial,
            State::Healthy,
            State::Unhealthy,
            State::Draining,
        ] {
            f.sample(
                "",
                &[("group", g), ("target", &addr), ("state", s.name())],
                u8::from(s == now),
            );
        }
    }
    type PerTarget = (&'static str, &'static str, &'static str, fn(&Target) -> u64);
    let per_target: [PerTarget; 3] = [
        (
            "ringlb_target_requests_total",
            "counter",
            "Requests sent to the target, by target group and target.",
            Target::total_requests,
        ),
        (
            "ringlb_target_in_flight",
            "gauge",
            "Requests in flight to the target now.",
            Target::total_in_flight,
        ),
        (
            "ringlb_upstream_connect_errors_total",
            "counter",
            "Failed connects to the target from live traffic.",
            Target::total_connect_errors,
        ),
    ];
    for (name, kind, help, value) in per_target {
        let mut f = Family::new(&mut out, name, kind, help);
        for (g, t) in &all {
            let addr = t.addr.to_string();
            f.sample("", &[("group", g), ("target", &addr)], value(t));
        }
    }
    type PerGroup = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::target::GroupSlot) -> u64,
    );
    let per_group: [PerGroup; 4] = [
        (
            "ringlb_queue_length",
            "gauge",
            "Requests waiting for a slot under max_connections now, by target group.",
            |s| u64::from(s.queued.load(Relaxed)),
        ),
        (
            "ringlb_queue_waits_total",
            "counter",
            "Requests that waited in the queue, by target group.",
            |s| s.queue_waits.load(Relaxed),
        ),
        (
            "ringlb_queue_timeouts_total",
            "counter",
            "Requests answered 503 after queue_timeout, by target group.",
            |s| s.queue_timeouts.load(Relaxed),
        ),
        (
            "ringlb_queue_wait_seconds_total",
            "counter",
            "Time requests spent waiting in the queue, by target group.",
            |s| s.queue_wait_us.load(Relaxed),
        ),
    ];
    let groups = &shared.snapshot().table.groups;
    for (name, kind, help, value) in per_group {
        let mut f = Family::new(&mut out, name, kind, help);
        for g in groups.iter() {
            let v = g.total(value);
            if name == "ringlb_queue_wait_seconds_total" {
                f.sample("", &[("group", &g.name)], v as f64 / 1e6);
            } else {
                f.sample("", &[("group", &g.name)], v);
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_retries_total",
        "counter",
        "Requests retried on another target, by target group and cause (retry_on).",
    );
    for g in groups.iter() {
        let causes = [
            (
                "connect-failure",
                g.total(|s| s.retries_connect.load(Relaxed)),
            ),
            ("reset", g.total(|s| s.retries_reset.load(Relaxed))),
            ("timeout", g.total(|s| s.retries_timeout.load(Relaxed))),
        ];
        for (cause, v) in causes {
            f.sample("", &[("group", &g.name), ("cause", cause)], v);
        }
    }
    let mut f = Family::new(
        &mut out,
        "ringlb_health_checks_total",
        "counter",
        "Active health-check outcomes, by target group, target and result.",
    );
    for (g, t) in &all {
        let addr = t.addr.to_string();
        for o in CHECK_OUTCOMES {
            f.sample(
                "",
                &[("group", g), ("target", &addr), ("result", o.label())],
                t.checks(o),
            );
        }
    }
    out
}

/// The bucket, sum and count samples of one listener's latency (recorded in microseconds).
fn latency_histogram(f: &mut Family<'_>, listener: &str, stats: &ListenerStats) {
    let (cumulative, sum_us, count) = stats.with_latency(|h| {
        let mut buckets = [0u64; LATENCY_BUCKETS_S.len()];
        for v in h.iter_recorded() {
            // Each recorded value stands for its whole equivalence range; place it by its top.
            let top_s = h.highest_equivalent(v.value_iterated_to()) as f64 / 1e6;
            for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
                if top_s <= *le {
                    buckets[i] += v.count_at_value();
                    break;
                }
            }
        }
        let mut running = 0;
        for b in buckets.iter_mut() {
            running += *b;
            *b = running;
        }
        (buckets, h.mean() * h.len() as f64, h.len())
    });
    for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
        let le = le.to_string();
        f.sample(
            "_bucket",
            &[("listener", listener), ("le", &le)],
            cumulative[i],
        );
    }
    f.sample("_bucket", &[("listener", listener), ("le", "+Inf")], count);
    f.sample("_sum", &[("listener", listener)], sum_us / 1e6);
    f.sample("_count", &[("listener", listener)], count);
}

/// HdrHistogram's classic percentile distribution of a histogram recorded in microseconds,
/// with values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0;
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(HGRM_TICKS_PER_HALF) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn hgrm_has_the_classic_table_and_footer() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap(); // 0.01 ms .. 10 ms
        }
        let text = hgrm(&h);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|c| c.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20, "{text}");
        let first = &rows[0];
        assert!(
            (first[0] - 0.010).abs() < 0.001,
            "first value in ms: {text}"
        );
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p) column");
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 1000.0, "cumulative count ends at the total");
        assert!((last[0] - 10.0).abs() < 0.02, "max is 10 ms: {text}");
        // Cumulative counts never decrease.
        assert!(rows.windows(2).all(|w| w[1][2] >= w[0][2]));
        assert!(text.contains("#[Mean    ="), "{text}");
        assert!(text.contains("Total count    =         1000]"), "{text}");
    }

    #[test]
    fn an_empty_histogram_prints_header_and_footer() {
        let h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        let text = hgrm(&h);
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }
}
