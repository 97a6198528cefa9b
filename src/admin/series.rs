//! `GET /series`: a small time series for the dashboard, sampled every second: a ring of the
//! last ten minutes ([`CAPACITY`] samples) per listener and of the last two minutes
//! ([`TARGET_CAPACITY`]) per target.
//!
//! Runs on the admin thread. A task on its `LocalSet` ([`run`]) samples the listeners' counters,
//! their latency histograms and the targets' counters; the store lives in a thread-local of the
//! admin thread, so only that thread's sampler and request handlers touch it, without locks.
//! Workers are asked for their latency samples without waiting
//! ([`ListenerStats::with_latency_now`]): what they hand over lands in the next second's sample.
//!
//! Memory is bounded: at most [`MAX_LISTENERS`] listeners (~26 KiB of points and three
//! 2-significant-figure histograms of ~24 KiB each) and [`MAX_TARGETS`] targets (~1.5 KiB of
//! points each); more are left out of the series, not of `/status`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{ApiError, Reply};
use crate::config::ListenerProtocol;
use crate::metrics::{ListenerStats, LATENCY_MAX_US};
use crate::runtime::{Shared, Snapshot};
use crate::target::{Reason, State};

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept per listener: ten minutes at one a second.
pub const CAPACITY: usize = 600;
/// Samples kept per target: two minutes (the dashboard draws them as sparklines).
pub const TARGET_CAPACITY: usize = 120;
/// The spectrum covers the requests of the last one to two windows.
pub const SPECTRUM_WINDOW: Duration = Duration::from_secs(60);
/// Listeners and targets sampled at most (the first ones in config order).
pub const MAX_LISTENERS: usize = 64;
pub const MAX_TARGETS: usize = 1024;
/// Precision of the sampler's own histograms (1% error is plenty for a chart).
const SIGFIG: u8 = 2;
/// Percentile steps per halving of the distance to 100% in the spectrum (as `.hgrm`).
const SPECTRUM_TICKS_PER_HALF: u32 = 5;

thread_local! {
    static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
}

/// Samples every [`INTERVAL`] until the admin thread's `LocalSet` drops it.
pub async fn run(shared: Arc<Shared>) {
    STORE.with(|s| *s.borrow_mut() = Some(Store::default()));
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = shared.snapshot();
        STORE.with(|s| {
            if let Some(store) = s.borrow_mut().as_mut() {
                store.sample(&snapshot, Instant::now(), wall_ms());
            }
        });
    }
}

/// `GET /series[?after=SEQ]`.
pub fn reply(query: &str) -> Result<Reply, ApiError> {
    let mut after = 0u64;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("after", v)) => {
                after = v.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                    "after must be a sample number (the \"seq\" of an earlier answer), got \"{v}\""
                ))
                })?
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query \"{kv}\"; /series takes only after=SEQ"
                )))
            }
        }
    }
    let doc = STORE.with(|s| match s.borrow().as_ref() {
        Some(store) => store.render(after, Instant::now()),
        None => Store::default().render(after, Instant::now()),
    });
    Ok(Reply::json(200, doc.to_string()))
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn small_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGFIG).ok()
}

/// Appends to a ring of at most `capacity`.
fn push<T>(ring: &mut VecDeque<T>, capacity: usize, v: T) {
    if ring.len() >= capacity {
        ring.pop_front();
    }
    ring.push_back(v);
}

/// Per-second rate of a counter that went from `before` to `now` in `dt` seconds; NaN (JSON
/// null) when unknown (first sample, or the counter restarted with a reload).
fn rate(before: Option<u64>, now: u64, dt: f64) -> f32 {
    match before {
        Some(b) if now >= b && dt > 0.0 => ((now - b) as f64 / dt) as f32,
        _ => f32::NAN,
    }
}

/// The sampler's state: one ring per listener and per target, and the sample count.
#[derive(Default)]
pub struct Store {
    /// Number of the newest sample (1, 2, ...); 0 before the first.
    seq: u64,
    time_ms: u64,
    last: Option<Instant>,
    listeners: Vec<ListenerSeries>,
    targets: Vec<TargetSeries>,
}

