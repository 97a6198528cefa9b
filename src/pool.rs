//! A worker's view of one target: its pool of idle upstream keep-alive connections and its local
//! in-flight count.
//!
//! Runs on one worker thread and is owned by it (`Rc`, `Cell`, `RefCell`: never shared). Idle
//! connections are reused LIFO (the warmest socket first), capped per target, and closed once idle
//! longer than the group's `keepalive_timeout`, which defaults below the idle timeouts common
//! backends use (nginx 75 s, Apache 5 s, Node 5 s) so ringlb closes first and never reuses a socket
//! the backend is about to close.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::Waitlist;
use crate::target::Target;
use crate::tls::MaybeTls;
use std::rc::Rc;

/// A connect under way for a request that picked a target: it holds a slot under
/// `max_connections` until the request begins, and gives it back if the connect fails or its
/// future is dropped (a timeout).
pub struct Connecting<'a> {
    target: &'a LocalTarget,
    begun: bool,
}

impl<'a> Connecting<'a> {
    pub fn start(target: &'a LocalTarget) -> Connecting<'a> {
        target.connecting.set(target.connecting.get() + 1);
        Connecting {
            target,
            begun: false,
        }
    }

    /// The connect ended: `begun`, the request begins now (its slot stays taken).
    pub fn done(mut self, begun: bool) {
        self.begun = begun;
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.target.connect_done(self.begun);
    }
}

/// An upstream connection parked between requests.
pub struct Idle {
    pub stream: MaybeTls,
    pub since: Instant,
}

/// One worker's mirror of a shared target.
pub struct LocalTarget {
    pub target: Arc<Target>,
    pub worker: usize,
    idle: RefCell<Vec<Idle>>,
    max_idle: usize,
    keepalive: Duration,
    /// Requests this worker has in flight to the target (drives least_outstanding / power_of_two).
    pub in_flight: Cell<u32>,
    /// Consecutive live-traffic failures seen by this worker.
    pub failures: Cell<u32>,
    /// HTTP/2 connections to the target (groups with `protocol_version` http2 or grpc).
    pub h2: crate::http2::upstream::H2Pool,
    /// The target's name in stickiness cookies.
    pub token: crate::sticky::Token,
    /// Connects under way for requests that picked this target (they count toward
    /// `max_connections` before their request begins).
    pub connecting: Cell<u32>,
    /// `max_connections` of the group (0: none), and the group's queue on this worker, told
    /// when a slot frees.
    limit: Cell<u32>,
    waitlist: RefCell<Option<Rc<Waitlist>>>,
    /// The target left this worker's mirror (a reload removed it): connections coming back
    /// from requests still in flight are closed, not pooled where no sweep would find them.
    retired: Cell<bool>,
}

impl LocalTarget {
    pub fn new(
        target: Arc<Target>,
        worker: usize,
        max_idle: usize,
        keepalive: Duration,
    ) -> LocalTarget {
        let token = crate::sticky::token_for(target.addr);
        LocalTarget {
            target,
            worker,
            idle: RefCell::new(Vec::new()),
            max_idle,
            keepalive,
            in_flight: Cell::new(0),
            failures: Cell::new(0),
            h2: Default::default(),
            token,
            connecting: Cell::new(0),
            limit: Cell::new(0),
            waitlist: RefCell::new(None),
            retired: Cell::new(false),
        }
    }

    /// The most recently parked connection that is still fresh; stale ones are closed on the way.
    pub fn take_idle(&self) -> Option<MaybeTls> {
        let mut idle = self.idle.borrow_mut();
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.keepalive {
                return Some(c.stream);
            }
        }
        None
    }

    /// Parks a connection for reuse, or closes it when the pool is full or the target is leaving.
    pub fn put_idle(&self, stream: MaybeTls) {
        if self.max_idle == 0
            || self.retired.get()
            || self.target.state() == crate::target::State::Draining
        {
            return;
        }
        // Going back to the pool: it serves more requests, so it is worth a fixed-file slot
        // and a standing multishot receive (a no-op once it has them).
        stream.stream().settle();
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= self.max_idle {
            // Drop the coldest to keep the warm LIFO end.
            idle.remove(0);
        }
        idle.push(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Closes connections idle past the keep-alive timeout, and those the target closed (or
    /// sent stray bytes on) meanwhile, so none waits in CLOSE_WAIT (called by the worker's
    /// sweeper).
    pub fn sweep(&self, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        // LIFO: the oldest are at the front.
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= self.keepalive)
            .count();
        idle.drain(..stale);
        idle.retain(|c| !peer_done(&c.stream));
        self.h2.sweep(now, self.keepalive);
    }

    /// Closes every idle connection (target draining or removed).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
        self.h2.clear();
    }

    /// The target left the mirror: closes its idle connections, and those still in flight when
    /// their request ends.
    pub fn retire(&self) {
        self.retired.set(true);
        self.clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Marks a request started: local count for the balancer, per-worker slot for the admin view.
    pub fn begin(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        let slot = self.target.slot(self.worker);
        slot.in_flight
            .store(self.in_flight.get(), std::sync::atomic::Ordering::Relaxed);
        crate::target::WorkerSlot::bump(&slot.requests);
    }

    pub fn end(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.target
            .slot(self.worker)
            .in_flight
            .store(self.in_flight.get(), std::sync::atomic::Ordering::Relaxed);
        self.slot_freed();
    }

    /// Sets the group's `max_connections` and queue (each time the worker mirrors the group).
    pub fn set_limit(&self, limit: u32, waitlist: Rc<Waitlist>) {
        self.limit.set(limit);
        *self.waitlist.borrow_mut() = Some(waitlist);
    }

    /// True when the target may take one more request under `max_connections`.
    #[inline]
    pub fn has_room(&self) -> bool {
        let limit = self.limit.get();
        limit == 0 || self.in_flight.get() + self.connecting.get() < limit
    }

    /// A connect for a request that picked this target ended: its request begins now (`begun`,
    /// the slot stays taken) or not (the slot frees).
    pub fn connect_done(&self, begun: bool) {
        self.connecting.set(self.connecting.get().saturating_sub(1));
        if !begun {
            self.slot_freed();
        }
    }

    fn slot_freed(&self) {
        if self.limit.get() > 0 {
            if let Some(q) = self.waitlist.borrow().as_ref() {
                if !q.is_empty() {
                    q.release(Some(&self.token));
                }
            }
        }
    }
}

/// True when an idle upstream connection is no longer usable: the target closed it (EOF), or,
/// on plain TCP, sent bytes nobody asked for. A TLS connection may hold a late session ticket,
/// so only its EOF counts. One non-blocking peek, no read.
fn peer_done(stream: &MaybeTls) -> bool {
    use std::os::fd::AsRawFd;
    // What the connection's multishot receive already took off the socket, which a peek no
    // longer sees: its end (or an error), or bytes nobody asked for.
    match stream.stream().unread_input() {
        Some(false) => return true,
        Some(true) => return matches!(stream, MaybeTls::Plain(_)),
        None => {}
    }
    let mut b = [0u8; 1];
    // SAFETY: a one-byte peek into a local buffer on a descriptor the stream owns.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => matches!(stream, MaybeTls::Plain(_)),
        _ => {
            let e = std::io::Error::last_os_error().raw_os_error();
            !matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR))
        }
    }
}
