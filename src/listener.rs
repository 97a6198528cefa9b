//! Listening sockets: one SO_REUSEPORT socket per listener per worker, and the accept loop.
//!
//! The sockets are created by the main thread before the workers start (so a busy port or a bad
//! address fails the start, and port 0 resolves once for every worker), then each worker owns its
//! own sockets and runs their accept loops; the kernel spreads connections between them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::io::Listener;
use crate::worker::{ListenerPlan, SocketSettings, Worker};

pub mod owner;

/// Accept-loop back-off when the process or system is out of file descriptors or memory.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Creates a listening socket on `addr` with SO_REUSEPORT so every worker can bind the same port,
/// with the listener's backlog, congestion control (every connection it accepts runs that
/// algorithm) and deferred accept.
pub fn bind_reuseport(addr: SocketAddr, set: &SocketSettings) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted connections inherit TCP_NODELAY from the listening socket: no setsockopt per
    // connection.
    socket.set_nodelay(true)?;
    apply_options(socket.as_raw_fd(), set, true)?;
    socket.bind(&addr.into())?;
    socket.listen(set.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Sets the options a listening socket takes from its config: congestion control (when named)
/// and deferred accept. A `fresh` socket starts without deferral, so it is only ever turned
/// on there; one that another process shared (an upgrade) may carry it, and is set either way
/// (a kernel that cannot read it back cannot have it on, and is left alone).
fn apply_options(fd: RawFd, set: &SocketSettings, fresh: bool) -> io::Result<()> {
    if let Some(name) = &set.congestion_control {
        crate::sockopt::set_congestion_control(fd, name)
            .map_err(|e| io::Error::new(e.kind(), format!("congestion_control \"{name}\": {e}")))?;
    }
    let carried = !fresh && crate::sockopt::defer_accept(fd).unwrap_or(false);
    if set.defer_accept || carried {
        crate::sockopt::set_defer_accept(fd, set.defer_accept).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("defer_accept = {}: {e}", set.defer_accept),
            )
        })?;
    }
    Ok(())
}

/// Gives a listening socket that two processes share the backlog and options of `set`: the new
/// process's config when it adopts the socket, and the old one's again when that upgrade fails
/// (the new process may have applied its own before it gave up). A congestion control the old
/// config does not name stays as the new one set it.
pub fn restore(fd: RawFd, set: &SocketSettings) -> io::Result<()> {
    // listen() again on a listening socket only sets its backlog.
    // SAFETY: plain syscall on a descriptor the caller keeps open.
    if unsafe { libc::listen(fd, set.backlog.min(i32::MAX as u32) as i32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    apply_options(fd, set, false)
}

/// Binds `workers` sockets for one listener address; a port of 0 is resolved by the first bind and
/// reused by the others. Returns the sockets and the address actually bound.
pub fn bind_all(
    addr: SocketAddr,
    set: &SocketSettings,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    // SO_REUSEPORT is for ringlb's own workers: a port another process listens on is refused,
    // or both would take its traffic at random.
    if let Some(holder) = owner::listening_holder(addr).filter(|h| !h.is_self()) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("the address is already in use by {holder}; stop it or choose another port"),
        ));
    }
    let first = bind_reuseport(addr, set)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_reuseport(bound, set)?);
    }
    Ok((all, bound))
}

/// Serves a listener on sockets a binary upgrade handed over (see [`crate::upgrade`]): they keep
/// listening throughout, so not one connection is refused. The backlog, congestion control and
/// deferred accept of the new config are applied to them, and sockets are added (same address,
/// same SO_REUSEPORT group) when this process runs more workers than the old one did.
pub fn adopt(
    mut socks: Vec<std::net::TcpListener>,
    bound: SocketAddr,
    set: &SocketSettings,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    for s in &socks {
        restore(s.as_raw_fd(), set)?;
    }
    while socks.len() < workers {
        socks.push(bind_reuseport(bound, set)?);
    }
    Ok((socks, bound))
}

/// Whether an accept error is a resource shortage to wait out rather than a broken listener.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Whether an accept error concerns only the one connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED)
            | Some(libc::EPROTO)
            | Some(libc::EPERM)
            | Some(libc::EINTR)
            | Some(libc::EAGAIN)
    )
}

