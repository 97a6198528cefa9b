//! HTTP/2 to targets when things go wrong or go slowly, told as a user meets it: a target that
//! stays silent on a new connection or on one already in use, an upload slower than
//! `response_timeout`, clients that do not read their downloads while others share the upstream
//! connection, targets that answer before the request body is all in (full duplex, or at once
//! and then RST_STREAM(NO_ERROR)), clients that cancel, a bidirectional exchange whose client goes
//! quiet, streams the target refuses (REFUSED_STREAM), and `expect: 100-continue`.
//!
//! The targets are in-process `h2` servers: [`Target`] below, and `H2Origin` of grpc.rs; the
//! clients are the `h2` crate and the raw HTTP/1.1 client of support.rs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use http::Request;

use crate::grpc::{exchange, group, grpc_frame, grpc_request, h2c, listener, rt, H2Origin, HEAD};
use crate::support::*;

/// What [`Target`] does to some of its connections.
#[derive(Clone, Copy, Default)]
struct Quirks {
    /// The first connection is accepted and then left silent (no SETTINGS, ever).
    silent_first: bool,
    /// The first stream of the first connection is refused with RST_STREAM(REFUSED_STREAM).
    refuse_first: bool,
}

/// An in-process HTTP/2 target (SETTINGS_MAX_CONCURRENT_STREAMS = 100) answering by path:
/// - `/big/N`: N bytes;
/// - `/ticks/N`: `tick` N times, one every 100 ms, without reading the request body;
/// - `/early`: 1 MiB at once, then drops the request body unread, which ends the stream with
///   RST_STREAM(NO_ERROR) (RFC 9113 §8.1: "the server MAY send a complete response before the
///   client sends an entire request");
/// - `/headfirst`: the response head, then reads the whole body, then `got N`;
/// - `/freeze`: stops driving its connection (the socket stays open and goes silent);
/// - anything else: reads the body, then answers `got N`.
struct Target {
    addr: SocketAddr,
    /// Connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Streams received (refused ones included).
    streams: Arc<AtomicUsize>,
}

impl Target {
    fn start(quirks: Quirks) -> Target {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let t = Target {
            addr: l.local_addr().expect("addr"),
            accepts: Arc::default(),
            streams: Arc::default(),
        };
        let (accepts, streams) = (t.accepts.clone(), t.streams.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                let mut silent = Vec::new();
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    let first = accepts.fetch_add(1, Ordering::SeqCst) == 0;
                    if first && quirks.silent_first {
                        silent.push(sock);
                        continue;
                    }
                    let refuse = first && quirks.refuse_first;
                    tokio::spawn(serve(sock, streams.clone(), refuse));
                }
            });
        });
        t
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

/// One connection of [`Target`]; `refuse`: its first stream is refused.
async fn serve(sock: tokio::net::TcpStream, streams: Arc<AtomicUsize>, mut refuse: bool) {
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(100)
        .handshake::<_, Bytes>(sock)
        .await
    else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        streams.fetch_add(1, Ordering::SeqCst);
        if std::mem::take(&mut refuse) {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        if req.uri().path() == "/freeze" {
            // Nothing polls the connection from here: no frames are read or written.
            let _frozen = conn;
            std::future::pending::<()>().await;
            return;
        }
        tokio::spawn(answer(req, respond));
    }
}

