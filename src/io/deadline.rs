//! Deadlines for socket operations without a timer per operation: a per-thread watchdog that
//! shuts a socket down when an operation on it outlives its deadline, so the operation ends (a
//! read sees EOF, a write fails) and its caller, seeing [`Deadline::expired`], reports the
//! timeout. A read armed with [`arm_read`] has only the socket's receiving side shut down, so
//! the caller can still answer (a client whose request body stalls gets its 408). This is what
//! a timeout on these operations did anyway (the pending operation cannot be dropped, so the
//! socket was shut down), at the cost of a slab insert and a queue push instead of a
//! timer-wheel entry and a clock read per operation. A parked keep-alive connection's idle
//! timeout is one too, so a parked connection holds no timer of its own (a tokio `Sleep` was
//! most of its state).
//!
//! Runs on a worker thread (either I/O backend); the watchdog is thread-local and owned by that
//! thread, with one sweeper task per thread that ticks every [`TICK`] while deadlines are armed
//! and sleeps otherwise. Deadlines are kept in one FIFO queue per distinct duration (a listener
//! or group has a handful), stamped with the sweeper's clock, so each queue is in deadline order.
//! A deadline fires between its duration and its duration plus two ticks, never early.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

/// The watchdog's resolution.
pub const TICK: Duration = Duration::from_millis(25);

/// An armed deadline; dropping it disarms it.
pub struct Deadline {
    key: u32,
    gen: u32,
}

#[derive(Clone, Copy)]
struct Slot {
    fd: RawFd,
    gen: u32,
    expired: bool,
    /// What the watchdog shuts down when the deadline passes (`SHUT_RDWR` or `SHUT_RD`).
    how: libc::c_int,
}

struct Watch {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Per duration, its deadlines oldest first.
    queues: Vec<(Duration, VecDeque<Armed>)>,
    next_gen: u32,
    /// The sweeper's clock (its last tick; refreshed when it wakes).
    now: Instant,
    armed: usize,
    sweeper: Sweeper,
}

enum Sweeper {
    NotStarted,
    Idle(Waker),
    Running,
}

/// A queued deadline: its slot, the slot's generation, and when it was armed (the sweeper's
/// clock).
type Armed = (u32, u32, Instant);

const VACANT: u32 = 0;

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Arms a deadline `after` from now on the socket `fd`, which must stay open while the
/// returned [`Deadline`] lives. Past it, the socket is shut down both ways.
pub fn arm(fd: RawFd, after: Duration) -> Deadline {
    arm_with(fd, after, libc::SHUT_RDWR)
}

/// Arms a deadline for a read on `fd`: past it, only the receiving side is shut down (the read
/// sees EOF), so a response can still be written.
pub fn arm_read(fd: RawFd, after: Duration) -> Deadline {
    arm_with(fd, after, libc::SHUT_RD)
}

fn arm_with(fd: RawFd, after: Duration, how: libc::c_int) -> Deadline {
    WATCH.with_borrow_mut(|w| {
        let w = w.get_or_insert_with(|| Watch {
            slots: Vec::new(),
            free: Vec::new(),
            queues: Vec::new(),
            next_gen: 1,
            now: Instant::now(),
            armed: 0,
            sweeper: Sweeper::NotStarted,
        });
        if w.armed == 0 {
            // The sweeper's clock stood still while nothing was armed.
            w.now = Instant::now();
            match std::mem::replace(&mut w.sweeper, Sweeper::Running) {
                Sweeper::NotStarted => {
                    tokio::task::spawn_local(sweep());
                }
                Sweeper::Idle(waker) => waker.wake(),
                Sweeper::Running => {}
            }
        }
        let gen = w.next_gen;
        w.next_gen = w.next_gen.wrapping_add(1).max(1);
        let slot = Slot {
            fd,
            gen,
            expired: false,
            how,
        };
        let key = match w.free.pop() {
            Some(k) => {
                w.slots[k as usize] = slot;
                k
            }
            None => {
                w.slots.push(slot);
                (w.slots.len() - 1) as u32
            }
        };
        w.armed += 1;
        let now = w.now;
        match w.queues.iter_mut().find(|(d, _)| *d == after) {
            Some((_, q)) => q.push_back((key, gen, now)),
            None => w.queues.push((after, VecDeque::from([(key, gen, now)]))),
        }
        Deadline { key, gen }
    })
}

impl Deadline {
    /// True when the deadline passed and the socket was shut down.
    pub fn expired(&self) -> bool {
        WATCH.with_borrow(|w| {
            w.as_ref()
                .and_then(|w| w.slots.get(self.key as usize))
                .is_some_and(|s| s.gen == self.gen && s.expired)
        })
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let _ = WATCH.try_with(|w| {
            if let Ok(mut w) = w.try_borrow_mut() {
                if let Some(w) = w.as_mut() {
                    if let Some(s) = w.slots.get_mut(self.key as usize) {
                        if s.gen == self.gen {
                            s.gen = VACANT;
                            w.free.push(self.key);
                            w.armed -= 1;
                        }
                    }
                }
            }
        });
    }
}

