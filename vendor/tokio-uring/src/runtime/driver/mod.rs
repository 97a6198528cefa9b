use crate::buf::fixed::FixedBuffers;
use crate::io::shared_fd::Target;
use crate::runtime::bufring::{self, BufRing};
use crate::runtime::wait::{self, RingWait, WakeFd};
use crate::runtime::driver::op::{Completable, Lifecycle, MultiCQEFuture, Op, Updateable};
use io_uring::opcode::AsyncCancel;
use io_uring::{cqueue, squeue, IoUring};
use slab::Slab;
use std::cell::RefCell;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::{io, mem};

pub(crate) use handle::*;

mod handle;
pub(crate) mod op;

pub(crate) struct Driver {
    /// In-flight operations
    ops: Ops,

    /// IoUring bindings
    uring: IoUring,

    /// Reference to the currently registered buffers.
    /// Ensures that the buffers are not dropped until
    /// after the io-uring runtime has terminated.
    fixed_buffers: Option<Rc<RefCell<dyn FixedBuffers>>>,

    /// ringlb patch: the buffers multishot receives fill (`runtime::bufring`); `None` where
    /// the kernel refused the ring. Declared after `uring`, so it is freed after the ring closes.
    bufring: Option<BufRing>,

    /// ringlb patch: the park's wait in the ring (`runtime::wait`); `None` without
    /// [`crate::Builder::ring_wait`].
    ring_wait: Option<RingWait>,

    /// ringlb patch: multishot receives the driver cancelled for holding
    /// `bufring::MAX_QUEUED` buffers nobody read; their `ECANCELED` reads as `ENOBUFS`.
    capped: Vec<usize>,
}

struct Ops {
    // When dropping the driver, all in-flight operations must have completed. This
    // type wraps the slab and ensures that, on drop, the slab is empty.
    lifecycle: Slab<op::Lifecycle>,

    /// Received but unserviced Op completions
    completions: Slab<op::Completion>,
}

impl Driver {
    pub(crate) fn new(b: &crate::Builder) -> io::Result<Driver> {
        let uring = b.urb.build(b.entries)?;
        // ringlb patch: the ring's table of registered files (see `runtime::fixed`).
        crate::runtime::fixed::install(&uring);
        // ringlb patch: the provided-buffer ring of multishot receives.
        let bufring = BufRing::new(&uring);
        // ringlb patch: the park's wait in the ring, only where the kernel takes a wait's
        // timeout (`IORING_FEAT_EXT_ARG`, 5.11); without it, or without the eventfd, the
        // park stays upstream's.
        let ring_wait = b
            .ring_wait
            .filter(|_| uring.params().is_feature_ext_arg())
            .and_then(|limit| RingWait::new(limit).ok());

        Ok(Driver {
            ops: Ops::new(),
            uring,
            fixed_buffers: None,
            bufring,
            capped: Vec::new(),
            ring_wait,
        })
    }

    /// ringlb patch: the ring wait's eventfd, for the `block_on` future's waker.
    pub(crate) fn wake_fd(&self) -> Option<std::sync::Arc<WakeFd>> {
        self.ring_wait.as_ref().map(RingWait::wake_fd)
    }

    /// ringlb patch: ring waits that ended with nothing to read so far (their limit, or a
    /// signal).
    pub(crate) fn ring_wait_timeouts(&self) -> u64 {
        self.ring_wait.as_ref().map_or(0, RingWait::timeouts)
    }

    fn wait(&self) -> io::Result<usize> {
        self.uring.submit_and_wait(1)
    }

    // only used in tests rn
    #[allow(unused)]
    pub(super) fn num_operations(&self) -> usize {
        self.ops.lifecycle.len()
    }

