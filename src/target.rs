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
use std::sync::{Arc, Mutex};
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

/// The result of one active health check, as the health thread counts it per target (the
/// `result` label of `ringlb_health_checks_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    Pass = 0,
    /// No answer within the check's `timeout`.
    Timeout = 1,
    /// An HTTP answer whose status the `matcher` rejects.
    ResponseCodeMismatch = 2,
    /// Connection refused or reset, or a malformed answer.
    Failed = 3,
}

/// Every outcome, in counter order.
pub const CHECK_OUTCOMES: [CheckOutcome; 4] = [
    CheckOutcome::Pass,
    CheckOutcome::Timeout,
    CheckOutcome::ResponseCodeMismatch,
    CheckOutcome::Failed,
];

impl CheckOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CheckOutcome::Pass => "pass",
            CheckOutcome::Timeout => "timeout",
            CheckOutcome::ResponseCodeMismatch => "response_code_mismatch",
            CheckOutcome::Failed => "failed",
        }
    }

    /// The reason a target carries when this outcome makes it unhealthy (`None` for a pass).
    pub fn reason(self) -> Reason {
        match self {
            CheckOutcome::Pass => Reason::None,
            CheckOutcome::Timeout => Reason::Timeout,
            CheckOutcome::ResponseCodeMismatch => Reason::ResponseCodeMismatch,
            CheckOutcome::Failed => Reason::FailedHealthChecks,
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
    /// Active health-check outcomes by `CheckOutcome` (written only by the health thread).
    pub checks: [AtomicU64; CHECK_OUTCOMES.len()],
    /// When the target last turned healthy ([`process_millis`] + 1), while it may still be
    /// ramping up (slow start); 0: not ramping. Cleared by the workers' sweep once past.
    ramp_from: AtomicU64,
    /// Its first turn to healthy ramps too: it joined after the process started (registered,
    /// added by a reload or by DNS). Targets of the first config are at full weight once healthy.
    ramp_first: std::sync::atomic::AtomicBool,
}

/// Milliseconds since the process's first call (a monotonic clock shared by every thread).
pub fn process_millis() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
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
            checks: Default::default(),
            ramp_from: AtomicU64::new(0),
            ramp_first: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// True while the target may be ramping up after turning healthy.
    #[inline]
    pub fn ramping(&self) -> bool {
        self.ramp_from.load(Relaxed) != 0
    }

    /// When the target turned healthy ([`process_millis`]), while it may be ramping up.
    #[inline]
    pub fn ramp_started(&self) -> Option<u64> {
        match self.ramp_from.load(Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// Starts a ramp now (a target that turned healthy, or joined healthy).
    pub fn start_ramp(&self) {
        self.ramp_from.store(process_millis() + 1, Relaxed);
    }

    /// Ends the ramp once `ramp_ms` have passed (the workers' sweep; any of them may).
    pub fn end_ramp(&self, ramp_ms: u64) {
        if let Some(from) = self.ramp_started() {
            if process_millis().saturating_sub(from) >= ramp_ms {
                self.ramp_from.store(0, Relaxed);
            }
        }
    }

    /// A target of the first config: its first turn to healthy is at full weight.
    pub fn no_first_ramp(&self) {
        self.ramp_first.store(false, Relaxed);
        self.ramp_from.store(0, Relaxed);
    }

    /// Counts one health-check outcome (health thread only: single writer).
    pub fn count_check(&self, outcome: CheckOutcome) {
        WorkerSlot::bump(&self.checks[outcome as usize]);
    }

    pub fn checks(&self, outcome: CheckOutcome) -> u64 {
        self.checks[outcome as usize].load(Relaxed)
    }

    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.health.load(Relaxed) as u8)
    }

    pub fn reason(&self) -> Reason {
        Reason::from_u8((self.health.load(Relaxed) >> 8) as u8)
    }

    /// State and reason from one load: a consistent pair (two separate calls may straddle a
    /// transition and pair a new state with an old reason).
    pub fn health(&self) -> (State, Reason) {
        let v = self.health.load(Relaxed);
        (State::from_u8(v as u8), Reason::from_u8((v >> 8) as u8))
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
                Ok(_) => {
                    let before = State::from_u8(cur as u8);
                    if state == State::Healthy && before != State::Healthy {
                        // Slow start: from unhealthy always; from initial unless the target
                        // was in the first config (healthy from the first check round).
                        if before != State::Initial || self.ramp_first.load(Relaxed) {
                            self.start_ramp();
                        }
                    }
                    return true;
                }
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
    /// What ringlb speaks to the targets.
    pub version: crate::config::ProtocolVersion,
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

/// Counters one worker keeps for one group (only that worker writes them): its request queue
/// under `max_connections`, and retries by cause.
#[derive(Default)]
pub struct GroupSlot {
    /// Requests waiting in the queue now.
    pub queued: AtomicU32,
    /// Requests that waited in the queue, and those of them that timed out (503).
    pub queue_waits: AtomicU64,
    pub queue_timeouts: AtomicU64,
    /// Time spent waiting in the queue, in microseconds.
    pub queue_wait_us: AtomicU64,
    /// Retries on another target, by cause (`retry_on`).
    pub retries_connect: AtomicU64,
    pub retries_reset: AtomicU64,
    pub retries_timeout: AtomicU64,
}

impl GroupSlot {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }
}

/// Source of membership versions, shared by every group of every table: a (group, version) pair
/// names one membership even across reloads, so a worker never mistakes a new group's first
/// snapshot for an old one's.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Relaxed)
}