/// The sweeper: every tick, shuts down the sockets whose deadline passed; sleeps while none is
/// armed.
async fn sweep() {
    // A runtime that ends with deadlines armed: forget them, so a later runtime on this thread
    // starts afresh with its own sweeper.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = WATCH.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    *w = None;
                }
            });
        }
    }
    let _reset = Reset;
    loop {
        std::future::poll_fn(|cx| {
            WATCH.with_borrow_mut(|w| match w.as_mut() {
                Some(w) if w.armed == 0 => {
                    w.sweeper = Sweeper::Idle(cx.waker().clone());
                    std::task::Poll::Pending
                }
                _ => std::task::Poll::Ready(()),
            })
        })
        .await;
        while WATCH.with_borrow(|w| w.as_ref().is_some_and(|w| w.armed > 0)) {
            tokio::time::sleep(TICK).await;
            let now = Instant::now();
            let due: Vec<(RawFd, libc::c_int)> = WATCH.with_borrow_mut(|w| {
                let Some(w) = w.as_mut() else {
                    return Vec::new();
                };
                w.now = now;
                let mut due = Vec::new();
                let slots = &mut w.slots;
                // Disarmed entries behind a live one wait for it to reach the front; when they
                // pile up (one slow write holds the front of a long queue), drop them at once.
                let bound = 2 * w.armed + 1024;
                for (after, q) in w.queues.iter_mut() {
                    if q.len() > bound {
                        q.retain(|&(key, gen, _)| {
                            slots.get(key as usize).is_some_and(|s| s.gen == gen)
                        });
                    }
                    // One tick of slack: the arm time is the sweeper's clock, up to a tick old.
                    while let Some(&(key, gen, since)) = q.front() {
                        let live = slots.get(key as usize).is_some_and(|s| s.gen == gen);
                        if live && now.saturating_duration_since(since) < *after + TICK {
                            break;
                        }
                        q.pop_front();
                        if let Some(s) = slots.get_mut(key as usize).filter(|_| live) {
                            s.expired = true;
                            due.push((s.fd, s.how));
                        }
                    }
                }
                w.queues.retain(|(_, q)| !q.is_empty());
                due
            });
            for (fd, how) in due {
                // Ends the operation in flight; its caller sees `expired()`.
                unsafe { libc::shutdown(fd, how) };
            }
        }
    }
}

/// Deadlines armed on this thread now (for tests).
pub fn armed() -> usize {
    WATCH.with_borrow(|w| w.as_ref().map_or(0, |w| w.armed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a current-thread runtime with a LocalSet, as on a worker.
    fn on_local(f: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    #[test]
    fn a_read_past_its_deadline_ends_and_says_so_and_an_early_one_does_not() {
        on_local(async {
            let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
            a.set_nonblocking(true).expect("nonblocking");
            let a = tokio::net::UnixStream::from_std(a).expect("tokio");
            use std::os::fd::AsRawFd;
            let started = Instant::now();
            let d = arm(a.as_raw_fd(), Duration::from_millis(100));
            assert_eq!(armed(), 1);
            // Nothing comes: the watchdog shuts the socket down and the read sees EOF.
            a.readable().await.expect("readable");
            let mut buf = [0u8; 8];
            assert_eq!(a.try_read(&mut buf).expect("read"), 0);
            assert!(d.expired());
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(100) && took < Duration::from_millis(400),
                "{took:?}"
            );
            drop(d);
            assert_eq!(armed(), 0);
            // Disarmed in time: nothing happens to the socket.
            let (c, mut e) = std::os::unix::net::UnixStream::pair().expect("pair");
            let d = arm(c.as_raw_fd(), Duration::from_millis(50));
            drop(d);
            tokio::time::sleep(Duration::from_millis(150)).await;
            use std::io::Write;
            e.write_all(b"x").expect("still open");
        });
    }

    #[test]
    fn a_read_deadline_ends_the_read_and_leaves_the_socket_able_to_answer() {
        on_local(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut client =
                std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
            let (server, _) = l.accept().expect("accept");
            server.set_nonblocking(true).expect("nonblocking");
            let server = tokio::net::TcpStream::from_std(server).expect("tokio");
            use std::os::fd::AsRawFd;
            let d = arm_read(server.as_raw_fd(), Duration::from_millis(100));
            // Nothing comes: the read ends with EOF.
            server.readable().await.expect("readable");
            let mut buf = [0u8; 8];
            assert_eq!(server.try_read(&mut buf).expect("read"), 0);
            assert!(d.expired());
            drop(d);
            // The answer still goes out, and the client reads it.
            server.writable().await.expect("writable");
            assert_eq!(
                server.try_write(b"408").expect("the sending side is open"),
                3
            );
            use std::io::Read;
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut got = [0u8; 3];
            client.read_exact(&mut got).expect("the answer");
            assert_eq!(&got, b"408");
        });
    }
}