    pub(crate) fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.uring.submit() {
                Ok(_) => {
                    self.uring.submission().sync();
                    return Ok(());
                }
                Err(ref e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.dispatch_completions();
                }
                Err(e) if e.raw_os_error() != Some(libc::EINTR) => {
                    return Err(e);
                }
                _ => continue,
            }
        }
    }

    /// ringlb patch: the park's flush (`on_thread_park`), without a system call when the
    /// submission queue is empty, the kernel has flagged no pending task work
    /// (`IORING_SQ_TASKRUN`, with `IORING_SETUP_TASKRUN_FLAG`) and the completion queue has not
    /// overflowed (`IORING_SQ_CQ_OVERFLOW`). Upstream entered the kernel on
    /// every park, with nothing to submit about a third of the time under a new-connection
    /// load. Skipping it is safe: the park's `epoll_wait` is itself a kernel entry, and pending
    /// task work (completions due) interrupts it and runs on its way out, posting them.
    ///
    /// With a ring wait (`runtime::wait`), a park with no completion to read waits in the
    /// ring instead: the submit and the wait are one `io_uring_enter`.
    pub(crate) fn flush(&mut self) -> io::Result<usize> {
        if let Some(w) = self.ring_wait.as_mut() {
            if self.uring.completion().is_empty() {
                if let Some(res) = w.park(&mut self.uring) {
                    return res;
                }
            }
        }
        // An overflowed completion queue is drained only by an enter with GETEVENTS (which
        // `submit` adds then); until it is, later completions overflow too.
        let idle = {
            let sq = self.uring.submission();
            sq.is_empty() && !sq.taskrun() && !sq.cq_overflow()
        };
        if idle {
            return Ok(0);
        }
        self.uring.submit()
    }

    pub(crate) fn dispatch_completions(&mut self) {
        let mut cq = self.uring.completion();
        cq.sync();
        // ringlb patch: receives to cancel for holding too many buffers (below).
        let mut cancel: Vec<usize> = Vec::new();

        for cqe in cq {
            if cqe.user_data() == wait::WAKE_USER_DATA {
                // ringlb patch: the ring wait's poll on its wake eventfd.
                if let Some(w) = self.ring_wait.as_mut() {
                    w.woke();
                }
                continue;
            }
            if cqe.user_data() == u64::MAX {
                // Result of the cancellation action. There isn't anything we
                // need to do here. We must wait for the CQE for the operation
                // that was canceled.
                continue;
            }

            let index = cqe.user_data() as usize;

            // ringlb patch: a multishot receive nobody reads any more (its stream dropped)
            // gives the buffer each late completion names straight back to the ring.
            let filled = cqueue::buffer_select(cqe.flags());
            let more = cqueue::more(cqe.flags());
            let res = cqe.result();
            if let Some(bid) = filled {
                if let Some(ring) = self.bufring.as_mut() {
                    ring.lend();
                    if matches!(self.ops.lifecycle.get(index), Some(Lifecycle::Ignored(_))) {
                        ring.recycle(bid);
                    }
                }
            }

            self.ops.complete(index, cqe);

            // ringlb patch: a receive is cancelled at once when a completion fills a whole
            // buffer (bulk bytes, which its reader then takes with plain reads into its own
            // larger buffer, instead of copying them out of the ring 8 KiB at a time), and when
            // its reader has left `MAX_QUEUED` buffers unread (busy elsewhere), so one stream
            // cannot drain the ring; the socket's own buffer, under TCP's window, holds the rest.
            let live = matches!(
                self.ops.lifecycle.get(index),
                Some(Lifecycle::CompletionList(_) | Lifecycle::Completed(_))
            );
            if filled.is_some() && more && live && !self.capped.contains(&index) {
                let full = res >= 0 && res as usize >= bufring::BUF_SIZE;
                let over = !full
                    && match self.ops.lifecycle.get(index) {
                        Some(Lifecycle::CompletionList(indices)) => {
                            let list = indices.clone().into_list(&mut self.ops.completions);
                            let queued = list.len_up_to(bufring::MAX_QUEUED);
                            // Keep the entries: the list's drop would free them.
                            let _ = list.into_indices();
                            queued >= bufring::MAX_QUEUED
                        }
                        _ => false,
                    };
                if full || over {
                    // Cancelled once the completion queue is read (it borrows the ring).
                    self.capped.push(index);
                    cancel.push(index);
                }
            }
        }
        for index in cancel {
            self.push_cancel(index);
        }
    }

    pub(crate) fn register_buffers(
        &mut self,
        buffers: Rc<RefCell<dyn FixedBuffers>>,
    ) -> io::Result<()> {
        unsafe {
            self.uring
                .submitter()
                .register_buffers(buffers.borrow().iovecs())
        }?;

        self.fixed_buffers = Some(buffers);
        Ok(())
    }

    pub(crate) fn unregister_buffers(
        &mut self,
        buffers: Rc<RefCell<dyn FixedBuffers>>,
    ) -> io::Result<()> {
        if let Some(currently_registered) = &self.fixed_buffers {
            if Rc::ptr_eq(&buffers, currently_registered) {
                self.uring.submitter().unregister_buffers()?;
                self.fixed_buffers = None;
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Other,
            "fixed buffers are not currently registered",
        ))
    }

    pub(crate) fn submit_op_2(&mut self, sqe: squeue::Entry) -> usize {
        let index = self.ops.insert();

        // Configure the SQE
        let sqe = sqe.user_data(index as _);

        // Push the new operation
        while unsafe { self.uring.submission().push(&sqe).is_err() } {
            // If the submission queue is full, flush it to the kernel
            self.submit().expect("Internal error, failed to submit ops");
        }

        index
    }

    pub(crate) fn submit_op<T, S, F>(
        &mut self,
        mut data: T,
        f: F,
        handle: WeakHandle,
    ) -> io::Result<Op<T, S>>
    where
        T: Completable,
        F: FnOnce(&mut T) -> squeue::Entry,
    {
        let index = self.ops.insert();

        // Configure the SQE
        let sqe = f(&mut data).user_data(index as _);

        // Create the operation
        let op = Op::new(handle, data, index);

        // Push the new operation
        while unsafe { self.uring.submission().push(&sqe).is_err() } {
            // If the submission queue is full, flush it to the kernel
            self.submit()?;
        }

        Ok(op)
    }

    pub(crate) fn remove_op<T, CqeType>(&mut self, op: &mut Op<T, CqeType>) {
        // Get the Op Lifecycle state from the driver
        let (lifecycle, completions) = match self.ops.get_mut(op.index()) {
            Some(val) => val,
            None => {
                // Op dropped after the driver
                return;
            }
        };

        match mem::replace(lifecycle, Lifecycle::Submitted) {
            Lifecycle::Submitted | Lifecycle::Waiting(_) => {
                *lifecycle = Lifecycle::Ignored(Box::new(op.take_data()));
            }
            Lifecycle::Completed(..) => {
                self.ops.remove(op.index());
            }
            Lifecycle::CompletionList(indices) => {
                // Deallocate list entries, recording if more CQE's are expected
                let more = {
                    let mut list = indices.into_list(completions);
                    cqueue::more(list.peek_end().unwrap().flags)
                    // Dropping list deallocates the list entries
                };
                if more {
                    // If more are expected, we have to keep the op around
                    *lifecycle = Lifecycle::Ignored(Box::new(op.take_data()));
                } else {
                    self.ops.remove(op.index());
                }
            }
            Lifecycle::Ignored(..) => unreachable!(),
        }
    }

    pub(crate) fn remove_op_2<T: 'static>(&mut self, index: usize, data: T) {
        // Get the Op Lifecycle state from the driver
        let (lifecycle, completions) = match self.ops.get_mut(index) {
            Some(val) => val,
            None => {
                // Op dropped after the driver
                return;
            }
        };

        match mem::replace(lifecycle, Lifecycle::Submitted) {
            Lifecycle::Submitted | Lifecycle::Waiting(_) => {
                *lifecycle = Lifecycle::Ignored(Box::new(data));
            }
            Lifecycle::Completed(..) => {
                self.ops.remove(index);
            }
            Lifecycle::CompletionList(indices) => {
                // Deallocate list entries, recording if more CQE's are expected
                let more = {
                    let mut list = indices.into_list(completions);
                    cqueue::more(list.peek_end().unwrap().flags)
                    // Dropping list deallocates the list entries
                };
                if more {
                    // If more are expected, we have to keep the op around
                    *lifecycle = Lifecycle::Ignored(Box::new(data));
                } else {
                    self.ops.remove(index);
                }
            }
            Lifecycle::Ignored(..) => unreachable!(),
        }
    }

    pub(crate) fn poll_op_2(&mut self, index: usize, cx: &mut Context<'_>) -> Poll<cqueue::Entry> {
        let (lifecycle, _) = self.ops.get_mut(index).expect("invalid internal state");

        match mem::replace(lifecycle, Lifecycle::Submitted) {
            Lifecycle::Submitted => {
                *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                Poll::Pending
            }
            Lifecycle::Waiting(waker) if !waker.will_wake(cx.waker()) => {
                *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                Poll::Pending
            }
            Lifecycle::Waiting(waker) => {
                *lifecycle = Lifecycle::Waiting(waker);
                Poll::Pending
            }
            Lifecycle::Ignored(..) => unreachable!(),
            Lifecycle::Completed(cqe) => {
                self.ops.remove(index);
                Poll::Ready(cqe)
            }
            Lifecycle::CompletionList(..) => {
                unreachable!("No `more` flag set for SingleCQE")
            }
        }
    }

    pub(crate) fn poll_op<T>(&mut self, op: &mut Op<T>, cx: &mut Context<'_>) -> Poll<T::Output>
    where
        T: Unpin + 'static + Completable,
    {
        let (lifecycle, _) = self
            .ops
            .get_mut(op.index())
            .expect("invalid internal state");

        match mem::replace(lifecycle, Lifecycle::Submitted) {
            Lifecycle::Submitted => {
                *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                Poll::Pending
            }
            Lifecycle::Waiting(waker) if !waker.will_wake(cx.waker()) => {
                *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                Poll::Pending
            }
            Lifecycle::Waiting(waker) => {
                *lifecycle = Lifecycle::Waiting(waker);
                Poll::Pending
            }
            Lifecycle::Ignored(..) => unreachable!(),
            Lifecycle::Completed(cqe) => {
                self.ops.remove(op.index());
                Poll::Ready(op.take_data().unwrap().complete(cqe.into()))
            }
            Lifecycle::CompletionList(..) => {
                unreachable!("No `more` flag set for SingleCQE")
            }
        }
    }

    pub(crate) fn poll_multishot_op<T>(
        &mut self,
        op: &mut Op<T, MultiCQEFuture>,
        cx: &mut Context<'_>,
    ) -> Poll<T::Output>
    where
        T: Unpin + 'static + Completable + Updateable,
    {
        let (lifecycle, completions) = self
            .ops
            .get_mut(op.index())
            .expect("invalid internal state");

        match mem::replace(lifecycle, Lifecycle::Submitted) {
            Lifecycle::Submitted => {
                *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                Poll::Pending
            }
            Lifecycle::Waiting(waker) if !waker.will_wake(cx.waker()) => {
                *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                Poll::Pending
            }
            Lifecycle::Waiting(waker) => {
                *lifecycle = Lifecycle::Waiting(waker);
                Poll::Pending
            }
            Lifecycle::Ignored(..) => unreachable!(),
            Lifecycle::Completed(cqe) => {
                // This is possible. We may have previously polled a CompletionList,
                // and the final CQE registered as Completed
                self.ops.remove(op.index());
                Poll::Ready(op.take_data().unwrap().complete(cqe.into()))
            }
            Lifecycle::CompletionList(indices) => {
                let mut data = op.take_data().unwrap();
                let mut status = Poll::Pending;
                // Consume the CqeResult list, calling update on the Op on all Cqe's flagged `more`
                // If the final Cqe is present, clean up and return Poll::Ready
                for cqe in indices.into_list(completions) {
                    if cqueue::more(cqe.flags) {
                        data.update(cqe);
                    } else {
                        status = Poll::Ready(cqe);
                        break;
                    }
                }
                match status {
                    Poll::Pending => {
                        // We need more CQE's. Restore the op state
                        op.insert_data(data);
                        *lifecycle = Lifecycle::Waiting(cx.waker().clone());
                        Poll::Pending
                    }
                    Poll::Ready(cqe) => {
                        self.ops.remove(op.index());
                        Poll::Ready(data.complete(cqe))
                    }
                }
            }
        }
    }
}