#[derive(Clone, Copy)]
struct ListenerPoint {
    connections: u32,
    connections_per_s: f32,
    requests_per_s: f32,
    responses_5xx_per_s: f32,
    errors_per_s: f32,
    /// Latency percentiles (µs) of the requests that ended in this sample's second.
    p50: Option<u32>,
    p90: Option<u32>,
    p99: Option<u32>,
}

/// Cumulative counters of a listener at the previous sample.
#[derive(Clone, Copy)]
struct ListenerCounts {
    connections: u64,
    responses: u64,
    responses_5xx: u64,
    errors: u64,
}

struct ListenerSeries {
    name: String,
    protocol: &'static str,
    bind: String,
    target_group: String,
    stats: Arc<ListenerStats>,
    counts: Option<ListenerCounts>,
    /// Samples since the counters last moved; latency is merged while this is small.
    quiet: u32,
    /// The merged latency at the previous merge (cumulative, [`SIGFIG`] precision).
    prev: Option<Histogram<u64>>,
    /// The spectrum's base: the merged latency at `base.0`, and the next base (one window later).
    base: Option<(Instant, Histogram<u64>)>,
    next_base: Option<(Instant, Histogram<u64>)>,
    points: VecDeque<ListenerPoint>,
}

#[derive(Clone, Copy)]
struct TargetPoint {
    requests_per_s: f32,
    connect_errors_per_s: f32,
    in_flight: u32,
}

struct TargetSeries {
    id: u64,
    group: String,
    address: String,
    requests: Option<u64>,
    connect_errors: Option<u64>,
    ejected: bool,
    /// Passive ejections seen by the sampler (turns to unhealthy with `Target.PassiveFailures`).
    ejections: u64,
    points: VecDeque<TargetPoint>,
}

fn protocol_name(p: ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Http => "http",
        ListenerProtocol::Https => "https",
        ListenerProtocol::Tcp => "tcp",
    }
}

