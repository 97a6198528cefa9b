//! CPU time of a process tree from /proc (utime+stime of a process, its live descendants, and
//! the reaped children it accounted), for the scenario's `subject_cpu_us_per_req`.
//! Called from the scenario's main thread; no state kept between calls.

use std::collections::HashMap;

/// Fields of /proc/PID/stat we need.
struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
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
    let ticks = num(11)? + num(12)? + num(13)? + num(14)?;
    Some(Stat { ppid, ticks })
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Every process's (ppid -> children) and CPU ticks, from one scan of /proc.
fn scan() -> (HashMap<u32, Vec<u32>>, HashMap<u32, u64>) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut ticks: HashMap<u32, u64> = HashMap::new();
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

/// CPU time used so far by `root` and all its descendants, in microseconds.
pub fn tree_cpu_us(root: u32) -> Option<u64> {
    let (children, ticks) = scan();
    let own = *ticks.get(&root)?;
    let total: u64 = own
        + tree(root, &children)
            .iter()
            .map(|p| ticks.get(p).copied().unwrap_or(0))
            .sum::<u64>();
    Some(total * 1_000_000 / ticks_per_sec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let s = parse_stat("42 (a) b) (c) S 7 1 1 0 -1 0 0 0 0 0 150 50 3 2 20 0 1 0").unwrap();
        assert_eq!((s.ppid, s.ticks), (7, 205));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = tree_cpu_us(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
            std::hint::black_box(x);
        }
        let after = tree_cpu_us(me).unwrap();
        assert!(after - before >= 100_000, "{before} -> {after}");
    }
}