/// One target group: settings plus the swappable membership.
pub struct Group {
    /// Unique across every table this process builds (reloads included).
    pub uid: u64,
    pub name: String,
    pub index: usize,
    pub settings: GroupSettings,
    pub config: TargetGroupConfig,
    members: ArcSwap<Members>,
    /// Serialises membership writers (admin registration, the deregistration reaper) so that no
    /// read-modify-write loses another's change. Never taken by readers.
    writer: Mutex<()>,
    /// Replaced by a fresh global version after every membership swap; workers compare it to
    /// rebuild their mirrors.
    version: AtomicU64,
    /// https groups: the TLS client for re-encryption (set by the main thread when it builds the
    /// table; `None` for plain groups).
    pub upstream_tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// Per-worker counters (queue, retries), cache-line padded.
    pub slots: Box<[CachePadded<GroupSlot>]>,
}

impl Group {
    /// This worker's counters for the group.
    pub fn slot(&self, worker: usize) -> &GroupSlot {
        &self.slots[worker % self.slots.len()]
    }

    /// A counter summed over the workers.
    pub fn total(&self, f: impl Fn(&GroupSlot) -> u64) -> u64 {
        self.slots.iter().map(|s| f(s)).sum()
    }
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
        self.edit_members(|t| *t = targets);
    }

    /// Edits a copy of the membership under the writer lock and publishes it whole; `f`'s result
    /// is returned (e.g. whether the edit applied). Readers never wait.
    pub fn edit_members<R>(&self, f: impl FnOnce(&mut Vec<Arc<Target>>) -> R) -> R {
        let _guard = match self.writer.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut targets = self.members.load().targets.clone();
        let r = f(&mut targets);
        self.members.store(Arc::new(Members { targets }));
        self.version
            .store(next_version(), std::sync::atomic::Ordering::Release);
        r
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
        Table::rebuild(config, workers, None, Vec::new())
    }

    /// Builds the table for `config`, keeping from `old` (a reload) the `Arc<Target>` of every
    /// (group name, address) pair that remains, so its health state, counters and the workers'
    /// pools survive. A group with dns targets also keeps its old non-static members until the
    /// resolver answers. `upstream_tls` (by group index) is attached to https groups.
    pub fn rebuild(
        config: &Config,
        workers: usize,
        old: Option<&Table>,
        mut upstream_tls: Vec<Option<Arc<crate::tls::UpstreamTls>>>,
    ) -> Table {
        let table = Table {
            groups: Vec::new(),
            workers,
            epoch: old.map_or_else(Instant::now, |o| o.epoch),
            next_id: AtomicU64::new(old.map_or(1, |o| o.next_id.load(Relaxed))),
        };
        let mut groups = Vec::with_capacity(config.target_groups.len());
        for (index, g) in config.target_groups.iter().enumerate() {
            let has_hc = g.health_check.is_some();
            let previous = old.and_then(|o| o.group(&g.name)).map(|o| o.members_full());
            let kept = |addr: SocketAddr| {
                previous
                    .as_ref()
                    .and_then(|p| p.targets.iter().find(|t| t.addr == addr).cloned())
                    // A deregistered target never comes back: listed again, it starts fresh.
                    .filter(|t| t.state() != State::Draining)
            };
            let mut targets: Vec<Arc<Target>> = g
                .targets
                .iter()
                .filter_map(|t| match t {
                    TargetSpec::Static { address, weight } => Some(match kept(*address) {
                        Some(t) => {
                            t.weight.store(*weight, Relaxed);
                            t
                        }
                        None => {
                            let t = table.new_target(*address, *weight, has_hc);
                            if old.is_none() {
                                // The first config: full weight from the start.
                                t.no_first_ramp();
                            }
                            t
                        }
                    }),
                    TargetSpec::Dns { .. } => None,
                })
                .collect();
            // Resolved targets stay until the resolver answers again; it adopts them
            // (`dns::entries`), so they are only kept where one dns entry can own them: the only
            // one of the group with their port.
            if let Some(p) = &previous {
                for t in &p.targets {
                    if crate::dns::sole_entry_port(g, t.addr.port())
                        && !targets.iter().any(|k| k.addr == t.addr)
                    {
                        targets.push(t.clone());
                    }
                }
            }
            groups.push(Arc::new(Group {
                uid: next_version(),
                name: g.name.clone(),
                index,
                settings: GroupSettings {
                    protocol: g.protocol,
                    version: g.protocol_version,
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
                writer: Mutex::new(()),
                version: AtomicU64::new(next_version()),
                upstream_tls: upstream_tls.get_mut(index).and_then(Option::take),
                slots: (0..workers.max(1))
                    .map(|_| CachePadded::new(GroupSlot::default()))
                    .collect(),
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
        let t = Arc::new(Target::new(id, addr, weight, state, reason, self.workers));
        if !health_checked {
            // Joins healthy (registered, added by a reload or by DNS): slow start ramps it from
            // now. Targets of the first config are exempt (`no_first_ramp`).
            t.start_ramp();
        }
        t
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

    fn one_group_table() -> Table {
        let toml =
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n\
                    [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\n";
        let config = Config::parse(toml, std::path::Path::new("t.toml")).expect("config");
        Table::build(&config, 2)
    }

    #[test]
    fn rebuild_keeps_targets_that_stay_with_their_health() {
        let parse = |targets: &str| {
            let toml = format!(
                "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n\
                 [[target_group]]\nname = \"app\"\ntargets = [{targets}]\n\
                 [target_group.health_check]\npath = \"/\"\n"
            );
            Config::parse(&toml, std::path::Path::new("t.toml")).expect("config")
        };
        let old = Table::build(&parse("\"127.0.0.1:3000\", \"127.0.0.1:3001\""), 2);
        let kept = old.groups[0].members().targets[0].clone();
        kept.transition(State::Healthy, Reason::None);
        let new = Table::rebuild(
            &parse("\"127.0.0.1:3000\", { address = \"127.0.0.1:3002\", weight = 5 }"),
            2,
            Some(&old),
            Vec::new(),
        );
        let g = &new.groups[0];
        let m = g.members();
        assert_eq!(m.targets.len(), 2);
        assert!(
            Arc::ptr_eq(&m.targets[0], &kept),
            "same target, same counters"
        );
        assert_eq!(m.targets[0].state(), State::Healthy, "not back to initial");
        assert_eq!(m.targets[1].state(), State::Initial);
        assert_eq!(m.targets[1].weight(), 5);
        assert!(
            old.groups[0]
                .members()
                .targets
                .iter()
                .all(|t| t.id != m.targets[1].id),
            "a new target never reuses an id"
        );
        assert_ne!(g.uid, old.groups[0].uid);
        assert_ne!(g.version(), old.groups[0].version());
    }

    #[test]
    fn edit_members_publishes_a_new_version() {
        let table = one_group_table();
        let g = table.groups[0].clone();
        let v = g.version();
        let t = table.new_target("127.0.0.1:3001".parse().unwrap(), 2, true);
        let added = g.edit_members(|m| {
            m.push(t.clone());
            m.len()
        });
        assert_eq!(added, 2);
        assert!(g.version() > v, "workers must see a new version");
        let members = g.members();
        assert_eq!(members.targets.len(), 2);
        assert_eq!(members.targets[1].state(), State::Initial);
        assert_eq!(members.targets[1].reason(), Reason::InitialHealthChecking);
    }

    /// Readers (as workers and the admin thread) load the membership and target states in a loop
    /// while a writer swaps membership and flips states: every snapshot a reader sees is one the
    /// writer published whole, every (state, reason) pair is one the writer wrote, and the version
    /// never goes backwards.
    #[test]
    fn readers_see_whole_snapshots_under_a_churning_writer() {
        use std::sync::atomic::AtomicBool;
        let table = Arc::new(one_group_table());
        let g = table.groups[0].clone();
        let stop = Arc::new(AtomicBool::new(false));
        // Replace the config's target with a marked one so readers can tell it apart.
        g.replace_members(vec![Arc::new(Target::new(
            0,
            "127.0.0.1:1".parse().unwrap(),
            1000,
            State::Healthy,
            Reason::None,
            2,
        ))]);
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (g, stop) = (g.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut last_version = 0;
                    let mut seen = 0u64;
                    while !stop.load(Relaxed) {
                        let v = g.version();
                        assert!(v >= last_version, "version went backwards");
                        last_version = v;
                        let m = g.members();
                        let Some(first) = m.targets.first() else {
                            continue;
                        };
                        // The writer publishes generation k as k%4+1 targets with weight k.
                        let k = first.weight();
                        if k >= 1000 {
                            continue; // the marked snapshot before the churn
                        }
                        assert_eq!(m.targets.len() as u32, k % 4 + 1, "torn membership");
                        for t in m.targets.iter() {
                            assert_eq!(t.weight(), k, "mixed generations in one snapshot");
                            let pair = t.health();
                            assert!(
                                matches!(
                                    pair,
                                    (State::Initial, Reason::InitialHealthChecking)
                                        | (State::Healthy, Reason::None)
                                        | (State::Unhealthy, Reason::FailedHealthChecks)
                                ),
                                "torn state {pair:?}"
                            );
                        }
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        let deadline = Instant::now() + std::time::Duration::from_millis(300);
        let mut k = 1u32;
        while Instant::now() < deadline {
            let targets: Vec<Arc<Target>> = (0..k % 4 + 1)
                .map(|i| {
                    let addr = SocketAddr::from(([127, 0, 0, 1], 2000 + i as u16));
                    table.new_target(addr, k, true)
                })
                .collect();
            g.replace_members(targets.clone());
            for (i, t) in targets.iter().enumerate() {
                if i % 2 == 0 {
                    t.transition(State::Healthy, Reason::None);
                } else {
                    t.transition(State::Unhealthy, Reason::FailedHealthChecks);
                }
            }
            k = k % 999 + 1;
        }
        stop.store(true, Relaxed);
        for r in readers {
            let seen = r.join().expect("a reader saw a torn snapshot");
            assert!(seen > 0, "readers made progress");
        }
    }
}
