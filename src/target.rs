//! The shared, lock-free table of targets and their health.
//!
//! Built by the main thread from the config; read by every worker on every pick; written by the
//! health thread (state transitions), by the admin thread (registration, deregistration) and, rarely,
//! by a worker that sees `passive_failures` consecutive live-traffic failures.
//!
//! Membership of a group is an arc-swap snapshot (`Members`) replaced whole on change, with a
//! version counter workers poll to rebuild their local mirror. A target's state lives in one atomic
//! (state + reason), and its per-worker counters live in cache-line-padded slots that only their
//! worker writes: no shared line is written on the request path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;

use crate::config::{Algorithm, Config, GroupProtocol, TargetGroupConfig, TargetSpec};

/// A target's routing state, as the admin API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Initial = 0,
    Healthy = 1,
    Unhealthy = 2,
    Draining = 3,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Initial => "initial",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Draining => "draining",
        }
    }
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Healthy,
            2 => State::Unhealthy,
            3 => State::Draining,
            _ => State::Initial,
        }
    }
}

/// Why a target is in its state, with the names AWS ALB uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    None = 0,
    InitialHealthChecking = 1,
    Timeout = 2,
    ResponseCodeMismatch = 3,
    FailedHealthChecks = 4,
    DeregistrationInProgress = 5,
    ConnectFailed = 6,
    PassiveFailures = 7,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::InitialHealthChecking => "Elb.InitialHealthChecking",
            Reason::Timeout => "Target.Timeout",
            Reason::ResponseCodeMismatch => "Target.ResponseCodeMismatch",
            Reason::FailedHealthChecks => "Target.FailedHealthChecks",
            Reason::DeregistrationInProgress => "Target.DeregistrationInProgress",
            Reason::ConnectFailed => "Target.ConnectFailed",
            Reason::PassiveFailures => "Target.PassiveFailures",
        }
    }
    fn from_u8(v: u8) -> Reason {
        match v {
            1 => Reason::InitialHealthChecking,
            2 => Reason::Timeout,
            3 => Reason::ResponseCodeMismatch,
            4 => Reason::FailedHealthChecks,
            5 => Reason::DeregistrationInProgress,
            6 => Reason::ConnectFailed,
            7 => Reason::PassiveFailures,
            _ => Reason::None,
        }
    }
}

/// Counters one worker keeps for one target. Only that worker writes them (plain load + store, no
/// read-modify-write); readers sum them across workers.
#[derive(Default)]
pub struct WorkerSlot {
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    pub connect_errors: AtomicU64,
    pub consecutive_failures: AtomicU32,
}

impl WorkerSlot {
    /// Single-writer increment: the owning worker is the only writer.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    }
}

/// One target of one group. Shared by all threads through `Arc`.
pub struct Target {
    pub id: u64,
    pub addr: SocketAddr,
    weight: AtomicU32,
    /// state in bits 0..8, reason in bits 8..16.
    health: CachePadded<AtomicU32>,
    /// Set when draining starts (ms since the table's epoch), for the admin view and the reaper.
    pub draining_since_ms: AtomicU64,
    pub workers: Box<[CachePadded<WorkerSlot>]>,
}

impl Target {
    pub fn new(
        id: u64,
        addr: SocketAddr,
        weight: u32,
        state: State,
        reason: Reason,
        workers: usize,
    ) -> Target {
        Target {
            id,
            addr,
            weight: AtomicU32::new(weight),
            health: CachePadded::new(AtomicU32::new(pack(state, reason))),
            draining_since_ms: AtomicU64::new(0),
            workers: (0..workers.max(1))
                .map(|_| CachePadded::new(WorkerSlot::default()))
                .collect(),
        }
    }

    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.health.load(Relaxed) as u8)
    }

    pub fn reason(&self) -> Reason {
        Reason::from_u8((self.health.load(Relaxed) >> 8) as u8)
    }

    pub fn set_state(&self, state: State, reason: Reason) {
        self.health.store(pack(state, reason), Relaxed);
    }

    /// Moves to `state` unless the target is draining (a deregistered target never comes back).
    pub fn transition(&self, state: State, reason: Reason) -> bool {
        let mut cur = self.health.load(Relaxed);
        loop {
            if State::from_u8(cur as u8) == State::Draining {
                return false;
            }
            let new = pack(state, reason);
            if new == cur {
                return false;
            }
            match self
                .health
                .compare_exchange_weak(cur, new, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub fn slot(&self, worker: usize) -> &WorkerSlot {
        &self.workers[worker % self.workers.len()]
    }

    pub fn total_requests(&self) -> u64 {
        self.workers.iter().map(|w| w.requests.load(Relaxed)).sum()
    }

    pub fn total_in_flight(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| u64::from(w.in_flight.load(Relaxed)))
            .sum()
    }

    pub fn total_connect_errors(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.connect_errors.load(Relaxed))
            .sum()
    }
}

