//! One worker: a pinned thread running its own event loop (io_uring or epoll), its own listening
//! sockets, connections, upstream pools and balancer state.
//!
//! Everything here is owned by the worker thread (`Rc`, `Cell`, `RefCell`); the only things it
//! shares are read-mostly: the immutable listener plans, the target table's atomics, and its own
//! padded metric slots. No worker ever waits for another. A reload reaches it as a message
//! (`crate::reload::Update`) that it applies between connections (`worker/update.rs`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::sync::Recorder;
use tokio::sync::Notify;

use crate::balance::{Balancer, Pick};
use crate::config::{Limits, ListenerProtocol};
use crate::guard::{Guard, Rejection};
use crate::http::parse::HeadLimits;
use crate::io::{Backend, Stream};
use crate::metrics::{ErrorKind, ListenerStats};
use crate::pool::LocalTarget;
use crate::runtime::Shared;
use crate::target::Group;

mod update;

/// How long a refused connection's 503 may take to write before the socket is closed anyway.
pub const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a worker closes upstream connections idle past their keep-alive timeout.
pub const POOL_SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a draining worker still waits for the next request of an idle keep-alive client
/// (one already sent when the drain began is answered, with `Connection: close`).
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

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
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// HTTP/2 to clients (h2 by ALPN on https, h2c by prior knowledge on http), when on.
    pub http2: Option<crate::config::Http2Settings>,
    /// The request id field (lower case), when request ids are on.
    pub request_id: Option<String>,
    /// What the listening sockets were created with; a kept listener keeps them across reloads.
    pub sockets: SocketSettings,
}

/// Settings of a listener's listening sockets: they change only with new sockets (a restart, or
/// a new bind address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    pub backlog: u32,
    pub congestion_control: Option<String>,
    /// `TCP_DEFER_ACCEPT`: a connection is accepted once its first bytes have arrived.
    pub defer_accept: bool,
}

impl SocketSettings {
    /// The settings a listener's config asks of its sockets.
    pub fn of(l: &crate::config::ListenerConfig) -> SocketSettings {
        SocketSettings {
            backlog: l.backlog,
            congestion_control: l.congestion_control.clone(),
            defer_accept: l.defer_accept,
        }
    }
}

/// A listener's admission guard on one worker, with the limits it was built from.
type ListenerGuard = (Limits, Rc<Guard>);

/// A worker's mirror of one group: local targets with their pools, and the balancer.
pub struct LocalGroup {
    /// The mirrored group (`Group::uid`) and its membership version.
    uid: u64,
    version: u64,
    pub targets: Vec<Rc<LocalTarget>>,
    balancer: Balancer,
    /// Requests waiting for a slot under `max_connections` (kept across membership changes).
    queue: Rc<crate::queue::Waitlist>,
}

pub struct Worker {
    pub id: usize,
    pub backend: Backend,
    pub shared: Arc<Shared>,
    /// Mirrors of the current table's groups, by group index.
    groups: RefCell<Vec<Option<LocalGroup>>>,
    /// Mirrors of groups of other generations, still used by connections on an older plan
    /// (rebuilt on demand; dropped at each reload).
    stale: RefCell<Vec<LocalGroup>>,
    /// Client connections waiting for their next request: shut down when draining.
    idle_clients: RefCell<Slab>,
    /// Listening sockets by listener index: shut down when draining or when a reload removes them.
    listener_fds: RefCell<Vec<(usize, RawFd)>>,
    /// The accept loops, awaited when draining.
    accept_loops: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// The current plan of each listener index (`None`: removed by a reload, or never known).
    plans: RefCell<Vec<Option<Arc<ListenerPlan>>>>,
    /// Latency recorders by listener index.
    recorders: RefCell<Vec<Option<Recorder<u64>>>>,
    /// Admission state by listener index, with the limits it was built from (a reload keeps a
    /// guard whose limits did not change).
    guards: RefCell<Vec<Option<ListenerGuard>>>,
    /// Access log buffers per listener (flushed to the writer thread).
    logs: crate::access_log::WorkerLogs,
    /// `runtime.max_connections`, read once (a reload does not change runtime settings); kept
    /// here so an accept does not touch the shared snapshot's reference count.
    max_connections: usize,
    open: Cell<usize>,
    draining: Cell<bool>,
    /// Set [`DRAIN_IDLE_GRACE`] after the drain began.
    idle_grace_over: Cell<bool>,
    all_closed: Notify,
    /// Woken on drain and on every reload (HTTP/2 connections then send GOAWAY).
    changes: Notify,
}

