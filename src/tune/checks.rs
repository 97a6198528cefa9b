//! The checks of `ringlb tune`: each turns host files, syscall facts and the plan into a
//! [`Finding`] with its fix.
//!
//! Pure functions run on the main thread of `ringlb tune`; they read through [`Host`] (so tests
//! use fake /proc and /sys trees) and own nothing. An unreadable value is reported as `info`
//! saying what could not be read, never a panic.

use super::host::{self, Host, Ktls};
use super::{Facts, Finding, Plan, Status};
use crate::config::IoBackend;

/// Kernel that has io_uring as tokio-uring needs it.
pub const MIN_KERNEL_URING: (u32, u32) = (5, 11);
/// Kernel with IORING_SETUP_COOP_TASKRUN (+SINGLE_ISSUER from 6.0), ~27% faster on an echo loop.
pub const MIN_KERNEL_COOP: (u32, u32) = (6, 0);
/// From this kernel on, io_uring rings are charged to the memory cgroup, not RLIMIT_MEMLOCK.
pub const MEMLOCK_FREE_SINCE: (u32, u32) = (5, 12);
/// RLIMIT_MEMLOCK one worker's ring needs on older kernels (1024 SQEs, 2048 CQEs, with margin).
pub const RING_MEMLOCK_BYTES: u64 = 256 * 1024;
/// File descriptors beyond the connections (listeners, rings, logs, admin, health checks).
pub const NOFILE_SLACK: u64 = 1024;
/// netdev_max_backlog below this drops packets in bursts at high packet rates.
pub const MIN_NETDEV_BACKLOG: u64 = 16384;
/// The netdev_max_backlog tuning/sysctl.conf sets.
pub const RECOMMENDED_NETDEV_BACKLOG: u64 = 65536;
/// The widest useful ephemeral port range (below 1024 are privileged ports).
pub const RECOMMENDED_PORT_RANGE: (u64, u64) = (1024, 65535);
/// Where the fix commands persist sysctls.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/60-ringlb.conf";

fn finding(
    check: &'static str,
    status: Status,
    observed: impl Into<String>,
    recommendation: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        status,
        observed: observed.into(),
        recommendation: recommendation.into(),
        fix: fix.into(),
    }
}

/// The commands that set a sysctl now and at every boot.
fn sysctl_fix(name: &str, value: &str) -> String {
    format!("sysctl -w {name}=\"{value}\"\necho '{name} = {value}' >> {SYSCTL_FILE}")
}

fn unreadable(check: &'static str, err: String) -> Finding {
    finding(
        check,
        Status::Info,
        err,
        "cannot judge this item on this host (not Linux, or /proc or /sys not mounted here)",
        "",
    )
}

pub fn io_uring(host: &Host, facts: &Facts, plan: &Plan) -> Finding {
    let sysctl = match host.sysctl("kernel.io_uring_disabled") {
        Ok(v) => format!("kernel.io_uring_disabled = {v}"),
        Err(_) => "kernel.io_uring_disabled absent (kernel before 6.6: io_uring allowed)".into(),
    };
    match &facts.uring {
        Ok(()) if plan.io == IoBackend::Epoll => finding(
            "io_uring",
            Status::Info,
            format!("available ({sysctl}), but the config sets runtime.io = \"epoll\""),
            "set runtime.io = \"auto\" to serve with io_uring",
            "",
        ),
        Ok(()) => finding(
            "io_uring",
            Status::Ok,
            format!("available ({sysctl})"),
            "ringlb serves with io_uring",
            "",
        ),
        Err(e) => {
            let (why, fix) = match host.sysctl("kernel.io_uring_disabled").as_deref() {
                Ok("2") => (
                    "disabled for every process by sysctl".to_string(),
                    sysctl_fix("kernel.io_uring_disabled", "0"),
                ),
                Ok("1") => (
                    "restricted to the group in kernel.io_uring_group".to_string(),
                    format!(
                        "{}\n# or run ringlb with the group in kernel.io_uring_group",
                        sysctl_fix("kernel.io_uring_disabled", "0")
                    ),
                ),
                _ => (
                    format!(
                        "refused ({e}): a seccomp profile (Docker's default blocks io_uring) \
                         or a kernel built without it"
                    ),
                    "docker run --security-opt seccomp=unconfined ...  # or a profile allowing \
                     io_uring_setup, io_uring_enter, io_uring_register"
                        .to_string(),
                ),
            };
            let status = if plan.io == IoBackend::Epoll {
                Status::Info
            } else {
                Status::Warn
            };
            finding(
                "io_uring",
                status,
                format!("not available: {why} ({sysctl})"),
                "runtime.io = \"auto\" falls back to epoll (slower); \"uring\" refuses to start",
                fix,
            )
        }
    }
}

