//! The parking lot: withdraws io_uring reads that have waited too long for bytes, so that idle
//! connections give their buffers back.
//!
//! Runs on a worker thread; the lot is thread-local and owned by that thread, with one small
//! sweeper task per thread, started by the first read that may park and asleep whenever no such
//! read is pending. A read that may park costs one slab insert and one queue push (time-stamped
//! with the sweeper's clock, so the hot path reads no clock and arms no timer); the sweeper cancels,
//! by descriptor, every read still pending [`PARK_AFTER`] after it began, and that read then ends
//! with `ECANCELED`, which [`crate::io::Stream::read_or_park`] reports as parked.
//!
//! Safety of cancelling by descriptor: an entry is still in the lot only while its task has not
//! yet seen its read complete, so that task has no other operation in flight on the socket, and
//! whatever it submits later is queued behind the cancellation (the kernel takes submissions in
//! order). The pending read holds the descriptor open, so its number cannot be reused meanwhile.
//! A connection that writes while its read is pending (HTTP/2: one read and one write in flight)
//! marks its writes ([`writing`]); a read whose socket has a write in flight is not withdrawn
//! then (the cancel would end the write too), but looked at again a tick later.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

/// How long a read may wait for its first byte before it is withdrawn and its buffer given back.
/// Short enough that idle connections cost almost nothing, long enough that a client sending its
/// next request at once (benchmarks, pipelines, page loads) never pays for the park (a cancel,
/// a poll, then the read again).
pub const PARK_AFTER: Duration = Duration::from_millis(50);
/// How often the sweeper looks while reads are pending: a read parks between [`PARK_AFTER`] and
/// `PARK_AFTER + SWEEP_TICK` after it began.
pub const SWEEP_TICK: Duration = Duration::from_millis(25);

/// A pending read's place in the lot; leaves it when dropped (the read ended, or its future
/// was dropped before it did).
pub struct Ticket {
    key: u32,
    gen: u32,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        leave(self);
    }
}

struct Lot {
    /// Pending reads by key: the descriptor and the generation that owns the slot.
    slots: Vec<(RawFd, u32)>,
    free: Vec<u32>,
    /// Reads in the order they began, with the sweeper's clock at that time.
    queue: VecDeque<((u32, u32), Instant)>,
    next_gen: u32,
    /// The sweeper's clock (the time of its last tick).
    now: Instant,
    sweeper: Sweeper,
}

enum Sweeper {
    NotStarted,
    /// Asleep until a read arrives.
    Idle(Waker),
    Running,
}

/// Marks a slot with no pending read.
const VACANT: u32 = 0;

thread_local! {
    static LOT: RefCell<Option<Lot>> = const { RefCell::new(None) };
    static CANCELS: Cell<u64> = const { Cell::new(0) };
    /// Descriptors with writes in flight, and how many (a few entries at most at once).
    static WRITING: RefCell<Vec<(RawFd, u32)>> = const { RefCell::new(Vec::new()) };
}

/// A write in flight on a descriptor whose read may be pending; ends when dropped.
pub struct WriteMark(RawFd);

/// Marks a write on `fd` as in flight until the mark drops: a pending read on `fd` is not
/// withdrawn meanwhile.
pub fn writing(fd: RawFd) -> WriteMark {
    WRITING.with_borrow_mut(|w| match w.iter_mut().find(|e| e.0 == fd) {
        Some(e) => e.1 += 1,
        None => w.push((fd, 1)),
    });
    WriteMark(fd)
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        let _ = WRITING.try_with(|w| {
            if let Ok(mut w) = w.try_borrow_mut() {
                if let Some(i) = w.iter().position(|e| e.0 == self.0) {
                    w[i].1 -= 1;
                    if w[i].1 == 0 {
                        w.swap_remove(i);
                    }
                }
            }
        });
    }
}

fn write_in_flight(fd: RawFd) -> bool {
    WRITING.with_borrow(|w| w.iter().any(|e| e.0 == fd))
}

/// Records a read on `fd` that may be withdrawn, until the ticket drops.
pub fn enter(fd: RawFd) -> Ticket {
    LOT.with_borrow_mut(|lot| {
        let lot = lot.get_or_insert_with(|| Lot {
            slots: Vec::new(),
            free: Vec::new(),
            queue: VecDeque::new(),
            next_gen: 1,
            now: Instant::now(),
            sweeper: Sweeper::NotStarted,
        });
        let gen = lot.next_gen;
        lot.next_gen = lot.next_gen.wrapping_add(1).max(1);
        let key = match lot.free.pop() {
            Some(k) => {
                lot.slots[k as usize] = (fd, gen);
                k
            }
            None => {
                lot.slots.push((fd, gen));
                (lot.slots.len() - 1) as u32
            }
        };
        let was_empty = lot.queue.is_empty();
        lot.queue.push_back(((key, gen), lot.now));
        if was_empty {
            match std::mem::replace(&mut lot.sweeper, Sweeper::Running) {
                Sweeper::NotStarted => {
                    // The sweeper's clock restarts with it (it was not ticking while asleep).
                    lot.now = Instant::now();
                    if let Some(q) = lot.queue.back_mut() {
                        q.1 = lot.now;
                    }
                    tokio::task::spawn_local(sweep());
                }
                Sweeper::Idle(w) => {
                    lot.now = Instant::now();
                    if let Some(q) = lot.queue.back_mut() {
                        q.1 = lot.now;
                    }
                    w.wake();
                }
                Sweeper::Running => {}
            }
        }
        Ticket { key, gen }
    })
}

