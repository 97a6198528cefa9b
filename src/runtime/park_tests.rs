//! Tests of the worker runtime's park waiting in its ring (vendored tokio-uring, patch 5):
//! what must still wake it while it waits there, and how a quiet runtime leaves it.
//!
//! Each test builds its own runtime on the test's thread, most with a ring wait of
//! [`LONG`], far above anything they expect, so a wake that the wait missed shows as a
//! stall of seconds.

use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::io::{Backend, Stream};

/// A ring wait long enough that missing a wake is unmistakable.
const LONG: Duration = Duration::from_secs(3);
/// What a wake the wait heard may take, on a busy shared host.
const PROMPT: Duration = Duration::from_millis(1500);

fn runtime(ring_wait: Duration) -> tokio_uring::Runtime {
    super::uring_runtime_with(super::URING_ENTRIES, ring_wait).expect("io_uring runtime")
}

fn timeouts() -> u64 {
    tokio_uring::ring_wait_timeouts().expect("inside the runtime")
}

/// A task woken from another thread (as a worker's tasks are by a reload or a drain) runs at
/// once, though the runtime was waiting in its ring with nothing due there; three times in a
/// row, so the ring's poll on the wake eventfd is armed again after each.
#[test]
fn wakes_from_another_thread_end_waits_in_the_ring() {
    let rt = runtime(LONG);
    let (took, waits_timed_out) = rt.block_on(async {
        let mut took = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let waiter = tokio_uring::spawn(async move {
                let t0 = Instant::now();
                let sent = tokio::time::timeout(Duration::from_secs(10), rx).await;
                sent.expect("never woken").expect("sent");
                t0.elapsed()
            });
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                tx.send(()).expect("receiver alive");
            });
            took.push(waiter.await.expect("join"));
            sender.join().expect("sender");
        }
        (took, timeouts())
    });
    for t in &took {
        assert!(*t < PROMPT, "a wake took {t:?} ({took:?})");
    }
    assert_eq!(waits_timed_out, 0, "a wait ran to its limit");
}

/// A read whose bytes arrive while the runtime waits in its ring completes when they come
/// (the wait runs the kernel's task work that completes it, and tokio's `epoll_wait` then
/// finds the ring readable).
#[test]
fn a_read_completes_inside_a_wait_in_the_ring() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut peer = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (ours, _) = l.accept().expect("accept");
    let rt = runtime(LONG);
    let (took, n, waits_timed_out, writer) = rt.block_on(async move {
        let s = Stream::from_std(Backend::Uring, ours).expect("stream");
        // The bytes come 100 ms after the read is under way.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            peer.write_all(b"bytes").expect("write");
            peer
        });
        let t0 = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(Vec::with_capacity(64)));
        let (res, _buf) = read.await.expect("the read never completed");
        (t0.elapsed(), res.expect("read"), timeouts(), writer)
    });
    drop(writer.join());
    assert_eq!(n, 5);
    assert!(took < PROMPT, "the read took {took:?}");
    assert_eq!(waits_timed_out, 0, "the wait ran to its limit");
}

/// Many tasks ready at once (more than the `LocalSet` runs per turn) are all run without the
/// park waiting in the ring in between. The `LocalSet` wakes itself when it stops with tasks
/// still ready, and tokio then does not call the park hook at all; this guards that the wait
/// relies on rightly (with a park hook called then, each turn would wait out the limit).
#[test]
fn a_local_set_with_tasks_still_ready_does_not_wait_in_the_ring() {
    let rt = runtime(LONG);
    let (took, waits_timed_out) = rt.block_on(async {
        let go = Rc::new(tokio::sync::Notify::new());
        let waiting = Rc::new(std::cell::Cell::new(0u32));
        let done = Rc::new(std::cell::Cell::new(0u32));
        let t0 = Instant::now();
        for _round in 0..5 {
            waiting.set(0);
            let tasks: Vec<_> = (0..300)
                .map(|_| {
                    let (go, waiting, done) = (go.clone(), waiting.clone(), done.clone());
                    tokio_uring::spawn(async move {
                        // Counted in the same poll that registers the wait below.
                        waiting.set(waiting.get() + 1);
                        go.notified().await;
                        done.set(done.get() + 1);
                    })
                })
                .collect();
            // Every task waits; then all 300 are woken in one call.
            while waiting.get() < 300 {
                tokio::task::yield_now().await;
            }
            go.notify_waiters();
            for t in tasks {
                t.await.expect("join");
            }
        }
        assert_eq!(done.get(), 1500);
        (t0.elapsed(), timeouts())
    });
    assert!(took < PROMPT, "1500 tasks took {took:?}");
    assert_eq!(
        waits_timed_out, 0,
        "the park waited in the ring with tasks ready"
    );
}

/// A runtime with nothing to do reaches its ring wait's limit once, then parks tokio's way
/// for a while: a timer due meanwhile fires on time, not a whole limit late.
#[test]
fn a_quiet_runtime_leaves_the_ring_wait_and_its_timers_fire_on_time() {
    let rt = runtime(LONG);
    let (first, second, waits_timed_out) = rt.block_on(async {
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first = t0.elapsed();
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        (first, t1.elapsed(), timeouts())
    });
    // The first sleep began with a ring wait, which only its limit ended: a timer is late by
    // at most the limit, once.
    assert!(first >= Duration::from_millis(50), "{first:?}");
    assert!(first < LONG + PROMPT, "the first timer took {first:?}");
    assert_eq!(waits_timed_out, 1);
    assert!(
        second < Duration::from_millis(50) + PROMPT,
        "the timer after a timed-out ring wait took {second:?}"
    );
}
