//! The vendored h2's idle connection gives its buffers back (vendor/h2/PATCHES.md), counted
//! exactly: an in-process h2 client and server over an in-memory pipe, and a global allocator
//! that counts this test binary's live bytes and allocations. After bursts of streams whose
//! fields went into the HPACK table, `release_idle_buffers` must free the write buffer (16 KiB),
//! the read buffer (8 KiB), the decoder's Huffman buffer (4 KiB), which a table entry sharing
//! that buffer would keep alive, and the stream slabs' room; the connection must then serve
//! requests whose fields come from the table, and decode a burst with about as few allocations
//! as before the release.
//!
//! Runs on the test's thread (a current-thread runtime); the counters are this binary's only
//! global state, and this file holds one test so that nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::poll_fn;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A request whose `:authority` and `x-tenant` are literals h2's client codes with Huffman and
/// the server's decoder inserts into its table.
fn request(tenant: &str) -> Request<()> {
    Request::builder()
        .uri("https://shop.example.com/cart")
        .header("x-tenant", tenant)
        .body(())
        .expect("request")
}

/// A tenant name of 200 characters, unique per (`tag`, `i`): Huffman-coded and new to the
/// table, so the server decodes it into its Huffman buffer.
fn tenant(tag: &str, i: usize) -> String {
    let mut t = format!("{tag}-{i}-");
    while t.len() < 200 {
        t.push_str("tenant");
    }
    t.truncate(200);
    t
}

type Server = h2::server::Connection<tokio::io::DuplexStream, Bytes>;

/// Awaits `f` while the server connection is polled (it must not end meanwhile).
async fn driving<F: std::future::Future>(server: &mut Server, f: F) -> F::Output {
    tokio::select! {
        r = f => r,
        _ = poll_fn(|cx| server.poll_closed(cx)) => panic!("server connection ended"),
    }
}

/// `n` requests in flight at once, each with a new tenant: the server holds every request (and
/// so every string decoded for them) until all have arrived, then answers them all. Returns the
/// allocations made meanwhile.
async fn burst(
    server: &mut Server,
    send: &h2::client::SendRequest<Bytes>,
    n: usize,
    tag: &str,
) -> usize {
    let start = ALLOCS.load(Ordering::Relaxed);
    let mut responses = Vec::new();
    for i in 0..n {
        let mut s = send.clone().ready().await.expect("ready");
        let (resp, _) = s
            .send_request(request(&tenant(tag, i)), true)
            .expect("send");
        responses.push(resp);
    }
    let mut held = Vec::new();
    for _ in 0..n {
        let (req, respond) = server.accept().await.expect("a stream").expect("ok");
        held.push((req, respond));
    }
    for (i, (req, respond)) in held.iter_mut().enumerate() {
        assert_eq!(req.headers()["x-tenant"], tenant(tag, i).as_str());
        respond
            .send_response(Response::new(()), true)
            .expect("respond");
    }
    drop(held);
    for resp in responses {
        let status = driving(server, resp).await.expect("response").status();
        assert_eq!(status, 200);
    }
    settle(server).await;
    ALLOCS.load(Ordering::Relaxed) - start
}

/// Lets the server take in whatever the client sent last (its WINDOW_UPDATE, acks).
async fn settle(server: &mut Server) {
    for _ in 0..10 {
        tokio::select! {
            biased;
            _ = poll_fn(|cx| server.poll_closed(cx)) => panic!("server connection ended"),
            _ = tokio::task::yield_now() => {}
        }
    }
}

#[test]
fn an_idle_h2_connection_gives_its_write_read_and_huffman_buffers_back() {
    const BURST: usize = 60;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let (server, client) = tokio::join!(
            h2::server::handshake(server_io),
            h2::client::handshake(client_io)
        );
        let mut server = server.expect("server handshake");
        let (send, client_conn) = client.expect("client handshake");
        tokio::spawn(async move {
            let _ = client_conn.await;
        });

        // The decoder takes a burst of new strings 4 KiB at a time; the second burst is the
        // measure, on a connection past its first use.
        burst(&mut server, &send, BURST, "a").await;
        let warm = burst(&mut server, &send, BURST, "w").await;
        assert!(!server.has_streams(), "every stream is over");

        let before = LIVE.load(Ordering::Relaxed);
        server.release_idle_buffers();
        let freed = before - LIVE.load(Ordering::Relaxed);
        eprintln!("released: {freed} bytes");
        // The buffers are 28 KiB; the slabs' room for 60 streams at once is about 60 KiB more
        // (88,544 bytes in all when measured; 28,752 with the slabs kept).
        assert!(
            freed >= 60 * 1024,
            "an idle connection gave back {freed} bytes; its write (16 KiB), read (8 KiB) and \
             Huffman (4 KiB) buffers and its stream slabs' room for {BURST} streams are more"
        );

        // The next request is served from the table's own copies: its `:authority` and the
        // last tenant of the burst are indexed fields now.
        let last = tenant("a", BURST - 1);
        let mut s = send.clone().ready().await.expect("ready");
        let (resp, _) = s.send_request(request(&last), true).expect("send");
        let (req, mut respond) = server.accept().await.expect("a stream").expect("ok");
        assert_eq!(req.uri().path(), "/cart");
        assert_eq!(
            req.uri().authority().map(|a| a.as_str()),
            Some("shop.example.com")
        );
        assert_eq!(req.headers()["x-tenant"], last.as_str());
        drop(req);
        respond
            .send_response(Response::new(()), true)
            .expect("respond");
        let status = driving(&mut server, resp).await.expect("response").status();
        assert_eq!(status, 200);
        settle(&mut server).await;

        // After the release the decoder takes its buffer again at 4 KiB, not a string at a
        // time: the same burst costs about the same allocations (the read and write buffers
        // are taken again once each, and the three stream slabs regrow, about 20 in all; a
        // buffer regrown a string at a time costs about 80 more).
        let again = burst(&mut server, &send, BURST, "b").await;
        eprintln!("allocations: {warm} before the release, {again} after");
        assert!(
            again <= warm + 40,
            "a burst allocated {again} times after the release against {warm} before"
        );
    });
}