/// ringlb patch: multishot receives into the ring's provided buffers (see
/// `net::tcp::TcpStream::poll_recv_multishot`, their one user). A receive is an operation in the
/// slab like any other; its completions queue up in its `CompletionList` until the stream takes
/// them, one at a time and in order.
impl Driver {
    /// Provided buffers filled and not yet given back; `None` without a buffer ring.
    pub(crate) fn bufs_lent(&self) -> Option<usize> {
        self.bufring.as_ref().map(|r| r.lent())
    }

    /// Arms a multishot receive on `target`; its index in the slab. `None` without a buffer
    /// ring.
    pub(crate) fn submit_recv_multi(&mut self, target: Target) -> Option<usize> {
        use io_uring::{opcode, types};
        self.bufring.as_ref()?;
        let sqe = match target {
            Target::Fixed(slot) => opcode::RecvMulti::new(types::Fixed(slot), bufring::GROUP),
            Target::Fd(raw) => opcode::RecvMulti::new(types::Fd(raw), bufring::GROUP),
        }
        .build();
        Some(self.submit_op_2(sqe))
    }

    /// The oldest completion of receive `index` not yet taken, as (result, flags). With `take`
    /// it is removed (and the receive leaves the slab with its final completion); with
    /// `only_data`, only a completion that carries bytes is returned. `None`: nothing queued
    /// (the waker, if given, is woken by the next one).
    pub(crate) fn next_recv_multi(
        &mut self,
        index: usize,
        waker: Option<&std::task::Waker>,
        only_data: bool,
    ) -> Option<(i32, u32)> {
        let (lifecycle, completions) = self.ops.get_mut(index)?;
        fn raw(result: &io::Result<u32>) -> i32 {
            match result {
                Ok(n) => *n as i32,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            }
        }
        match mem::replace(lifecycle, Lifecycle::Submitted) {
            state @ (Lifecycle::Submitted | Lifecycle::Waiting(_)) => {
                *lifecycle = match waker {
                    Some(w) => Lifecycle::Waiting(w.clone()),
                    None => state,
                };
                None
            }
            Lifecycle::Completed(cqe) => {
                let got = (cqe.result(), cqe.flags());
                if only_data && got.0 <= 0 {
                    *lifecycle = Lifecycle::Completed(cqe);
                    return None;
                }
                self.ops.remove(index);
                Some(self.uncap(index, got))
            }
            Lifecycle::CompletionList(indices) => {
                let mut list = indices.into_list(completions);
                let front = list.peek().map(|c| (raw(&c.result), c.flags));
                match front {
                    Some(got) if !(only_data && got.0 <= 0) => {
                        list.pop();
                        let empty = list.is_empty();
                        let indices = list.into_indices();
                        if !cqueue::more(got.1) {
                            // The final completion: the receive is over.
                            self.ops.remove(index);
                            return Some(self.uncap(index, got));
                        } else if empty {
                            *lifecycle = match waker {
                                Some(w) => Lifecycle::Waiting(w.clone()),
                                None => Lifecycle::Submitted,
                            };
                        } else {
                            *lifecycle = Lifecycle::CompletionList(indices);
                        }
                        Some(got)
                    }
                    _ => {
                        *lifecycle = Lifecycle::CompletionList(list.into_indices());
                        None
                    }
                }
            }
            Lifecycle::Ignored(..) => unreachable!("a multishot receive polled after its drop"),
        }
    }