fn pack(state: State, reason: Reason) -> u32 {
    (state as u32) | ((reason as u32) << 8)
}

/// A group's membership at one moment. Replaced whole, never edited in place.
pub struct Members {
    pub targets: Vec<Arc<Target>>,
}

/// Settings the request path needs from a group's config, copied once.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub protocol: GroupProtocol,
    pub algorithm: Algorithm,
    pub retries: u32,
    pub fail_open: bool,
    pub passive_failures: u32,
    pub connect_timeout: std::time::Duration,
    pub response_timeout: std::time::Duration,
    pub keepalive_timeout: std::time::Duration,
    pub max_idle_per_target: usize,
    pub deregistration_delay: std::time::Duration,
    pub has_health_check: bool,
}

/// One target group: settings plus the swappable membership.
pub struct Group {
    pub name: String,
    pub index: usize,
    pub settings: GroupSettings,
    pub config: TargetGroupConfig,
    members: ArcSwap<Members>,
    /// Bumped after every membership swap; workers compare it to rebuild their mirrors.
    version: AtomicU64,
}

impl Group {
    pub fn members(&self) -> arc_swap::Guard<Arc<Members>> {
        self.members.load()
    }

    pub fn members_full(&self) -> Arc<Members> {
        self.members.load_full()
    }

    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces the membership (admin and DNS threads). Workers see it on their next pick.
    pub fn replace_members(&self, targets: Vec<Arc<Target>>) {
        self.members.store(Arc::new(Members { targets }));
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// All groups, in config order. Built by the main thread; shared read-only (its atomics aside).
pub struct Table {
    pub groups: Vec<Arc<Group>>,
    pub workers: usize,
    pub epoch: Instant,
    next_id: AtomicU64,
}

impl Table {
    /// Builds the table from a validated config. Targets of a group with a health check start
    /// `initial`; without one they are healthy at once. DNS targets start empty and are filled by
    /// the resolver.
    pub fn build(config: &Config, workers: usize) -> Table {
        let table = Table {
            groups: Vec::new(),
            workers,
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
        };
        let mut groups = Vec::with_capacity(config.target_groups.len());
        for (index, g) in config.target_groups.iter().enumerate() {
            let has_hc = g.health_check.is_some();
            let targets = g
                .targets
                .iter()
                .filter_map(|t| match t {
                    TargetSpec::Static { address, weight } => {
                        Some(table.new_target(*address, *weight, has_hc))
                    }
                    TargetSpec::Dns { .. } => None,
                })
                .collect();
            groups.push(Arc::new(Group {
                name: g.name.clone(),
                index,
                settings: GroupSettings {
                    protocol: g.protocol,
                    algorithm: g.algorithm,
                    retries: g.retries,
                    fail_open: g.fail_open,
                    passive_failures: g.passive_failures,
                    connect_timeout: g.connect_timeout,
                    response_timeout: g.response_timeout,
                    keepalive_timeout: g.keepalive_timeout,
                    max_idle_per_target: g.max_idle_per_target,
                    deregistration_delay: g.deregistration_delay,
                    has_health_check: has_hc,
                },
                config: g.clone(),
                members: ArcSwap::from_pointee(Members { targets }),
                version: AtomicU64::new(1),
            }));
        }
        Table { groups, ..table }
    }

    /// A fresh target with a unique id, in the state a new member of its group starts in.
    pub fn new_target(&self, addr: SocketAddr, weight: u32, health_checked: bool) -> Arc<Target> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let (state, reason) = if health_checked {
            (State::Initial, Reason::InitialHealthChecking)
        } else {
            (State::Healthy, Reason::None)
        };
        Arc::new(Target::new(id, addr, weight, state, reason, self.workers))
    }

    pub fn group(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn millis_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_never_leaves_draining() {
        let t = Target::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            1,
            State::Initial,
            Reason::None,
            2,
        );
        assert!(t.transition(State::Healthy, Reason::None));
        assert_eq!(t.state(), State::Healthy);
        t.set_state(State::Draining, Reason::DeregistrationInProgress);
        assert!(!t.transition(State::Healthy, Reason::None));
        assert_eq!(t.state(), State::Draining);
        assert_eq!(t.reason().name(), "Target.DeregistrationInProgress");
    }

    #[test]
    fn per_worker_counters_sum() {
        let t = Target::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            1,
            State::Healthy,
            Reason::None,
            3,
        );
        WorkerSlot::bump(&t.slot(0).requests);
        WorkerSlot::bump(&t.slot(2).requests);
        WorkerSlot::bump(&t.slot(2).requests);
        assert_eq!(t.total_requests(), 3);
    }
}
