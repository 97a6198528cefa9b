//! The HTTP/1.1 data path: balancing, header rewriting, bodies, framing, pipelining.

use crate::support::*;

#[test]
fn round_robin_spreads_requests_evenly() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Proxy::start(&simple_config(
        &[a.addr.to_string(), b.addr.to_string()],
        "",
    ));
    let mut c = Client::connect(p.addr);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..100 {
        let r = c.get("/");
        assert_eq!(r.status, 200);
        *counts.entry(r.text()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&50), "{counts:?}");
}

#[test]
fn weights_are_honoured() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let targets = [
        format!("{{ address = \"{}\", weight = 1 }}", a.addr),
        format!("{{ address = \"{}\", weight = 3 }}", b.addr),
    ];
    let p = Proxy::start(&simple_config(&targets, ""));
    let mut c = Client::connect(p.addr);
    let mut b_count = 0;
    for _ in 0..400 {
        if c.get("/").text() == "b" {
            b_count += 1;
        }
    }
    assert_eq!(b_count, 300, "weight 3 of 4 gets three quarters");
}

#[test]
fn forwarded_headers_added_and_hop_by_hop_removed() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    c.send(
        b"GET /x?y=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Secret-Hop\r\n\
          X-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
          Trailer: X-T\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: gopher\r\nX-Keep: yes\r\n\r\n",
    );
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200);
    let seen = a.last();
    assert_eq!(seen.target, "/x?y=1");
    assert_eq!(seen.header("host"), Some("example.test"), "Host preserved");
    assert_eq!(seen.header("x-keep"), Some("yes"));
    for hop in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
    ] {
        assert!(
            !seen.has(hop),
            "{hop} must not be forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("http"),
        "client's value replaced"
    );
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(p.addr.port().to_string().as_str())
    );
}

#[test]
fn five_megabyte_bodies_both_ways_content_length_and_chunked() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let data = pattern(5 * 1024 * 1024);
    let want = sha256_hex(&data);

    // Upload with Content-Length.
    let mut c = Client::connect(p.addr);
    c.send(
        format!(
            "POST /sha HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    c.send(&data);
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text()), (200, want.clone()));
    let seen = a.last();
    assert_eq!((seen.method.as_str(), seen.body_len), ("POST", data.len()));

    // Upload chunked, on the same connection.
    c.send(b"POST /sha HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in data.chunks(100_000) {
        c.send(format!("{:x}\r\n", piece.len()).as_bytes());
        c.send(piece);
        c.send(b"\r\n");
    }
    c.send(b"0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text()), (200, want.clone()));

    // Downloads.
    let r = c.get(&format!("/big/{}", data.len()));
    assert_eq!(sha256_hex(&r.body), want);
    let r = c.get(&format!("/chunked/{}", data.len()));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(sha256_hex(&r.body), want);
    // Echo both ways at once.
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    c.send(&data);
    let r = c.read_response(false).unwrap();
    assert_eq!(sha256_hex(&r.body), want);
}