    /// A receive's final completion `got`: one the driver cancelled (`capped`) reads as
    /// `ENOBUFS`, the ring's own "go plain this time".
    fn uncap(&mut self, index: usize, got: (i32, u32)) -> (i32, u32) {
        match self.capped.iter().position(|&i| i == index) {
            Some(at) => {
                self.capped.swap_remove(at);
                if got.0 == -libc::ECANCELED {
                    (-libc::ENOBUFS, got.1)
                } else {
                    got
                }
            }
            None => got,
        }
    }

    /// Whether receive `index` has a completion queued; if not, `waker` is woken by the next.
    pub(crate) fn wait_recv_multi(&mut self, index: usize, waker: &std::task::Waker) -> bool {
        let Some((lifecycle, _)) = self.ops.get_mut(index) else {
            return true;
        };
        match lifecycle {
            Lifecycle::Completed(_) | Lifecycle::CompletionList(_) => true,
            Lifecycle::Waiting(w) if w.will_wake(waker) => false,
            Lifecycle::Submitted | Lifecycle::Waiting(_) => {
                *lifecycle = Lifecycle::Waiting(waker.clone());
                false
            }
            Lifecycle::Ignored(..) => true,
        }
    }

    /// The result of receive `index`'s oldest completion not yet taken, left queued.
    pub(crate) fn peek_recv_multi(&self, index: usize) -> Option<i32> {
        match self.ops.lifecycle.get(index)? {
            Lifecycle::Completed(cqe) => Some(cqe.result()),
            Lifecycle::CompletionList(indices) => {
                let start = indices.start();
                let c = self.ops.completions.get(start)?;
                Some(match &c.result {
                    Ok(n) => *n as i32,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                })
            }
            _ => None,
        }
    }