/// The cumulative latency of a listener at [`SIGFIG`] precision, merged without waiting.
fn merged_latency(stats: &ListenerStats) -> Option<Histogram<u64>> {
    let mut small = small_histogram()?;
    stats.with_latency_now(|h| {
        for v in h.iter_recorded() {
            small.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    });
    Some(small)
}

/// `now - before`, or `None` when `before` is not contained in `now` (a restarted histogram).
fn difference(now: &Histogram<u64>, before: Option<&Histogram<u64>>) -> Option<Histogram<u64>> {
    let mut d = now.clone();
    if let Some(b) = before {
        d.subtract(b).ok()?;
    }
    Some(d)
}

fn percentile(h: Option<&Histogram<u64>>, q: f64) -> Option<u32> {
    let h = h.filter(|h| !h.is_empty())?;
    Some(u32::try_from(h.value_at_quantile(q)).unwrap_or(u32::MAX))
}

impl ListenerSeries {
    fn sample(&mut self, now: Instant, dt: f64) {
        let s = self.stats.clone();
        let counts = ListenerCounts {
            connections: s.sum(|x| &x.connections_total),
            responses: (1..=5).map(|c| s.sum(|x| &x.responses[c])).sum(),
            responses_5xx: s.sum(|x| &x.responses[5]),
            errors: s
                .slots
                .iter()
                .map(|x| x.errors.iter().map(|e| e.load(Relaxed)).sum::<u64>())
                .sum(),
        };
        let before = self.counts;
        let moved = before
            .is_none_or(|b| b.responses != counts.responses || b.connections != counts.connections);
        self.quiet = if moved {
            0
        } else {
            self.quiet.saturating_add(1)
        };
        // Merge while traffic flows and for two samples after it stops (the workers hand their
        // last samples over one merge late).
        let mut interval = None;
        if self.quiet <= 2 {
            if let Some(cur) = merged_latency(&s) {
                interval = difference(&cur, self.prev.as_ref());
                if interval.is_none() {
                    self.base = None;
                    self.next_base = None;
                }
                self.prev = Some(cur);
            }
        }
        // Every second, merged or not, so that the window stays honest across quiet spells.
        if let Some(cur) = self.prev.take() {
            self.rotate_base(now, &cur);
            self.prev = Some(cur);
        }
        let iv = interval.as_ref();
        push(
            &mut self.points,
            CAPACITY,
            ListenerPoint {
                connections: u32::try_from(s.sum(|x| &x.connections_open)).unwrap_or(u32::MAX),
                connections_per_s: rate(before.map(|b| b.connections), counts.connections, dt),
                requests_per_s: rate(before.map(|b| b.responses), counts.responses, dt),
                responses_5xx_per_s: rate(
                    before.map(|b| b.responses_5xx),
                    counts.responses_5xx,
                    dt,
                ),
                errors_per_s: rate(before.map(|b| b.errors), counts.errors, dt),
                p50: percentile(iv, 0.50),
                p90: percentile(iv, 0.90),
                p99: percentile(iv, 0.99),
            },
        );
        self.counts = Some(counts);
    }

    /// Keeps the spectrum's base one to two windows old: the next base is taken one window
    /// after the base, and replaces it one window later.
    fn rotate_base(&mut self, now: Instant, cur: &Histogram<u64>) {
        let age = |t: &Instant| now.saturating_duration_since(*t);
        match (&self.base, &self.next_base) {
            (None, _) => self.base = Some((now, cur.clone())),
            (Some((since, _)), None) => {
                if age(since) >= SPECTRUM_WINDOW {
                    self.next_base = Some((now, cur.clone()));
                }
            }
            (Some(_), Some((next, _))) => {
                if age(next) >= SPECTRUM_WINDOW {
                    self.base = self.next_base.replace((now, cur.clone()));
                }
            }
        }
    }

    fn spectrum(&self, now: Instant) -> Value {
        let window = self.prev.as_ref().and_then(|cur| {
            let base = self.base.as_ref();
            let d = difference(cur, base.map(|(_, h)| h))?;
            Some((d, base.map(|(t, _)| now.saturating_duration_since(*t))))
        });
        let Some((h, age)) = window else {
            return json!({ "window_s": 0, "count": 0, "max_us": 0, "points": [] });
        };
        let points: Vec<Value> = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(SPECTRUM_TICKS_PER_HALF)
                .map(|v| {
                    let pct = (v.quantile_iterated_to() * 100.0 * 1e6).round() / 1e6;
                    json!([pct, h.highest_equivalent(v.value_iterated_to())])
                })
                .collect()
        };
        json!({
            "window_s": age.map_or(0, |a| a.as_secs()),
            "count": h.len(),
            "max_us": h.max(),
            "points": points,
        })
    }
}