pub fn kernel(facts: &Facts) -> Finding {
    let release = match &facts.kernel {
        Ok(r) => r.clone(),
        Err(e) => return unreadable("kernel", e.clone()),
    };
    let upgrade = "apt-get install linux-image-amd64  # or your distribution's newest kernel";
    match host::kernel_version(&release) {
        Some(v) if v >= MIN_KERNEL_COOP => finding(
            "kernel",
            Status::Ok,
            release,
            "has io_uring with COOP_TASKRUN and SINGLE_ISSUER",
            "",
        ),
        Some(v) if v >= MIN_KERNEL_URING => finding(
            "kernel",
            Status::Warn,
            release,
            "io_uring works, but without COOP_TASKRUN/SINGLE_ISSUER (6.0+), measured ~27% \
             slower on an echo loop: upgrade to 6.1 or later",
            upgrade,
        ),
        Some(_) => finding(
            "kernel",
            Status::Warn,
            release,
            "too old for ringlb's io_uring backend (5.11+); it will serve with epoll: upgrade \
             to 6.1 or later",
            upgrade,
        ),
        None => finding(
            "kernel",
            Status::Info,
            release,
            "cannot read a version from this release string",
            "",
        ),
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or("unlimited".to_string(), |v| v.to_string())
}

pub fn nofile(facts: &Facts, plan: &Plan) -> Finding {
    let limit = match &facts.nofile {
        Ok(l) => *l,
        Err(e) => return unreadable("nofile", e.clone()),
    };
    let clients = plan.client_connections();
    let need = 2 * clients + plan.upstream_connections + NOFILE_SLACK;
    let observed = format!(
        "RLIMIT_NOFILE soft {} hard {}; expected {need} fds = 2 x {clients} client connections \
         (sum of listener backlogs) + {} upstream + {NOFILE_SLACK}",
        show(limit.soft),
        show(limit.hard),
        plan.upstream_connections
    );
    if limit.soft.is_none_or(|s| s >= need) {
        return finding(
            "nofile",
            Status::Ok,
            observed,
            "enough file descriptors for the expected connections",
            "",
        );
    }
    let target = need.max(1 << 20);
    finding(
        "nofile",
        Status::Warn,
        observed,
        "every client and upstream connection is one fd: raise the limit (ringlb keeps serving \
         open connections when it runs out, but accepts none until fds free up)",
        format!(
            "ulimit -n {target}   # in the shell that starts ringlb\n\
             # systemd: LimitNOFILE={target} in ringlb.service (tuning/ringlb.service has it)"
        ),
    )
}

pub fn memlock(facts: &Facts, plan: &Plan) -> Finding {
    let limit = match &facts.memlock {
        Ok(l) => *l,
        Err(e) => return unreadable("memlock", e.clone()),
    };
    let need = RING_MEMLOCK_BYTES * plan.workers as u64;
    let observed = format!(
        "RLIMIT_MEMLOCK soft {} bytes; {} worker rings need about {need} bytes on kernels before 5.12",
        show(limit.soft),
        plan.workers
    );
    let charged = match facts.kernel.as_deref().ok().and_then(host::kernel_version) {
        Some(v) => v < MEMLOCK_FREE_SINCE,
        None => true,
    };
    if !charged {
        return finding(
            "memlock",
            Status::Ok,
            observed,
            "this kernel charges io_uring memory to the memory cgroup, not RLIMIT_MEMLOCK",
            "",
        );
    }
    if limit.soft.is_none_or(|s| s >= need) {
        return finding(
            "memlock",
            Status::Ok,
            observed,
            "enough for every worker's ring",
            "",
        );
    }
    finding(
        "memlock",
        Status::Warn,
        observed,
        "io_uring rings are locked memory on this kernel: workers beyond the limit fail to set \
         up their ring",
        "ulimit -l unlimited\n# systemd: LimitMEMLOCK=infinity in ringlb.service",
    )
}

/// somaxconn and tcp_max_syn_backlog against the largest listener backlog.
pub fn backlogs(host: &Host, plan: &Plan) -> Vec<Finding> {
    let Some((name, backlog)) = plan.listeners.iter().max_by_key(|(_, b)| *b) else {
        return Vec::new();
    };
    let backlog = u64::from(*backlog);
    let mut out = Vec::new();
    for (check, sysctl, effect) in [
        (
            "somaxconn",
            "net.core.somaxconn",
            "the kernel silently caps every accept queue at somaxconn",
        ),
        (
            "tcp_max_syn_backlog",
            "net.ipv4.tcp_max_syn_backlog",
            "half-open connections beyond it are dropped (or answered with SYN cookies) in a burst",
        ),
    ] {
        let f = match host.sysctl_u64(sysctl) {
            Err(e) => unreadable(check, e),
            Ok(v) => {
                let observed =
                    format!("{sysctl} = {v}; largest backlog {backlog} (listener '{name}')");
                if v >= backlog {
                    finding(
                        check,
                        Status::Ok,
                        observed,
                        "holds every listener's backlog",
                        "",
                    )
                } else {
                    finding(
                        check,
                        Status::Warn,
                        observed,
                        format!("{effect}: raise it to at least {backlog}"),
                        sysctl_fix(sysctl, &backlog.max(65535).to_string()),
                    )
                }
            }
        };
        out.push(f);
    }
    out
}

pub fn port_range(host: &Host, plan: &Plan) -> Finding {
    let check = "ip_local_port_range";
    let text = match host.sysctl("net.ipv4.ip_local_port_range") {
        Ok(t) => t,
        Err(e) => return unreadable(check, e),
    };
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>());
    let (Some(Ok(lo)), Some(Ok(hi))) = (it.next(), it.next()) else {
        return unreadable(check, format!("net.ipv4.ip_local_port_range = \"{text}\""));
    };
    let ports = (hi + 1).saturating_sub(lo);
    let up = plan.upstream_connections;
    let observed = format!(
        "{lo}-{hi}: {ports} ports; {up} upstream connections at most (targets x \
         max_idle_per_target x {} workers)",
        plan.workers
    );
    let (rlo, rhi) = RECOMMENDED_PORT_RANGE;
    let fix = sysctl_fix("net.ipv4.ip_local_port_range", &format!("{rlo} {rhi}"));
    if !plan.from_config {
        let status = if ports < rhi - rlo {
            Status::Info
        } else {
            Status::Ok
        };
        return finding(
            check,
            status,
            format!("{lo}-{hi}: {ports} ports (no config: upstream connections unknown)"),
            "each upstream connection to one target takes a local port, TIME_WAIT included; \
             widen the range for many upstream connections",
            if status == Status::Ok {
                String::new()
            } else {
                fix
            },
        );
    }
    // The limit is per target address (the kernel reuses a port towards other destinations),
    // so comparing the total is conservative.
    if up <= ports / 2 {
        finding(
            check,
            Status::Ok,
            observed,
            "room for the pools plus as many sockets in TIME_WAIT",
            "",
        )
    } else {
        finding(
            check,
            Status::Warn,
            observed,
            "connections in TIME_WAIT hold their port too: keep the range at least twice the \
             upstream connections (or lower max_idle_per_target)",
            fix,
        )
    }
}

