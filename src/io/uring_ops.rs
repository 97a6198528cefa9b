//! io_uring operations tokio-uring does not offer, submitted through its oneshot seam
//! (`UnsubmittedOneshot`): a readiness wait (POLL_ADD) and a cancellation by descriptor.
//!
//! Runs on a worker's io_uring runtime; the operations hold no buffer, so dropping one before it
//! completes leaks nothing (tokio-uring keeps its slot until the completion arrives).

use std::io;
use std::os::fd::RawFd;

/// Turns a completion's result into the events or the count it carries.
struct Done;

impl tokio_uring::OneshotOutputTransform for Done {
    type Output = io::Result<u32>;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: io_uring::cqueue::Entry) -> io::Result<u32> {
        let r = cqe.result();
        if r < 0 {
            Err(io::Error::from_raw_os_error(-r))
        } else {
            Ok(r as u32)
        }
    }
}

/// Waits until `fd` has one of `events` (or an error or hang-up, which poll always reports).
/// Submitted at once; the future is small (a parked connection keeps it). A pending wait ends
/// when the socket is shut down.
pub fn poll(fd: RawFd, events: u32) -> impl std::future::Future<Output = io::Result<u32>> {
    let sqe = io_uring::opcode::PollAdd::new(io_uring::types::Fd(fd), events).build();
    tokio_uring::UnsubmittedOneshot::new((), Done, sqe).submit()
}

/// Cancels every operation in flight on `fd` (Linux 5.19+): each completes with `ECANCELED`,
/// unless it completed first. Submitted at once; the future says how many were cancelled
/// (`ENOENT`: none was in flight), and may be dropped unawaited.
pub fn submit_cancel_fd(fd: RawFd) -> impl std::future::Future<Output = io::Result<u32>> {
    let what = io_uring::types::CancelBuilder::fd(io_uring::types::Fd(fd)).all();
    let sqe = io_uring::opcode::AsyncCancel2::new(what).build();
    tokio_uring::UnsubmittedOneshot::new((), Done, sqe).submit()
}
