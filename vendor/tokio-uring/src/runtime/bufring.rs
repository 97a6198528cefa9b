//! ringlb patch: each ring's provided-buffer ring, the buffers multishot receives fill.
//!
//! A multishot receive (`net::tcp::TcpStream::poll_recv_multishot`) stays armed on its socket
//! and, each time bytes arrive, the kernel takes a buffer from this ring, fills it and posts a
//! completion naming it. The socket holds no buffer while it waits, and no read is submitted,
//! and no poll armed, per arrival. The consumer copies the bytes out and gives the buffer back
//! at once ([`BufRing::recycle`]), so the ring only runs dry (the receive then ends with
//! `ENOBUFS`, and its reader falls back to a plain read) when many sockets have bytes waiting
//! that nobody reads yet.
//!
//! Owned by the driver (one ring per io_uring, on the driver's thread). The memory is allocated
//! here and lent to the kernel, page-aligned as `IORING_REGISTER_PBUF_RING` requires; it is
//! freed only after the driver has waited out every operation and closed the ring.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// Buffer group id of the ring (the only group ringlb registers).
pub(crate) const GROUP: u16 = 0;
/// Buffers in the ring (a power of two, as the kernel requires).
pub(crate) const BUFFERS: u16 = 256;
/// Bytes per buffer: a request head or a small response in one, and a busy relay's reads at
/// most a few at a time. A completion that fills one whole marks its stream as bulk
/// (`TcpStream`), whose reads then go straight into the reader's own larger buffer.
pub(crate) const BUF_SIZE: usize = 8 * 1024;
/// Buffers one receive may hold that its reader has not taken: past this the driver cancels
/// it (its reader goes on with plain reads), so one stream whose reader is busy elsewhere
/// cannot drain the ring for every other.
pub(crate) const MAX_QUEUED: usize = 16;
/// Distance between two buffers' starts: a buffer and one cache line. With a stride of exactly
/// 8 KiB every buffer's first line falls in the same set of the CPU's L1 and in a handful of L2
/// sets, and the ring hands its buffers out in turn, so each small read (which touches only a
/// buffer's first lines) would evict the last one's: the copy out of a buffer missed the cache.
const STRIDE: usize = BUF_SIZE + 64;

/// The ring's alignment: a page (the kernel maps the ring by pages). 256 entries of 16 bytes
/// are 4 KiB, one page on every page size, which kernels before 6.4 require of a ring they
/// pin.
fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

pub(crate) struct BufRing {
    /// `BUFFERS` ring entries, page-aligned; the first entry's reserved field is the tail.
    entries: *mut BufRingEntry,
    /// `BUFFERS * STRIDE` bytes.
    memory: *mut u8,
    /// The tail as this thread last published it.
    tail: u16,
    /// Buffers the kernel filled whose completions were seen, not yet given back.
    lent: usize,
}

impl BufRing {
    fn entries_layout() -> Layout {
        let page = page();
        let size = (BUFFERS as usize * std::mem::size_of::<BufRingEntry>()).max(page);
        Layout::from_size_align(size, page).expect("buffer ring layout")
    }

    fn memory_layout() -> Layout {
        Layout::from_size_align(BUFFERS as usize * STRIDE, page()).expect("buffer memory layout")
    }

    /// Registers a ring with `uring`, every buffer in it. `None` where the kernel refuses
    /// (before 5.19, or out of locked memory): multishot receives are then not offered.
    pub(crate) fn new(uring: &IoUring) -> Option<BufRing> {
        // SAFETY: both layouts have a non-zero size.
        let entries = unsafe { alloc_zeroed(Self::entries_layout()) } as *mut BufRingEntry;
        let memory = unsafe { alloc_zeroed(Self::memory_layout()) };
        if entries.is_null() || memory.is_null() {
            // SAFETY: each pointer is freed only when it was allocated with its layout.
            unsafe {
                if !entries.is_null() {
                    dealloc(entries.cast(), Self::entries_layout());
                }
                if !memory.is_null() {
                    dealloc(memory, Self::memory_layout());
                }
            }
            return None;
        }
        let mut ring = BufRing {
            entries,
            memory,
            tail: 0,
            lent: 0,
        };
        // SAFETY: `entries` is page-aligned, BUFFERS entries long, and lives until `Drop`,
        // which runs after the ring is closed (the driver drops its `IoUring` first).
        let registered =
            unsafe { uring.submitter().register_buf_ring(entries as u64, BUFFERS, GROUP) };
        if registered.is_err() {
            return None;
        }
        for bid in 0..BUFFERS {
            ring.push(bid);
        }
        ring.publish();
        Some(ring)
    }

    /// The bytes the kernel put in buffer `bid` (`len` of them, at most a buffer).
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let bid = (bid % BUFFERS) as usize;
        let len = len.min(BUF_SIZE);
        // SAFETY: buffer `bid` lies inside `memory`, and the kernel is done with it (its
        // completion has been seen) until it is recycled.
        unsafe { std::slice::from_raw_parts(self.memory.add(bid * STRIDE), len) }
    }

    /// A completion named a buffer: it is the reader's until [`BufRing::recycle`].
    pub(crate) fn lend(&mut self) {
        self.lent += 1;
    }

    /// Buffers lent out (filled, not yet given back).
    pub(crate) fn lent(&self) -> usize {
        self.lent
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        debug_assert!(self.lent > 0, "buffer {bid} given back twice");
        self.lent = self.lent.saturating_sub(1);
        self.push(bid % BUFFERS);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let mask = BUFFERS - 1;
        // SAFETY: the index is masked into the ring; the entry's address, length and id are
        // ours to write until the tail that covers it is published. Written through a raw
        // pointer, field by field: entry 0's reserved field is the tail, which the kernel reads.
        unsafe {
            let entry = self.entries.add((self.tail & mask) as usize);
            let addr = self.memory.add(bid as usize * STRIDE) as u64;
            let mut e: BufRingEntry = std::mem::zeroed();
            e.set_addr(addr);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
            // addr (u64), len (u32), bid (u16) lead the struct; the tail (u16) follows them.
            let src = &e as *const BufRingEntry as *const u8;
            std::ptr::copy_nonoverlapping(src, entry as *mut u8, 14);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field of a ring whose base is `entries`; the kernel reads it with
        // acquire semantics, so the entries written before this store are seen whole.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring using them is closed.
        unsafe {
            dealloc(self.entries.cast(), Self::entries_layout());
            dealloc(self.memory, Self::memory_layout());
        }
    }
}