#[test]
fn close_delimited_response_reaches_http11_clients_chunked_on_a_kept_connection() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    for _ in 0..2 {
        c.send(b"GET /close/300000 HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            pattern(300_000),
            "all bytes until the backend closed"
        );
        // Re-framed as chunks, so the client's connection needs no close to end the body.
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.header("connection"), None);
    }
    // An HTTP/1.0 client cannot read chunks: it gets the body as is, ended by the close.
    let mut c = Client::connect(p.addr);
    c.send(b"GET /close/1000 HTTP/1.0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.body, pattern(1000));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn head_204_and_304_are_framed_without_bodies() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    c.send(b"HEAD /big/5000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5000"));
    let r = c.get("/status/204");
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = c.get("/status/304");
    assert_eq!((r.status, r.body.len()), (304, 0));
    // The connection is still in sync: the next response is the right one.
    let r = c.get("/");
    assert_eq!((r.status, r.text()), (200, "a".to_string()));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    c.send(
        b"GET /big/10 HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /slow/50 HTTP/1.1\r\nHost: t\r\n\r\nGET /big/3 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(c.read_response(false).unwrap().body, pattern(10));
    assert_eq!(c.read_response(false).unwrap().text(), "hello");
    assert_eq!(c.read_response(false).unwrap().text(), "a");
    assert_eq!(c.read_response(false).unwrap().body, pattern(3));
}

#[test]
fn http10_client_is_served_and_closed_unless_keep_alive() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.text()), (200, "a".to_string()));
    assert!(c.is_closed(), "HTTP/1.0 without keep-alive closes");

    let mut c = Client::connect(p.addr);
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().text(), "a");
    // ringlb keeps its own upstream connection open for HTTP/1.0 clients too.
    assert_eq!(a.last().header("connection"), Some("keep-alive"));
    assert_eq!(a.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn chunked_responses_reach_http10_clients_as_plain_data() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    for _ in 0..2 {
        // Even when the client asks to keep the connection: without chunked framing, only the
        // close can end the body.
        let mut c = Client::connect(p.addr);
        c.send(b"GET /chunked/100000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response(false).expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), None);
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.body, pattern(100_000), "the data, without chunk framing");
        assert!(c.is_closed());
    }
    // The upstream side still knew where the body ended: its connection was reused.
    assert_eq!(a.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // An HTTP/1.1 client still gets the chunked body as the backend sent it.
    let r = get(p.addr, "/chunked/100000");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, pattern(100_000));
}

/// Sends `request` on a new connection and reads until the connection ends: the bytes, and
/// whether it ended with a reset rather than a close.
fn raw_exchange(proxy: std::net::SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("reading from ringlb: {e}"),
        }
    }
}

#[test]
fn a_connections_last_response_comes_with_its_fin_in_one_segment() {
    use std::io::{Read, Write};
    let a = Backend::start("a");
    let rules = "[[listener.rule]]\npriority = 1\npath = [\"/teapot\"]\n\
                 fixed_response = { status = 418, body = \"short and stout\" }\n";
    let config = simple_config(&[a.addr.to_string()], "").replacen(
        "target_group = \"app\"\n",
        &format!("target_group = \"app\"\n{rules}"),
        1,
    );
    let p = Proxy::start(&config);
    // A proxied response, an HTTP/1.0 one (no keep-alive), ringlb's own 400 and a rule's fixed
    // response: each the connection's last. The client sees the handshake's SYN-ACK, the ACK
    // of its request, and then one segment with the response and the FIN (a separate FIN would
    // make 4).
    let cases: [(&[u8], &str); 4] = [
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 ",
        ),
        (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.1 200 "),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"GET /teapot HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 418 ",
        ),
    ];
    for (request, status) in cases {
        let mut s = std::net::TcpStream::connect(p.addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("send");
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .expect("response, then the end of the stream");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(status), "{text}");
        let segments = segments_in(&s);
        assert!(
            segments <= 3,
            "{segments} segments for {:?}: the FIN went apart from the response",
            String::from_utf8_lossy(request)
        );
    }
    // A kept connection's response is not held back: it arrives without a close behind it.
    let mut c = Client::connect(p.addr);
    for _ in 0..3 {
        assert_eq!(c.get("/").text(), "a");
    }
}