/// The read of `t` ended (bytes, an error, or withdrawn), or its future was dropped.
fn leave(t: &Ticket) {
    let _ = LOT.try_with(|lot| {
        let Ok(mut lot) = lot.try_borrow_mut() else {
            return;
        };
        if let Some(lot) = lot.as_mut() {
            if let Some(slot) = lot.slots.get_mut(t.key as usize) {
                if slot.1 == t.gen {
                    slot.1 = VACANT;
                    lot.free.push(t.key);
                }
            }
        }
    });
}

/// Cancellations the sweeper has submitted on this thread (for tests and the memory tools).
pub fn cancels() -> u64 {
    CANCELS.get()
}

/// The sweeper: every tick, withdraws the reads pending for [`PARK_AFTER`]; sleeps while none is.
async fn sweep() {
    // The runtime may end with reads still recorded (a worker that stopped): forget them, so a
    // later runtime on this thread starts with an empty lot and its own sweeper.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = LOT.try_with(|lot| {
                if let Ok(mut lot) = lot.try_borrow_mut() {
                    *lot = None;
                }
            });
        }
    }
    let _reset = Reset;
    loop {
        // Wait for work: a read entered since the queue emptied.
        std::future::poll_fn(|cx| {
            LOT.with_borrow_mut(|lot| match lot.as_mut() {
                Some(lot) if lot.queue.is_empty() => {
                    lot.sweeper = Sweeper::Idle(cx.waker().clone());
                    std::task::Poll::Pending
                }
                _ => std::task::Poll::Ready(()),
            })
        })
        .await;
        while LOT.with_borrow(|lot| lot.as_ref().is_some_and(|l| !l.queue.is_empty())) {
            tokio::time::sleep(SWEEP_TICK).await;
            let now = Instant::now();
            let due: Vec<RawFd> = LOT.with_borrow_mut(|lot| {
                let Some(lot) = lot.as_mut() else {
                    return Vec::new();
                };
                lot.now = now;
                let mut due = Vec::new();
                let mut later = Vec::new();
                while let Some(&((key, gen), since)) = lot.queue.front() {
                    if now.duration_since(since) < PARK_AFTER {
                        break;
                    }
                    lot.queue.pop_front();
                    if let Some(slot) = lot.slots.get_mut(key as usize) {
                        if slot.1 == gen {
                            if write_in_flight(slot.0) {
                                // Not now: the cancel would end the write as well.
                                later.push((key, gen));
                                continue;
                            }
                            due.push(slot.0);
                            // Freed now: the read's own `leave` then finds it vacant.
                            slot.1 = VACANT;
                            lot.free.push(key);
                        }
                    }
                }
                // Looked at again on the next tick.
                let again = now.checked_sub(PARK_AFTER).unwrap_or(now);
                for t in later.into_iter().rev() {
                    lot.queue.push_front((t, again));
                }
                due
            });
            for fd in due {
                CANCELS.set(CANCELS.get() + 1);
                // Nobody waits for the cancellation itself: the read's own completion says
                // what happened. A dropped oneshot is kept by the runtime until it completes.
                drop(super::uring_ops::submit_cancel_fd(fd));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on an io_uring runtime, as a worker does (the sweeper submits its cancels there).
    fn on_uring(f: impl std::future::Future<Output = ()>) {
        let rt = crate::runtime::uring_runtime().expect("io_uring runtime");
        rt.block_on(f);
    }

    #[test]
    fn a_dropped_read_leaves_the_lot_and_a_writing_socket_waits() {
        on_uring(async {
            let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
            use std::os::fd::AsRawFd;
            let fd = a.as_raw_fd();
            let before = cancels();
            // A read whose future was dropped: nothing is cancelled later on its descriptor
            // (whose number a new connection may have by then).
            drop(enter(fd));
            tokio::time::sleep(PARK_AFTER * 3).await;
            assert_eq!(cancels(), before);
            // A pending read with a write in flight on its socket is left alone...
            let ticket = enter(fd);
            let mark = writing(fd);
            tokio::time::sleep(PARK_AFTER * 3).await;
            assert_eq!(cancels(), before);
            // ...and withdrawn once the write is done.
            drop(mark);
            tokio::time::sleep(PARK_AFTER + SWEEP_TICK * 3).await;
            assert_eq!(cancels(), before + 1);
            drop(ticket);
        });
    }
}
