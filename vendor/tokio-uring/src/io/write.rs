use crate::io::shared_fd::Target;
use crate::{buf::BoundedBuf, io::SharedFd, BufResult, OneshotOutputTransform, UnsubmittedOneshot};
use io_uring::cqueue::Entry;
use std::io;
use std::marker::PhantomData;

/// An unsubmitted write operation.
pub type UnsubmittedWrite<T> = UnsubmittedOneshot<WriteData<T>, WriteTransform<T>>;

#[allow(missing_docs)]
pub struct WriteData<T> {
    /// Holds a strong ref to the FD, preventing the file from being closed
    /// while the operation is in-flight.
    _fd: SharedFd,

    buf: T,
}

#[allow(missing_docs)]
pub struct WriteTransform<T> {
    _phantom: PhantomData<T>,
}

impl<T> OneshotOutputTransform for WriteTransform<T> {
    type Output = BufResult<usize, T>;
    type StoredData = WriteData<T>;

    fn transform_oneshot_output(self, data: Self::StoredData, cqe: Entry) -> Self::Output {
        let res = if cqe.result() >= 0 {
            Ok(cqe.result() as usize)
        } else {
            Err(io::Error::from_raw_os_error(-cqe.result()))
        };

        (res, data.buf)
    }
}

impl<T: BoundedBuf> UnsubmittedWrite<T> {
    /// ringlb patch: a socket's write, as `send(2)` with MSG_NOSIGNAL (IORING_OP_SEND): straight
    /// to the socket's `sendmsg`, without the file-write path's set-up that IORING_OP_WRITE pays
    /// (`io_rw_init_file`, `rw_verify_area`, an iov_iter import, `sock_write_iter`), and a
    /// peer's reset is an `EPIPE` result, never a SIGPIPE.
    pub(crate) fn send(fd: &SharedFd, buf: T) -> Self {
        use io_uring::{opcode, types};

        let ptr = buf.stable_ptr();
        let len = buf.bytes_init();
        let flags = libc::MSG_NOSIGNAL;

        Self::new(
            WriteData {
                _fd: fd.clone(),
                buf,
            },
            WriteTransform {
                _phantom: PhantomData,
            },
            match fd.target() {
                Target::Fixed(slot) => opcode::Send::new(types::Fixed(slot), ptr, len as _)
                    .flags(flags)
                    .build(),
                Target::Fd(raw) => opcode::Send::new(types::Fd(raw), ptr, len as _)
                    .flags(flags)
                    .build(),
            },
        )
    }

    pub(crate) fn write_at(fd: &SharedFd, buf: T, offset: u64) -> Self {
        use io_uring::{opcode, types};

        // Get raw buffer info
        let ptr = buf.stable_ptr();
        let len = buf.bytes_init();

        Self::new(
            WriteData {
                _fd: fd.clone(),
                buf,
            },
            WriteTransform {
                _phantom: PhantomData,
            },
            // ringlb patch: a registered descriptor is named by its slot.
            match fd.target() {
                Target::Fixed(slot) => opcode::Write::new(types::Fixed(slot), ptr, len as _)
                    .offset(offset as _)
                    .build(),
                Target::Fd(raw) => opcode::Write::new(types::Fd(raw), ptr, len as _)
                    .offset(offset as _)
                    .build(),
            },
        )
    }
}