#[test]
fn a_closing_response_pipelined_behind_a_large_one_arrives_whole_and_in_order() {
    use std::io::{Read, Write};
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    // A small receive window and no reading for a while: the 8 MiB response fills the
    // buffers, and the connection's last response (pipelined behind it, `Connection: close`)
    // is sent straight to the socket once the large one is in. Every byte must arrive once and
    // in order, then the end of the stream. (Sends the socket cannot take at once: io.rs tests.)
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    sock.connect(&p.addr.into()).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let big = 8 * 1024 * 1024;
    s.write_all(
        format!(
            "GET /big/{big} HTTP/1.1\r\nHost: t\r\n\r\n\
             GET /big/1000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("both responses, then the end of the stream");
    // Splits off one response with a Content-Length body.
    let mut rest = &got[..];
    let mut bodies = Vec::new();
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        assert!(rest.len() >= end + len, "a body cut short: {head}");
        bodies.push(&rest[end..end + len]);
        rest = &rest[end + len..];
    }
    assert_eq!(bodies.len(), 2);
    assert!(bodies[0] == &pattern(big)[..], "the 8 MiB body differs");
    assert_eq!(bodies[1], &pattern(1000)[..]);
}

#[test]
fn http10_clients_get_no_interim_responses_and_no_transfer_codings() {
    let hinted = scripted_backend(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    );
    let p = Proxy::start(&simple_config(&[hinted.to_string()], ""));
    let (got, reset) = raw_exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(!reset);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n"),
        "no 103 first: {text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    // An HTTP/1.1 client gets the 103 first, and the chunked body.
    let mut c = Client::connect(p.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(false).expect("103").status, 103);
    let r = c.read_response(false).expect("200");
    assert_eq!((r.status, r.text()), (200, "hello".to_string()));

    // No body, but the field would still be wrong for HTTP/1.0: HEAD of a chunked resource.
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let (got, _) = raw_exchange(p.addr, b"HEAD /chunked/100 HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");

    // gzip then chunked: an HTTP/1.0 client could not be told the body is compressed.
    let gzip = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nGZDAT\r\n0\r\n\r\n",
        false,
    );
    let p = Proxy::start(&admin_config(&[gzip.to_string()], "", ""));
    let (got, _) = raw_exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(!text.contains("GZDAT"), "{text}");
    // Counted once, as the 502 the client got.
    let metrics = admin_request(p.admin(), "GET", "/metrics", None, None).text();
    let responses = |class: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ringlb_responses_total{")
                    && l.contains("listener=\"web\"")
                    && l.contains(&format!("class=\"{class}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        (responses("2xx"), responses("5xx")),
        (0.0, 1.0),
        "{metrics}"
    );
    let r = get(p.addr, "/");
    assert_eq!(r.header("transfer-encoding"), Some("gzip, chunked"));

    // A 101 nobody asked for is not a response a client can use.
    let switching = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        false,
    );
    let p = Proxy::start(&simple_config(&[switching.to_string()], ""));
    for request in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let (got, _) = raw_exchange(p.addr, request);
        let text = String::from_utf8_lossy(&got).to_string();
        assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    }
}

#[test]
fn a_body_cut_short_resets_a_client_that_reads_until_close() {
    // Chunked to an HTTP/1.0 client: the backend stops after the first chunk.
    let cut = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
        false,
    );
    let p = Proxy::start(&simple_config(&[cut.to_string()], ""));
    let (got, reset) = raw_exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        reset,
        "a plain close would pass {got:?} off as the whole body"
    );
    // A chunked HTTP/1.1 client can tell from the framing; it gets a plain close.
    let (got, reset) = raw_exchange(p.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(!reset);
    assert!(String::from_utf8_lossy(&got).ends_with("5\r\nhello\r\n"));

    // Cut after the last chunk: only the final CRLF is missing, the data is whole.
    let whole = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n",
        false,
    );
    let p = Proxy::start(&simple_config(&[whole.to_string()], ""));
    let (got, reset) = raw_exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(!reset, "the data was whole");
    assert!(String::from_utf8_lossy(&got).ends_with("\r\n\r\nhello"));

    // Close-delimited: the backend resets the connection mid-body. An HTTP/1.0 client reads
    // until the close, so it must see a reset.
    let broken = scripted_backend(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial", true);
    let p = Proxy::start(&simple_config(&[broken.to_string()], ""));
    let (got, reset) = raw_exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(reset, "a backend reset is not the end of the body: {got:?}");
    // An HTTP/1.1 client gets the body chunked: without the last chunk it can tell.
    let broken = scripted_backend(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial", true);
    let p = Proxy::start(&simple_config(&[broken.to_string()], ""));
    let (got, _) = raw_exchange(p.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("7\r\npartial\r\n"), "{text}");
    assert!(
        !text.contains("\r\n0\r\n"),
        "no last chunk for a cut body: {text}"
    );
}

#[test]
fn python_http_server_end_to_end() {
    let dir = crate::testdir::test_path("py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from python\n").unwrap();
    let port = crate::cli::free_port();
    let _py = KillOnDrop(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 is installed"),
    );
    let target = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&target).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let p = Proxy::start(&simple_config(&[target], ""));
    let mut c = Client::connect(p.addr);
    // python's http.server answers HTTP/1.0 and closes after each response; the client still
    // gets HTTP/1.1 (RFC 9110 §6.2) and keeps its connection for the next requests.
    for _ in 0..3 {
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c
            .read_response(false)
            .expect("a response on the kept connection");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.version, "HTTP/1.1",
            "ringlb's own version, not the target's"
        );
        assert_eq!(r.text(), "hello from python\n");
        assert_ne!(r.header("connection"), Some("close"));
    }
    assert!(!c.is_closed(), "the client connection stays open");
}