impl Store {
    /// Takes one sample of every listener and target of `snapshot`.
    pub fn sample(&mut self, snapshot: &Snapshot, now: Instant, wall_ms: u64) {
        let dt = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.last = Some(now);
        self.seq += 1;
        self.time_ms = wall_ms;

        let mut old: HashMap<String, ListenerSeries> = self
            .listeners
            .drain(..)
            .map(|l| (l.name.clone(), l))
            .collect();
        for plan in snapshot.listeners.iter().take(MAX_LISTENERS) {
            let mut l = old.remove(&plan.name).unwrap_or_else(|| ListenerSeries {
                name: plan.name.clone(),
                protocol: protocol_name(plan.protocol),
                bind: String::new(),
                target_group: String::new(),
                stats: plan.stats.clone(),
                counts: None,
                quiet: 0,
                prev: None,
                base: None,
                next_base: None,
                points: VecDeque::new(),
            });
            if !Arc::ptr_eq(&l.stats, &plan.stats) {
                // A reload gave the listener new counters: start their baselines again.
                l.stats = plan.stats.clone();
                l.counts = None;
                l.prev = None;
                l.base = None;
                l.next_base = None;
            }
            l.protocol = protocol_name(plan.protocol);
            l.bind = plan.bound.to_string();
            l.target_group.clone_from(&plan.group.name);
            l.sample(now, dt);
            self.listeners.push(l);
        }

        let mut old: HashMap<u64, TargetSeries> =
            self.targets.drain(..).map(|t| (t.id, t)).collect();
        'groups: for g in snapshot.table.groups.iter() {
            for t in g.members().targets.iter() {
                if self.targets.len() == MAX_TARGETS {
                    break 'groups;
                }
                let mut ts = old.remove(&t.id).unwrap_or_else(|| TargetSeries {
                    id: t.id,
                    group: g.name.clone(),
                    address: t.addr.to_string(),
                    requests: None,
                    connect_errors: None,
                    ejected: false,
                    ejections: 0,
                    points: VecDeque::new(),
                });
                let (requests, errors) = (t.total_requests(), t.total_connect_errors());
                let ejected = t.health() == (State::Unhealthy, Reason::PassiveFailures);
                if ejected && !ts.ejected {
                    ts.ejections += 1;
                }
                ts.ejected = ejected;
                push(
                    &mut ts.points,
                    TARGET_CAPACITY,
                    TargetPoint {
                        requests_per_s: rate(ts.requests, requests, dt),
                        connect_errors_per_s: rate(ts.connect_errors, errors, dt),
                        in_flight: u32::try_from(t.total_in_flight()).unwrap_or(u32::MAX),
                    },
                );
                ts.requests = Some(requests);
                ts.connect_errors = Some(errors);
                self.targets.push(ts);
            }
        }
    }

    /// The `/series` document with the samples newer than `after`.
    pub fn render(&self, after: u64, now: Instant) -> Value {
        let wanted = |len: usize| -> usize {
            let newer = self.seq.saturating_sub(after);
            len.min(usize::try_from(newer).unwrap_or(usize::MAX))
        };
        fn tail<T: Copy, V: Into<Value>>(
            ring: &VecDeque<T>,
            n: usize,
            f: impl Fn(&T) -> V,
        ) -> Value {
            Value::Array(
                ring.iter()
                    .skip(ring.len() - n)
                    .map(|p| f(p).into())
                    .collect(),
            )
        }
        let rounded = |x: f32| -> Value {
            if x.is_finite() {
                json!((f64::from(x) * 100.0).round() / 100.0)
            } else {
                Value::Null
            }
        };
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                let n = wanted(l.points.len());
                let p = &l.points;
                json!({
                    "name": l.name,
                    "protocol": l.protocol,
                    "bind": l.bind,
                    "target_group": l.target_group,
                    "connections": tail(p, n, |x| x.connections),
                    "connections_per_s": tail(p, n, |x| rounded(x.connections_per_s)),
                    "requests_per_s": tail(p, n, |x| rounded(x.requests_per_s)),
                    "responses_5xx_per_s": tail(p, n, |x| rounded(x.responses_5xx_per_s)),
                    "errors_per_s": tail(p, n, |x| rounded(x.errors_per_s)),
                    "p50_us": tail(p, n, |x| x.p50),
                    "p90_us": tail(p, n, |x| x.p90),
                    "p99_us": tail(p, n, |x| x.p99),
                    "spectrum": l.spectrum(now),
                })
            })
            .collect();
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                let n = wanted(t.points.len());
                let p = &t.points;
                json!({
                    "group": t.group,
                    "address": t.address,
                    "requests_per_s": tail(p, n, |x| rounded(x.requests_per_s)),
                    "connect_errors_per_s": tail(p, n, |x| rounded(x.connect_errors_per_s)),
                    "in_flight": tail(p, n, |x| x.in_flight),
                    "passive_ejections": t.ejections,
                })
            })
            .collect();
        json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "capacity": CAPACITY,
            "target_capacity": TARGET_CAPACITY,
            "seq": self.seq,
            "time_ms": self.time_ms,
            "listeners": listeners,
            "targets": targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(stats: Arc<ListenerStats>) -> ListenerSeries {
        ListenerSeries {
            name: "web".into(),
            protocol: "http",
            bind: "127.0.0.1:80".into(),
            target_group: "app".into(),
            stats,
            counts: None,
            quiet: 0,
            prev: None,
            base: None,
            next_base: None,
            points: VecDeque::new(),
        }
    }

    #[test]
    fn rings_keep_the_last_capacity_samples() {
        let mut r = VecDeque::new();
        for i in 0..CAPACITY + 10 {
            push(&mut r, CAPACITY, i);
        }
        assert_eq!(r.len(), CAPACITY);
        assert_eq!((r.front(), r.back()), (Some(&10), Some(&(CAPACITY + 9))));
    }

    #[test]
    fn rates_are_unknown_at_first_and_after_a_restart() {
        assert!(rate(None, 5, 1.0).is_nan());
        assert!(rate(Some(9), 5, 1.0).is_nan(), "a counter that went back");
        assert_eq!(rate(Some(5), 25, 2.0), 10.0);
    }

    #[test]
    fn a_sample_has_the_rates_and_percentiles_of_its_second() {
        let stats = Arc::new(ListenerStats::new(1));
        let mut l = listener(stats.clone());
        let t0 = Instant::now();
        l.sample(t0, 0.0);
        let p = l.points[0];
        assert!(p.requests_per_s.is_nan() && p.p50.is_none());

        let mut rec = stats.recorder();
        for us in 1..=100u64 {
            rec.record(us * 10).unwrap();
            stats.slot(0).response(if us <= 10 { 503 } else { 200 });
        }
        drop(rec); // hands its samples over now, as a busy worker does at its next record
        l.sample(t0 + INTERVAL, 1.0);
        let p = l.points[1];
        assert_eq!(p.requests_per_s, 100.0);
        assert_eq!(p.responses_5xx_per_s, 10.0);
        let p50 = p.p50.unwrap();
        assert!((495..=505).contains(&p50), "{p50}");
        assert!((985..=1000).contains(&p.p99.unwrap()), "{:?}", p.p99);

        // Nothing new: zero rates, no percentiles.
        l.sample(t0 + 2 * INTERVAL, 1.0);
        let p = l.points[2];
        assert_eq!((p.requests_per_s, p.p50), (0.0, None));

        let spec = l.spectrum(t0 + 2 * INTERVAL);
        assert_eq!(spec["count"], 100);
        let pts = spec["points"].as_array().unwrap();
        assert_eq!(pts.last().unwrap()[0], 100.0);
        assert!(pts.windows(2).all(|w| w[1][1].as_u64() >= w[0][1].as_u64()));
    }

    #[test]
    fn the_spectrum_base_stays_one_to_two_windows_old() {
        let stats = Arc::new(ListenerStats::new(1));
        let mut l = listener(stats);
        let t0 = Instant::now();
        let h = small_histogram().unwrap();
        for s in 0..=300u64 {
            let now = t0 + Duration::from_secs(s);
            l.rotate_base(now, &h);
            let age = now.saturating_duration_since(l.base.as_ref().unwrap().0);
            assert!(
                age < 2 * SPECTRUM_WINDOW,
                "at {s} s the base is {age:?} old"
            );
            if s >= 2 * SPECTRUM_WINDOW.as_secs() {
                assert!(age >= SPECTRUM_WINDOW, "at {s} s the base is {age:?} old");
            }
        }
    }

    #[test]
    fn render_gives_only_samples_after_the_asked_one() {
        let stats = Arc::new(ListenerStats::new(1));
        let mut store = Store::default();
        let mut l = listener(stats);
        let t0 = Instant::now();
        for i in 0..5u32 {
            l.sample(t0 + INTERVAL * i, 1.0);
            store.seq += 1;
        }
        store.listeners.push(l);
        let all = store.render(0, t0);
        assert_eq!(all["seq"], 5);
        assert_eq!(
            all["listeners"][0]["requests_per_s"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
        assert_eq!(all["listeners"][0]["requests_per_s"][0], Value::Null);
        let newer = store.render(3, t0);
        assert_eq!(newer["listeners"][0]["p50_us"].as_array().unwrap().len(), 2);
        assert_eq!(
            store.render(9, t0)["listeners"][0]["connections"],
            json!([])
        );
        assert!(reply("after=x").is_err());
        assert!(reply("since=1").is_err());
        assert!(reply("after=0").is_ok());
    }
}