    /// Drops receive `index`: the buffers of its queued completions go back to the ring, and
    /// one still armed is cancelled, the buffers of its late completions recycled as they come.
    pub(crate) fn drop_recv_multi(&mut self, index: usize, keep: Box<dyn std::any::Any>) {
        if let Some(at) = self.capped.iter().position(|&i| i == index) {
            self.capped.swap_remove(at);
        }
        let Some((lifecycle, completions)) = self.ops.get_mut(index) else {
            return;
        };
        let mut more = true;
        let mut bids = Vec::new();
        match mem::replace(lifecycle, Lifecycle::Submitted) {
            Lifecycle::Completed(cqe) => {
                more = false;
                bids.extend(cqueue::buffer_select(cqe.flags()));
            }
            Lifecycle::CompletionList(indices) => {
                let mut list = indices.into_list(completions);
                while let Some(c) = list.pop() {
                    more = cqueue::more(c.flags);
                    bids.extend(cqueue::buffer_select(c.flags));
                }
            }
            _ => {}
        }
        if let Some(ring) = self.bufring.as_mut() {
            for bid in bids {
                ring.recycle(bid);
            }
        }
        if more {
            // `keep` (the socket's descriptor) stays open until the last completion.
            self.ops.lifecycle[index] = Lifecycle::Ignored(keep);
            self.push_cancel(index);
        } else {
            self.ops.remove(index);
        }
    }

