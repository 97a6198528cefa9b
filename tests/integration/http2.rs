//! HTTP/2 to clients, told as a user meets it: h2c by prior knowledge and h2 by ALPN on the same
//! listeners as HTTP/1.1, many streams on one connection reaching HTTP/1.1 targets, bodies of
//! megabytes both ways under flow control, trailers, limits and rules answered as HTTP/2, the
//! access log and metrics, and GOAWAY on drain and when idle. The client is the `h2` crate over
//! tokio (TLS by tokio-rustls); targets are the in-process HTTP/1.1 backends of `support.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use crate::tls::{cert_list, Pki};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn temp_dir(test: &str) -> PathBuf {
    let d = crate::testdir::test_path(&format!("h2-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// An http listener with h2c on, forwarding to `target`; `listener_extra` goes in [[listener]].
fn h2c_config(target: SocketAddr, listener_extra: &str, tail: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\n\
         bind = \"127.0.0.1:0\"\nprotocol = \"http\"\ntarget_group = \"app\"\nhttp2 = true\n\
         {listener_extra}\n\n[[target_group]]\nname = \"app\"\ntargets = [\"{target}\"]\n{tail}\n"
    )
}

/// What a stream brought back.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// Opens an h2c connection (prior knowledge); the connection runs as a task.
async fn h2c(addr: SocketAddr) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

/// Sends one request with `body` (streamed in 64 KiB pieces, no content-length) and reads the
/// whole reply.
async fn exchange(
    send: &mut SendRequest<Bytes>,
    req: Request<()>,
    body: Option<&[u8]>,
) -> Result<Reply, h2::Error> {
    let mut send = send.clone().ready().await?;
    let (resp, mut stream) = send.send_request(req, body.is_none())?;
    if let Some(body) = body {
        for piece in body.chunks(64 * 1024) {
            stream.reserve_capacity(piece.len());
            stream.send_data(Bytes::copy_from_slice(piece), false)?;
        }
        stream.send_data(Bytes::new(), true)?;
    }
    let resp = resp.await?;
    let (parts, mut recv) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: data,
        trailers,
    })
}

fn get(authority: &str, path: &str) -> Request<()> {
    Request::builder()
        .uri(format!("http://{authority}{path}"))
        .body(())
        .expect("request")
}

