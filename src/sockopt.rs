//! TCP socket options taken from the config: the congestion control algorithm (`TCP_CONGESTION`)
//! of a listener's accepted connections and of a target group's upstream connections, and a
//! listener's deferred accept (`TCP_DEFER_ACCEPT`).
//!
//! Called on the main thread (config validation probes a name; listening sockets get it at bind,
//! and accepted connections inherit it) and on workers (each new upstream connection, once, before
//! it carries traffic). Holds no state: the names live in the config and its snapshots.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Longest algorithm name the kernel takes (`TCP_CA_NAME_MAX` is 16 with the NUL).
pub const MAX_CONGESTION_NAME: usize = 15;
/// Where Linux lists the algorithms it has loaded.
const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// Sets `fd`'s congestion control algorithm. The socket may be listening (accepted connections
/// inherit it) or connected (the kernel re-initialises the connection's congestion state).
/// A name the kernel would cut short (too long, or with a NUL) is refused, not truncated.
pub fn set_congestion_control(fd: RawFd, name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > MAX_CONGESTION_NAME || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("\"{name}\" is not a congestion control name"),
        ));
    }
    // SAFETY: setsockopt reads `name.len()` bytes from a live &str on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How long the kernel holds a connection that has sent nothing when `defer_accept` is on:
/// nginx's `deferred` and HAProxy's `defer-accept` use the same second. The kernel counts it in
/// SYN-ACK retransmissions (one), so a silent client's connection is handed over after about a
/// second and then waits as any other that has sent nothing: `idle_timeout` on plain HTTP and
/// TCP, `header_timeout` for a TLS handshake or a PROXY header.
pub const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Turns `TCP_DEFER_ACCEPT` on or off for the listening socket `fd`: on, the kernel completes
/// `accept` only once the client's first bytes have arrived, so the first read finds them
/// (no wait armed, no extra wake of the worker per connection).
pub fn set_defer_accept(fd: RawFd, on: bool) -> io::Result<()> {
    let secs: libc::c_int = if on { DEFER_ACCEPT_SECS } else { 0 };
    // SAFETY: setsockopt reads one c_int from a live local on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the listening socket `fd` defers accepts (`TCP_DEFER_ACCEPT` is non-zero).
pub fn defer_accept(fd: RawFd) -> io::Result<bool> {
    let mut secs: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `secs`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&mut secs as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(secs != 0)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The congestion control algorithm `fd` runs.
pub fn congestion_control(fd: RawFd) -> io::Result<String> {
    let mut buf = [0u8; MAX_CONGESTION_NAME + 1];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let got = &buf[..(len as usize).min(buf.len())];
    let end = got.iter().position(|&b| b == 0).unwrap_or(got.len());
    Ok(String::from_utf8_lossy(&got[..end]).into_owned())
}

/// Checks that this host lets ringlb use `name`, by setting it on a scratch socket. The error is a
/// sentence for a config message: what is wrong and what the host offers instead.
pub fn probe_congestion_control(name: &str) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_CONGESTION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(format!(
            "\"{name}\" is not a congestion control name: at most {MAX_CONGESTION_NAME} letters, digits, '_' or '-', like \"cubic\" or \"bbr\""
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot open a socket to check \"{name}\": {e}"))?;
    match set_congestion_control(socket.as_raw_fd(), name) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(format!(
            "congestion control \"{name}\" is not available on this host (it has: {}); load its module (modprobe tcp_{name}) or pick one of those",
            available()
        )),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(format!(
            "congestion control \"{name}\" is not allowed for this unprivileged process; add it to net.ipv4.tcp_allowed_congestion_control or run with CAP_NET_ADMIN"
        )),
        Err(e) => Err(format!("congestion control \"{name}\" cannot be set: {e}")),
    }
}

/// The host's loaded algorithms, as the kernel lists them.
fn available() -> String {
    std::fs::read_to_string(AVAILABLE)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown: cannot read {AVAILABLE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_algorithm_reads_back() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        set_congestion_control(socket.as_raw_fd(), "reno").expect("reno is always built in");
        assert_eq!(congestion_control(socket.as_raw_fd()).expect("get"), "reno");
        // The kernel would take the first 15 bytes, or stop at a NUL: both are refused instead.
        for cut in ["renoooooooooooooooo", "reno\0x"] {
            let e = set_congestion_control(socket.as_raw_fd(), cut).expect_err(cut);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn deferred_accept_turns_on_and_off() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        assert!(
            !defer_accept(socket.as_raw_fd()).expect("get"),
            "off by default"
        );
        set_defer_accept(socket.as_raw_fd(), true).expect("on");
        assert!(defer_accept(socket.as_raw_fd()).expect("get"));
        // A socket handed over by an upgrade may carry it: the new config's `false` clears it.
        set_defer_accept(socket.as_raw_fd(), false).expect("off");
        assert!(!defer_accept(socket.as_raw_fd()).expect("get"));
    }

    #[test]
    fn probing_names_what_is_wrong() {
        assert_eq!(probe_congestion_control("reno"), Ok(()));
        let unknown = probe_congestion_control("nosuchcc").expect_err("unknown");
        assert!(unknown.contains("not available on this host"), "{unknown}");
        assert!(
            unknown.contains("reno"),
            "lists what the host has: {unknown}"
        );
        for bad in ["", "cu bic", "a-very-long-algorithm-name"] {
            let e = probe_congestion_control(bad).expect_err(bad);
            assert!(e.contains("is not a congestion control name"), "{e}");
        }
    }
}
