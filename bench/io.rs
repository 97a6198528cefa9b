//! The bench's I/O seam: a per-thread runtime (tokio-uring, or tokio current-thread/epoll when
//! io_uring is refused) and owned-buffer TCP streams/listeners over either backend.
//! Runs on every load and backend worker thread; each stream is owned by the task that uses it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which I/O backend a thread's runtime uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Uring,
    Epoll,
}

/// Submission-queue entries per ring.
const RING_ENTRIES: u32 = 1024;

/// `RINGLB_BENCH_IO=epoll` forces the epoll runtime (to compare, or where io_uring misbehaves).
pub const FORCE_EPOLL_ENV: &str = "RINGLB_BENCH_IO";

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Runs `make(kind)` to completion on this thread, on tokio-uring when the kernel allows it
/// (COOP_TASKRUN + SINGLE_ISSUER when available), otherwise on a tokio current-thread runtime
/// with a `LocalSet` (one warning per process).
pub fn block_on<F, Fut>(make: F) -> io::Result<Fut::Output>
where
    F: FnOnce(IoKind) -> Fut,
    Fut: Future,
{
    if std::env::var_os(FORCE_EPOLL_ENV).is_some_and(|v| v == "epoll") {
        if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
            eprintln!("warning: using epoll ({FORCE_EPOLL_ENV}=epoll)");
        }
        return block_on_epoll(make);
    }
    let mut flags = io_uring::IoUring::builder();
    flags
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    let mut b = tokio_uring::builder();
    b.entries(RING_ENTRIES).uring_builder(&flags);
    let rt = tokio_uring::Runtime::new(&b).or_else(|_| {
        // Older kernels refuse the flags; try a plain ring before giving up on io_uring.
        let mut plain = tokio_uring::builder();
        plain.entries(RING_ENTRIES);
        tokio_uring::Runtime::new(&plain)
    });
    match rt {
        Ok(rt) => Ok(rt.block_on(make(IoKind::Uring))),
        Err(e) => {
            if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "warning: io_uring unavailable ({e}); using epoll \
                     (check sysctl kernel.io_uring_disabled or the container's seccomp profile)"
                );
            }
            block_on_epoll(make)
        }
    }
}

fn block_on_epoll<F, Fut>(make: F) -> io::Result<Fut::Output>
where
    F: FnOnce(IoKind) -> Fut,
    Fut: Future,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&rt, make(IoKind::Epoll)))
}

/// A connected TCP stream on either backend, with owned-buffer reads and writes.
pub enum Stream {
    Uring(tokio_uring::net::TcpStream),
    Epoll(tokio::net::TcpStream),
}

impl Stream {
    /// Connects to `addr` with TCP_NODELAY set.
    pub async fn connect(kind: IoKind, addr: SocketAddr) -> io::Result<Stream> {
        let s = match kind {
            IoKind::Uring => Stream::Uring(tokio_uring::net::TcpStream::connect(addr).await?),
            IoKind::Epoll => Stream::Epoll(tokio::net::TcpStream::connect(addr).await?),
        };
        s.set_nodelay()?;
        Ok(s)
    }

    fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Uring(s) => s.set_nodelay(true),
            Stream::Epoll(s) => s.set_nodelay(true),
        }
    }

    /// Reads into the spare capacity of `buf` (appending after `buf.len()`); returns the byte
    /// count (0 = end of stream). The caller keeps spare capacity available.
    pub async fn read_append(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if buf.len() == buf.capacity() {
            return (
                Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "read buffer full",
                )),
                buf,
            );
        }
        match self {
            Stream::Uring(s) => {
                use tokio_uring::buf::BoundedBuf;
                let (len, cap) = (buf.len(), buf.capacity());
                let (res, slice) = s.read(buf.slice(len..cap)).await;
                (res, slice.into_inner())
            }
            Stream::Epoll(s) => {
                let res = s.read_buf(&mut buf).await;
                (res, buf)
            }
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Stream::Uring(s) => s.write_all(buf).await,
            Stream::Epoll(s) => {
                let res = s.write_all(&buf).await;
                (res, buf)
            }
        }
    }

    /// Shuts both directions down now, waking any read still pending on the socket.
    pub fn shutdown(&self) {
        let fd = match self {
            Stream::Uring(s) => std::os::fd::AsRawFd::as_raw_fd(s),
            Stream::Epoll(s) => std::os::fd::AsRawFd::as_raw_fd(s),
        };
        // SAFETY: `fd` is an open socket owned by `self`; shutdown(2) does not close it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// A listening socket on either backend.
pub enum Listener {
    Uring(tokio_uring::net::TcpListener),
    Epoll(tokio::net::TcpListener),
}

impl Listener {
    /// Wraps a bound, listening std socket for this thread's runtime.
    pub fn from_std(kind: IoKind, l: std::net::TcpListener) -> io::Result<Listener> {
        Ok(match kind {
            IoKind::Uring => Listener::Uring(tokio_uring::net::TcpListener::from_std(l)),
            IoKind::Epoll => {
                l.set_nonblocking(true)?;
                Listener::Epoll(tokio::net::TcpListener::from_std(l)?)
            }
        })
    }

    /// Accepts one connection (TCP_NODELAY set).
    pub async fn accept(&self) -> io::Result<Stream> {
        let s = match self {
            Listener::Uring(l) => Stream::Uring(l.accept().await?.0),
            Listener::Epoll(l) => Stream::Epoll(l.accept().await?.0),
        };
        s.set_nodelay()?;
        Ok(s)
    }
}

/// Pins the current thread to the `i`-th CPU of `cpus`, or of the allowed set when `None`.
/// Returns the CPU chosen, or `None` when pinning is impossible (it is then skipped).
pub fn pin_thread(i: usize, cpus: Option<&[usize]>) -> Option<usize> {
    let id = match cpus {
        Some(list) if !list.is_empty() => list[i % list.len()],
        _ => {
            let ids = core_affinity::get_core_ids()?;
            if ids.is_empty() {
                return None;
            }
            ids[i % ids.len()].id
        }
    };
    core_affinity::set_for_current(core_affinity::CoreId { id }).then_some(id)
}