pub fn tw_reuse(host: &Host) -> Finding {
    let check = "tcp_tw_reuse";
    match host.sysctl("net.ipv4.tcp_tw_reuse") {
        Err(e) => unreadable(check, e),
        Ok(v) if v == "1" => finding(
            check,
            Status::Ok,
            "net.ipv4.tcp_tw_reuse = 1",
            "new upstream connections may reuse ports in TIME_WAIT",
            "",
        ),
        Ok(v) => finding(
            check,
            Status::Warn,
            format!(
                "net.ipv4.tcp_tw_reuse = {v} ({})",
                if v == "2" { "loopback only" } else { "off" }
            ),
            "without it, closed upstream connections hold their local port for 60 s and a busy \
             target can run out of ports",
            sysctl_fix("net.ipv4.tcp_tw_reuse", "1"),
        ),
    }
}

pub fn netdev_backlog(host: &Host) -> Finding {
    let check = "netdev_max_backlog";
    match host.sysctl_u64("net.core.netdev_max_backlog") {
        Err(e) => unreadable(check, e),
        Ok(v) if v >= MIN_NETDEV_BACKLOG => finding(
            check,
            Status::Ok,
            format!("net.core.netdev_max_backlog = {v}"),
            "room for bursts between the NIC and the TCP stack",
            "",
        ),
        Ok(v) => finding(
            check,
            Status::Warn,
            format!("net.core.netdev_max_backlog = {v} (below {MIN_NETDEV_BACKLOG})"),
            "packets beyond it are dropped per CPU in bursts (see the drops column of \
             /proc/net/softnet_stat)",
            sysctl_fix(
                "net.core.netdev_max_backlog",
                &RECOMMENDED_NETDEV_BACKLOG.to_string(),
            ),
        ),
    }
}