#[test]
fn upgrade_becomes_a_two_way_tunnel() {
    use std::io::{Read, Write};
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    c.send(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("echo"));
    // Nothing but the 101 arrives before the client speaks.
    assert!(c.pending().is_empty());
    c.stream
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    assert!(
        c.stream.read(&mut [0u8; 64]).is_err(),
        "unexpected bytes after the 101"
    );
    c.stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        a.last().header("upgrade"),
        Some("echo"),
        "Upgrade forwarded when tunnelling"
    );
    for msg in [&b"ping"[..], &pattern(100_000)] {
        c.stream.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.stream.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    // Half-close passes through: the backend sees EOF and closes, and so do we.
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.is_closed());
}

/// An upgrade on a connection that has served requests tunnels both ways, message after
/// message. On io_uring its client socket (from the fourth request) and its pooled upstream
/// connection read through standing multishot receives: each tunnel direction waits for
/// readiness between messages, and that wait must see bytes the receive already took off the
/// socket (a poll on the socket never would, and the tunnel would hang).
#[test]
fn an_upgrade_on_a_kept_connection_tunnels_both_ways() {
    use std::io::{Read, Write};
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    for _ in 0..6 {
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c
            .read_response(false)
            .expect("a response on the kept connection");
        assert_eq!(r.status, 200);
    }
    c.send(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let r = c.read_response(true).expect("the 101");
    assert_eq!(r.status, 101);
    c.stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    for i in 0..30 {
        let msg = format!("message {i}");
        c.stream.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.stream
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("message {i} did not come back: {e}"));
        assert_eq!(got, msg.as_bytes());
        // Let each direction settle into its wait before the next message.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let big = pattern(300_000);
    c.stream.write_all(&big).unwrap();
    let mut got = vec![0u8; big.len()];
    c.stream.read_exact(&mut got).expect("300 KB echoed");
    assert!(got == big, "the large message came back changed");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.is_closed());
}

#[test]
fn ringlbs_own_answer_to_head_has_no_body_on_a_kept_connection() {
    // A closed port: every request gets ringlb's own 502, on a kept connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let p = Proxy::start(&simple_config(&[closed.to_string()], "retries = 0"));
    let mut c = Client::connect(p.addr);
    c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true).expect("head");
    assert_eq!(r.status, 502);
    // The next response on the connection is read from the right place: no body was sent.
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false).expect("next");
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("Bad Gateway"),
        "the GET's own body: {:?}",
        r.text()
    );
}

