//! Fuzz target: arbitrary bytes, after the client preface, as what an HTTP/2 client sends to
//! ringlb's h2 server side (the vendored, patched h2 in `vendor/h2`, built with the settings
//! `src/http2.rs` uses). The server must never panic, and must finish once the client has sent
//! everything, let it read, and closed (no wait without end on a closed connection). Between streams it gives
//! its idle buffers back (`release_idle_buffers`, ringlb's patch), as ringlb's connection task
//! does, so the patched paths run: the HPACK table's own copies, requests built in place,
//! stream ids in the foldhash map, buffers freed and taken again. Each accepted request is
//! answered with a small response, which runs the encoder. Run with `cargo fuzz run h2_server`
//! (libFuzzer thread).
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams served per input: enough for the table and the slabs to be reused.
const MAX_STREAMS: usize = 64;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

/// Streams served, for a run on one input with `H2_SERVER_VERBOSE=1` (checks that a seed
/// reaches the request path).
fn verbose() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("H2_SERVER_VERBOSE").is_some())
}

async fn serve(io: tokio::io::DuplexStream) {
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(128)
        .max_header_list_size(32 * 1024)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(2 << 20)
        .max_send_buffer_size(64 * 1024)
        .handshake::<_, Bytes>(io);
    let Ok(mut conn) = handshake.await else {
        return;
    };
    let mut served = 0;
    while let Some(next) = conn.accept().await {
        let Ok((req, mut respond)) = next else {
            break;
        };
        // What ringlb reads of every request.
        let _ = (
            req.method(),
            req.uri().path(),
            req.uri().authority(),
            req.headers().len(),
        );
        let resp = http::Response::builder()
            .status(200)
            .header("x-request-id", "be875272-b6a3-fe06-0000-000000000002")
            .body(())
            .expect("response");
        if let Ok(mut body) = respond.send_response(resp, false) {
            let _ = body.send_data(Bytes::from_static(b"ok"), true);
        }
        drop(req);
        if !conn.has_streams() {
            conn.release_idle_buffers();
        }
        served += 1;
        if served == MAX_STREAMS {
            break;
        }
    }
    if verbose() {
        eprintln!("h2_server: {served} stream(s) served");
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
            let done = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::select! {
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
