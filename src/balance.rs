//! Target selection: round robin (smooth weighted), least outstanding, power of two choices and
//! source hash.
//!
//! Runs on a worker thread; a `Balancer` is owned by one worker for one group and keeps only
//! worker-local state (cursor, smooth-weight accumulators, RNG). Health is kept out of selection as
//! Pingora does: the balancer walks candidates and a predicate (`Eligible`) skips those that may not
//! take traffic now, or were already tried for this request.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::rc::Rc;

use crate::config::Algorithm;
use crate::pool::LocalTarget;
use crate::target::State;

/// The outcome of a pick.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Index into the candidate slice.
    Target(usize),
    /// Nothing may take traffic yet: targets are still in their initial health checks.
    Initial,
    /// Nothing may take traffic: no targets, all unhealthy without fail-open, or all tried.
    Unavailable,
    /// Every target that may take traffic is at the group's `max_connections`: wait for a slot.
    Full,
    /// The target the request is pinned to (stickiness) is at its limit: wait for a slot there.
    PinnedFull,
}

/// What a request asks of a pick.
pub struct Want<'a> {
    pub client: IpAddr,
    /// Targets already tried for this request.
    pub tried: &'a [u64],
    /// The target its stickiness cookie names.
    pub sticky: Option<&'a crate::sticky::Token>,
}

/// Which states a candidate may be in for this pick.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Eligible {
    Healthy,
    /// Every target is unhealthy and the group fails open (ALB): route to all of them.
    FailOpen,
}

impl Eligible {
    #[inline]
    fn admits(self, state: State) -> bool {
        match self {
            Eligible::Healthy => state == State::Healthy,
            Eligible::FailOpen => matches!(state, State::Healthy | State::Unhealthy),
        }
    }
}

/// Per-worker, per-group selection state.
pub struct Balancer {
    algorithm: Algorithm,
    /// The group's `slow_start` in ms (0: off).
    slow_start_ms: u64,
    cursor: usize,
    current: Vec<i64>,
    rng: fastrand::Rng,
}

impl Balancer {
    pub fn new(algorithm: Algorithm, seed: u64) -> Balancer {
        Balancer {
            algorithm,
            slow_start_ms: 0,
            cursor: seed as usize,
            current: Vec::new(),
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        }
    }

    /// Ramps targets that turn healthy to their weight over `d` (the group's `slow_start`).
    pub fn with_slow_start(mut self, d: std::time::Duration) -> Balancer {
        self.slow_start_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self
    }

    pub fn slow_start_ms(&self) -> u64 {
        self.slow_start_ms
    }

    /// Forgets weight accumulators after a membership change.
    pub fn reset(&mut self, n: usize) {
        self.current.clear();
        self.current.resize(n, 0);
        if n > 0 {
            self.cursor %= n;
        }
    }

    /// Chooses a candidate for a request from `client`, skipping the target ids in `tried`.
    pub fn pick(
        &mut self,
        targets: &[Rc<LocalTarget>],
        client: IpAddr,
        tried: &[u64],
        fail_open: bool,
    ) -> Pick {
        let want = Want {
            client,
            tried,
            sticky: None,
        };
        self.pick_for(targets, &want, fail_open)
    }

