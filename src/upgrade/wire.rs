//! The handover socket: a `SOCK_SEQPACKET` socketpair between the old and the new process, each
//! message one JSON document with descriptors riding along (`SCM_RIGHTS`, via nix).
//!
//! Used by the old process's upgrade thread and by the new process's main thread at start; each
//! end is owned by one of them.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeVal;

/// Descriptors per message: the kernel takes at most 253 (SCM_MAX_FD) in one.
pub const FDS_PER_MESSAGE: usize = 250;
/// The largest message either side sends (the old process's header names every listener).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// A connected pair, both ends close-on-exec (the caller lets one through to the new process).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Whether `fd` is an open `SOCK_SEQPACKET` unix socket (what [`pair`] made).
pub fn is_handover_socket(fd: RawFd) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`; a bad fd only returns an error.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && ty == libc::SOCK_SEQPACKET
}

/// Bounds every later send and receive on `fd` (a blocking socket).
pub fn set_timeout(fd: &OwnedFd, timeout: Duration) -> std::io::Result<()> {
    let tv = TimeVal::new(
        timeout.as_secs() as libc::time_t,
        timeout.subsec_micros() as libc::suseconds_t,
    );
    setsockopt(fd, sockopt::ReceiveTimeout, &tv)?;
    setsockopt(fd, sockopt::SendTimeout, &tv)?;
    Ok(())
}

/// Sends `body`, with `fds` (at most [`FDS_PER_MESSAGE`]) attached.
pub fn send(sock: &OwnedFd, body: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != body.len() {
        return Err(std::io::Error::other("the handover message was cut short"));
    }
    Ok(())
}

/// What one receive brought.
pub enum Received {
    Message(Vec<u8>, Vec<OwnedFd>),
    /// The other side closed its end.
    Closed,
    /// Nothing within the socket's timeout.
    TimedOut,
}

/// Receives one message; descriptors arrive close-on-exec.
pub fn recv(sock: &OwnedFd) -> std::io::Result<Received> {
    let mut body = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
    let (n, truncated, fds) = {
        let mut iov = [IoSliceMut::new(&mut body)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Ok(Received::TimedOut),
            Err(nix::errno::Errno::EINTR) => return Ok(Received::TimedOut),
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process just now;
                // nothing else owns them.
                fds.extend(
                    list.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let cut =
            msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC);
        (msg.bytes, cut, fds)
    };
    if truncated {
        return Err(std::io::Error::other(
            "a handover message was larger than expected",
        ));
    }
    if n == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    body.truncate(n);
    Ok(Received::Message(body, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_descriptors_and_a_closed_end_reads_as_closed() {
        let (a, b) = pair().expect("pair");
        assert!(is_handover_socket(a.as_raw_fd()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        send(&a, b"hello", &[l.as_raw_fd()]).expect("send");
        let Received::Message(body, fds) = recv(&b).expect("recv") else {
            panic!("no message");
        };
        assert_eq!(body, b"hello");
        assert_eq!(fds.len(), 1);
        let got = std::net::TcpListener::from(fds.into_iter().next().expect("fd"));
        assert_eq!(got.local_addr().expect("addr"), addr, "the same socket");
        set_timeout(&b, Duration::from_millis(20)).expect("timeout");
        assert!(matches!(recv(&b).expect("recv"), Received::TimedOut));
        drop(a);
        assert!(matches!(recv(&b).expect("recv"), Received::Closed));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(!is_handover_socket(tcp.as_raw_fd()));
    }
}
