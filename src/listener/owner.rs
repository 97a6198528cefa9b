//! Whether another process already listens on an address, and which one. Every ringlb
//! listening socket has SO_REUSEPORT (for its own workers), which would also let a second ringlb
//! (or anything else with SO_REUSEPORT) bind the same port and silently share its traffic; so
//! before binding, a probe socket without SO_REUSEPORT asks the kernel whether the address is
//! taken, and /proc says by whom.
//!
//! Runs on the main thread (start, reload, `ringlb check`); holds no state.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Who holds a listening address: a process (pid and name) when /proc tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub name: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pid, &self.name) {
            (Some(pid), Some(name)) => write!(f, "pid {pid} ({name})"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            _ => write!(f, "another process"),
        }
    }
}

impl Holder {
    /// True when the holder is this very process (a reload re-binding its own address).
    pub fn is_self(&self) -> bool {
        self.pid == Some(std::process::id())
    }
}

/// `Some(holder)` when a socket already listens on `addr` (port 0 never counts).
pub fn listening_holder(addr: SocketAddr) -> Option<Holder> {
    if addr.port() == 0 || !taken(addr).unwrap_or(false) {
        return None;
    }
    let pid = listening_inodes(addr).into_iter().find_map(pid_of_socket);
    // Any local user names its own processes: only printable ASCII reaches a terminal.
    let name = pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .ok()
            .map(|n| {
                n.trim()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_graphic() || c == ' ' {
                            c
                        } else {
                            '?'
                        }
                    })
                    .collect::<String>()
            })
    });
    Some(Holder { pid, name })
}

/// Binds a probe socket (SO_REUSEADDR, so connections in TIME_WAIT do not count; no
/// SO_REUSEPORT, so any listener does). It never listens and closes at once.
fn taken(addr: SocketAddr) -> io::Result<bool> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    match s.bind(&addr.into()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
        Err(_) => Ok(false),
    }
}

/// Inodes of sockets in LISTEN state on `addr`'s port whose address is `addr`'s or a wildcard
/// (from /proc/net/tcp and tcp6).
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((ip, port)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(port, 16).ok() != Some(addr.port()) {
                continue;
            }
            if parse_ip(ip).is_some_and(|ip| ip != addr.ip() && !ip.is_unspecified()) {
                continue;
            }
            if let Ok(inode) = f[9].parse::<u64>() {
                out.push(inode);
            }
        }
    }
    out
}

/// An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in host byte order.
fn parse_ip(hex: &str) -> Option<std::net::IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(std::net::IpAddr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(std::net::IpAddr::from(b))
        }
        _ => None,
    }
}

/// The pid whose descriptors include socket `inode` (a scan of /proc/*/fd: only on the error
/// path).
fn pid_of_socket(inode: u64) -> Option<u32> {
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_are_decoded() {
        assert_eq!(parse_ip("0100007F"), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(
            parse_ip("00000000000000000000000001000000"),
            Some("::1".parse().expect("ip"))
        );
    }

    #[test]
    fn a_listener_of_this_process_is_found_and_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let holder = listening_holder(addr).expect("the port is taken");
        assert!(holder.is_self(), "{holder}");
        drop(l);
        assert_eq!(listening_holder(addr), None, "free once closed");
    }
}