    /// The bytes of a receive's completion (`len` of them in buffer `bid`).
    pub(crate) fn recv_bytes(&self, bid: u16, len: usize) -> &[u8] {
        match self.bufring.as_ref() {
            Some(ring) => ring.bytes(bid, len),
            None => &[],
        }
    }

    /// Gives buffer `bid` back to the ring.
    pub(crate) fn recycle_buf(&mut self, bid: u16) {
        if let Some(ring) = self.bufring.as_mut() {
            ring.recycle(bid);
        }
    }

    fn push_cancel(&mut self, index: usize) {
        let sqe = AsyncCancel::new(index as u64).build().user_data(u64::MAX);
        while unsafe { self.uring.submission().push(&sqe).is_err() } {
            if self.submit().is_err() {
                return;
            }
        }
    }
}

impl AsRawFd for Driver {
    fn as_raw_fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }
}

/// Drop the driver, cancelling any in-progress ops and waiting for them to terminate.
///
/// This first cancels all ops and then waits for them to be moved to the completed lifecycle phase.
///
/// It is possible for this to be run without previously dropping the runtime, but this should only
/// be possible in the case of [`std::process::exit`].
///
/// This depends on us knowing when ops are completed and done firing.
/// When multishot ops are added (support exists but none are implemented), a way to know if such
/// an op is finished MUST be added, otherwise our shutdown process is unsound.
impl Drop for Driver {
    fn drop(&mut self) {
        crate::runtime::fixed::uninstall(self.uring.as_raw_fd());
        // get all ops in flight for cancellation
        while !self.uring.submission().is_empty() {
            self.submit().expect("Internal error when dropping driver");
        }

        // Pre-determine what to cancel
        // After this pass, all LifeCycles will be marked either as Completed or Ignored, as appropriate
        for (_, cycle) in self.ops.lifecycle.iter_mut() {
            match std::mem::replace(cycle, Lifecycle::Ignored(Box::new(()))) {
                lc @ Lifecycle::Completed(_) => {
                    // don't cancel completed items
                    *cycle = lc;
                }

                Lifecycle::CompletionList(indices) => {
                    let mut list = indices.clone().into_list(&mut self.ops.completions);
                    if !io_uring::cqueue::more(list.peek_end().unwrap().flags) {
                        // This op is complete. Replace with a null Completed entry
                        // safety: zeroed memory is entirely valid with this underlying
                        // representation
                        *cycle = Lifecycle::Completed(unsafe { mem::zeroed() });
                    }
                }

                _ => {
                    // All other states need cancelling.
                    // The mem::replace means these are now marked Ignored.
                }
            }
        }

        // Submit cancellation for all ops marked Ignored
        for (id, cycle) in self.ops.lifecycle.iter_mut() {
            if let Lifecycle::Ignored(..) = cycle {
                unsafe {
                    while self
                        .uring
                        .submission()
                        .push(&AsyncCancel::new(id as u64).build().user_data(u64::MAX))
                        .is_err()
                    {
                        self.uring
                            .submit_and_wait(1)
                            .expect("Internal error when dropping driver");
                    }
                }
            }
        }

        // Wait until all Lifetimes have been removed from the slab.
        //
        // Ignored entries will be removed from the Lifecycle slab
        // by the complete logic called by `tick()`
        //
        // Completed Entries are removed here directly
        let mut id = 0;
        loop {
            if self.ops.lifecycle.is_empty() {
                break;
            }
            // Cycles are either all ignored or complete
            // If there is at least one Ignored still to process, call wait
            match self.ops.lifecycle.get(id) {
                Some(Lifecycle::Ignored(..)) => {
                    // If waiting fails, ignore the error. The wait will be attempted
                    // again on the next loop.
                    let _ = self.wait();
                    self.dispatch_completions();
                }

                Some(_) => {
                    // Remove Completed entries
                    let _ = self.ops.lifecycle.remove(id);
                    id += 1;
                }

                None => {
                    id += 1;
                }
            }
        }
    }
}

