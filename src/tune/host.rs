//! What `ringlb tune` reads from the host: files under /proc and /sys (through [`Host`], so tests
//! can point it at a fake tree), resource limits, the kernel release and the kTLS probe.
//!
//! Runs on the main thread of `ringlb tune`; nothing here is shared. A missing or unreadable file
//! is an `Err` with the path and the OS error, for the finding to report, never a panic.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Largest file read from /proc or /sys (`/proc/interrupts` on a big host is the biggest).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The file system a tune run reads: `/` on a real host, a fake tree in tests.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// The real host.
    pub fn system() -> Host {
        Host {
            root: PathBuf::from("/"),
        }
    }

    /// A tree whose `proc/` and `sys/` stand for /proc and /sys.
    pub fn at(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// A file's text, trimmed; the error names the path.
    pub fn read(&self, abs: &str) -> Result<String, String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(self.path(abs))
            .and_then(|f| f.take(MAX_FILE_BYTES).read_to_string(&mut text))
            .map_err(|e| format!("cannot read {abs}: {e}"))?;
        Ok(text.trim().to_string())
    }

    /// A sysctl by its dotted name, through /proc/sys.
    pub fn sysctl(&self, name: &str) -> Result<String, String> {
        self.read(&format!("/proc/sys/{}", name.replace('.', "/")))
    }

    /// A sysctl as a number.
    pub fn sysctl_u64(&self, name: &str) -> Result<u64, String> {
        let v = self.sysctl(name)?;
        v.parse()
            .map_err(|_| format!("{name} = \"{v}\" is not a number"))
    }

    /// Entry names of a directory, sorted; empty when it is missing.
    pub fn list(&self, abs: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(abs))
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// The last component of a symlink's target (e.g. a NIC's `device` → `virtio2`).
    pub fn link_name(&self, abs: &str) -> Option<String> {
        std::fs::read_link(self.path(abs))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }
}

/// One interrupt line a NIC uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irq {
    pub number: u32,
    pub label: String,
    /// CPUs from /proc/irq/N/effective_affinity_list (else smp_affinity_list), or why they
    /// could not be read.
    pub cpus: Result<Vec<usize>, String>,
}

/// A physical (or paravirtual) NIC and its interrupt lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub irqs: Vec<Irq>,
}

/// NICs in /sys/class/net that have a device behind them (loopback, bridges, veth, tun, ifb and
/// other virtual interfaces have none), with their IRQs from /proc/interrupts: lines labelled
/// with the interface name or with its device's name (virtio queues), config vectors excepted.
pub fn nics(host: &Host) -> Vec<Nic> {
    let interrupts = host.read("/proc/interrupts").unwrap_or_default();
    let mut out = Vec::new();
    for name in host.list("/sys/class/net") {
        if name == "lo" || !host.exists(&format!("/sys/class/net/{name}/device")) {
            continue;
        }
        let device = host.link_name(&format!("/sys/class/net/{name}/device"));
        let matches = |label: &str| {
            let ours = |prefix: &str| label == prefix || label.starts_with(&format!("{prefix}-"));
            !label.ends_with("-config") && (ours(&name) || device.as_deref().is_some_and(ours))
        };
        let mut irqs = Vec::new();
        for line in interrupts.lines() {
            let mut words = line.split_whitespace();
            let Some(number) = words
                .next()
                .and_then(|w| w.strip_suffix(':'))
                .and_then(|w| w.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(label) = line.split_whitespace().last() else {
                continue;
            };
            if matches(label) {
                // The CPU the interrupt is delivered to; the allowed set where the kernel does
                // not say (before 4.15).
                let cpus = host
                    .read(&format!("/proc/irq/{number}/effective_affinity_list"))
                    .or_else(|_| host.read(&format!("/proc/irq/{number}/smp_affinity_list")))
                    .and_then(|t| parse_cpu_list(&t));
                irqs.push(Irq {
                    number,
                    label: label.to_string(),
                    cpus,
                });
            }
        }
        out.push(Nic { name, irqs });
    }
    out
}

/// Most CPUs a list may name (bounds a hostile "0-4294967295").
pub const MAX_CPUS: usize = 8192;

/// "0-3,8,10-11" → [0,1,2,3,8,10,11].
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("\"{text}\" is not a CPU list");
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if a > b || b >= MAX_CPUS {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A resource limit; `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// getrlimit for `resource` (RLIMIT_NOFILE, RLIMIT_MEMLOCK).
pub fn rlimit(resource: libc::__rlimit_resource_t) -> Result<Limit, String> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(resource, &mut l) };
    if rc != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    let f = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Ok(Limit {
        soft: f(l.rlim_cur),
        hard: f(l.rlim_max),
    })
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> Result<String, String> {
    // SAFETY: uname fills the zeroed struct we own; the release field is NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(format!("uname: {}", std::io::Error::last_os_error()));
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// (major, minor) of a release such as "6.1.0-18-amd64".
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether kernel TLS can be attached to a TCP socket here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ktls {
    Available,
    /// ENOENT from TCP_ULP "tls": the `tls` module is not loaded or CONFIG_TLS is unset.
    Missing,
    /// The probe itself failed (no loopback, another errno).
    Unknown(String),
}

/// Tries `setsockopt(TCP_ULP, "tls")` on a connected loopback TCP socket.
pub fn probe_ktls() -> Ktls {
    let probe = || -> std::io::Result<Ktls> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let s = TcpStream::connect(l.local_addr()?)?;
        let _peer = l.accept()?;
        let name = b"tls";
        // SAFETY: a valid socket fd and a buffer of the given length.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_ULP,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(Ktls::Available);
        }
        let e = std::io::Error::last_os_error();
        Ok(match e.raw_os_error() {
            Some(libc::ENOENT) => Ktls::Missing,
            _ => Ktls::Unknown(format!("setsockopt(TCP_ULP, \"tls\"): {e}")),
        })
    };
    probe().unwrap_or_else(|e| Ktls::Unknown(format!("loopback probe socket: {e}")))
}

/// Writes a file of a fake tree (tests).
#[cfg(test)]
pub fn write_fake(root: &std::path::Path, abs: &str, text: &str) -> std::io::Result<()> {
    let p = root.join(abs.trim_start_matches('/'));
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(p, text)
}