/// `defer_accept = true`: a client that connects and says nothing is held by the kernel, not by
/// ringlb (its admin API counts no connection), is served the moment its request arrives, and
/// one that stays silent is handed over after the kernel's second and then meets `idle_timeout`.
#[test]
fn a_deferred_listener_takes_a_connection_when_its_request_arrives() {
    use std::time::{Duration, Instant};
    let a = Backend::start("a");
    let targets = [a.addr.to_string()];
    let with = |extra: &str| {
        admin_config(&targets, "", "").replace(
            "target_group = \"app\"\n\n",
            &format!("target_group = \"app\"\n{extra}[listener.limits]\nidle_timeout = \"2s\"\n\n"),
        )
    };
    let plain = Proxy::start(&with(""));
    let deferred = Proxy::start(&with("defer_accept = true\n"));
    let connections = |p: &Proxy| status(p.admin())["listeners"][0]["connections"].as_u64();

    // Without deferral ringlb accepts three silent clients at once.
    let _silent_plain: Vec<Client> = (0..3).map(|_| Client::connect(plain.addr)).collect();
    wait_for(Duration::from_secs(5), "three open connections", || {
        connections(&plain) == Some(3)
    });
    // With it, ringlb has none of them yet (the kernel hands them over after about a second;
    // a look that came later than that on a loaded machine proves nothing and is skipped).
    let connected = Instant::now();
    let mut silent: Vec<Client> = (0..3).map(|_| Client::connect(deferred.addr)).collect();
    let seen = connections(&deferred);
    if connected.elapsed() < Duration::from_millis(700) {
        assert_eq!(seen, Some(0), "silent clients stay in the kernel");
    }

    // A request is answered at once, not after the kernel's deferral.
    let asked = Instant::now();
    let r = silent[0].get("/now");
    assert_eq!((r.status, r.text()), (200, "a".to_string()));
    assert!(
        asked.elapsed() < Duration::from_millis(900),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(a.requests(), 1);

    // The two still silent are handed over after about a second, then closed by idle_timeout:
    // later than idle_timeout alone would close them.
    for c in &mut silent[1..] {
        let mut byte = [0u8; 512];
        let got = std::io::Read::read(&mut c.stream, &mut byte);
        assert!(matches!(got, Ok(0)), "closed, not {got:?}");
    }
    let took = connected.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "closed after {took:?}: not deferred"
    );
    assert_eq!(a.requests(), 1, "nothing else reached the target");
}

/// `idle_timeout` between requests on a kept connection: a client that goes quiet is closed
/// once it passes (not before, and not much after), and one whose next request comes within it
/// is served on the same connection, each quiet spell timed afresh. The parked connection holds
/// no timer of its own: the worker's watchdog ends its wait.
#[test]
fn a_quiet_keep_alive_client_is_closed_at_idle_timeout_and_a_prompt_one_is_served() {
    use std::time::{Duration, Instant};
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], "").replace(
        "target_group = \"app\"\n\n",
        "target_group = \"app\"\n[listener.limits]\nidle_timeout = \"1s\"\n\n",
    ));

    let mut quiet = Client::connect(p.addr);
    let mut prompt = Client::connect(p.addr);
    // Timed from before the request (the watchdog stamps a deadline with its last tick, up to
    // 25 ms old, so the close may come that much before a full second after the response).
    let answered = Instant::now();
    assert_eq!(quiet.get("/").status, 200);
    let closed = std::thread::spawn(move || {
        quiet
            .stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut byte = [0u8; 64];
        let got = std::io::Read::read(&mut quiet.stream, &mut byte);
        (got.map_err(|e| e.kind()), answered.elapsed())
    });
    // Three more requests 600 ms apart: 1.8 s in all, but never 1 s quiet.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        let r = prompt.get("/");
        assert_eq!((r.status, r.text()), (200, "a".to_string()));
    }
    let (got, took) = closed.join().expect("reader");
    assert_eq!(got, Ok(0), "the quiet client is closed");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "the quiet client was closed {took:?} after its response (idle_timeout 1 s)"
    );
    assert_eq!(a.requests(), 4);
}
