//! CPU time of a process tree from /proc (utime+stime of a process, its live descendants, and
//! the reaped children it accounted), split into user space and kernel, for the scenario's
//! `subject_cpu_us_per_req` and `subject_sys_us_per_req`.
//! Called from the scenario's main thread; no state kept between calls.

use std::collections::HashMap;

/// Fields of /proc/PID/stat we need.
struct Stat {
    ppid: u32,
    /// utime + cutime and stime + cstime, in clock ticks.
    ticks: Ticks,
}

/// User-space and kernel CPU time, in clock ticks.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Ticks {
    user: u64,
    sys: u64,
}

/// CPU time of a process tree so far, in microseconds: user space and kernel (system calls,
/// and the interrupts and softirqs that ran while the process was on the CPU, as /proc
/// accounts them on a tick-sampled kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub user_us: u64,
    pub sys_us: u64,
}

impl Cpu {
    pub fn total_us(self) -> u64 {
        self.user_us + self.sys_us
    }

    /// CPU µs per request between two readings, whole and kernel only (None without requests).
    pub fn per_request(before: Cpu, after: Cpu, requests: u64) -> Option<(f64, f64)> {
        if requests == 0 {
            return None;
        }
        let n = requests as f64;
        Some((
            after.total_us().saturating_sub(before.total_us()) as f64 / n,
            after.sys_us.saturating_sub(before.sys_us) as f64 / n,
        ))
    }
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a /proc/PID/stat line (the command may contain spaces and parentheses).
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid = u32::try_from(num(1)?).ok()?;
    let ticks = Ticks {
        user: num(11)? + num(13)?,
        sys: num(12)? + num(14)?,
    };
    Some(Stat { ppid, ticks })
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Every process's (ppid -> children) and CPU ticks, from one scan of /proc.
fn scan() -> (HashMap<u32, Vec<u32>>, HashMap<u32, Ticks>) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut ticks: HashMap<u32, Ticks> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (children, ticks);
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = read_stat(pid) {
            children.entry(s.ppid).or_default().push(pid);
            ticks.insert(pid, s.ticks);
        }
    }
    (children, ticks)
}

fn tree(root: u32, children: &HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

/// The live descendants of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    tree(root, &scan().0)
}

/// CPU time used so far by `root` and all its descendants.
pub fn tree_cpu(root: u32) -> Option<Cpu> {
    let (children, ticks) = scan();
    let mut sum = *ticks.get(&root)?;
    for p in tree(root, &children) {
        let t = ticks.get(&p).copied().unwrap_or_default();
        sum.user += t.user;
        sum.sys += t.sys;
    }
    let hz = ticks_per_sec();
    Some(Cpu {
        user_us: sum.user * 1_000_000 / hz,
        sys_us: sum.sys * 1_000_000 / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let s = parse_stat("42 (a) b) (c) S 7 1 1 0 -1 0 0 0 0 0 150 50 3 2 20 0 1 0").unwrap();
        assert_eq!(s.ppid, 7);
        assert_eq!(s.ticks, Ticks { user: 153, sys: 52 });
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_cpu_time_grows_with_work_in_user_space_and_in_the_kernel() {
        let me = std::process::id();
        let before = tree_cpu(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
            std::hint::black_box(x);
        }
        let mid = tree_cpu(me).unwrap();
        assert!(
            mid.user_us - before.user_us >= 100_000,
            "{before:?} -> {mid:?}"
        );
        // System calls: the time goes to the kernel's column.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(300) {
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        }
        let after = tree_cpu(me).unwrap();
        assert!(after.sys_us - mid.sys_us >= 60_000, "{mid:?} -> {after:?}");
        let (whole, sys) = Cpu::per_request(before, after, 1000).unwrap();
        assert!(whole > sys && sys > 0.0, "{whole} {sys}");
        assert_eq!(Cpu::per_request(before, after, 0), None);
    }
}