#[test]
fn h2c_and_http11_share_a_listener_and_streams_reach_targets_as_http11() {
    let backend = Backend::start("app");
    let dir = temp_dir("story");
    let log = dir.join("web.log");
    let p = Proxy::start(&h2c_config(
        backend.addr,
        &format!("access_log = \"{}\"", log.display()),
        "",
    ));
    let addr = p.addr;
    rt().block_on(async {
        let (mut send, _conn) = h2c(addr).await;
        let req = Request::builder()
            .uri(format!("http://shop.example:{}/cart?id=7", addr.port()))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-trace", "t1")
            .body(())
            .expect("request");
        let r = exchange(&mut send, req, None).await.expect("h2c GET");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b"app");
        // No connection-specific field reaches an HTTP/2 client.
        assert!(r.headers.get("connection").is_none());
    });
    let seen = backend.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/cart?id=7")
    );
    let authority = format!("shop.example:{}", addr.port());
    assert_eq!(
        seen.header("host"),
        Some(authority.as_str()),
        ":authority becomes Host"
    );
    assert_eq!(
        seen.header("cookie"),
        Some("a=1; b=2"),
        "split cookies are joined"
    );
    assert_eq!(seen.header("x-trace"), Some("t1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    // An HTTP/1.1 client on the same listener is served as before.
    let r = get_http11(addr, "/");
    assert_eq!((r.status, r.text().as_str()), (200, "app"));

    wait_for(Duration::from_secs(3), "two access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    });
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines[0]["protocol"], "HTTP/2");
    assert_eq!(lines[0]["path"], "/cart?id=7");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[1]["protocol"], "HTTP/1.1");

    let metrics = admin_request(p.admin(), "GET", "/metrics", None, None).text();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{listener=\"web\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(value("ringlb_http2_streams_total"), Some(1.0));
    assert_eq!(value("ringlb_http2_connections_total"), Some(1.0));
}

fn get_http11(addr: SocketAddr, path: &str) -> Response {
    crate::support::get(addr, path)
}

#[test]
fn h2_by_alpn_multiplexes_streams_and_moves_megabytes_both_ways() {
    let pki = Pki::new("h2-alpn");
    let leaf = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let toml = format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"https\"\ntarget_group = \"app\"\n  [listener.tls]\n  certificates = [{}]\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
        cert_list(&[&leaf]),
        backend.addr
    );
    let p = Proxy::start(&toml);
    let addr = p.addr;
    let cfg = Arc::new(pki.client(&["h2", "http/1.1"]));
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 is offered first"
        );
        let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });

        // 40 streams at once on one connection.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let mut s = send.clone();
            tasks.push(tokio::spawn(async move {
                exchange(&mut s, get("a.test", &format!("/big/{}", 1000 + i)), None).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.expect("task").expect("stream");
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body, pattern(1000 + i));
        }

        let mut s = send.clone();
        // 5 MB down (content-length), chunked and close-delimited bodies become DATA frames.
        let r = exchange(&mut s, get("a.test", "/big/5000000"), None)
            .await
            .expect("big");
        assert_eq!(r.body.len(), 5_000_000);
        assert!(r.body == pattern(5_000_000));
        let r = exchange(&mut s, get("a.test", "/chunked/300000"), None)
            .await
            .expect("chunked");
        assert!(r.body == pattern(300_000));
        assert!(r.headers.get("transfer-encoding").is_none());
        let r = exchange(&mut s, get("a.test", "/close/200000"), None)
            .await
            .expect("close");
        assert!(r.body == pattern(200_000));

        // 5 MB up without a length: the target gets it chunked, and hashes it.
        let up = pattern(5_000_000);
        let req = Request::builder()
            .method("POST")
            .uri("https://a.test/sha")
            .body(())
            .expect("request");
        let r = exchange(&mut s, req, Some(&up)).await.expect("upload");
        assert_eq!(String::from_utf8_lossy(&r.body), sha256_hex(&up));
    });
    // Every stream went to the target as HTTP/1.1, over a few pooled connections.
    assert_eq!(backend.requests(), 44);
    assert!(backend.accepts.load(std::sync::atomic::Ordering::SeqCst) <= 41);
}

/// A target answering every request with a chunked body and trailers.
fn trailer_backend() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        rt().block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut tmp = [0u8; 4096];
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                                Trailer: grpc-status\r\n\r\n5\r\nhello\r\n0\r\n\
                                grpc-status: 0\r\ngrpc-message: fine\r\n\r\n";
                            if s.write_all(resp).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

#[test]
fn trailers_reach_clients_that_ask_for_them() {
    let target = trailer_backend();
    let p = Proxy::start(&h2c_config(target, "", ""));
    let addr = p.addr;
    rt().block_on(async {
        let (mut send, _conn) = h2c(addr).await;
        let req = Request::builder()
            .uri(format!("http://{addr}/rpc"))
            .header("te", "trailers")
            .body(())
            .expect("request");
        let r = exchange(&mut send, req, None).await.expect("with te");
        assert_eq!(r.body, b"hello");
        let t = r
            .trailers
            .expect("trailers for a client that sent te: trailers");
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(
            t.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"fine"[..])
        );

        let r = exchange(&mut send, get(&addr.to_string(), "/rpc"), None)
            .await
            .expect("without te");
        assert_eq!(r.body, b"hello");
        assert!(r.trailers.is_none(), "no trailers unless asked for");
    });
}