async fn answer(
    req: http::Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path();
    let head = http::Response::builder().body(()).expect("response");
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().expect("/big/N");
        let mut send = respond.send_response(head, false)?;
        send.send_data(Bytes::from(vec![b'x'; n]), true)?;
        // Holding the stream until it ends keeps the queued data going out.
        let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
        return Ok(());
    }
    if let Some(n) = path.strip_prefix("/ticks/") {
        let n: usize = n.parse().expect("/ticks/N");
        let mut send = respond.send_response(head, false)?;
        for _ in 0..n {
            tokio::time::sleep(Duration::from_millis(100)).await;
            send.send_data(Bytes::from_static(b"tick"), false)?;
        }
        send.send_data(Bytes::new(), true)?;
        return Ok(());
    }
    if path == "/early" {
        let mut send = respond.send_response(head, false)?;
        send.send_data(Bytes::from(vec![b'e'; 1 << 20]), true)?;
        return Ok(());
    }
    if path == "/headfirst" {
        let mut send = respond.send_response(head, false)?;
        let n = read_all(&mut body).await?.len();
        send.send_data(Bytes::from(format!("got {n}")), true)?;
        return Ok(());
    }
    let n = read_all(&mut body).await?.len();
    let mut send = respond.send_response(head, false)?;
    send.send_data(Bytes::from(format!("got {n}")), true)?;
    Ok(())
}

/// A whole body, its window given back as it comes.
async fn read_all(body: &mut RecvStream) -> Result<Vec<u8>, h2::Error> {
    match read_body(body).await {
        (data, None) => Ok(data),
        (_, Some(e)) => Err(e),
    }
}

/// A body as far as it came, and the error that cut it short (None: it ended as it should).
async fn read_body(body: &mut RecvStream) -> (Vec<u8>, Option<h2::Error>) {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(e) => return (data, Some(e)),
        }
    }
    (data, body.trailers().await.err())
}

/// A listener with h2c forwarding to an `http2` group of `target`; `group_extra` ends the group.
fn config(target: SocketAddr, listener_extra: &str, group_extra: &str) -> String {
    format!(
        "{HEAD}{}{}",
        listener("web", "http", "h2", listener_extra),
        group("h2", "http2", &[target], group_extra)
    )
}

fn uri(p: &Proxy, path: &str) -> String {
    format!("http://h2.example:{}{path}", p.addr.port())
}

/// Waits in the runtime (the connections' tasks go on meanwhile) until `cond` holds; panics
/// naming `what` after `within`. Returns how long it took.
async fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// A GET through `p` on a new connection: HTTP/2 (the `h2` crate) or HTTP/1.1.
fn get_over(p: &Proxy, http2: bool, path: &str) -> u16 {
    if !http2 {
        return get(p.addr, path).status;
    }
    rt().block_on(async {
        let send = h2c(p.addr).await;
        let req = Request::builder()
            .uri(uri(p, path))
            .body(())
            .expect("request");
        exchange(&send, req, None).await.map_or(0, |r| r.status)
    })
}

#[test]
fn a_target_silent_on_a_new_connection_times_out_and_later_requests_connect_again() {
    let target = Target::start(Quirks {
        silent_first: true,
        ..Quirks::default()
    });
    let p = Proxy::start(&config(
        target.addr,
        "",
        "connect_timeout = \"300ms\"\nretries = 0",
    ));

    // The first connection never gets the target's SETTINGS: the connect times out.
    let started = Instant::now();
    assert_eq!(get(p.addr, "/a").status, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "the connect gave up after {took:?}"
    );

    // The failed attempt does not hold the pool: the next requests open a connection that works.
    for i in 0..3 {
        let started = Instant::now();
        let status = get(p.addr, "/b").status;
        assert_eq!(status, 200, "request {i} after the timed-out connect");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "request {i} answered after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        target.accepts(),
        2,
        "the silent connection, then one that served every later request"
    );
}

#[test]
fn response_timeout_counts_from_the_end_of_a_slow_upload() {
    let target = Target::start(Quirks::default());
    let p = Proxy::start(&config(target.addr, "", "response_timeout = \"500ms\""));
    let (status, body, took) = rt().block_on(async {
        let send = h2c(p.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::builder()
            .method("POST")
            .uri(uri(&p, "/upload"))
            .body(())
            .expect("request");
        let started = Instant::now();
        let (resp, mut up) = send.send_request(req, false).expect("send");
        // 15 KB over 1.5 s: three times the response timeout, every byte of it on time.
        // (A stream reset by ringlb ends the upload early; the response says why.)
        for _ in 0..15 {
            if up.send_data(Bytes::from(vec![1u8; 1000]), false).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = up.send_data(Bytes::new(), true);
        let (parts, mut body) = resp.await.expect("response").into_parts();
        let body = read_all(&mut body).await.expect("body");
        (parts.status.as_u16(), body, started.elapsed())
    });
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "got 15000"),
        "answered after {took:?}"
    );
}

