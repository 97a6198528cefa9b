//! ringlb patch: a TCP stream's multishot receive, armed once and kept across reads.
//!
//! The stream's reads take bytes from the completions of one receive that stays armed on the
//! socket (`IORING_RECV_MULTISHOT`, buffers from the ring's provided-buffer ring,
//! `runtime::bufring`), instead of submitting a read each time, which, when the bytes have not
//! arrived yet (the usual case for a proxy: it reads right after it wrote), tries the socket,
//! finds it empty and arms a poll. Bytes are copied into the reader's buffer and the ring's
//! buffer goes back at once; what does not fit waits for the next read.
//!
//! Runs on the thread of the runtime that armed it; the state is the stream's own (a
//! `RefCell` borrowed only inside one poll). A receive ends (and the next read re-arms one)
//! at the end of the stream, an error, or when the ring ran dry (`ENOBUFS`: that read goes the
//! plain way). A completion that fills a whole buffer marks the stream bulk: its receive is
//! cancelled (the completions already queued are still read, in order) and reads go plain,
//! straight into the reader's larger buffer, until four in a row come back short.

use std::cell::RefCell;
use std::io;
use std::task::{Context, Poll};

use io_uring::cqueue;

use crate::io::SharedFd;
use crate::runtime::bufring::BUF_SIZE;
use crate::runtime::driver::WeakHandle;
use crate::runtime::CONTEXT;

#[derive(Default)]
pub(crate) struct Multishot {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// The stream reads this way (`TcpStream::enable_recv_multishot`); until then, plain.
    enabled: bool,
    /// The runtime whose ring holds the receive and its buffers.
    driver: Option<WeakHandle>,
    /// The armed receive's index in that driver's operations.
    armed: Option<usize>,
    /// The socket, held open while a receive is armed (and, once the stream is dropped, until
    /// the receive's last completion), so its number or fixed slot never names another socket
    /// under it.
    fd: Option<SharedFd>,
    /// A cancel of the armed receive is on its way (bulk), so its `ECANCELED` is expected.
    cancelling: bool,
    /// A completion's bytes that did not all fit the reader's buffer: (buffer, offset, end).
    partial: Option<(u16, usize, usize)>,
    /// Reads go plain until [`SHORT_TO_LEAVE_BULK`] in a row come back shorter than a ring
    /// buffer.
    bulk: bool,
    /// Plain reads in a row shorter than a ring buffer.
    short: u8,
}

/// Short plain reads in a row that end a bulk spell. One is not enough: a body streamed faster
/// than it arrives reads short now and then, and each switch back costs an arm and a cancel.
const SHORT_TO_LEAVE_BULK: u8 = 4;

/// What a multishot read ended with.
pub enum Received {
    /// `Ok(n)`: `n` bytes appended (0 = end of stream); or the receive's error (`ECANCELED`
    /// when a cancellation by descriptor ended it).
    Done(io::Result<usize>),
    /// This read must go the plain way: the stream is bulk, the ring ran dry, or the runtime has
    /// no buffer ring.
    Plain,
}

impl Multishot {
    /// Appends what the receive has (arming it first if none is), at most `dst`'s spare
    /// capacity (which must be non-zero); pending until something arrives.
    pub(crate) fn poll_recv(
        &self,
        fd: &SharedFd,
        cx: &mut Context<'_>,
        dst: &mut Vec<u8>,
    ) -> Poll<Received> {
        let mut st = self.state.borrow_mut();
        if !st.enabled {
            return Poll::Ready(Received::Plain);
        }
        let mut copied = 0;
        loop {
            if let Some((bid, off, end)) = st.partial {
                let Some(handle) = st.driver.as_ref().and_then(|d| d.upgrade()) else {
                    st.partial = None;
                    return Poll::Ready(Received::Done(Err(gone())));
                };
                let mut driver = handle.driver();
                let room = dst.capacity() - dst.len();
                let n = room.min(end - off);
                dst.extend_from_slice(&driver.recv_bytes(bid, end)[off..off + n]);
                copied += n;
                if off + n == end {
                    driver.recycle_buf(bid);
                    st.partial = None;
                } else {
                    st.partial = Some((bid, off + n, end));
                }
                if dst.len() == dst.capacity() {
                    return Poll::Ready(Received::Done(Ok(copied)));
                }
            }
            let Some(index) = st.armed else {
                if copied > 0 {
                    return Poll::Ready(Received::Done(Ok(copied)));
                }
                if st.bulk || !st.arm(fd) {
                    return Poll::Ready(Received::Plain);
                }
                continue;
            };
            let Some(handle) = st.driver.as_ref().and_then(|d| d.upgrade()) else {
                st.armed = None;
                st.fd = None;
                return Poll::Ready(Received::Done(Err(gone())));
            };
            let next = if copied == 0 {
                handle
                    .driver()
                    .next_recv_multi(index, Some(cx.waker()), false)
            } else {
                handle.driver().next_recv_multi(index, None, true)
            };
            let Some((res, flags)) = next else {
                if copied > 0 {
                    return Poll::Ready(Received::Done(Ok(copied)));
                }
                return Poll::Pending;
            };
            if !cqueue::more(flags) {
                st.armed = None;
                st.fd = None;
            }
            if res <= 0 {
                // An end or an error names no buffer today; give back any that one does.
                if let Some(bid) = cqueue::buffer_select(flags) {
                    handle.driver().recycle_buf(bid);
                }
            }
            if res > 0 {
                let Some(bid) = cqueue::buffer_select(flags) else {
                    return Poll::Ready(Received::Done(Err(io::Error::other(
                        "a multishot receive completed without its buffer",
                    ))));
                };
                let len = res as usize;
                st.partial = Some((bid, 0, len));
                if len >= BUF_SIZE && !st.bulk {
                    // A whole buffer: bulk bytes. The driver has cancelled the receive (see
                    // `Driver::dispatch_completions`); what is queued is read first, in order,
                    // and the rest goes plain.
                    st.bulk = true;
                    st.cancelling = st.armed.is_some();
                }
                continue;
            }
            if res == -libc::ECANCELED && st.cancelling {
                st.cancelling = false;
                continue;
            }
            if st.armed.is_some() && res < 0 {
                // An error that did not end the receive (none does today): it goes on.
                continue;
            }
            if res == -libc::ENOBUFS {
                // The ring ran dry, or the driver cancelled this receive for holding too many
                // buffers: this read goes plain, the next arms again.
                return Poll::Ready(if copied > 0 {
                    Received::Done(Ok(copied))
                } else {
                    Received::Plain
                });
            }
            if res == -libc::EINVAL && copied == 0 {
                // A kernel with the buffer ring (5.19) but no multishot receive (6.0): this
                // stream reads plain from now on.
                st.enabled = false;
                return Poll::Ready(Received::Plain);
            }
            if res == 0 {
                return Poll::Ready(Received::Done(Ok(0)));
            }
            return Poll::Ready(Received::Done(Err(io::Error::from_raw_os_error(-res))));
        }
    }

