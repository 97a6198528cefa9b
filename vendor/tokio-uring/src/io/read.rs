use crate::buf::BoundedBufMut;
use crate::io::shared_fd::Target;
use crate::io::SharedFd;
use crate::BufResult;

use crate::runtime::driver::op::{Completable, CqeResult, Op};
use crate::runtime::CONTEXT;
use std::io;

pub(crate) struct Read<T> {
    /// Holds a strong ref to the FD, preventing the file from being closed
    /// while the operation is in-flight.
    #[allow(dead_code)]
    fd: SharedFd,

    /// Reference to the in-flight buffer.
    pub(crate) buf: T,
}

impl<T: BoundedBufMut> Op<Read<T>> {
    pub(crate) fn read_at(fd: &SharedFd, buf: T, offset: u64) -> io::Result<Op<Read<T>>> {
        use io_uring::{opcode, types};

        CONTEXT.with(|x| {
            x.handle().expect("Not in a runtime context").submit_op(
                Read {
                    fd: fd.clone(),
                    buf,
                },
                |read| {
                    // Get raw buffer info
                    let ptr = read.buf.stable_mut_ptr();
                    let len = read.buf.bytes_total();
                    // ringlb patch: a registered descriptor is named by its slot.
                    match fd.target() {
                        Target::Fixed(slot) => opcode::Read::new(types::Fixed(slot), ptr, len as _)
                            .offset(offset as _)
                            .build(),
                        Target::Fd(raw) => opcode::Read::new(types::Fd(raw), ptr, len as _)
                            .offset(offset as _)
                            .build(),
                    }
                },
            )
        })
    }
}

impl<T: BoundedBufMut> Op<Read<T>> {
    /// ringlb patch: a socket's read, as `recv(2)` (IORING_OP_RECV). The kernel goes straight to
    /// the socket's `recvmsg`, without the file-read path's set-up (`io_rw_init_file`,
    /// `rw_verify_area`, an iov_iter import, `sock_read_iter`) that IORING_OP_READ pays on every
    /// read and again when a read that found no bytes is retried after its poll.
    pub(crate) fn recv(fd: &SharedFd, buf: T) -> io::Result<Op<Read<T>>> {
        use io_uring::{opcode, types};

        CONTEXT.with(|x| {
            x.handle().expect("Not in a runtime context").submit_op(
                Read {
                    fd: fd.clone(),
                    buf,
                },
                |read| {
                    let ptr = read.buf.stable_mut_ptr();
                    let len = read.buf.bytes_total();
                    match fd.target() {
                        Target::Fixed(slot) => {
                            opcode::Recv::new(types::Fixed(slot), ptr, len as _).build()
                        }
                        Target::Fd(raw) => opcode::Recv::new(types::Fd(raw), ptr, len as _).build(),
                    }
                },
            )
        })
    }
}

impl<T> Completable for Read<T>
where
    T: BoundedBufMut,
{
    type Output = BufResult<usize, T>;

    fn complete(self, cqe: CqeResult) -> Self::Output {
        // Convert the operation result to `usize`
        let res = cqe.result.map(|v| v as usize);
        // Recover the buffer
        let mut buf = self.buf;

        // If the operation was successful, advance the initialized cursor.
        if let Ok(n) = res {
            // Safety: the kernel wrote `n` bytes to the buffer.
            unsafe {
                buf.set_init(n);
            }
        }

        (res, buf)
    }
}
