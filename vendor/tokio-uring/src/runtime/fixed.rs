//! ringlb patch: the ring's table of registered (fixed) files.
//!
//! A descriptor registered here is named by its slot in operations (`types::Fixed`), so the
//! kernel takes the file from the ring's table instead of the process's descriptor table: no
//! `fget`/`fput` (an atomic pair on a multi-threaded process's file) and no per-operation
//! look-up of the file's flags. Worth it for long-lived sockets (pooled upstream connections);
//! a socket that lives for one request would pay two registrations for two operations.
//!
//! The table belongs to the thread's ring: created sparse with the driver, gone with it.
//! Slots are taken and given back with `IORING_REGISTER_FILES_UPDATE`, a direct system call on
//! the ring's descriptor, so that a descriptor dropped while the driver is busy (its last
//! reference held by a finished operation) can give its slot back without borrowing the driver.
//! Each table has a generation: a slot from a table that is gone is never used or given back.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::unix::io::RawFd;

/// Slots per ring: enough for every upstream connection one worker keeps. Registration
/// needs this many under RLIMIT_NOFILE; the table is tried smaller before it is given up.
const SLOTS: [u32; 3] = [8192, 2048, 256];

/// `IORING_REGISTER_FILES_UPDATE` from `<linux/io_uring.h>`.
const IORING_REGISTER_FILES_UPDATE: libc::c_uint = 6;

/// `struct io_uring_files_update` from `<linux/io_uring.h>`.
#[repr(C)]
struct FilesUpdate {
    offset: u32,
    resv: u32,
    fds: u64,
}

struct Table {
    ring_fd: RawFd,
    generation: u64,
    free: Vec<u32>,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// A descriptor's place in its ring's table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) index: u32,
    generation: u64,
}

/// Creates the table for a new ring (sparse: every slot empty). Without it (an old kernel, a
/// low descriptor limit) descriptors are simply not registered.
pub(crate) fn install(ring: &io_uring::IoUring) {
    let Some(n) = SLOTS
        .iter()
        .copied()
        .find(|&n| ring.submitter().register_files_sparse(n).is_ok())
    else {
        return;
    };
    let generation = GENERATION.with(|g| {
        g.set(g.get() + 1);
        g.get()
    });
    let table = Table {
        ring_fd: std::os::unix::io::AsRawFd::as_raw_fd(ring),
        generation,
        free: (0..n).rev().collect(),
    };
    TABLE.with(|t| *t.borrow_mut() = Some(table));
}

/// Forgets the table of the ring whose descriptor is `ring_fd` (the ring is being dropped).
pub(crate) fn uninstall(ring_fd: RawFd) {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if t.as_ref().is_some_and(|t| t.ring_fd == ring_fd) {
            *t = None;
        }
    });
}

/// Registers `fd` in a free slot; `None` when there is no table or no free slot.
pub(crate) fn register(fd: RawFd) -> io::Result<Option<Slot>> {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let Some(table) = t.as_mut() else {
            return Ok(None);
        };
        let Some(index) = table.free.pop() else {
            return Ok(None);
        };
        match update(table.ring_fd, index, fd) {
            Ok(()) => Ok(Some(Slot {
                index,
                generation: table.generation,
            })),
            Err(e) => {
                table.free.push(index);
                Err(e)
            }
        }
    })
}

/// Whether `slot` belongs to the thread's current table (operations may name it).
pub(crate) fn usable(slot: Slot) -> bool {
    TABLE.with(|t| {
        t.try_borrow()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t.generation == slot.generation))
            .unwrap_or(false)
    })
}

/// Empties `slot` and gives it back; the caller closes its descriptor. The table's reference
/// to the file goes here, so the socket closes with the descriptor.
pub(crate) fn release(slot: Slot) {
    TABLE.with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return;
        };
        let Some(table) = t.as_mut() else {
            return;
        };
        if table.generation != slot.generation {
            return;
        }
        if update(table.ring_fd, slot.index, -1).is_ok() {
            table.free.push(slot.index);
        }
    });
}

fn update(ring_fd: RawFd, index: u32, fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    let arg = FilesUpdate {
        offset: index,
        resv: 0,
        fds: fds.as_ptr() as u64,
    };
    // SAFETY: `arg` and `fds` outlive the call; the kernel reads one descriptor from `fds`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            IORING_REGISTER_FILES_UPDATE,
            &arg as *const FilesUpdate,
            1u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
