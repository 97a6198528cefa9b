//! Zero-copy two-way tunnel for TCP listeners: each direction moves bytes socket → pipe → socket
//! with splice(2), so payload never crosses into user space. Readiness comes from the worker's
//! own event loop (an io_uring POLL_ADD, or tokio's epoll readiness); the splice calls themselves
//! are non-blocking.
//!
//! Runs inside a connection task on a worker. Pipes belong to the worker thread (a capped free
//! list, as HAProxy keeps): a direction takes one only for a burst of bytes and gives it back
//! once drained, so an idle tunnel holds no pipe, and a tunnel costs two descriptors, not six.
//! Where no pipe can be had (descriptor limit) a burst is copied through a buffer instead.
//! Once a connection is handed to `tunnel`, its sockets are switched to O_NONBLOCK and must not be
//! used with io_uring read/write operations again (io_uring returns EAGAIN on such sockets).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::time::Instant;

use crate::http::relay::Burst;
use crate::io::Stream;

/// Pipe capacity asked for (the kernel may refuse: the default, 64 KiB, is kept then).
pub const PIPE_BYTES: libc::c_int = 1 << 20;
/// Most bytes moved by one splice call.
const SPLICE_CHUNK: usize = 1 << 20;

/// Empty pipes kept per worker thread for the next burst.
pub const MAX_FREE_PIPES: usize = 64;

thread_local! {
    static FREE_PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe from the thread's free list, or a new one.
fn take_pipe() -> io::Result<Pipe> {
    match FREE_PIPES.with_borrow_mut(Vec::pop) {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Gives back a pipe that is empty (every byte spliced in was spliced out).
fn give_pipe(p: Pipe) {
    FREE_PIPES.with_borrow_mut(|free| {
        if free.len() < MAX_FREE_PIPES {
            free.push(p);
        }
    });
}

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
/// `idle`. Returns the bytes moved each way.
pub async fn tunnel(a: &Stream, b: &Stream, idle: Duration) -> io::Result<(u64, u64)> {
    set_nonblocking(a)?;
    set_nonblocking(b)?;
    let last = Cell::new(Instant::now());
    let a_to_b = half(a, b, &last);
    let b_to_a = half(b, a, &last);
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

/// One direction: until EOF or an error, then a write shutdown towards `dst`. It waits for the
/// source without a pipe, then moves a burst (boxed: an idle tunnel keeps only the wait).
async fn half(src: &Stream, dst: &Stream, last: &Cell<Instant>) -> u64 {
    let mut total = 0u64;
    loop {
        // An error waiting on the source ends this direction as EOF would.
        if ready(src, Interest::READABLE).await.is_err() {
            let _ = dst.shutdown(std::net::Shutdown::Write);
            return total;
        }
        match Box::pin(burst(src, dst, last)).await {
            Burst::Moved(n) => total += n,
            Burst::Ended(n) => return total + n,
        }
    }
}

/// Moves what the source has now through a pipe from the free list, given back once drained.
/// Without a pipe (descriptor limit) the burst goes through a buffer instead.
async fn burst(src: &Stream, dst: &Stream, last: &Cell<Instant>) -> Burst {
    let pipe = match take_pipe() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for splice; copying through user space");
            return copy_burst(src, dst, last).await;
        }
    };
    let mut moved = 0u64;
    loop {
        let n = match splice_ready(src, Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe.w.as_raw_fd(), SPLICE_CHUNK)
        })
        .await
        {
            Ok(n) if n > 0 => n,
            // EOF, or an error reading the source (which ends this direction as EOF would).
            _ => {
                give_pipe(pipe);
                let _ = dst.shutdown(std::net::Shutdown::Write);
                return Burst::Ended(moved);
            }
        };
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
                    // The destination is gone: stop reading the source too. The pipe still
                    // holds bytes, so it is closed rather than given back.
                    let _ = src.shutdown(std::net::Shutdown::Read);
                    return Burst::Ended(moved);
                }
            }
        }
        moved += n as u64;
        if n < SPLICE_CHUNK && !more_pending(src) {
            give_pipe(pipe);
            return Burst::Moved(moved);
        }
    }
}

/// Whether the socket has bytes waiting to be read now (FIONREAD).
fn more_pending(s: &Stream) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`, on a descriptor `s` owns.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    rc == 0 && n > 0
}

/// A burst through a buffer (no pipe could be had): non-blocking recv/send with readiness waits.
async fn copy_burst(src: &Stream, dst: &Stream, last: &Cell<Instant>) -> Burst {
    let mut buf = crate::io::bufs::take_large();
    buf.resize(buf.capacity(), 0);
    let mut moved = 0u64;
    let end = loop {
        let n =
            match splice_ready(src, Interest::READABLE, || recv(src.as_raw_fd(), &mut buf)).await {
                Ok(n) if n > 0 => n,
                _ => {
                    let _ = dst.shutdown(std::net::Shutdown::Write);
                    break Burst::Ended(moved);
                }
            };
        last.set(Instant::now());
        let mut pos = 0;
        while pos < n {
            let chunk = buf.get(pos..n).unwrap_or_default();
            match splice_ready(dst, Interest::WRITABLE, || send(dst.as_raw_fd(), chunk)).await {
                Ok(m) if m > 0 => pos += m,
                _ => {
                    let _ = src.shutdown(std::net::Shutdown::Read);
                    crate::io::bufs::give(buf);
                    return Burst::Ended(moved);
                }
            }
        }
        moved += n as u64;
        if n < buf.len() {
            break Burst::Moved(moved);
        }
    };
    crate::io::bufs::give(buf);
    end
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a buffer we own, on a descriptor the caller owns.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send from a buffer we own, on a descriptor the caller owns.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits until `s` is ready for `interest` (or has an error or hang-up).
async fn ready(s: &Stream, interest: Interest) -> io::Result<()> {
    match s {
        Stream::Epoll(t) => Box::pin(t.ready(interest)).await.map(drop),
        Stream::Uring(_) => {
            let events = if interest.is_readable() {
                libc::POLLIN | libc::POLLRDHUP
            } else {
                libc::POLLOUT
            };
            crate::io::uring_poll(s.as_raw_fd(), events as u32)
                .await
                .map(drop)
        }
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
