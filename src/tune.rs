//! `ringlb tune`: audits this host for ringlb and prints each finding with its fix.
//!
//! Runs on the main thread of the `ringlb tune` command, start to end; it owns everything it
//! builds. [`Facts::gather`] takes what needs syscalls (the io_uring probe, rlimits, uname, the
//! kTLS probe), [`Plan`] is what the config (or the defaults) expects, and [`audit`] turns them and
//! the files under /proc and /sys ([`Host`]) into [`Finding`]s. Nothing here changes the host.

pub mod checks;
pub mod host;

use serde::Serialize;

use crate::config::{Config, IoBackend};
pub use host::{Host, Ktls, Limit};

/// A finding's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fits what ringlb expects.
    Ok,
    /// Will cost throughput, connections or latency under load: apply the fix.
    Warn,
    /// Worth knowing; nothing to fix, or nothing tune can judge here.
    Info,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Info => "info",
        }
    }
}

/// One audited item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name of the check ("somaxconn", "io_uring", ...).
    pub check: &'static str,
    pub status: Status,
    /// What this host has, with what it was compared against.
    pub observed: String,
    /// What to do and why (for an ok finding: why it is fine).
    pub recommendation: String,
    /// The exact command(s) that apply the recommendation; empty when there is nothing to run.
    pub fix: String,
}

/// Expected connections when no config is given: one listener with the default backlog.
pub const DEFAULT_LISTENERS: &[(&str, u32)] = &[("(default)", crate::config::DEFAULT_BACKLOG)];

/// What the config asks of the host.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Whether a config was given (else: the defaults, said so in the findings).
    pub from_config: bool,
    /// `runtime.workers` resolved (0 → the allowed CPUs).
    pub workers: usize,
    pub pin: bool,
    pub io: IoBackend,
    /// (listener name, backlog).
    pub listeners: Vec<(String, u32)>,
    /// Upstream connections at most: targets × max_idle_per_target × workers, summed over groups
    /// (a dns entry counts as one target).
    pub upstream_connections: u64,
    /// Target groups without `congestion_control`: their connections run the host default.
    pub default_congestion_groups: Vec<String>,
}

impl Plan {
    /// The plan of `config`, or the defaults; `allowed_cpus` resolves `workers = 0`.
    pub fn new(config: Option<&Config>, allowed_cpus: usize) -> Plan {
        let allowed = allowed_cpus.max(1);
        let Some(c) = config else {
            return Plan {
                from_config: false,
                workers: allowed,
                pin: true,
                io: IoBackend::Auto,
                listeners: DEFAULT_LISTENERS
                    .iter()
                    .map(|(n, b)| (n.to_string(), *b))
                    .collect(),
                upstream_connections: 0,
                default_congestion_groups: Vec::new(),
            };
        };
        let workers = match c.runtime.workers {
            0 => allowed,
            n => n,
        };
        let upstream_connections = c
            .target_groups
            .iter()
            .map(|g| {
                let targets = g.targets.len() as u64;
                targets * g.max_idle_per_target as u64 * workers as u64
            })
            .sum();
        Plan {
            from_config: true,
            workers,
            pin: c.runtime.pin,
            io: c.runtime.io,
            listeners: c
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.backlog))
                .collect(),
            upstream_connections,
            default_congestion_groups: c
                .target_groups
                .iter()
                .filter(|g| g.congestion_control.is_none())
                .map(|g| g.name.clone())
                .collect(),
        }
    }

    /// Client connections the listeners are sized for: the sum of their backlogs, the number
    /// of connections that may wait in accept queues at once (a floor for what a host that
    /// sized its backlogs this way serves concurrently).
    pub fn client_connections(&self) -> u64 {
        self.listeners.iter().map(|(_, b)| u64::from(*b)).sum()
    }
}

/// What tune learns through syscalls.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `Ok` when an io_uring ring can be set up; else the error.
    pub uring: Result<(), String>,
    pub kernel: Result<String, String>,
    pub nofile: Result<Limit, String>,
    pub memlock: Result<Limit, String>,
    /// CPUs in this process's affinity mask.
    pub allowed_cpus: Vec<usize>,
    pub ktls: Ktls,
}

impl Facts {
    pub fn gather() -> Facts {
        Facts {
            uring: crate::runtime::probe_uring().map_err(|e| e.to_string()),
            kernel: host::kernel_release(),
            nofile: host::rlimit(libc::RLIMIT_NOFILE),
            memlock: host::rlimit(libc::RLIMIT_MEMLOCK),
            allowed_cpus: crate::runtime::allowed_cpus()
                .into_iter()
                .map(|c| c.id)
                .collect(),
            ktls: host::probe_ktls(),
        }
    }
}

/// Every check, in the order they print.
pub fn audit(host: &Host, facts: &Facts, plan: &Plan) -> Vec<Finding> {
    let mut out = vec![
        checks::io_uring(host, facts, plan),
        checks::kernel(facts),
        checks::nofile(facts, plan),
        checks::memlock(facts, plan),
    ];
    out.extend(checks::backlogs(host, plan));
    out.push(checks::port_range(host, plan));
    out.push(checks::tw_reuse(host));
    out.push(checks::netdev_backlog(host));
    out.push(checks::cpus(host, facts, plan));
    out.push(checks::governor(host, facts, plan));
    out.extend(checks::nic_irqs(host, facts, plan));
    out.push(checks::ktls(facts));
    out.push(checks::congestion_control(host, plan));
    out
}

/// The human report: one block per finding, warnings counted at the top.
pub fn render_text(findings: &[Finding], plan: &Plan) -> String {
    use std::fmt::Write;
    let warns = findings.iter().filter(|f| f.status == Status::Warn).count();
    let mut s = String::new();
    let basis = if plan.from_config {
        "the config"
    } else {
        "defaults (no --config: one listener, backlog 4096, one worker per allowed CPU)"
    };
    let _ = writeln!(
        s,
        "ringlb tune: {} findings, {warns} to fix; expectations from {basis}\n",
        findings.len()
    );
    for f in findings {
        let _ = writeln!(s, "[{:<4}] {}: {}", f.status.name(), f.check, f.observed);
        let _ = writeln!(s, "       {}", f.recommendation);
        for line in f.fix.lines() {
            let _ = writeln!(s, "       $ {line}");
        }
    }
    s
}

/// The findings as a JSON array of `{check, status, observed, recommendation, fix}`.
pub fn render_json(findings: &[Finding]) -> String {
    serde_json::to_string_pretty(findings).unwrap_or_else(|e| format!("[] (encoding failed: {e})"))
}