impl Ops {
    fn new() -> Ops {
        Ops {
            lifecycle: Slab::with_capacity(64),
            completions: Slab::with_capacity(64),
        }
    }

    fn get_mut(&mut self, index: usize) -> Option<(&mut op::Lifecycle, &mut Slab<op::Completion>)> {
        let completions = &mut self.completions;
        self.lifecycle
            .get_mut(index)
            .map(|lifecycle| (lifecycle, completions))
    }

    // Insert a new operation
    fn insert(&mut self) -> usize {
        self.lifecycle.insert(op::Lifecycle::Submitted)
    }

    // Remove an operation
    fn remove(&mut self, index: usize) {
        self.lifecycle.remove(index);
    }

    fn complete(&mut self, index: usize, cqe: cqueue::Entry) {
        let completions = &mut self.completions;
        if self.lifecycle[index].complete(completions, cqe) {
            self.lifecycle.remove(index);
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        assert!(self
            .lifecycle
            .iter()
            .all(|(_, cycle)| matches!(cycle, Lifecycle::Completed(_))))
    }
}

#[cfg(test)]
mod test {
    use std::rc::Rc;

    use crate::runtime::driver::op::{Completable, CqeResult, Op};
    use crate::runtime::CONTEXT;
    use tokio_test::{assert_pending, assert_ready, task};

    use super::*;

    #[derive(Debug)]
    pub(crate) struct Completion {
        result: io::Result<u32>,
        flags: u32,
        data: Rc<()>,
    }

    impl Completable for Rc<()> {
        type Output = Completion;

