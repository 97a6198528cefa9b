//! Shared bytes for the `h2` crate without an allocation each: short bodies and the request id
//! are copied into a per-thread chunk and handed out as `Bytes` slices of it.
//!
//! Runs on whichever thread calls it (a worker); each thread owns its chunk (a `thread_local!`),
//! so a copy is a `memcpy` and a reference count, never a lock. The `h2` crate wants owned
//! `Bytes` for every field value and DATA frame; copied one by one, a small response costs an
//! allocation per field and one for its body. Here a chunk is allocated once per
//! [`CHUNK`] bytes of copies and freed when the last slice of it is dropped.
//!
//! Bounded: a slice keeps its whole chunk alive, so only pieces up to [`MAX_PIECE`] come from
//! the chunk, and only pieces that are dropped soon: a short body as soon as its DATA frame is
//! written, the request id (sent "never indexed") once its HEADERS frame is encoded. A stream
//! waiting on a reader that never opens its window holds at most one chunk, no more than its
//! relay buffer held before, until `idle_timeout`. Field values that HPACK may index never come
//! from here: its table keeps them for the connection's life, and with them their chunks.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Bytes allocated at a time for the copies.
pub const CHUNK: usize = 16 * 1024;
/// Longer copies get an allocation of their own.
pub const MAX_PIECE: usize = 2 * 1024;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `src` as shared bytes: a slice of this thread's chunk when short, its own copy otherwise.
#[inline]
pub fn copy(src: &[u8]) -> Bytes {
    if src.len() > MAX_PIECE {
        return Bytes::copy_from_slice(src);
    }
    ARENA.with_borrow_mut(|chunk| {
        if chunk.capacity() - chunk.len() < src.len() {
            *chunk = BytesMut::with_capacity(CHUNK);
        }
        chunk.extend_from_slice(src);
        chunk.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_equal_to_their_sources_and_independent_of_each_other() {
        let mut held = Vec::new();
        // Enough copies to cross several chunks, of every size up to a piece and beyond.
        for i in 0..2000usize {
            let len = (i * 37) % (MAX_PIECE + 300);
            let src: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            let b = copy(&src);
            assert_eq!(&b[..], &src[..], "copy {i} of {len} bytes");
            held.push((src, b));
        }
        // A later copy never overwrote an earlier one.
        for (i, (src, b)) in held.iter().enumerate() {
            assert_eq!(&b[..], &src[..], "copy {i} changed after later copies");
        }
    }

    #[test]
    fn short_copies_share_a_chunk_and_long_ones_do_not() {
        ARENA.with_borrow_mut(|chunk| *chunk = BytesMut::new());
        let a = copy(b"first");
        let b = copy(b"second");
        assert_eq!(
            a.as_ptr().wrapping_add(a.len()),
            b.as_ptr(),
            "one chunk, back to back"
        );
        let long = vec![7u8; MAX_PIECE + 1];
        let l = copy(&long);
        assert_eq!(&l[..], &long[..]);
        let c = copy(b"third");
        assert_eq!(
            b.as_ptr().wrapping_add(b.len()),
            c.as_ptr(),
            "the long copy took no room"
        );
    }
}
