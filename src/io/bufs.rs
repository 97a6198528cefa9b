//! Per-thread free lists of I/O buffers, in two sizes: small ones for request heads and large ones
//! for relays and TLS ciphertext.
//!
//! Runs on whichever thread calls it (a worker, the health thread); each thread owns its own lists
//! (a `thread_local!`), so taking and giving back a buffer is a pop and a push, never a lock. A
//! connection takes a buffer when bytes are about to arrive and gives it back when it has none
//! left to hold, so an idle connection holds no buffer at all. The lists are capped, so a burst
//! does not keep its buffers after it has passed: beyond the caps they go back to the allocator.

use std::cell::RefCell;

/// A client connection's read buffer: a request head fits (it grows to `max_header_bytes` for
/// larger heads and is given back, or dropped when it grew past the class, afterwards).
pub const SMALL: usize = 8 * 1024;
/// A relay buffer: upstream reads, forwarded heads, TLS ciphertext (a record is at most 16 KiB
/// plus its overhead, so two fit).
pub const LARGE: usize = 32 * 1024;
/// Buffers kept per class and thread: enough for the requests a worker has in flight at once in
/// a busy load (HTTP/2 clients keep hundreds of streams in flight per worker), few enough that a
/// burst leaves little behind (at most 2 MiB of small and 4 MiB of large buffers per thread).
pub const MAX_FREE_SMALL: usize = 256;
pub const MAX_FREE_LARGE: usize = 128;

struct Free {
    small: Vec<Vec<u8>>,
    large: Vec<Vec<u8>>,
}

thread_local! {
    static FREE: RefCell<Free> = const {
        RefCell::new(Free {
            small: Vec::new(),
            large: Vec::new(),
        })
    };
}

/// An empty buffer with at least [`SMALL`] bytes of capacity.
#[inline]
pub fn take_small() -> Vec<u8> {
    FREE.with_borrow_mut(|f| f.small.pop())
        .unwrap_or_else(|| Vec::with_capacity(SMALL))
}

/// An empty buffer with at least [`LARGE`] bytes of capacity.
#[inline]
pub fn take_large() -> Vec<u8> {
    FREE.with_borrow_mut(|f| f.large.pop())
        .unwrap_or_else(|| Vec::with_capacity(LARGE))
}

/// Gives a buffer back for reuse. Its class is chosen by capacity; one that fits neither class
/// (never allocated, or grown far past it) is freed.
#[inline]
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if cap < SMALL {
        return;
    }
    buf.clear();
    FREE.with_borrow_mut(|f| {
        let (list, max) = if (SMALL..2 * SMALL).contains(&cap) {
            (&mut f.small, MAX_FREE_SMALL)
        } else if (LARGE..=4 * LARGE).contains(&cap) {
            (&mut f.large, MAX_FREE_LARGE)
        } else {
            return;
        };
        if list.len() < max {
            list.push(buf);
        }
    });
}

/// Buffers on this thread's free lists (small, large): for tests and the memory tools.
pub fn free_counts() -> (usize, usize) {
    FREE.with_borrow(|f| (f.small.len(), f.large.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_by_class_and_the_lists_are_capped() {
        let (s0, l0) = free_counts();
        let small = take_small();
        assert!(small.capacity() >= SMALL);
        let large = take_large();
        assert!(large.capacity() >= LARGE);
        give(small);
        give(large);
        assert_eq!(free_counts(), (s0 + 1, l0 + 1));
        // A buffer that grew far past its class, or never had one, is freed.
        give(Vec::with_capacity(16 * LARGE));
        give(Vec::new());
        assert_eq!(free_counts(), (s0 + 1, l0 + 1));
        for _ in 0..2 * MAX_FREE_SMALL {
            give(Vec::with_capacity(SMALL));
        }
        assert_eq!(free_counts().0, MAX_FREE_SMALL);
        for _ in 0..2 * MAX_FREE_LARGE {
            give(Vec::with_capacity(LARGE));
        }
        assert_eq!(free_counts().1, MAX_FREE_LARGE);
        // A reused buffer comes back empty.
        let mut b = take_large();
        b.extend_from_slice(b"left over");
        give(b);
        assert!(take_large().is_empty());
    }
}