/// Accepts until the worker drains or a reload removes the listener. Survives EMFILE/ENFILE by backing off while open connections
/// keep being served. Never wrapped in `select!` (a dropped io_uring accept leaks its fd): draining
/// shuts the listening socket down, which completes the pending accept with an error.
pub async fn accept_loop(worker: Rc<Worker>, plan: Arc<ListenerPlan>, listener: Listener) {
    // Out of the drain's registry, and of the worker's list of sockets to stop, before the
    // socket closes (`listener` drops after this guard, also when the task is dropped): a
    // shutdown or cancel by descriptor must never reach another socket that reuses the number.
    struct Registered<'a>(&'a Worker, std::os::fd::RawFd);
    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            self.0.shared.listening_closing(self.1);
            self.0.listener_closing(self.1);
        }
    }
    worker
        .shared
        .listening_opened(listener.as_raw_fd(), plan.index);
    let _registered = Registered(&worker, listener.as_raw_fd());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Also after a back-off sleep: an accept armed once the drain began would not be
        // withdrawn (the drain's cancel already ran).
        if worker.is_draining() || worker.shared.stopping() {
            break;
        }
        let res = match &listener {
            // epoll: a pending accept may be dropped safely, so a drain after an upgrade (which
            // must not shut the shared socket down) ends it by a notification.
            Listener::Epoll(_) => {
                let changed = worker.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if worker.is_draining() {
                    break;
                }
                tokio::select! {
                    r = listener.accept() => r,
                    _ = changed => continue,
                }
            }
            // io_uring: never dropped (the accepted fd would leak); a drain shuts the socket
            // down, or after an upgrade cancels the accept (`Worker::start_drain`).
            Listener::Uring(_) => listener.accept().await,
        };
        if worker.is_draining() || worker.shared.stopping() {
            // A connection accepted as the drain began is served (told to close), not dropped:
            // after an upgrade its client was not refused, and must not be reset either.
            if let (Ok((stream, peer)), Some(current)) = (res, worker.plan(plan.index)) {
                worker.spawn_connection(current, stream, peer);
            }
            break;
        }
        // A reload may have replaced this listener's plan, or removed the listener: then a
        // connection accepted just before is still served, and the loop ends.
        let Some(current) = worker.plan(plan.index) else {
            if let Ok((stream, peer)) = res {
                worker.spawn_connection(plan, stream, peer);
            }
            break;
        };
        match res {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                worker.spawn_connection(current, stream, peer);
            }
            Err(e) if is_resource_error(&e) => {
                worker.note_accept_error();
                tracing::warn!(listener = %plan.name, error = %e, "accept: out of resources; backing off {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(listener = %plan.name, error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(defer_accept: bool) -> SocketSettings {
        SocketSettings {
            backlog: 16,
            congestion_control: None,
            defer_accept,
        }
    }

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listening_socket() {
        let l = bind_reuseport("127.0.0.1:0".parse().unwrap(), &settings(false)).expect("bind");
        l.set_nonblocking(false).expect("blocking");
        let addr = l.local_addr().expect("addr");
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        let (s, _) = l.accept().expect("accept");
        assert!(
            s.nodelay().expect("getsockopt"),
            "TCP_NODELAY not inherited"
        );
    }

    #[test]
    fn deferred_accept_follows_the_config_also_on_sockets_an_upgrade_hands_over() {
        let fd = |l: &std::net::TcpListener| crate::sockopt::defer_accept(l.as_raw_fd());
        let (socks, bound) =
            bind_all("127.0.0.1:0".parse().unwrap(), &settings(true), 2).expect("bind");
        assert_eq!(socks.len(), 2);
        assert!(
            socks.iter().all(|l| fd(l).expect("get")),
            "both workers' sockets defer"
        );
        // The next process's config turns it off: the adopted sockets and the added one agree.
        let (socks, _) = adopt(socks, bound, &settings(false), 3).expect("adopt");
        assert_eq!(socks.len(), 3);
        assert!(
            socks.iter().all(|l| !fd(l).expect("get")),
            "none defers any more"
        );
    }
}
