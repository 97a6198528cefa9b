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

/// A pending read's place in the lot.
#[derive(Clone, Copy)]
pub struct Ticket {
    key: u32,
    gen: u32,
}

struct Lot {
    /// Pending reads by key: the descriptor and the generation that owns the slot.
    slots: Vec<(RawFd, u32)>,
    free: Vec<u32>,
    /// Reads in the order they began, with the sweeper's clock at that time.
    queue: VecDeque<(Ticket, Instant)>,
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
}

/// Records a read on `fd` that may be withdrawn; call [`leave`] with the ticket once it ended.
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
        let ticket = Ticket { key, gen };
        let was_empty = lot.queue.is_empty();
        lot.queue.push_back((ticket, lot.now));
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
        ticket
    })
}

/// The read of `t` ended (bytes, an error, or withdrawn).
pub fn leave(t: Ticket) {
    LOT.with_borrow_mut(|lot| {
        if let Some(lot) = lot.as_mut() {
            if let Some(slot) = lot.slots.get_mut(t.key as usize) {
                if slot.1 == t.gen {
                    slot.1 = VACANT;
                    lot.free.push(t.key);
                }
            }
        }
    })
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
                while let Some(&(t, since)) = lot.queue.front() {
                    if now.duration_since(since) < PARK_AFTER {
                        break;
                    }
                    lot.queue.pop_front();
                    if let Some(slot) = lot.slots.get_mut(t.key as usize) {
                        if slot.1 == t.gen {
                            due.push(slot.0);
                            // Freed now: the read's own `leave` then finds it vacant.
                            slot.1 = VACANT;
                            lot.free.push(t.key);
                        }
                    }
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
