//! One worker: a pinned thread running its own event loop (io_uring or epoll), its own listening
//! sockets, connections, upstream pools and balancer state.
//!
//! Everything here is owned by the worker thread (`Rc`, `Cell`, `RefCell`); the only things it
//! shares are read-mostly: the immutable listener plans, the target table's atomics, and its own
//! padded metric slots. No worker ever waits for another.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::sync::Recorder;
use tokio::sync::Notify;

use crate::balance::{Balancer, Pick};
use crate::config::{Limits, ListenerProtocol};
use crate::guard::{Guard, Rejection};
use crate::http::parse::HeadLimits;
use crate::io::{Backend, Listener, Stream};
use crate::metrics::{ErrorKind, ListenerStats};
use crate::pool::LocalTarget;
use crate::runtime::Shared;
use crate::target::Group;

/// How long a refused connection's 503 may take to write before the socket is closed anyway.
pub const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a worker closes upstream connections idle past their keep-alive timeout.
pub const POOL_SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Size of a pooled relay buffer (upstream reads, forwarded heads).
pub const RELAY_BUF: usize = 32 * 1024;
/// Relay buffers kept per worker for reuse.
pub const MAX_POOLED_BUFS: usize = 1024;

/// Everything the request path needs to know about a listener, built once by the main thread.
pub struct ListenerPlan {
    pub index: usize,
    pub name: String,
    pub bound: SocketAddr,
    pub protocol: ListenerProtocol,
    /// "http" or "https", for X-Forwarded-Proto.
    pub scheme: &'static str,
    pub limits: Limits,
    pub head_limits: HeadLimits,
    /// The default action: forward to this group.
    pub group: Arc<Group>,
    /// The listener's compiled rules (empty: every request goes to `group`).
    pub router: crate::router::Router,
    /// Read a PROXY v1/v2 header first and take the client's address from it.
    pub accept_proxy_protocol: bool,
    pub stats: Arc<ListenerStats>,
    /// https listeners: the TLS config shared by every worker (tickets open on any of them).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A worker's mirror of one group: local targets with their pools, and the balancer.
pub struct LocalGroup {
    version: u64,
    pub targets: Vec<Rc<LocalTarget>>,
    balancer: Balancer,
}

pub struct Worker {
    pub id: usize,
    pub backend: Backend,
    pub shared: Arc<Shared>,
    groups: RefCell<Vec<Option<LocalGroup>>>,
    bufs: RefCell<Vec<Vec<u8>>>,
    /// Client connections waiting for their next request: shut down when draining.
    idle_clients: RefCell<Slab>,
    listener_fds: RefCell<Vec<RawFd>>,
    recorders: RefCell<Vec<Recorder<u64>>>,
    /// Admission state per listener (indexed like `shared.listeners`).
    guards: Vec<Guard>,
    /// Access log buffers per listener (flushed to the writer thread).
    logs: crate::access_log::WorkerLogs,
    open: Cell<usize>,
    draining: Cell<bool>,
    all_closed: Notify,
}

impl Worker {
    pub fn new(id: usize, backend: Backend, shared: Arc<Shared>) -> Rc<Worker> {
        let recorders = shared
            .listeners
            .iter()
            .map(|l| l.stats.recorder())
            .collect();
        let guards = shared
            .listeners
            .iter()
            .map(|l| Guard::new(&l.limits))
            .collect();
        let logs = shared.access_logs.for_worker();
        Rc::new(Worker {
            id,
            backend,
            shared,
            groups: RefCell::new(Vec::new()),
            bufs: RefCell::new(Vec::new()),
            idle_clients: RefCell::new(Slab::default()),
            listener_fds: RefCell::new(Vec::new()),
            recorders: RefCell::new(recorders),
            guards,
            logs,
            open: Cell::new(0),
            draining: Cell::new(false),
            all_closed: Notify::new(),
        })
    }

    /// The worker's main future: accept on its sockets until drained, then wait for its
    /// connections to finish.
    pub async fn run(self: Rc<Self>, sockets: Vec<(Arc<ListenerPlan>, std::net::TcpListener)>) {
        let mut loops = Vec::new();
        for (plan, sock) in sockets {
            let listener = match Listener::from_std(self.backend, sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(listener = %plan.name, error = %e, "cannot register listening socket");
                    continue;
                }
            };
            self.listener_fds.borrow_mut().push(listener.as_raw_fd());
            loops.push(tokio::task::spawn_local(crate::listener::accept_loop(
                self.clone(),
                plan,
                listener,
            )));
        }
        tokio::task::spawn_local(self.clone().sweep_pools());
        if self.logs.any() {
            tokio::task::spawn_local(crate::access_log::flush_loop(self.clone()));
        }
        let mut drain = self.shared.drain_rx();
        // Wait for the drain signal.
        while !*drain.borrow_and_update() {
            if drain.changed().await.is_err() {
                break;
            }
        }
        self.start_drain();
        for l in loops {
            let _ = l.await;
        }
        while self.open.get() > 0 {
            self.all_closed.notified().await;
        }
        self.logs.flush();
    }