    /// Ready (`Some`) once the receive holds something to read (bytes, the end of the stream
    /// or an error), arming it first if none is armed, without taking anything; `None` when the
    /// stream does not read this way now (a readiness poll on the socket serves instead).
    pub(crate) fn poll_ready(&self, fd: &SharedFd, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut st = self.state.borrow_mut();
        if !st.enabled || st.bulk {
            return Poll::Ready(None);
        }
        if st.partial.is_some() {
            return Poll::Ready(Some(()));
        }
        if st.armed.is_none() && !st.arm(fd) {
            return Poll::Ready(None);
        }
        let (Some(index), Some(handle)) = (st.armed, st.driver.as_ref().and_then(|d| d.upgrade()))
        else {
            return Poll::Ready(None);
        };
        let queued = handle.driver().wait_recv_multi(index, cx.waker());
        if queued {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }

    /// The stream reads through a multishot receive now (enabled, not in a bulk spell, and its
    /// receive armed or its runtime with a buffer ring to arm one from), so
    /// [`Multishot::poll_ready`] waits on it without a poll of the socket.
    pub(crate) fn standing(&self) -> bool {
        let st = self.state.borrow();
        st.enabled
            && !st.bulk
            && (st.armed.is_some()
                || CONTEXT
                    .with(|c| c.handle())
                    .is_some_and(|h| h.driver().bufs_lent().is_some()))
    }

    /// Reads of this stream go through a multishot receive from now on. A bulk spell goes on
    /// across exchanges: a connection whose responses are large keeps reading plain (a receive
    /// armed when a large body arrives takes all of it, 8 KiB at a time, before a cancel can
    /// land), and comes back after [`SHORT_TO_LEAVE_BULK`] short reads in a row.
    pub(crate) fn enable(&self) {
        self.state.borrow_mut().enabled = true;
    }

    /// A plain read (after [`Received::Plain`]) brought `n` bytes. After
    /// [`SHORT_TO_LEAVE_BULK`] in a row shorter than a ring buffer the stream is no longer bulk,
    /// and its next read arms a receive again.
    pub(crate) fn plain_read(&self, n: usize) {
        let mut st = self.state.borrow_mut();
        if n >= BUF_SIZE {
            st.short = 0;
        } else {
            st.short += 1;
            if st.short >= SHORT_TO_LEAVE_BULK {
                st.bulk = false;
                st.short = 0;
            }
        }
    }

    /// What the receive holds that no read has taken yet: `Some(true)` when it has bytes,
    /// `Some(false)` when its next completion is the end of the stream or an error, `None`
    /// when it holds nothing.
    pub(crate) fn pending(&self) -> Option<bool> {
        let st = self.state.borrow();
        if st.partial.is_some() {
            return Some(true);
        }
        let index = st.armed?;
        let handle = st.driver.as_ref()?.upgrade()?;
        let driver = handle.driver();
        match driver.peek_recv_multi(index)? {
            res if res > 0 => Some(true),
            // The receive ran dry or was withdrawn: the socket itself says the rest.
            res if res == -libc::ENOBUFS || res == -libc::ECANCELED => None,
            _ => Some(false),
        }
    }
}

impl Drop for Multishot {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        let Some(handle) = st.driver.as_ref().and_then(|d| d.upgrade()) else {
            return;
        };
        let mut driver = handle.driver();
        if let Some((bid, _, _)) = st.partial.take() {
            driver.recycle_buf(bid);
        }
        if let Some(index) = st.armed.take() {
            let fd = st.fd.take();
            driver.drop_recv_multi(index, Box::new(fd));
        }
    }
}

impl State {
    /// Arms a receive on `fd` in the running runtime; false where none can be armed.
    fn arm(&mut self, fd: &SharedFd) -> bool {
        let Some(handle) = CONTEXT.with(|c| c.handle()) else {
            return false;
        };
        let Some(index) = handle.driver().submit_recv_multi(fd.target()) else {
            return false;
        };
        self.driver = Some((&handle).into());
        self.armed = Some(index);
        self.fd = Some(fd.clone());
        self.cancelling = false;
        true
    }
}

fn gone() -> io::Error {
    io::Error::other("the runtime of this stream's receive is gone")
}