#[test]
fn limits_rules_and_failures_are_answered_as_http2() {
    let backend = Backend::start("app");
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/teapot\"]\n\
                 fixed_response = { status = 418, body = \"short and stout\" }\n\
                 [[listener.rule]]\npriority = 2\npath = [\"/old\"]\n\
                 redirect = { path = \"/new\", status = 301 }\n\
                 [[listener.rule]]\npriority = 3\npath = [\"/down\"]\nforward = \"down\"\n";
    // A closed port: connecting to it fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let toml = h2c_config(
        backend.addr,
        &format!(
            "  [listener.limits]\n  max_header_bytes = \"4KiB\"\n  max_body_bytes = \"1KiB\"\n{rules}"
        ),
        &format!("[[target_group]]\nname = \"down\"\ntargets = [\"{closed}\"]\n"),
    );
    let p = Proxy::start(&toml);
    let addr = p.addr;
    let a = addr.to_string();
    rt().block_on(async {
        let (mut send, _conn) = h2c(addr).await;
        let r = exchange(&mut send, get(&a, "/teapot"), None)
            .await
            .expect("fixed");
        assert_eq!(
            (r.status.as_u16(), r.body.as_slice()),
            (418, &b"short and stout"[..])
        );
        let r = exchange(&mut send, get(&a, "/old"), None)
            .await
            .expect("redirect");
        assert_eq!(r.status.as_u16(), 301);
        let location = r.headers.get("location").and_then(|v| v.to_str().ok());
        assert!(
            location.is_some_and(|l| l.ends_with("/new")),
            "{location:?}"
        );
        let r = exchange(&mut send, get(&a, "/down"), None)
            .await
            .expect("down");
        assert_eq!(r.status.as_u16(), 502);
        // ringlb's own answer to a HEAD carries no body (h2 clients refuse DATA on HEAD).
        let head = Request::builder()
            .method("HEAD")
            .uri(format!("http://{a}/down"))
            .body(())
            .expect("request");
        let r = exchange(&mut send, head, None)
            .await
            .expect("HEAD answered cleanly");
        assert_eq!((r.status.as_u16(), r.body.len()), (502, 0));

        // A head over max_header_bytes: 431 (h2's own answer for a header list over the limit).
        let big = Request::builder()
            .uri(format!("http://{a}/"))
            .header("x-big", "v".repeat(6000))
            .body(())
            .expect("request");
        match exchange(&mut send, big, None).await {
            Ok(r) => assert_eq!(r.status.as_u16(), 431),
            Err(e) => assert!(e.is_reset(), "{e}"),
        }
        // A declared body over max_body_bytes: 413 before anything is forwarded.
        let mut s = send.clone().ready().await.expect("ready");
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{a}/echo"))
            .header("content-length", "5000")
            .body(())
            .expect("request");
        let (resp, _body) = s.send_request(req, false).expect("send");
        assert_eq!(resp.await.expect("413").status().as_u16(), 413);
        // A streamed body that grows over the limit: 413 (or a reset), never forwarded whole.
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{a}/echo"))
            .body(())
            .expect("request");
        match exchange(&mut send, req, Some(&[7u8; 5000])).await {
            Ok(r) => assert_eq!(r.status.as_u16(), 413),
            Err(e) => assert!(e.is_reset() || e.is_go_away() || e.is_io(), "{e}"),
        }
        // The connection still serves requests.
        let (mut send, _conn) = h2c(addr).await;
        let r = exchange(&mut send, get(&a, "/"), None)
            .await
            .expect("after");
        assert_eq!(r.body, b"app");
    });
    assert!(
        backend
            .seen
            .lock()
            .expect("seen")
            .iter()
            .all(|s| s.body_len <= 1024),
        "no body over the limit reached the target"
    );
}