    fn start_drain(&self) {
        self.draining.set(true);
        // Completes the pending accepts with an error; the loops see `draining` and end.
        for fd in self.listener_fds.borrow().iter() {
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        // Idle keep-alive clients: end their pending read; busy ones close after their response.
        for fd in self.idle_clients.borrow().iter() {
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn spawn_connection(
        self: &Rc<Self>,
        plan: Arc<ListenerPlan>,
        stream: Stream,
        peer: SocketAddr,
    ) {
        // Admission: the worker's connection cap here; the listener's ACL and per-IP cap once the
        // client is known (a PROXY header may name it).
        if self.open.get() >= self.shared.config.runtime.max_connections {
            self.refuse(&plan, stream, peer, Rejection::WorkerConnections);
            return;
        }
        self.open.set(self.open.get() + 1);
        plan.stats.slot(self.id).opened();
        let w = self.clone();
        tokio::task::spawn_local(async move {
            let _ = stream.set_nodelay(true);
            let stats = plan.stats.clone();
            // The client: the socket's peer, or the one a PROXY header names (None: refused).
            match crate::proxy_protocol::client_of(&plan, &stream, peer).await {
                None => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                Some(who) => {
                    let ip = who.peer.ip();
                    match w.guard(plan.index).map_or(Ok(()), |g| g.admit(ip)) {
                        Err(r) => w.refuse(&plan, stream, who.peer, r),
                        Ok(()) => {
                            let index = plan.index;
                            match plan.protocol {
                                ListenerProtocol::Tcp => {
                                    crate::l4::serve(w.clone(), plan, stream, who).await
                                }
                                _ => {
                                    let (peer, rbuf) = (who.peer, who.rest);
                                    crate::http::proxy::serve_with(
                                        w.clone(),
                                        plan,
                                        stream,
                                        peer,
                                        rbuf,
                                    )
                                    .await
                                }
                            }
                            if let Some(g) = w.guard(index) {
                                g.release(ip);
                            }
                        }
                    }
                }
            }
            stats.slot(w.id).closed();
            w.open.set(w.open.get() - 1);
            if w.open.get() == 0 {
                w.all_closed.notify_waiters();
            }
        });
    }

    /// This worker's access log buffers.
    pub fn access_logs(&self) -> &crate::access_log::WorkerLogs {
        &self.logs
    }

    /// The admission guard of listener `index` on this worker.
    pub fn guard(&self, index: usize) -> Option<&Guard> {
        self.guards.get(index)
    }

    /// Refuses a new connection: an ACL denial is closed at once (nothing is said to a denied
    /// client); an HTTP connection over a cap gets a short 503 first, written without waiting long.
    fn refuse(&self, plan: &ListenerPlan, stream: Stream, peer: SocketAddr, r: Rejection) {
        let slot = plan.stats.slot(self.id);
        slot.rejected(r);
        crate::access_log::log_refusal(&self.logs, plan, peer, r);
        if self
            .guard(plan.index)
            .is_some_and(|g| g.may_log(Instant::now()))
        {
            tracing::info!(listener = %plan.name, client = %peer, reason = r.label(), "connection refused");
        }
        // Only a plain-HTTP client can read a 503 before the handshake; others are closed.
        if r == Rejection::AclDenied || plan.protocol != ListenerProtocol::Http {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        tokio::task::spawn_local(async move {
            let reply = crate::http::error::canned(503, true).to_vec();
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(reply)).await;
            let _ = stream.shutdown(std::net::Shutdown::Both);
        });
    }

    pub fn note_accept_error(&self) {
        if let Some(l) = self.shared.listeners.first() {
            l.stats.slot(self.id).error(ErrorKind::AcceptResource);
        }
    }

    /// Registers a client connection as idle between requests; the key unregisters it.
    pub fn idle_enter(&self, fd: RawFd) -> usize {
        self.idle_clients.borrow_mut().insert(fd)
    }

    pub fn idle_leave(&self, key: usize) {
        self.idle_clients.borrow_mut().remove(key);
    }

    /// A relay buffer from the worker's free list (or a new one).
    pub fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RELAY_BUF))
    }