#[test]
fn clients_that_do_not_read_do_not_stall_others_on_the_same_upstream_connection() {
    let target = Target::start(Quirks::default());
    let p = Proxy::start(&config(target.addr, "", ""));
    rt().block_on(async {
        // Client A asks for 8 downloads of 2 MiB and never reads them.
        let a = h2c(p.addr).await;
        let mut unread = Vec::new();
        for i in 0..8 {
            let mut send = a.clone().ready().await.expect("ready");
            let req = Request::builder()
                .uri(uri(&p, &format!("/big/{}?a={i}", 2 << 20)))
                .body(())
                .expect("request");
            let (resp, _) = send.send_request(req, true).expect("send");
            unread.push(resp);
        }
        until(Duration::from_secs(2), "client A's 8 streams", || {
            target.streams() == 8
        })
        .await;
        // Let the target's data fill every window it may.
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Client B, on a connection of its own, downloads 100 KB: its stream shares the upstream
        // connection with A's, and the bytes A leaves unread do not hold B's back.
        let b = h2c(p.addr).await;
        let req = Request::builder()
            .uri(uri(&p, "/big/100000"))
            .body(())
            .expect("request");
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), exchange(&b, req, None))
            .await
            .unwrap_or_else(|_| panic!("client B stalled behind client A's unread downloads"))
            .expect("client B's stream");
        assert_eq!((r.status, r.body.len()), (200, 100_000));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            target.accepts(),
            1,
            "A and B shared one upstream connection"
        );
        drop(unread);
    });
}

#[test]
fn an_http1_upload_reaches_a_target_that_answers_its_head_before_reading_the_body() {
    let target = Target::start(Quirks::default());
    let p = Proxy::start(&config(target.addr, "", "response_timeout = \"1s\""));
    let mut c = Client::connect(p.addr);
    c.send(b"POST /headfirst HTTP/1.1\r\nHost: test\r\nContent-Length: 20000\r\n\r\n");
    c.send(&[b'a'; 10_000]);
    // The target's head is out by now; the rest of the body still has to reach it.
    std::thread::sleep(Duration::from_millis(300));
    c.send(&[b'a'; 10_000]);
    let r = c.read_response(false).expect("a whole response");
    assert_eq!((r.status, r.text().as_str()), (200, "got 20000"));
}