fn online_cpus(host: &Host) -> Option<usize> {
    host.read("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| host::parse_cpu_list(&t).ok())
        .map(|v| v.len())
}

pub fn cpus(host: &Host, facts: &Facts, plan: &Plan) -> Finding {
    let allowed = facts.allowed_cpus.len();
    let online = online_cpus(host).map_or("unknown".to_string(), |n| n.to_string());
    let observed = format!(
        "{} workers, {allowed} CPUs allowed (affinity mask), {online} online",
        plan.workers
    );
    if allowed > 0 && plan.workers > allowed {
        return finding(
            "cpus",
            Status::Warn,
            observed,
            "more workers than CPUs: pinned workers share cores and wait for each other; use \
             runtime.workers = 0 (one per allowed CPU)",
            "sed -i 's/^workers *=.*/workers = 0/' /etc/ringlb/ringlb.toml",
        );
    }
    finding(
        "cpus",
        Status::Ok,
        observed,
        "one worker per CPU at most; to keep CPUs for NIC interrupts or other services, start \
         ringlb under taskset -c or a cpuset",
        "",
    )
}

pub fn governor(host: &Host, facts: &Facts, plan: &Plan) -> Finding {
    let check = "cpu_governor";
    let mut found = Vec::new();
    for cpu in facts.allowed_cpus.iter().take(plan.workers.max(1)) {
        if let Ok(g) = host.read(&format!(
            "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        )) {
            found.push((*cpu, g));
        }
    }
    if found.is_empty() {
        return finding(
            check,
            Status::Info,
            "no cpufreq scaling_governor under /sys/devices/system/cpu (a VM, or frequency \
             managed by the firmware/hypervisor)",
            "nothing to set from this host",
            "",
        );
    }
    let slow: Vec<String> = found
        .iter()
        .filter(|(_, g)| g != "performance")
        .map(|(c, g)| format!("cpu{c}={g}"))
        .collect();
    if slow.is_empty() {
        return finding(
            check,
            Status::Ok,
            format!("performance on the {} worker CPUs", found.len()),
            "CPUs stay at full clock between bursts",
            "",
        );
    }
    finding(
        check,
        Status::Warn,
        slow.join(", "),
        "power-saving governors ramp the clock up after load arrives and add latency to bursts",
        "echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor\n\
         # or: cpupower frequency-set -g performance",
    )
}

/// The CPUs workers run on: the first `workers` allowed CPUs (all allowed CPUs when unpinned).
fn worker_cpus(facts: &Facts, plan: &Plan) -> Vec<usize> {
    if plan.pin {
        facts
            .allowed_cpus
            .iter()
            .copied()
            .take(plan.workers.max(1))
            .collect()
    } else {
        facts.allowed_cpus.clone()
    }
}

pub fn nic_irqs(host: &Host, facts: &Facts, plan: &Plan) -> Vec<Finding> {
    let check = "nic_irq_affinity";
    let nics = host::nics(host);
    if nics.is_empty() {
        return vec![finding(
            check,
            Status::Info,
            "no NIC with a device in /sys/class/net (only loopback or virtual interfaces)",
            "nothing to steer",
            "",
        )];
    }
    let workers = worker_cpus(facts, plan);
    let mut out = Vec::new();
    for nic in nics {
        let name = &nic.name;
        if nic.irqs.is_empty() {
            let mask = workers
                .iter()
                .fold(0u128, |m, &c| if c < 128 { m | (1u128 << c) } else { m });
            out.push(finding(
                check,
                Status::Info,
                format!("{name}: no interrupt line of its own in /proc/interrupts"),
                "spread its receive work in software with RPS over the worker CPUs",
                format!("for q in /sys/class/net/{name}/queues/rx-*; do echo {mask:x} > $q/rps_cpus; done"),
            ));
            continue;
        }
        let mut used: Vec<usize> = Vec::new();
        let mut map = Vec::new();
        for irq in &nic.irqs {
            match &irq.cpus {
                Ok(c) => {
                    used.extend(c);
                    let list: Vec<String> = c.iter().map(|c| c.to_string()).collect();
                    map.push(format!("{}({})->{}", irq.number, irq.label, list.join(",")));
                }
                Err(e) => map.push(format!("{}({}): {e}", irq.number, irq.label)),
            }
        }
        used.sort_unstable();
        used.dedup();
        let observed = format!("{name}: IRQ {}; workers on CPUs {workers:?}", map.join(" "));
        let outside: Vec<usize> = used
            .iter()
            .copied()
            .filter(|c| !workers.contains(c))
            .collect();
        let crowded = used.len() == 1 && workers.len() > 1 && nic.irqs.len() > 1;
        if !crowded && outside.is_empty() {
            out.push(finding(
                check,
                Status::Ok,
                observed,
                "the NIC's queues are spread over worker CPUs",
                "",
            ));
            continue;
        }
        let fix: Vec<String> = std::iter::once(
            "systemctl stop irqbalance  # it would undo a manual layout".to_string(),
        )
        .chain(nic.irqs.iter().enumerate().map(|(i, irq)| {
            let cpu = workers.get(i % workers.len().max(1)).copied().unwrap_or(0);
            format!("echo {cpu} > /proc/irq/{}/smp_affinity_list", irq.number)
        }))
        .collect();
        let why = if crowded {
            "every queue interrupts one CPU, so its worker does all the packet work"
        } else {
            "some queues interrupt CPUs without a worker: packets cross cores before ringlb \
             reads them"
        };
        out.push(finding(
            check,
            Status::Warn,
            observed,
            format!("{why}; give each queue its own worker CPU"),
            fix.join("\n"),
        ));
    }
    out
}

pub fn ktls(facts: &Facts) -> Finding {
    match &facts.ktls {
        Ktls::Available => finding(
            "ktls",
            Status::Ok,
            "TCP_ULP \"tls\" accepted on a loopback socket",
            "kernel TLS is available to offload record encryption",
            "",
        ),
        Ktls::Missing => finding(
            "ktls",
            Status::Info,
            "TCP_ULP \"tls\" refused with ENOENT: kernel TLS is not available",
            "ringlb encrypts TLS in user space (rustls); load the tls module if the kernel has \
             one (CONFIG_TLS)",
            "modprobe tls",
        ),
        Ktls::Unknown(e) => finding(
            "ktls",
            Status::Info,
            e.clone(),
            "could not tell whether kernel TLS is available",
            "",
        ),
    }
}

/// BBR paces every connection it runs. A target group on the host default then puts a second
/// paced sender behind the client's: bulk TCP through ringlb ran at 0.68 of a direct loopback
/// connection with BBR on both legs, 0.85 with the group on cubic (README, TCP listeners).
pub fn congestion_control(host: &Host, plan: &Plan) -> Finding {
    let check = "congestion_control";
    let cc = match host.sysctl("net.ipv4.tcp_congestion_control") {
        Ok(cc) => cc,
        Err(e) => return unreadable(check, e),
    };
    let groups = &plan.default_congestion_groups;
    let bbr = cc.starts_with("bbr");
    if !bbr || (plan.from_config && groups.is_empty()) {
        let who = if bbr {
            "every target group sets its own congestion_control".to_string()
        } else {
            format!("upstream connections on the host default run {cc}, which does not pace on its own (only with the fq qdisc)")
        };
        return finding(
            check,
            Status::Ok,
            format!("net.ipv4.tcp_congestion_control = {cc}"),
            who,
            "",
        );
    }
    let observed = if plan.from_config {
        let names: Vec<String> = groups.iter().map(|g| format!("'{g}'")).collect();
        format!(
            "net.ipv4.tcp_congestion_control = {cc}; target group(s) {} run it",
            names.join(", ")
        )
    } else {
        format!("net.ipv4.tcp_congestion_control = {cc}; target groups run it unless they set congestion_control")
    };
    finding(
        check,
        Status::Info,
        observed,
        "BBR paces each upstream connection behind the client's own paced connection, which \
         slows bulk transfers through ringlb (0.68 of a direct connection on loopback, 0.85 with \
         cubic). For targets on the same network, add congestion_control = \"cubic\" to those \
         [[target_group]] tables; keep BBR for clients on the internet (the listener's side).",
        "",
    )
}

#[cfg(test)]
mod tests;