    /// Chooses a candidate for `want`: the target its cookie names when that one may take it,
    /// else one by the algorithm among those with room under `max_connections`.
    pub fn pick_for(&mut self, targets: &[Rc<LocalTarget>], want: &Want, fail_open: bool) -> Pick {
        let (client, tried) = (want.client, want.tried);
        if let Some(tok) = want.sticky {
            let pinned = targets.iter().position(|t| {
                &t.token == tok
                    && t.target.state() == State::Healthy
                    && !tried.contains(&t.target.id)
            });
            if let Some(i) = pinned {
                // A pinned target at its limit is waited for, not replaced (as HAProxy queues
                // on a persistent server).
                return if targets[i].has_room() {
                    Pick::Target(i)
                } else {
                    Pick::PinnedFull
                };
            }
        }
        if let Some(i) = self.pick_with(targets, client, tried, Eligible::Healthy) {
            return Pick::Target(i);
        }
        let full = |e: Eligible| {
            targets
                .iter()
                .any(|t| e.admits(t.target.state()) && !tried.contains(&t.target.id))
        };
        if full(Eligible::Healthy) {
            // Healthy, untried targets exist: all of them are at their limit.
            return Pick::Full;
        }
        // Nothing healthy (and untried). Fail open only when no target is healthy at all: a healthy
        // target that was already tried must not let unhealthy ones in.
        let mut any_initial = false;
        let mut any_healthy = false;
        let mut any_unhealthy = false;
        for t in targets {
            match t.target.state() {
                State::Initial => any_initial = true,
                State::Healthy => any_healthy = true,
                State::Unhealthy => any_unhealthy = true,
                State::Draining => {}
            }
        }
        if fail_open && any_unhealthy && !any_healthy {
            if let Some(i) = self.pick_with(targets, client, tried, Eligible::FailOpen) {
                return Pick::Target(i);
            }
            if full(Eligible::FailOpen) {
                return Pick::Full;
            }
        }
        if any_initial && !any_healthy && !any_unhealthy {
            return Pick::Initial;
        }
        Pick::Unavailable
    }