#[test]
fn drain_sends_goaway_and_lets_streams_in_flight_finish() {
    let backend = Backend::start("app");
    let mut p = Proxy::start(&h2c_config(backend.addr, "", ""));
    let addr = p.addr;
    let server = p.server.take().expect("server");
    rt().block_on(async {
        let (mut send, conn) = h2c(addr).await;
        let slow = tokio::spawn({
            let mut s = send.clone();
            async move { exchange(&mut s, get(&addr.to_string(), "/slow/700"), None).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let drained = std::thread::spawn(move || server.drain(Duration::from_secs(5)));
        let r = slow
            .await
            .expect("task")
            .expect("the stream in flight finishes");
        assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, &b"app"[..]));
        // GOAWAY: the connection ends, and no new stream is taken on it.
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection ends after GOAWAY")
            .expect("task");
        assert!(exchange(&mut send, get(&addr.to_string(), "/"), None)
            .await
            .is_err());
        assert!(drained.join().expect("drain thread"), "drained in time");
    });
}

#[test]
fn idle_http2_connections_close_after_idle_timeout() {
    let backend = Backend::start("app");
    let p = Proxy::start(&h2c_config(
        backend.addr,
        "  [listener.limits]\n  idle_timeout = \"1s\"",
        "",
    ));
    let addr = p.addr;
    rt().block_on(async {
        let (mut send, conn) = h2c(addr).await;
        let r = exchange(&mut send, get(&addr.to_string(), "/"), None)
            .await
            .expect("get");
        assert_eq!(r.body, b"app");
        let quiet = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an idle connection is closed")
            .expect("task");
        let after = quiet.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(4),
            "closed after {after:?}"
        );
    });
}

#[test]
fn http2_can_be_turned_off_per_listener() {
    let backend = Backend::start("app");
    // h2c off (the http default): the preface is not HTTP/1.1, so it is refused as such.
    let p = Proxy::start(&h2c_config(backend.addr, "", "").replace("http2 = true\n", ""));
    let mut c = Client::connect(p.addr);
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let r = c.read_response(false).expect("an HTTP/1.1 answer");
    assert!(r.status >= 400, "{}", r.status);
    assert_eq!(backend.traffic(), 0);
}

