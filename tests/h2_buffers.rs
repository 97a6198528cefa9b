//! The vendored h2's idle connection gives its buffers back (vendor/h2/PATCHES.md), counted
//! exactly: an in-process h2 client and server over an in-memory pipe, and a global allocator
//! that keeps the bytes live in this test binary. After one request whose fields went into the
//! HPACK table, `release_idle_buffers` must free the write buffer (16 KiB), the read buffer
//! (8 KiB) and the decoder's Huffman buffer (4 KiB), which a table entry sharing that buffer
//! would keep alive; and the connection must serve its next request.
//!
//! Runs on the test's thread (a current-thread runtime); the counter is this binary's only
//! global state, and this file holds one test so that nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::poll_fn;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A request whose `:authority` and custom field are literals h2's client codes with Huffman and
/// the server's decoder inserts into its table.
fn request() -> Request<()> {
    Request::builder()
        .uri("https://shop.example.com/cart")
        .header("x-tenant", "a-tenant-name-long-enough-to-be-worth-coding")
        .body(())
        .expect("request")
}

/// Awaits `f` while the server connection is polled (it must not end meanwhile).
async fn driving<F: std::future::Future>(
    server: &mut h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    f: F,
) -> F::Output {
    tokio::select! {
        r = f => r,
        _ = poll_fn(|cx| server.poll_closed(cx)) => panic!("server connection ended"),
    }
}

#[test]
fn an_idle_h2_connection_gives_its_write_read_and_huffman_buffers_back() {
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

        // One exchange: the server answers and drops the request, then keeps being polled
        // until the client has the whole response.
        let exchange = |send: h2::client::SendRequest<Bytes>| async move {
            let mut send = send.ready().await.expect("ready");
            let (resp, _) = send.send_request(request(), true).expect("send");
            (send, resp)
        };
        let (send, resp) = exchange(send).await;
        let (req, mut respond) = server.accept().await.expect("a stream").expect("ok");
        assert_eq!(
            req.headers()["x-tenant"],
            "a-tenant-name-long-enough-to-be-worth-coding"
        );
        drop(req);
        respond
            .send_response(Response::new(()), true)
            .expect("respond");
        drop(respond);
        let status = driving(&mut server, resp).await.expect("response").status();
        assert_eq!(status, 200);
        // Let the server take in whatever the client sent last (its WINDOW_UPDATE, acks).
        for _ in 0..10 {
            tokio::select! {
                biased;
                _ = poll_fn(|cx| server.poll_closed(cx)) => panic!("server connection ended"),
                _ = tokio::task::yield_now() => {}
            }
        }
        assert!(!server.has_streams(), "the stream is over");

        let before = LIVE.load(Ordering::Relaxed);
        server.release_idle_buffers();
        let freed = before - LIVE.load(Ordering::Relaxed);
        eprintln!("released: {freed} bytes");
        assert!(
            freed >= 16 * 1024 + 8 * 1024 + 4 * 1024,
            "an idle connection gave back {freed} bytes; its write (16 KiB), read (8 KiB) and \
             Huffman (4 KiB) buffers are 28 KiB"
        );

        // The next request is served as before: the buffers are taken again.
        let (_send, resp) = exchange(send).await;
        let (req, mut respond) = server.accept().await.expect("a stream").expect("ok");
        assert_eq!(req.uri().path(), "/cart");
        respond
            .send_response(Response::new(()), true)
            .expect("respond");
        let status = driving(&mut server, resp).await.expect("response").status();
        assert_eq!(status, 200);
    });
}