impl Worker {
    pub fn new(id: usize, backend: Backend, shared: Arc<Shared>) -> Rc<Worker> {
        let snapshot = shared.snapshot();
        let logs = shared.access_logs.for_worker();
        let w = Rc::new(Worker {
            id,
            backend,
            shared,
            groups: RefCell::new(Vec::new()),
            stale: RefCell::new(Vec::new()),
            idle_clients: RefCell::new(Slab::default()),
            listener_fds: RefCell::new(Vec::new()),
            accept_loops: RefCell::new(Vec::new()),
            plans: RefCell::new(Vec::new()),
            recorders: RefCell::new(Vec::new()),
            guards: RefCell::new(Vec::new()),
            logs,
            max_connections: snapshot.config.runtime.max_connections,
            open: Cell::new(0),
            draining: Cell::new(false),
            idle_grace_over: Cell::new(false),
            all_closed: Notify::new(),
            changes: Notify::new(),
        });
        for plan in &snapshot.listeners {
            w.install_plan(plan);
        }
        w
    }

    /// The worker's main future: accept on its sockets until drained, then wait for its
    /// connections to finish.
    pub async fn run(
        self: Rc<Self>,
        sockets: Vec<(Arc<ListenerPlan>, std::net::TcpListener)>,
        updates: tokio::sync::mpsc::UnboundedReceiver<crate::reload::Update>,
    ) {
        for (plan, sock) in sockets {
            self.listen(plan, sock);
        }
        tokio::task::spawn_local(self.clone().sweep_pools());
        tokio::task::spawn_local(self.clone().follow_updates(updates));
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
        // Idle keep-alive clients get a moment: a request already on its way is answered (with
        // `Connection: close`) instead of lost; then their pending reads end.
        let w = self.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(DRAIN_IDLE_GRACE).await;
            w.idle_grace_over.set(true);
            for fd in w.idle_clients.borrow().iter() {
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
        });
        let loops = std::mem::take(&mut *self.accept_loops.borrow_mut());
        for l in loops {
            let _ = l.await;
        }
        while self.open.get() > 0 {
            self.all_closed.notified().await;
        }
        self.logs.flush();
    }

    /// Completes at the next drain or reload (poll it once to register).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changes.notified()
    }

    fn start_drain(&self) {
        self.draining.set(true);
        self.changes.notify_waiters();
        // After a binary upgrade the new process accepts on these same sockets: this worker
        // withdraws only its own accepts (a connection already accepted completes the accept and
        // is served). The epoll accept loops end on the notification above.
        if self.shared.handing_over() {
            if self.backend == crate::io::Backend::Uring {
                for (_, fd) in self.listener_fds.borrow().iter() {
                    let cancelled = crate::io::cancel_accepts(*fd);
                    tokio::task::spawn_local(async move {
                        if let Err(e) = cancelled.await {
                            tracing::warn!(error = %e, "cannot withdraw a pending accept; it ends with the next connection or the drain timeout");
                        }
                    });
                }
            }
            return;
        }
        // Completes the pending accepts with an error; the loops see `draining` and end.
        for (_, fd) in self.listener_fds.borrow().iter() {
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// A listening socket of this worker is about to close: it leaves the list the drain and
    /// reloads stop by descriptor.
    pub fn listener_closing(&self, fd: RawFd) {
        self.listener_fds.borrow_mut().retain(|&(_, f)| f != fd);
    }

    /// Draining, and the idle clients' grace is over: a connection waiting for a request closes.
    pub fn idle_closing(&self) -> bool {
        self.idle_grace_over.get()
    }

    pub fn spawn_connection(
        self: &Rc<Self>,
        plan: Arc<ListenerPlan>,
        stream: Stream,
        peer: SocketAddr,
    ) {
        // Admission: the worker's connection cap here; the listener's ACL and per-IP cap once the
        // client is known (a PROXY header may name it).
        if self.open.get() >= self.max_connections {
            self.refuse(&plan, stream, peer, Rejection::WorkerConnections);
            return;
        }
        self.open.set(self.open.get() + 1);
        plan.stats.slot(self.id).opened();
        // Boxed before the spawn: the task's own future then holds a pointer to the admission
        // (and first busy spell) instead of the accepted socket, and stays small for as long
        // as the connection lives.
        let admitting = crate::boxed::pinned(|| admit(self.clone(), plan.clone(), stream, peer));
        tokio::task::spawn_local(connection(self.clone(), plan, admitting));
    }

    /// This worker's access log buffers.
    pub fn access_logs(&self) -> &crate::access_log::WorkerLogs {
        &self.logs
    }

    /// The admission guard of listener `index` on this worker.
    pub fn guard(&self, index: usize) -> Option<Rc<Guard>> {
        self.guards
            .borrow()
            .get(index)
            .and_then(Option::as_ref)
            .map(|(_, g)| g.clone())
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
        if let Some(l) = self.shared.snapshot().listeners.first() {
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

    /// A relay buffer from the worker thread's free list (or a new one).
    #[inline]
    pub fn take_buf(&self) -> Vec<u8> {
        crate::io::bufs::take_large()
    }

    /// Gives a buffer back to the worker thread's free list.
    #[inline]
    pub fn give_buf(&self, buf: Vec<u8>) {
        crate::io::bufs::give(buf)
    }

    pub fn record_latency(&self, listener: usize, micros: u64) {
        if let Some(Some(r)) = self.recorders.borrow_mut().get_mut(listener) {
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
        let want = crate::balance::Want {
            client,
            tried,
            sticky: None,
        };
        self.pick_for(group, &want).map(|(t, _)| t)
    }

    /// As [`Worker::pick`], for a request with a stickiness cookie; also gives the group's queue
    /// on this worker (for `Pick::Full`).
    pub fn pick_for(
        &self,
        group: &Group,
        want: &crate::balance::Want,
    ) -> Result<(Rc<LocalTarget>, Rc<crate::queue::Waitlist>), Pick> {
        let mut groups = self.groups.borrow_mut();
        if groups.len() <= group.index {
            groups.resize_with(group.index + 1, || None);
        }
        let version = group.version();
        let slot = &mut groups[group.index];
        let mut stale = self.stale.borrow_mut();
        let lg = if slot.as_ref().is_none_or(|g| g.uid == group.uid) {
            if slot.as_ref().is_none_or(|g| g.version != version) {
                let old = slot.take();
                let fresh = self.mirror(
                    group,
                    old.as_ref().map_or(&[][..], |g| &g.targets),
                    old.as_ref().map(|g| g.queue.clone()),
                );
                clear_left(old.as_ref(), &fresh);
                // Waiting requests look again: the new members may have room.
                fresh.queue.release_all();
                *slot = Some(fresh);
            }
            slot.as_mut()
        } else {
            // A group of another generation: a connection still on an older plan.
            let at = stale.iter().position(|g| g.uid == group.uid);
            match at {
                Some(i) if stale[i].version == version => stale.get_mut(i),
                _ => {
                    let mut reuse: Vec<Rc<LocalTarget>> =
                        slot.as_ref().map(|g| g.targets.clone()).unwrap_or_default();
                    if let Some(i) = at {
                        reuse.extend(stale.swap_remove(i).targets);
                    }
                    stale.push(self.mirror(group, &reuse, None));
                    stale.last_mut()
                }
            }
        };
        let Some(lg) = lg else {
            return Err(Pick::Unavailable);
        };
        match lg
            .balancer
            .pick_for(&lg.targets, want, group.settings.fail_open)
        {
            Pick::Target(i) => lg
                .targets
                .get(i)
                .cloned()
                .map(|t| (t, lg.queue.clone()))
                .ok_or(Pick::Unavailable),
            other => Err(other),
        }
    }

    /// The group's queue on this worker (requests waiting for a slot under `max_connections`).
    pub fn queue_of(&self, group: &Group) -> Rc<crate::queue::Waitlist> {
        let groups = self.groups.borrow();
        if let Some(Some(g)) = groups.get(group.index) {
            if g.uid == group.uid {
                return g.queue.clone();
            }
        }
        let stale = self.stale.borrow();
        stale
            .iter()
            .find(|g| g.uid == group.uid)
            .map(|g| g.queue.clone())
            .unwrap_or_default()
    }

    /// Builds the local mirror of a group, reusing (with their pools) the local targets of
    /// `old_targets` that are still members.
    fn mirror(
        &self,
        group: &Group,
        old_targets: &[Rc<LocalTarget>],
        queue: Option<Rc<crate::queue::Waitlist>>,
    ) -> LocalGroup {
        let members = group.members_full();
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
        let queue = queue.unwrap_or_default();
        for t in &targets {
            t.set_limit(group.config.max_connections, queue.clone());
        }
        let mut balancer =
            Balancer::new(s.algorithm, self.id as u64).with_slow_start(group.config.slow_start);
        balancer.reset(targets.len());
        LocalGroup {
            uid: group.uid,
            version: group.version(),
            targets,
            balancer,
            queue,
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
                let ramp_ms = g.balancer.slow_start_ms();
                for t in &g.targets {
                    if t.target.state() == crate::target::State::Draining {
                        t.clear();
                    } else {
                        t.sweep(now);
                    }
                    if t.target.ramping() {
                        t.target.end_ramp(ramp_ms);
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
        for r in self.recorders.borrow_mut().iter_mut().flatten() {
            drop(r.idle());
        }
    }
}

/// One client connection's task. What it keeps while the connection is parked between requests
/// is small (the socket, its listener, the admission to give back); everything else (a PROXY
/// header, the TLS handshake, a busy spell of requests, a tunnel) runs in boxed futures that are
/// freed once they end.
async fn connection<F>(w: Rc<Worker>, plan: Arc<ListenerPlan>, admitting: std::pin::Pin<Box<F>>)
where
    F: std::future::Future<Output = Option<Admitted>>,
{
    // Taken apart in a plain function: no part of `Admitted` is held across the awaits.
    if let Some((rest, release)) = admitting.await.map(|a| a.go_on(&w, &plan)) {
        if let Some(rest) = rest {
            rest.await;
        }
        // The guard that admitted is the one that releases, even if a reload replaced the
        // listener's guard meanwhile.
        if let Some((g, ip)) = release {
            g.release(ip);
        }
    }
    plan.stats.slot(w.id).closed();
    w.open.set(w.open.get() - 1);
    if w.open.get() == 0 {
        w.all_closed.notify_waiters();
    }
}

/// A connection past admission.
struct Admitted {
    then: Then,
    /// The per-IP admission to give back when the connection ends.
    guard: Option<Rc<Guard>>,
    ip: std::net::IpAddr,
}

impl Admitted {
    /// What serves the rest of the connection (boxed; `None` when it is already closed), and
    /// the per-IP admission to give back once it ends.
    #[allow(clippy::type_complexity)]
    fn go_on(
        self,
        w: &Rc<Worker>,
        plan: &Arc<ListenerPlan>,
    ) -> (
        Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>,
        Option<(Rc<Guard>, std::net::IpAddr)>,
    ) {
        let rest = match self.then {
            Then::Http(after) => crate::http::proxy::serve_parked(after),
            Then::Tcp(stream, who) => {
                Some(
                    Box::pin(crate::l4::serve(w.clone(), plan.clone(), stream, who))
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
                )
            }
        };
        (rest, self.guard.map(|g| (g, self.ip)))
    }
}

/// What an admitted connection goes on with.
enum Then {
    /// HTTP: what followed the first busy spell.
    Http(crate::http::proxy::After),
    /// A tcp listener's connection, to tunnel.
    Tcp(Stream, crate::proxy_protocol::Client),
}

/// Admits a new connection (its client from a PROXY header when the listener takes one, then the
/// listener's ACL and per-IP cap); an HTTP connection is then served until it closes, parks or
/// upgrades. `None`: refused.
async fn admit(
    w: Rc<Worker>,
    plan: Arc<ListenerPlan>,
    stream: Stream,
    peer: SocketAddr,
) -> Option<Admitted> {
    // The client: the socket's peer, or the one a PROXY header names (None: refused).
    let Some(who) = crate::proxy_protocol::client_of(&plan, &stream, peer).await else {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return None;
    };
    let ip = who.peer.ip();
    let guard = w.guard(plan.index);
    if let Err(r) = guard.as_ref().map_or(Ok(()), |g| g.admit(ip)) {
        w.refuse(&plan, stream, who.peer, r);
        return None;
    }
    let then = match plan.protocol {
        ListenerProtocol::Tcp => Then::Tcp(stream, who),
        _ => Then::Http(crate::http::proxy::serve_with(w, plan, stream, who.peer, who.rest).await),
    };
    Some(Admitted { then, guard, ip })
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

/// Drains the pools of `old`'s targets that `new` no longer has.
fn clear_left(old: Option<&LocalGroup>, new: &LocalGroup) {
    for o in old.map_or(&[][..], |g| &g.targets) {
        if !new.targets.iter().any(|t| t.target.id == o.target.id) {
            o.clear();
        }
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
    updates: tokio::sync::mpsc::UnboundedReceiver<crate::reload::Update>,
) -> std::io::Result<()> {
    let worker_main = move || {
        let w = Worker::new(id, backend, shared);
        w.run(sockets, updates)
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

#[cfg(test)]
mod task_size_tests {
    use super::*;

    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The size of a connection task's future for the admission future `admit` returns.
    fn connection_size<F>(
        _admit: fn(Rc<Worker>, Arc<ListenerPlan>, Stream, SocketAddr) -> F,
    ) -> usize
    where
        F: std::future::Future<Output = Option<Admitted>>,
    {
        future_size(connection::<F>)
    }

    /// Every connection's task keeps this future for its whole life, parked or not: pointers
    /// and the admission to give back, never the accepted socket, `Admitted` or what follows
    /// it (1,456 bytes in a release build before they were boxed; 160 after).
    #[test]
    fn a_connections_task_future_is_a_few_pointers() {
        let size = connection_size(admit);
        assert!(size <= 256, "a connection's task future is {size} bytes");
    }
}