#[test]
fn reload_sends_goaway_and_new_connections_follow_the_new_config() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let path = crate::cli::write_config("h2-reload.toml", &h2c_config(a.addr, "", ""));
    let mut config = ringlb::config::Config::load(&path).expect("config");
    if std::env::var("RINGLB_TEST_IO").as_deref() == Ok("epoll") {
        config.runtime.io = ringlb::config::IoBackend::Epoll;
    }
    let server = ringlb::runtime::Server::start(config).expect("start");
    let p = Proxy {
        addr: server.listener_addr("web").expect("bound"),
        server: Some(server),
    };
    let (addr, admin) = (p.addr, p.admin());
    rt().block_on(async {
        let (mut send, conn) = h2c(addr).await;
        let a_host = addr.to_string();
        let r = exchange(&mut send, get(&a_host, "/"), None)
            .await
            .expect("before");
        assert_eq!(r.body, b"a");
        let slow = tokio::spawn({
            let mut s = send.clone();
            let host = a_host.clone();
            async move { exchange(&mut s, get(&host, "/slow/600"), None).await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(&path, h2c_config(b.addr, "", "")).expect("rewrite");
        let reloaded = tokio::task::spawn_blocking(move || {
            admin_request(admin, "POST", "/reload", None, None).status
        });
        assert_eq!(reloaded.await.expect("reload"), 200);
        // The stream in flight finishes on the old config; then the connection goes away.
        let r = slow.await.expect("task").expect("in-flight stream");
        assert_eq!(r.body, b"a");
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("GOAWAY ends the old connection")
            .expect("task");
        let (mut send, _conn) = h2c(addr).await;
        let r = exchange(&mut send, get(&a_host, "/"), None)
            .await
            .expect("after");
        assert_eq!(r.body, b"b", "a new connection uses the new config");
    });
}

#[test]
fn the_per_ip_request_rate_counts_every_stream() {
    let backend = Backend::start("app");
    let p = Proxy::start(&h2c_config(
        backend.addr,
        "  [listener.limits]\n  requests_per_second_per_ip = 3",
        "",
    ));
    let addr = p.addr;
    let statuses = rt().block_on(async {
        let (mut send, _conn) = h2c(addr).await;
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let r = exchange(&mut send, get(&addr.to_string(), "/"), None)
                .await
                .expect("stream");
            if r.status.as_u16() == 429 {
                assert!(
                    r.headers.get("retry-after").is_some(),
                    "429 says when to retry"
                );
            }
            statuses.push(r.status.as_u16());
        }
        statuses
    });
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // A burst of twice the rate, then 429 (a token may come back during the run).
    assert!((6..=7).contains(&ok), "{statuses:?}");
    assert_eq!(ok + limited, 10, "{statuses:?}");
    assert_eq!(
        backend.traffic(),
        ok,
        "refused streams never reach the target"
    );
}

#[test]
fn an_http2_upload_a_target_refuses_early_gets_the_targets_answer() {
    let target = scripted_backend(EARLY_413, false);
    let p = Proxy::start(&h2c_config(target, "", ""));
    let (status, body) = rt().block_on(async {
        let (send, _conn) = h2c(p.addr).await;
        let mut send = send.ready().await.expect("ready");
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{}/upload", p.addr))
            .body(())
            .expect("request");
        let (resp, mut up) = send.send_request(req, false).expect("send");
        // 8 MiB queued in h2, sent as the windows open: ringlb's writes to the target fail
        // once the target has answered and gone.
        let piece = Bytes::from(vec![b'u'; 64 * 1024]);
        for _ in 0..128 {
            let _ = up.send_data(piece.clone(), false);
        }
        let _ = up.send_data(Bytes::new(), true);
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("an answer in time")
            .expect("a response, not a reset");
        let status = resp.status();
        let mut recv = resp.into_body();
        let mut body = Vec::new();
        while let Some(Ok(chunk)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        (status, body)
    });
    assert_eq!(status, 413, "the target's own answer, not a 502");
    assert_eq!(body, b"too large");
}

/// Each stream's response carries the request id its target was sent, unique per stream. It
/// crosses the wire as a never-indexed literal in plain bytes (HPACK's `0001` form, no Huffman
/// coding): a value seen once is not worth coding, and never-indexed keeps it out of the
/// connection's compression table, so the fields that repeat stay indexed.
#[test]
fn each_stream_gets_its_own_request_id_as_a_plain_never_indexed_field() {
    let backend = Backend::start("app");
    let p = Proxy::start(&h2c_config(backend.addr, "", ""));
    let addr = p.addr;
    let ids: Vec<String> = rt().block_on(async {
        let (mut send, _conn) = h2c(addr).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let r = exchange(&mut send, get(&addr.to_string(), "/id"), None)
                .await
                .expect("h2c GET");
            assert_eq!(r.status, StatusCode::OK);
            let id = r.headers.get("x-request-id").expect("a request id");
            ids.push(id.to_str().expect("ascii id").to_string());
        }
        ids
    });
    let seen = backend.seen.lock().expect("seen").clone();
    let seen: Vec<String> = seen
        .iter()
        .map(|s| s.header("x-request-id").expect("id sent").to_string())
        .collect();
    assert_eq!(seen, ids, "the client gets the id its target was sent");
    assert_ne!(ids[0], ids[1], "one id per stream");

    // The same on raw frames: the field's bytes appear verbatim in the HEADERS block.
    let mut c = crate::h2frames::Conn::open(addr);
    c.send(&crate::h2frames::get(1, "/raw"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let headers = loop {
        let f = c.next(deadline).expect("a response");
        if f.kind == crate::h2frames::HEADERS && f.stream == 1 {
            break f;
        }
    };
    let id = backend
        .last()
        .header("x-request-id")
        .expect("id sent")
        .to_string();
    let mut field = vec![0x10, 12];
    field.extend_from_slice(b"x-request-id");
    field.push(id.len() as u8);
    field.extend_from_slice(id.as_bytes());
    assert!(
        headers.payload.windows(field.len()).any(|w| w == field),
        "never-indexed plain literal x-request-id: {id} in {:02x?}",
        headers.payload
    );
}