        fn complete(self, cqe: CqeResult) -> Self::Output {
            Completion {
                result: cqe.result,
                flags: cqe.flags,
                data: self.clone(),
            }
        }
    }

    #[test]
    fn op_stays_in_slab_on_drop() {
        let (op, data) = init();
        drop(op);

        assert_eq!(2, Rc::strong_count(&data));

        assert_eq!(1, num_operations());
        release();
    }

    #[test]
    fn poll_op_once() {
        let (op, data) = init();
        let mut op = task::spawn(op);
        assert_pending!(op.poll());
        assert_eq!(2, Rc::strong_count(&data));

        complete(&op);
        assert_eq!(1, num_operations());
        assert_eq!(2, Rc::strong_count(&data));

        assert!(op.is_woken());
        let Completion {
            result,
            flags,
            data: d,
        } = assert_ready!(op.poll());
        assert_eq!(2, Rc::strong_count(&data));
        assert_eq!(0, result.unwrap());
        assert_eq!(0, flags);

        drop(d);
        assert_eq!(1, Rc::strong_count(&data));

        drop(op);
        assert_eq!(0, num_operations());

        release();
    }

    #[test]
    fn poll_op_twice() {
        {
            let (op, ..) = init();
            let mut op = task::spawn(op);
            assert_pending!(op.poll());
            assert_pending!(op.poll());

            complete(&op);

            assert!(op.is_woken());
            let Completion { result, flags, .. } = assert_ready!(op.poll());
            assert_eq!(0, result.unwrap());
            assert_eq!(0, flags);
        }

        release();
    }

    #[test]
    fn poll_change_task() {
        {
            let (op, ..) = init();
            let mut op = task::spawn(op);
            assert_pending!(op.poll());

            let op = op.into_inner();
            let mut op = task::spawn(op);
            assert_pending!(op.poll());

            complete(&op);

            assert!(op.is_woken());
            let Completion { result, flags, .. } = assert_ready!(op.poll());
            assert_eq!(0, result.unwrap());
            assert_eq!(0, flags);
        }

        release();
    }

    #[test]
    fn complete_before_poll() {
        let (op, data) = init();
        let mut op = task::spawn(op);
        complete(&op);
        assert_eq!(1, num_operations());
        assert_eq!(2, Rc::strong_count(&data));

        let Completion { result, flags, .. } = assert_ready!(op.poll());
        assert_eq!(0, result.unwrap());
        assert_eq!(0, flags);

        drop(op);
        assert_eq!(0, num_operations());

        release();
    }

    #[test]
    fn complete_after_drop() {
        let (op, data) = init();
        let index = op.index();
        drop(op);

        assert_eq!(2, Rc::strong_count(&data));

        assert_eq!(1, num_operations());

        CONTEXT.with(|cx| {
            cx.handle()
                .unwrap()
                .inner
                .borrow_mut()
                .ops
                .complete(index, unsafe { mem::zeroed() })
        });

        assert_eq!(1, Rc::strong_count(&data));
        assert_eq!(0, num_operations());

        release();
    }

    fn init() -> (Op<Rc<()>>, Rc<()>) {
        let driver = Driver::new(&crate::builder()).unwrap();
        let data = Rc::new(());

        let op = CONTEXT.with(|cx| {
            cx.set_handle(driver.into());

            let driver = cx.handle().unwrap();

            let index = driver.inner.borrow_mut().ops.insert();

            Op::new((&driver).into(), data.clone(), index)
        });

        (op, data)
    }

    fn num_operations() -> usize {
        CONTEXT.with(|cx| cx.handle().unwrap().inner.borrow().num_operations())
    }

    fn complete(op: &Op<Rc<()>>) {
        let cqe = unsafe { mem::zeroed() };

        CONTEXT.with(|cx| {
            let driver = cx.handle().unwrap();

            driver.inner.borrow_mut().ops.complete(op.index(), cqe);
        });
    }

    fn release() {
        CONTEXT.with(|cx| {
            let driver = cx.handle().unwrap();

            driver.inner.borrow_mut().ops.lifecycle.clear();
            driver.inner.borrow_mut().ops.completions.clear();

            cx.unset_driver();
        });
    }
}