    pub fn give_buf(&self, mut buf: Vec<u8>) {
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_POOLED_BUFS
            && buf.capacity() >= RELAY_BUF
            && buf.capacity() <= 4 * RELAY_BUF
        {
            buf.clear();
            bufs.push(buf);
        }
    }

    pub fn record_latency(&self, listener: usize, micros: u64) {
        if let Some(r) = self.recorders.borrow_mut().get_mut(listener) {
            let _ = r.record(micros.max(1));
        }
    }

    /// Picks a target of `group` for a client, skipping `tried`; rebuilds the local mirror first
    /// when the membership changed.
    pub fn pick(
        &self,
        group: &Group,
        client: std::net::IpAddr,
        tried: &[u64],
    ) -> Result<Rc<LocalTarget>, Pick> {
        let mut groups = self.groups.borrow_mut();
        if groups.len() <= group.index {
            groups.resize_with(group.index + 1, || None);
        }
        let version = group.version();
        let slot = &mut groups[group.index];
        if slot.as_ref().is_none_or(|g| g.version != version) {
            *slot = Some(self.mirror(group, slot.take()));
        }
        let Some(lg) = slot.as_mut() else {
            return Err(Pick::Unavailable);
        };
        match lg
            .balancer
            .pick(&lg.targets, client, tried, group.settings.fail_open)
        {
            Pick::Target(i) => lg.targets.get(i).cloned().ok_or(Pick::Unavailable),
            other => Err(other),
        }
    }

    /// Builds the local mirror of a group, keeping the pools of targets that stay.
    fn mirror(&self, group: &Group, old: Option<LocalGroup>) -> LocalGroup {
        let members = group.members_full();
        let old_targets = old.map(|g| g.targets).unwrap_or_default();
        let s = &group.settings;
        let targets: Vec<Rc<LocalTarget>> = members
            .targets
            .iter()
            .map(|t| {
                old_targets
                    .iter()
                    .find(|o| o.target.id == t.id)
                    .cloned()
                    .unwrap_or_else(|| {
                        Rc::new(LocalTarget::new(
                            t.clone(),
                            self.id,
                            s.max_idle_per_target,
                            s.keepalive_timeout,
                        ))
                    })
            })
            .collect();
        for o in &old_targets {
            if !targets.iter().any(|t| t.target.id == o.target.id) {
                o.clear();
            }
        }
        let mut balancer = Balancer::new(s.algorithm, self.id as u64);
        balancer.reset(targets.len());
        LocalGroup {
            version: group.version(),
            targets,
            balancer,
        }
    }

    async fn sweep_pools(self: Rc<Self>) {
        loop {
            tokio::time::sleep(POOL_SWEEP_INTERVAL).await;
            if self.draining.get() {
                break;
            }
            self.publish_latency();
            let now = Instant::now();
            for g in self.groups.borrow().iter().flatten() {
                for t in &g.targets {
                    if t.target.state() == crate::target::State::Draining {
                        t.clear();
                    } else {
                        t.sweep(now);
                    }
                }
            }
        }
    }
}

impl Worker {
    /// Hands recorded latency samples to a pending merge (`/latency`, `/metrics`): an idle
    /// recorder would otherwise hold them until its next request. Cheap when no merge is pending.
    fn publish_latency(&self) {
        for r in self.recorders.borrow_mut().iter_mut() {
            drop(r.idle());
        }
    }
}

/// A minimal slab of raw fds with stable keys.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<RawFd>>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, fd: RawFd) -> usize {
        match self.free.pop() {
            Some(k) => {
                self.entries[k] = Some(fd);
                k
            }
            None => {
                self.entries.push(Some(fd));
                self.entries.len() - 1
            }
        }
    }
    fn remove(&mut self, key: usize) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.take().is_some() {
                self.free.push(key);
            }
        }
    }
    fn iter(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.entries.iter().flatten().copied()
    }
}

/// Whether this connection must stop after the current response (worker draining).
pub fn must_close(w: &Worker) -> bool {
    w.is_draining()
}

/// Runs a worker on the current thread with `backend`, until drained.
pub fn run_thread(
    id: usize,
    backend: Backend,
    shared: Arc<Shared>,
    sockets: Vec<(Arc<ListenerPlan>, std::net::TcpListener)>,
) -> std::io::Result<()> {
    let worker_main = move || {
        let w = Worker::new(id, backend, shared);
        w.run(sockets)
    };
    match backend {
        Backend::Uring => {
            let rt = crate::runtime::uring_runtime()?;
            rt.block_on(worker_main());
        }
        Backend::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, worker_main());
        }
    }
    Ok(())
}
