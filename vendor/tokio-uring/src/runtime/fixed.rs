//! ringlb patch: each ring's table of registered (fixed) files.
//!
//! A descriptor registered here is named by its slot in operations (`types::Fixed`), so the
//! kernel takes the file from the ring's table instead of the process's descriptor table: no
//! `fget`/`fput` (an atomic pair on a multi-threaded process's file) and no per-operation
//! look-up of the file's flags. Worth it for long-lived sockets (pooled upstream connections);
//! a socket that lives for one request would pay two registrations for two operations.
//!
//! A table belongs to its ring: created sparse with the driver, gone with it. A thread may hold
//! more than one runtime, so the tables are kept by ring, and a slot names its ring: it is used
//! only while that ring is the one running on the thread (operations go to the running ring),
//! and given back to that ring's table. Slots are filled and emptied with
//! `IORING_REGISTER_FILES_UPDATE`, a direct system call on the ring's descriptor, so that a
//! descriptor dropped while the driver is busy (its last reference held by a finished
//! operation) can empty its slot without borrowing the driver. Each table has a generation: a
//! slot from a table that is gone (a ring dropped, its descriptor number reused) is never used
//! or emptied.

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
    /// The tables of this thread's rings (one, unless a thread builds several runtimes).
    static TABLES: RefCell<Vec<Table>> = const { RefCell::new(Vec::new()) };
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The ring of the runtime running on this thread (`block_on`), -1 for none.
    static CURRENT: Cell<RawFd> = const { Cell::new(-1) };
}

/// A descriptor's place in a ring's table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) index: u32,
    ring_fd: RawFd,
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
    let _ = TABLES.try_with(|t| t.borrow_mut().push(table));
}

/// Forgets the table of the ring whose descriptor is `ring_fd` (the ring is being dropped).
pub(crate) fn uninstall(ring_fd: RawFd) {
    let _ = TABLES.try_with(|t| t.borrow_mut().retain(|t| t.ring_fd != ring_fd));
}

/// Says which ring operations go to now (`-1`: none).
pub(crate) fn set_current(ring_fd: RawFd) {
    let _ = CURRENT.try_with(|c| c.set(ring_fd));
}

/// Registers `fd` in a free slot of the running ring's table; `None` when no runtime runs,
/// its ring has no table, or the table is full.
pub(crate) fn register(fd: RawFd) -> io::Result<Option<Slot>> {
    let current = CURRENT.with(Cell::get);
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        let Some(table) = t.iter_mut().find(|t| t.ring_fd == current) else {
            return Ok(None);
        };
        let Some(index) = table.free.pop() else {
            return Ok(None);
        };
        match update(table.ring_fd, index, fd) {
            Ok(()) => Ok(Some(Slot {
                index,
                ring_fd: table.ring_fd,
                generation: table.generation,
            })),
            Err(e) => {
                table.free.push(index);
                Err(e)
            }
        }
    })
}

/// Whether an operation submitted now may name `slot`: its ring is the running one, and its
/// table is still that ring's.
pub(crate) fn usable(slot: Slot) -> bool {
    if CURRENT.with(Cell::get) != slot.ring_fd {
        return false;
    }
    TABLES.with(|t| {
        t.try_borrow().is_ok_and(|t| {
            t.iter()
                .any(|t| t.ring_fd == slot.ring_fd && t.generation == slot.generation)
        })
    })
}

/// Empties `slot` and gives it back; the caller closes its descriptor. The table's reference
/// to the file goes here, so the socket closes with the descriptor.
pub(crate) fn release(slot: Slot) {
    let _ = TABLES.try_with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return;
        };
        let Some(table) = t
            .iter_mut()
            .find(|t| t.ring_fd == slot.ring_fd && t.generation == slot.generation)
        else {
            // The ring is gone, and its table with it.
            return;
        };
        match update(table.ring_fd, slot.index, -1) {
            Ok(()) => table.free.push(slot.index),
            // The slot keeps the file (and the socket) open until the ring closes.
            Err(e) => eprintln!(
                "tokio-uring (ringlb patch): cannot empty fixed-file slot {}: {e}",
                slot.index
            ),
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