    fn pick_with(
        &mut self,
        targets: &[Rc<LocalTarget>],
        client: IpAddr,
        tried: &[u64],
        e: Eligible,
    ) -> Option<usize> {
        let ok = |t: &LocalTarget| {
            e.admits(t.target.state()) && !tried.contains(&t.target.id) && t.has_room()
        };
        // A clock is read only while some target ramps up (slow start).
        let now = (self.slow_start_ms > 0 && targets.iter().any(|t| t.target.ramping()))
            .then(crate::target::process_millis);
        let weights = Weights {
            now,
            ramp_ms: self.slow_start_ms,
        };
        match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(targets, ok, &weights),
            Algorithm::LeastOutstanding => self.least_outstanding(targets, ok, &weights),
            Algorithm::PowerOfTwo => self.power_of_two(targets, ok, &weights),
            Algorithm::SourceHash => source_hash(targets, client, ok, &weights),
        }
    }

    fn round_robin(
        &mut self,
        targets: &[Rc<LocalTarget>],
        ok: impl Fn(&LocalTarget) -> bool,
        weights: &Weights,
    ) -> Option<usize> {
        let n = targets.len();
        if n == 0 {
            return None;
        }
        let first_weight = targets[0].target.weight();
        if weights.now.is_none() && targets.iter().all(|t| t.target.weight() == first_weight) {
            // Equal weights: a plain rotating cursor, O(1) when everything is healthy.
            for k in 0..n {
                let i = (self.cursor + k) % n;
                if ok(&targets[i]) {
                    self.cursor = i + 1;
                    return Some(i);
                }
            }
            return None;
        }
        // Smooth weighted round robin (as nginx): every eligible candidate gains its weight, the
        // richest is chosen and pays the total. Spreads a 5:1:1 as a,a,b,a,c,a,a — never bursts.
        if self.current.len() != n {
            self.reset(n);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, t) in targets.iter().enumerate() {
            if !ok(t) {
                continue;
            }
            let w = weights.of(t) as i64;
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }

    fn least_outstanding(
        &mut self,
        targets: &[Rc<LocalTarget>],
        ok: impl Fn(&LocalTarget) -> bool,
        weights: &Weights,
    ) -> Option<usize> {
        let n = targets.len();
        let mut best: Option<(usize, u64)> = None;
        // Start at a rotating offset so ties spread instead of piling on the first target.
        let start = self.cursor;
        self.cursor = self.cursor.wrapping_add(1);
        for k in 0..n {
            let i = (start + k) % n;
            let t = &targets[i];
            if !ok(t) {
                continue;
            }
            // Weighted: in-flight per unit of weight (one more for the request being placed, so a
            // ramping target's small weight counts even when it has nothing in flight).
            let load = (u64::from(t.in_flight.get()) + 1) * 1_000_000 / weights.of(t);
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    fn power_of_two(
        &mut self,
        targets: &[Rc<LocalTarget>],
        ok: impl Fn(&LocalTarget) -> bool,
        weights: &Weights,
    ) -> Option<usize> {
        let eligible = targets.iter().filter(|t| ok(t)).count();
        if eligible == 0 {
            return None;
        }
        let nth = |k: usize| {
            targets
                .iter()
                .enumerate()
                .filter(|(_, t)| ok(t))
                .nth(k)
                .map(|(i, _)| i)
        };
        if eligible == 1 {
            return nth(0);
        }
        let a = self.rng.usize(..eligible);
        let mut b = self.rng.usize(..eligible - 1);
        if b >= a {
            b += 1;
        }
        let (ia, ib) = (nth(a)?, nth(b)?);
        let load = |i: usize| {
            let t = &targets[i];
            (u64::from(t.in_flight.get()) + 1) * 1_000_000 / weights.of(t)
        };
        Some(if load(ib) < load(ia) { ib } else { ia })
    }
}

/// Weighted rendezvous hashing on the client address: the same client reaches the same target on
/// every worker, and a membership change moves only the clients of the target that changed.
fn source_hash(
    targets: &[Rc<LocalTarget>],
    client: IpAddr,
    ok: impl Fn(&LocalTarget) -> bool,
    weights: &Weights,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, t) in targets.iter().enumerate() {
        if !ok(t) {
            continue;
        }
        let mut h = std::hash::DefaultHasher::new();
        client.hash(&mut h);
        t.target.addr.hash(&mut h);
        let x = h.finish();
        // Uniform in (0, 1]; score = weight / -ln(u): the highest score wins.
        let u = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let score = weights.of(t) as f64 / -u.ln().min(-f64::MIN_POSITIVE);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Effective weights, in thousandths: a target's weight, or while it ramps up after turning
/// healthy (slow start), the share of it that the time since then is of `slow_start` (at least
/// one thousandth).
struct Weights {
    now: Option<u64>,
    ramp_ms: u64,
}

impl Weights {
    #[inline]
    fn of(&self, t: &LocalTarget) -> u64 {
        let w = u64::from(t.target.weight().max(1)) * 1000;
        match self.now {
            Some(now) => match t.target.ramp_started() {
                Some(from) if now.saturating_sub(from) < self.ramp_ms => {
                    (w * now.saturating_sub(from) / self.ramp_ms).max(1)
                }
                _ => w,
            },
            None => w,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Reason, Target};
    use std::sync::Arc;
    use std::time::Duration;

    fn targets(weights: &[u32]) -> Vec<Rc<LocalTarget>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = format!("127.0.0.1:{}", 3000 + i).parse().unwrap();
                let t = Arc::new(Target::new(
                    i as u64 + 1,
                    addr,
                    w,
                    State::Healthy,
                    Reason::None,
                    1,
                ));
                Rc::new(LocalTarget::new(t, 0, 4, Duration::from_secs(4)))
            })
            .collect()
    }

    fn counts(b: &mut Balancer, ts: &[Rc<LocalTarget>], n: usize) -> Vec<usize> {
        let mut c = vec![0; ts.len()];
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..n {
            match b.pick(ts, ip, &[], true) {
                Pick::Target(i) => c[i] += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        c
    }

    #[test]
    fn round_robin_is_even_and_weighted() {
        let ts = targets(&[1, 1, 1]);
        assert_eq!(
            counts(&mut Balancer::new(Algorithm::RoundRobin, 0), &ts, 300),
            vec![100, 100, 100]
        );
        let ts = targets(&[5, 1, 1]);
        let mut b = Balancer::new(Algorithm::RoundRobin, 0);
        let seq: Vec<usize> = (0..7)
            .map(
                |_| match b.pick(&ts, "10.0.0.1".parse().unwrap(), &[], true) {
                    Pick::Target(i) => i,
                    _ => usize::MAX,
                },
            )
            .collect();
        // Smooth: the heavy target never takes more than two in a row.
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn unhealthy_skipped_and_fail_open() {
        let ts = targets(&[1, 1]);
        ts[0]
            .target
            .set_state(State::Unhealthy, Reason::FailedHealthChecks);
        let c = counts(&mut Balancer::new(Algorithm::RoundRobin, 0), &ts, 10);
        assert_eq!(c, vec![0, 10]);
        ts[1]
            .target
            .set_state(State::Unhealthy, Reason::FailedHealthChecks);
        let c = counts(&mut Balancer::new(Algorithm::RoundRobin, 0), &ts, 10);
        assert_eq!(c, vec![5, 5], "fail open routes to all");
        let mut b = Balancer::new(Algorithm::RoundRobin, 0);
        assert_eq!(
            b.pick(&ts, "10.0.0.1".parse().unwrap(), &[], false),
            Pick::Unavailable
        );
    }

    #[test]
    fn initial_targets_get_nothing() {
        let ts = targets(&[1, 1]);
        for t in &ts {
            t.target
                .set_state(State::Initial, Reason::InitialHealthChecking);
        }
        let mut b = Balancer::new(Algorithm::RoundRobin, 0);
        assert_eq!(
            b.pick(&ts, "10.0.0.1".parse().unwrap(), &[], true),
            Pick::Initial
        );
    }

    #[test]
    fn tried_targets_are_skipped() {
        let ts = targets(&[1, 1]);
        let mut b = Balancer::new(Algorithm::LeastOutstanding, 0);
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(b.pick(&ts, ip, &[1], true), Pick::Target(1));
        assert_eq!(b.pick(&ts, ip, &[1, 2], true), Pick::Unavailable);
    }

    #[test]
    fn least_outstanding_prefers_idle() {
        let ts = targets(&[1, 1, 1]);
        ts[0].in_flight.set(3);
        ts[2].in_flight.set(1);
        let mut b = Balancer::new(Algorithm::LeastOutstanding, 0);
        assert_eq!(
            b.pick(&ts, "10.0.0.1".parse().unwrap(), &[], true),
            Pick::Target(1)
        );
    }

    #[test]
    fn power_of_two_avoids_the_loaded_one() {
        let ts = targets(&[1, 1]);
        ts[0].in_flight.set(50);
        let c = counts(&mut Balancer::new(Algorithm::PowerOfTwo, 7), &ts, 100);
        assert_eq!(c, vec![0, 100]);
    }

    #[test]
    fn source_hash_is_sticky_and_spreads() {
        let ts = targets(&[1, 1, 1, 1]);
        let mut b1 = Balancer::new(Algorithm::SourceHash, 1);
        let mut b2 = Balancer::new(Algorithm::SourceHash, 99);
        let mut seen = [0usize; 4];
        for i in 0..400u32 {
            let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            let a = b1.pick(&ts, ip, &[], true);
            assert_eq!(
                a,
                b2.pick(&ts, ip, &[], true),
                "same target on every worker"
            );
            if let Pick::Target(t) = a {
                seen[t] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c > 60), "spread {seen:?}");
        // Removing one target moves only its clients.
        let ip = IpAddr::from([192, 168, 1, 7]);
        let before = b1.pick(&ts, ip, &[], true);
        let Pick::Target(t) = before else { panic!() };
        let other = (t + 1) % 4;
        ts[other]
            .target
            .set_state(State::Unhealthy, Reason::FailedHealthChecks);
        assert_eq!(b1.pick(&ts, ip, &[], true), before);
    }
}
