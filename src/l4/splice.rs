//! Zero-copy two-way tunnel for TCP listeners: each direction moves bytes socket → pipe → socket
//! with splice(2), so payload never crosses into user space. Readiness comes from the worker's
//! own event loop (an io_uring POLL_ADD, or tokio's epoll readiness); the splice calls themselves
//! are non-blocking.
//!
//! Runs inside a connection task on a worker; the pipes are owned by that task and closed with it.
//! Once a connection is handed to `tunnel`, its sockets are switched to O_NONBLOCK and must not be
//! used with io_uring read/write operations again (io_uring returns EAGAIN on such sockets).

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::time::Instant;

use crate::io::Stream;

/// Pipe capacity asked for (the kernel may refuse: the default, 64 KiB, is kept then).
pub const PIPE_BYTES: libc::c_int = 1 << 20;
/// Most bytes moved by one splice call.
const SPLICE_CHUNK: usize = 1 << 20;

/// A non-blocking pipe: bytes spliced in at `w` come out at `r`.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe lets one splice move more; failure (a per-user limit) is harmless.
        // SAFETY: plain fcntl on an owned descriptor.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        Ok(Pipe { r, w })
    }
}

/// Copies both ways with splice until each side has closed its half, or nothing moved for
/// `idle`. `pipes` are one per direction (client → upstream, upstream → client). Returns the
/// bytes moved each way.
pub async fn tunnel(
    a: &Stream,
    b: &Stream,
    pipes: (Pipe, Pipe),
    idle: Duration,
) -> io::Result<(u64, u64)> {
    set_nonblocking(a)?;
    set_nonblocking(b)?;
    let last = Cell::new(Instant::now());
    let a_to_b = half(a, b, &pipes.0, &last);
    let b_to_a = half(b, a, &pipes.1, &last);
    let watchdog = async {
        loop {
            tokio::time::sleep_until(last.get() + idle).await;
            if last.get() + idle <= Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        (x, y) = async { tokio::join!(a_to_b, b_to_a) } => Ok((x, y)),
        _ = watchdog => {
            // Pending polls end when their sockets are shut down.
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
            Ok((0, 0))
        }
    }
}

fn set_nonblocking(s: &Stream) -> io::Result<()> {
    let fd = s.as_raw_fd();
    // SAFETY: fcntl on a descriptor `s` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One direction: until EOF or an error, then a write shutdown towards `dst`.
async fn half(src: &Stream, dst: &Stream, pipe: &Pipe, last: &Cell<Instant>) -> u64 {
    let mut total = 0u64;
    loop {
        // An error reading the source ends this direction as EOF would.
        let n = splice_ready(src, Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe.w.as_raw_fd(), SPLICE_CHUNK)
        })
        .await
        .unwrap_or_default();
        if n == 0 {
            let _ = dst.shutdown(std::net::Shutdown::Write);
            return total;
        }
        last.set(Instant::now());
        let mut left = n;
        while left > 0 {
            match splice_ready(dst, Interest::WRITABLE, || {
                splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), left)
            })
            .await
            {
                Ok(m) if m > 0 => {
                    left -= m;
                    last.set(Instant::now());
                }
                _ => {
                    // The destination is gone: stop reading the source too.
                    let _ = src.shutdown(std::net::Shutdown::Read);
                    return total;
                }
            }
        }
        total += n as u64;
    }
}

/// Runs `op` until it does not report WouldBlock, waiting for `interest` on `s` in between.
async fn splice_ready(
    s: &Stream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        let res = match s {
            Stream::Epoll(t) => t.try_io(interest, &mut op),
            Stream::Uring(_) => op(),
        };
        match res {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match s {
                Stream::Epoll(t) => {
                    t.ready(interest).await?;
                }
                Stream::Uring(_) => {
                    let events = if interest.is_readable() {
                        libc::POLLIN
                    } else {
                        libc::POLLOUT
                    };
                    crate::io::uring_poll(s.as_raw_fd(), events as u32).await?;
                }
            },
            other => return other,
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two descriptors owned by the caller; null offsets (sockets, pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
