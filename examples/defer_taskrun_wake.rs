//! How late does a ring with `IORING_SETUP_DEFER_TASKRUN` wake a thread that sleeps in
//! `epoll_wait` on the ring's registered eventfd? (docs/performance-log.md, "DEFER_TASKRUN,
//! built and measured".) A receive is armed on one end of a socket pair; another thread writes
//! one byte 100 ms later; the main thread sleeps in `epoll_wait` on an eventfd registered with
//! the ring (`IORING_REGISTER_EVENTFD`) and prints when it woke.
//!
//! Run: `cargo run --release --example defer_taskrun_wake` (plain ring: the sleep ends at once,
//! by EINTR or the eventfd) and `... -- defer` (with DEFER_TASKRUN). Single-threaded apart from
//! the writer; everything is owned by `main`.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

const DELAY: Duration = Duration::from_millis(100);

fn main() -> std::io::Result<()> {
    let defer = std::env::args().nth(1).as_deref() == Some("defer");
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag();
    if defer {
        b.setup_defer_taskrun();
    }
    let mut ring: IoUring = b.build(64)?;
    // SAFETY: eventfd and epoll_create1 take no pointers; their descriptors live to the end.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    let ep = unsafe { libc::epoll_create1(0) };
    if efd < 0 || ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    ring.submitter().register_eventfd(efd)?;
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 1,
    };
    // SAFETY: valid descriptors and a live event struct.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
    // Leaked: a receive still in flight when `main` returns early keeps a valid buffer.
    let buf: &'static mut [u8; 64] = Box::leak(Box::new([0u8; 64]));
    for round in 1..=3 {
        let recv = opcode::Recv::new(types::Fd(reader.as_raw_fd()), buf.as_mut_ptr(), 64)
            .build()
            .user_data(round);
        // SAFETY: `buf` lives for the whole process (leaked above).
        unsafe { ring.submission().push(&recv) }.map_err(std::io::Error::other)?;
        ring.submit()?;
        let mut w = writer.try_clone()?;
        let t0 = Instant::now();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(DELAY);
            w.write_all(b"x").map(|()| Instant::now())
        });
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `out` has room for the 4 events asked for.
        let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 2000) };
        let woke_at = Instant::now();
        let why = if n < 0 {
            std::io::Error::last_os_error().to_string()
        } else {
            format!("{n} event(s)")
        };
        let wrote_at = sender
            .join()
            .map_err(|_| std::io::Error::other("writer panicked"))??;
        // Collect the completion (running deferred work), then clear the eventfd it signalled.
        ring.submit_and_wait(1)?;
        let done = ring.completion().count();
        std::thread::sleep(Duration::from_millis(50));
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 (EAGAIN when already clear is fine).
        unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "defer_taskrun={defer} round {round}: the byte was written at {:.1} ms, epoll_wait \
             ended at {:.1} ms ({why}): {:.1} ms after the write; {done} completion(s)",
            ms(wrote_at - t0),
            ms(woke_at - t0),
            ms(woke_at.saturating_duration_since(wrote_at))
        );
    }
    Ok(())
}
