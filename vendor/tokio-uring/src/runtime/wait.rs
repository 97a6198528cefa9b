//! ringlb patch: the park waits in the ring, not in `epoll_wait`.
//!
//! Runs on the runtime's thread (the park hook and the `block_on` future); a cross-thread
//! wake runs on the waking thread and only writes an eventfd. The driver owns [`RingWait`];
//! `block_on` owns [`Watch`], whose waker may travel to any thread.
//!
//! Upstream parks in tokio's `epoll_wait` on the ring's descriptor. A completion that needs
//! the kernel's task work (any operation that waited for its socket) interrupts that sleep
//! with `EINTR`, runs on the way out, and tokio enters `epoll_wait` again to learn that the
//! ring is readable: three system calls per wake-up with the park's submit. Here the park
//! hook submits and waits in one `io_uring_enter` (`GETEVENTS`, one completion), where the
//! task work runs inside the wait. Tokio's `epoll_wait` then finds the ring readable at once.
//!
//! What ends the wait:
//! - A completion, whose task work runs inside the wait.
//! - A wake from another thread (a channel, a `Notify`) of a task in the `LocalSet`: it reaches
//!   the `LocalSet` through the `block_on` future's waker, which [`Watch`] wraps; off the
//!   runtime's thread it also writes an eventfd the ring polls, so the wait ends at once.
//! - A wake on the runtime's own thread needs nothing: tokio (1.54) calls the park hook only
//!   when the `block_on` future has not been woken and no task is ready (a `LocalSet` out of
//!   budget wakes it, and tokio then only polls its driver).
//! - Otherwise only the limit: tokio's timers, readiness of descriptors registered with tokio
//!   itself (`AsyncFd`, `tokio::net`, `tokio::signal`) and tasks spawned on the runtime with
//!   `tokio::spawn` and woken from another thread are not known to the ring. ringlb's workers
//!   have no such descriptors or tasks (all their I/O is the ring's, their tasks `spawn_local`),
//!   so for them it is timers. The limit is a few ms, longer than a scheduler tick, so that the
//!   kernel's timer for the wait rarely needs the hardware timer reprogrammed while the tick
//!   runs. A wait that reaches it turns the ring wait off for the next [`COOLDOWN`] parks, so
//!   a quiet runtime sleeps in `epoll_wait` as upstream does; a timer is late by at most the
//!   limit, and only when it falls due in a ring wait that nothing else ends (at most one park
//!   in [`COOLDOWN`] + 1 of a quiet runtime).
//!
//! Needs the kernel's `IORING_FEAT_EXT_ARG` (Linux 5.11); without it, or after the kernel
//! refuses a wait, the park is upstream's.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

/// The user data of the ring's poll on the wake eventfd (the driver's cancellations use
/// `u64::MAX`; operations use their slab index).
pub(crate) const WAKE_USER_DATA: u64 = u64::MAX - 1;

/// Parks that go the upstream way after a ring wait ran to its limit with nothing done.
pub(crate) const COOLDOWN: u32 = 64;

thread_local! {
    /// A per-thread address: tells the runtime's thread from others in a wake.
    static MARK: u8 = const { 0 };
}

fn thread_mark() -> usize {
    MARK.with(|m| m as *const u8 as usize)
}

/// The eventfd a wake from another thread writes, and the ring polls.
pub(crate) struct WakeFd(OwnedFd);

impl WakeFd {
    fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a valid descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) is already readable.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (already drained) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// The driver's side: waits in the ring at the park, within a limit.
pub(crate) struct RingWait {
    limit: types::Timespec,
    cooldown: u32,
    wake: Arc<WakeFd>,
    /// The ring's poll on `wake` is in flight.
    armed: bool,
    /// Ring waits that ended with nothing to read: the limit, or a signal (tests read it).
    timeouts: u64,
    /// The kernel refused a wait: parks are upstream's from then on.
    off: bool,
}

