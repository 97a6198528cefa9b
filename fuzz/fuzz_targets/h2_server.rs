//! Fuzz target: arbitrary bytes, after the client preface, as what an HTTP/2 client sends to
//! ringlb's h2 server side (the vendored, patched h2 in `vendor/h2`, with the windows, send
//! buffer, stream and header-list limits `src/http2.rs` uses by default). The server must never
//! panic, and must finish once the client has sent everything, let it read, and closed (no wait
//! without end on a closed connection: the runtime's clock is paused, so a server that stalls is
//! reported at once, never a slow one). Like ringlb's connection task, the server polls h2 for
//! streams and, each time h2 has nothing more to do (its queued frames written) and no stream
//! is left, gives its idle buffers back (`release_idle_buffers`, ringlb's patch); so the
//! patched paths run: the HPACK table's own copies, requests built in place, stream ids in the
//! foldhash map, buffers freed and taken again by the next frame. Each request is answered
//! with a small response, which runs the encoder. Run with `cargo fuzz run h2_server`
//! (libFuzzer thread); `H2_SERVER_VERBOSE=1` prints the streams served and the buffer releases
//! an input reached.
#![no_main]

use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringlb::http2::{CONNECTION_WINDOW, SEND_BUFFER, STREAM_WINDOW};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams served per input: enough for the table and the slabs to be reused.
const MAX_STREAMS: usize = 64;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

fn verbose() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("H2_SERVER_VERBOSE").is_some())
}

fn respond(mut respond: h2::server::SendResponse<Bytes>) {
    let resp = http::Response::builder()
        .status(200)
        .header("x-request-id", "be875272-b6a3-fe06-0000-000000000002")
        .body(())
        .expect("response");
    if let Ok(mut body) = respond.send_response(resp, false) {
        let _ = body.send_data(Bytes::from_static(b"ok"), true);
    }
}

async fn serve(io: tokio::io::DuplexStream) {
    // ringlb's defaults: 128 streams, a header list of twice `max_header_bytes` (16 KiB).
    let defaults = ringlb::config::Limits::default();
    let header_list = u32::try_from(defaults.max_header_bytes * 2).unwrap_or(u32::MAX);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(ringlb::config::DEFAULT_H2_STREAMS)
        .max_header_list_size(header_list)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let Ok(mut conn) = handshake.await else {
        return;
    };
    let (mut served, mut releases) = (0usize, 0usize);
    std::future::poll_fn(|cx| loop {
        match conn.poll_accept(cx) {
            Poll::Ready(Some(Ok((req, send)))) => {
                // What ringlb reads of every request.
                let _ = (req.method(), req.uri().path(), req.uri().authority());
                let _ = req.headers().len();
                drop(req);
                respond(send);
                served += 1;
                if served == MAX_STREAMS {
                    return Poll::Ready(());
                }
            }
            Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
            Poll::Pending => {
                if !conn.has_streams() {
                    conn.release_idle_buffers();
                    releases += 1;
                }
                return Poll::Pending;
            }
        }
    })
    .await;
    if verbose() {
        eprintln!("h2_server: {served} stream(s) served, {releases} buffer release(s)");
    }
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(256 * 1024);
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let mut input = PREFACE.to_vec();
            input.extend_from_slice(data);
            let send = async move {
                let _ = to_server.write_all(&input).await;
                // Let the server take every frame and stream while the connection is open (at
                // the end of the stream h2 reports the close, not the streams still queued).
                for _ in 0..16 {
                    tokio::task::yield_now().await;
                }
                let _ = to_server.shutdown().await;
                // Keep the write half until the server is done: dropping it is not a close.
                std::future::pending::<()>().await;
            };
            // Whatever the server writes is read and dropped, so it never waits on a full pipe.
            let drain = async move {
                let mut sink = vec![0u8; 16 * 1024];
                while matches!(from_server.read(&mut sink).await, Ok(n) if n > 0) {}
                std::future::pending::<()>().await;
            };
            // The clock is paused: it moves to this deadline only when nothing else can run.
            let done = tokio::time::timeout(Duration::from_secs(60), async {
                tokio::select! {
                    biased;
                    _ = serve(server) => {}
                    _ = send => {}
                    _ = drain => {}
                }
            })
            .await;
            assert!(
                done.is_ok(),
                "the server did not finish after the client closed"
            );
        })
    });
});