#[test]
fn a_whole_early_response_ended_with_rst_stream_no_error_reaches_the_client_whole() {
    let target = Target::start(Quirks::default());
    let p = Proxy::start(&config(target.addr, "", ""));
    let (status, got, err) = rt().block_on(async {
        let send = h2c(p.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::builder()
            .method("POST")
            .uri(uri(&p, "/early"))
            .body(())
            .expect("request");
        let (resp, mut up) = send.send_request(req, false).expect("send");
        up.send_data(Bytes::from(vec![1u8; 100]), false)
            .expect("upload");
        let (parts, mut body) = resp.await.expect("response").into_parts();
        // The client reads slowly and goes on uploading: by now the target has sent its whole
        // response and reset the stream (NO_ERROR: "stop sending, the answer is complete").
        let first = body.data().await.expect("data").expect("first chunk");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = up.send_data(Bytes::from(vec![1u8; 100]), false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = body.flow_control().release_capacity(first.len());
        let (rest, err) = read_body(&mut body).await;
        (
            parts.status.as_u16(),
            first.len() + rest.len(),
            err.map(|e| e.to_string()),
        )
    });
    assert_eq!(status, 200);
    assert_eq!((got, err), (1 << 20, None), "the whole 1 MiB, then its end");
}

#[test]
fn a_client_that_cancels_its_stream_resets_the_targets_stream_promptly() {
    let origin = H2Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener("web", "http", "g", ""),
        group("g", "grpc", &[origin.addr], "")
    ));
    rt().block_on(async {
        let send = h2c(p.addr).await;
        let mut send = send.ready().await.expect("ready");
        // test.Slow/Sleep holds its answer 3 s unless its stream is reset.
        let req = grpc_request(&format!("x:{}", p.addr.port()), "/test.Slow/Sleep", &[]);
        let (resp, mut up) = send.send_request(req, false).expect("send");
        up.send_data(Bytes::from(grpc_frame(b"hi")), true)
            .expect("message");
        until(Duration::from_secs(2), "the call at the target", || {
            origin.seen().len() == 1
        })
        .await;

        up.send_reset(h2::Reason::CANCEL);
        drop(resp);
        let took = until(Duration::from_secs(2), "the target's stream reset", || {
            origin.resets.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(
            took < Duration::from_millis(500),
            "the target saw the reset after {took:?}"
        );
    });
}

#[test]
fn after_a_response_timeout_on_a_silent_connection_requests_go_over_a_new_one() {
    let target = Target::start(Quirks::default());
    let p = Proxy::start(&config(target.addr, "", "response_timeout = \"300ms\""));
    assert_eq!(get(p.addr, "/ok").status, 200);

    // The upstream connection goes silent under an HTTP/1.1 client's request.
    assert_eq!(get(p.addr, "/freeze").status, 504);
    for i in 0..3 {
        assert_eq!(get(p.addr, "/ok").status, 200, "HTTP/1.1 request {i}");
    }
    assert_eq!(get_over(&p, true, "/ok"), 200, "an HTTP/2 request");
    assert_eq!(
        target.accepts(),
        2,
        "new streams left the silent connection"
    );

    // The same under an HTTP/2 client's request.
    assert_eq!(get_over(&p, true, "/freeze"), 504);
    assert_eq!(get_over(&p, true, "/ok"), 200, "an HTTP/2 request");
    assert_eq!(get(p.addr, "/ok").status, 200, "an HTTP/1.1 request");
    assert_eq!(
        target.accepts(),
        3,
        "new streams left the second silent connection"
    );
}

#[test]
fn a_client_quiet_mid_upload_still_gets_the_whole_streamed_response() {
    let target = Target::start(Quirks::default());
    let p = Proxy::start(&config(
        target.addr,
        "  [listener.limits]\n  idle_timeout = \"500ms\"\n",
        "",
    ));
    let (status, body, err) = rt().block_on(async {
        let send = h2c(p.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::builder()
            .method("POST")
            .uri(uri(&p, "/ticks/12"))
            .body(())
            .expect("request");
        // A bidirectional exchange: part of the request body, then nothing for longer than
        // idle_timeout, while the target streams its answer (1.2 s of ticks).
        let (resp, mut up) = send.send_request(req, false).expect("send");
        up.send_data(Bytes::from_static(b"hello"), false)
            .expect("upload");
        let (parts, mut body) = resp.await.expect("response").into_parts();
        let (data, err) = read_body(&mut body).await;
        drop(up);
        (parts.status.as_u16(), data, err.map(|e| e.to_string()))
    });
    assert_eq!(status, 200);
    assert_eq!(
        (String::from_utf8_lossy(&body).as_ref(), err),
        ("tick".repeat(12).as_str(), None),
        "every tick, then the end of the response"
    );
}

#[test]
fn a_stream_the_target_refuses_is_sent_again_and_the_target_stays_healthy() {
    for http2 in [true, false] {
        let client = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        let target = Target::start(Quirks {
            refuse_first: true,
            ..Quirks::default()
        });
        // One failure counted would make the target unhealthy.
        let p = Proxy::start(&config(target.addr, "", "passive_failures = 1"));

        // The target refuses the first stream unprocessed (as one at its limit, or restarting,
        // may): the GET goes once more and is answered.
        assert_eq!(get_over(&p, http2, "/a"), 200, "{client} client");
        assert_eq!(
            target.streams(),
            2,
            "{client} client: the refused stream, then the one sent again"
        );
        let (state, reason) = target_state(p.admin(), target.addr);
        assert_eq!(
            state, "healthy",
            "{client} client: a refused stream is no failure of the target ({reason})"
        );
        assert_eq!(get_over(&p, http2, "/b"), 200, "{client} client");
        assert_eq!(target.streams(), 3, "{client} client");
    }
}

#[test]
fn an_http2_client_expecting_100_continue_gets_it_then_the_response() {
    let origin = H2Origin::start();
    let p = Proxy::start(&config(origin.addr, "", ""));
    rt().block_on(async {
        let send = h2c(p.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::builder()
            .method("POST")
            .uri(uri(&p, "/upload"))
            .header("expect", "100-continue")
            .body(())
            .expect("request");
        let started = Instant::now();
        let (mut resp, mut up) = send.send_request(req, false).expect("send");

        // The client waits for the 100 before sending its body.
        let interim = tokio::time::timeout(
            Duration::from_millis(500),
            std::future::poll_fn(|cx| resp.poll_informational(cx)),
        )
        .await
        .expect("a 100 (Continue) within 500 ms")
        .expect("an informational response")
        .expect("a valid informational response");
        assert_eq!(interim.status(), 100);

        up.send_data(Bytes::from_static(b"hello"), true)
            .expect("body");
        let (parts, mut body) = tokio::time::timeout(Duration::from_millis(500), resp)
            .await
            .expect("the response within 500 ms")
            .expect("response")
            .into_parts();
        let body = read_all(&mut body).await.expect("body");
        assert_eq!(
            (
                parts.status.as_u16(),
                String::from_utf8_lossy(&body).as_ref()
            ),
            (200, "h2 origin POST /upload 5")
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    });
    assert_eq!(origin.seen()[0].body, b"hello");
}

#[test]
fn a_closing_clients_response_from_an_http2_target_ends_in_one_segment_with_the_fin() {
    use std::io::{Read, Write};
    let t = Target::start(Quirks::default());
    let p = Proxy::start(&config(t.addr, "", ""));
    // No length from the target: the HTTP/1.1 client gets chunks. The last DATA carries
    // END_STREAM, so its chunk, the end of the body and the FIN go in one segment: the client
    // sees the SYN-ACK, the ACK of its request, the head, then that one (a separate end of the
    // body or a separate FIN would make 5 or 6).
    let mut s = std::net::TcpStream::connect(p.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /big/1000 HTTP/1.1\r\nHost: h2.example\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the response, then the end of the stream");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("end of head") + 4..];
    assert_eq!(body, format!("3e8\r\n{}\r\n0\r\n\r\n", "x".repeat(1000)));
    let segments = segments_in(&s);
    assert!(
        segments <= 4,
        "{segments} segments: the body's end or the FIN went apart"
    );
    // A kept connection gets the same body and stays open for the next request.
    let mut c = Client::connect(p.addr);
    for _ in 0..2 {
        assert_eq!(c.get("/big/1000").body, vec![b'x'; 1000]);
    }
}

#[test]
fn an_http1_upload_to_an_http2_target_that_stalls_gets_408() {
    let t = Target::start(Quirks::default());
    let p = Proxy::start(&config(
        t.addr,
        "  [listener.limits]\n  idle_timeout = \"1s\"\n",
        "",
    ));
    // The target reads the whole body before it answers; the client sends 10 of 100 bytes.
    let (text, took) = stalled_upload(p.addr, "h2.example");
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "a stalled upload is answered 408, got {text:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
}