impl RingWait {
    pub(crate) fn new(limit: Duration) -> io::Result<RingWait> {
        Ok(RingWait {
            limit: types::Timespec::new()
                .sec(limit.as_secs())
                .nsec(limit.subsec_nanos()),
            cooldown: 0,
            wake: Arc::new(WakeFd::new()?),
            armed: false,
            timeouts: 0,
            off: false,
        })
    }

    pub(crate) fn wake_fd(&self) -> Arc<WakeFd> {
        self.wake.clone()
    }

    pub(crate) fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// At the park, with no completion waiting to be read: submits what is queued and waits
    /// for one completion, or the limit. `None` where it declines (cooling down after a wait
    /// that reached the limit, no room to arm the wake poll, or a wait the kernel refused):
    /// the caller parks the upstream way.
    pub(crate) fn park(&mut self, uring: &mut IoUring) -> Option<io::Result<usize>> {
        if self.off {
            return None;
        }
        if self.cooldown > 0 {
            self.cooldown -= 1;
            return None;
        }
        if !self.armed {
            let poll = opcode::PollAdd::new(types::Fd(self.wake.0.as_raw_fd()), libc::POLLIN as _)
                .build()
                .user_data(WAKE_USER_DATA);
            // SAFETY: the poll names only the eventfd, which `self.wake` keeps open (and the
            // kernel holds its own reference while the poll is in flight).
            if unsafe { uring.submission().push(&poll) }.is_err() {
                return None;
            }
            self.armed = true;
        }
        let args = types::SubmitArgs::new().timespec(&self.limit);
        let res = match uring.submitter().submit_with_args(1, &args) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(0),
            Err(e) => Err(e),
        };
        // A wait that ended with nothing to read reached the limit (or a signal came): a
        // quiet runtime, which goes back to tokio's own park for a while. (With entries
        // submitted, the call returns their count even when the wait then timed out.)
        if res.is_ok() && uring.completion().is_empty() {
            self.cooldown = COOLDOWN;
            self.timeouts += 1;
        }
        match res {
            Ok(n) => Some(Ok(n)),
            // A kernel that does not take the wait's arguments: never again on this ring.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.off = true;
                None
            }
            // EBUSY, EAGAIN...: nothing was submitted; the caller's plain submit handles them.
            Err(_) => None,
        }
    }

    /// The wake poll completed: drain the eventfd; the next wait arms the poll again.
    pub(crate) fn woke(&mut self) {
        self.armed = false;
        self.wake.drain();
    }
}

/// The `block_on` future with its waker wrapped (see the module's notes).
pub(crate) struct Watch<F> {
    inner: Pin<Box<F>>,
    wake: Option<Arc<WakeFd>>,
    /// The waker it was last polled with, and the wrapper made for it.
    waker: Option<(Waker, Waker)>,
}

impl<F: Future> Watch<F> {
    pub(crate) fn new(inner: F, wake: Option<Arc<WakeFd>>) -> Watch<F> {
        Watch {
            inner: Box::pin(inner),
            wake,
            waker: None,
        }
    }
}

impl<F: Future> Future for Watch<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(wake) = this.wake.as_ref() else {
            return this.inner.as_mut().poll(cx);
        };
        if !matches!(&this.waker, Some((outer, _)) if outer.will_wake(cx.waker())) {
            let flag = Flag {
                inner: cx.waker().clone(),
                wake: wake.clone(),
                owner: thread_mark(),
            };
            this.waker = Some((cx.waker().clone(), Waker::from(Arc::new(flag))));
        }
        let Some((_, waker)) = this.waker.as_ref() else {
            return this.inner.as_mut().poll(cx);
        };
        this.inner.as_mut().poll(&mut Context::from_waker(waker))
    }
}

/// Wraps the `block_on` future's waker: a wake from another thread rings the eventfd before it
/// passes on (one on the runtime's thread, the common case, costs a comparison).
struct Flag {
    inner: Waker,
    wake: Arc<WakeFd>,
    owner: usize,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if thread_mark() != self.owner {
            self.wake.ring();
        }
        self.inner.wake_by_ref();
    }
}
