//! Stopping bad requests at the door: malformed and smuggling-shaped requests, every limit at its
//! boundary and one over, slowloris, per-IP limits, allow/deny, the worker connection cap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn config_with_limits(target: &str, limits: &str, runtime: &str) -> String {
    format!(
        "[runtime]\nworkers = 1\n{runtime}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\
         [listener.limits]\n{limits}\n\n[[target_group]]\nname = \"app\"\ntargets = [\"{target}\"]\n"
    )
}

/// Sends raw bytes on a fresh connection; returns the status of the first response (0 if none)
/// and whether the connection was closed after it.
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, bool) {
    let mut c = Client::connect(addr);
    c.send(bytes);
    let status = c.read_response(false).map_or(0, |r| r.status);
    (status, c.is_closed())
}

/// The status of the first response to `bytes` on a fresh connection.
fn status(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut c = Client::connect(addr);
    c.send(bytes);
    c.read_response(false).map_or(0, |r| r.status)
}

#[test]
fn malformed_and_ambiguous_requests_are_refused_and_never_forwarded() {
    let a = Backend::start("a");
    let p = Proxy::start(&config_with_limits(
        &a.addr.to_string(),
        "max_body_bytes = \"1KiB\"",
        "",
    ));
    let cases: &[(&str, &[u8], u16)] = &[
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("duplicate CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
        ("CL list", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
        ("signed CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400),
        ("hex CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello", 400),
        ("TE not ending in chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        ("unknown coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: rot13, chunked\r\n\r\n0\r\n\r\n", 501),
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n", 400),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n", 400),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
        ("control byte in name", b"GET / HTTP/1.1\r\nHost: t\r\nX\x01A: 1\r\n\r\n", 400),
        ("bare LF line end", b"GET / HTTP/1.1\nHost: t\r\n\r\n", 400),
        ("missing Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("malformed request line", b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
        ("bad method token", b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("HTTP/0.9", b"GET /\r\nHost: t\r\n\r\n", 505),
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
        ("chunk size with bare LF", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
        ("chunk data without CRLF", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
        ("CL over max_body_bytes", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n", 413),
        ("chunked over max_body_bytes", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n", 413),
    ];
    for (name, bytes, want) in cases {
        let (status, closed) = raw(p.addr, bytes);
        assert_eq!(status, *want, "{name}");
        assert!(closed, "{name}: connection closed after the error");
    }
    assert_eq!(a.requests(), 0, "the backend saw none of them");
    // A smuggling attempt: whatever follows a refused request is never read as a request.
    let (status, _) = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(status, 400);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a.requests(), 0, "nothing smuggled through");
}

#[test]
fn every_limit_at_its_boundary_and_one_over() {
    let a = Backend::start("a");
    let limits =
        "max_header_bytes = \"2KiB\"\nmax_headers = 10\nmax_uri_bytes = 100\nmax_body_bytes = 64";
    let p = Proxy::start(&config_with_limits(&a.addr.to_string(), limits, ""));

    // URI: 100 bytes pass, 101 → 414.
    let uri = |n: usize| format!("/{}", "u".repeat(n - 1));
    assert_eq!(
        status(
            p.addr,
            format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", uri(100)).as_bytes()
        ),
        200
    );
    assert_eq!(
        status(
            p.addr,
            format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", uri(101)).as_bytes()
        ),
        414
    );

    // Header count: 10 fields pass (Host + 9), 11 → 431.
    let fields = |n: usize| (1..n).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
    assert_eq!(
        status(
            p.addr,
            format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", fields(10)).as_bytes()
        ),
        200
    );
    assert_eq!(
        status(
            p.addr,
            format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", fields(11)).as_bytes()
        ),
        431
    );

    // Head size: exactly 2048 bytes pass, 2049 → 431.
    let head = |total: usize| {
        let base = "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n".len();
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(total - base)
        )
    };
    assert_eq!(head(2048).len(), 2048);
    assert_eq!(status(p.addr, head(2048).as_bytes()), 200);
    assert_eq!(status(p.addr, head(2049).as_bytes()), 431);

    // Body: 64 bytes pass (Content-Length and chunked), 65 → 413.
    let cl = |n: usize| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n\r\n{}",
            "b".repeat(n)
        )
    };
    assert_eq!(status(p.addr, cl(64).as_bytes()), 200);
    assert_eq!(status(p.addr, cl(65).as_bytes()), 413);
    let chunked = |n: usize| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            "c".repeat(32),
            n - 32,
            "c".repeat(n - 32)
        )
    };
    assert_eq!(status(p.addr, chunked(64).as_bytes()), 200);
    assert_eq!(status(p.addr, chunked(65).as_bytes()), 413);
    assert_eq!(
        a.requests(),
        5,
        "only the requests within the limits reached the backend"
    );
}

#[test]
fn slowloris_connections_get_408_while_normal_clients_are_served() {
    let a = Backend::start("a");
    let p = Proxy::start(&config_with_limits(
        &a.addr.to_string(),
        "header_timeout = \"1s\"",
        "",
    ));
    let addr = p.addr;
    let attackers: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let start = Instant::now();
                let head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaa";
                let mut got = Vec::new();
                for b in head.iter() {
                    // One byte every 200 ms; stop once ringlb answered or closed.
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    s.set_nonblocking(true).unwrap();
                    let mut buf = [0u8; 256];
                    let r = s.read(&mut buf);
                    s.set_nonblocking(false).unwrap();
                    match r {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                    if start.elapsed() > Duration::from_secs(4) {
                        break;
                    }
                }
                (String::from_utf8_lossy(&got).to_string(), start.elapsed())
            })
        })
        .collect();
    // Meanwhile, normal clients are served promptly.
    let t = Instant::now();
    for _ in 0..20 {
        let s = Instant::now();
        assert_eq!(get(addr, "/").status, 200);
        assert!(s.elapsed() < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    for a in attackers {
        let (got, took) = a.join().unwrap();
        assert!(
            got.starts_with("HTTP/1.1 408"),
            "slow client answered 408, got {got:?}"
        );
        assert!(
            took < Duration::from_millis(2500),
            "cut off near header_timeout, took {took:?}"
        );
    }
    assert_eq!(a.requests(), 20, "no slow request reached the backend");
}

#[test]
fn a_request_body_that_stalls_gets_408_not_a_bare_close() {
    let a = Backend::start("a");
    let p = Proxy::start(&config_with_limits(
        &a.addr.to_string(),
        "idle_timeout = \"1s\"",
        "",
    ));
    // The head promises 100 bytes of body; 10 come, then nothing. Past idle_timeout ringlb
    // stops waiting and says why, as it does for a head that stalls.
    let (text, took) = stalled_upload(p.addr, "t");
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "a stalled body is answered 408, got {text:?} after {took:?}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered near idle_timeout, took {took:?}"
    );
    // The connection and the worker are fine for the next client.
    assert_eq!(get(p.addr, "/").status, 200);
}

#[test]
fn requests_per_second_per_ip_answers_429_beyond_the_burst() {
    let a = Backend::start("a");
    let p = Proxy::start(&config_with_limits(
        &a.addr.to_string(),
        "requests_per_second_per_ip = 5",
        "",
    ));
    let mut c = Client::connect(p.addr);
    // Burst: twice the rate.
    for i in 0..10 {
        assert_eq!(c.get("/").status, 200, "request {i} within the burst");
    }
    let r = c.get("/");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(c.is_closed());
    // Tokens come back at the rate.
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(get(p.addr, "/").status, 200);
    assert_eq!(a.requests(), 11);
}

#[test]
fn max_connections_per_ip_refuses_beyond_the_cap() {
    let a = Backend::start("a");
    let p = Proxy::start(&config_with_limits(
        &a.addr.to_string(),
        "max_connections_per_ip = 2",
        "",
    ));
    let mut c1 = Client::connect(p.addr);
    let mut c2 = Client::connect(p.addr);
    assert_eq!(c1.get("/").status, 200);
    assert_eq!(c2.get("/").status, 200);
    let mut c3 = Client::connect(p.addr);
    let r = c3.read_response(false).expect("a 503 before the close");
    assert_eq!(r.status, 503);
    assert!(c3.is_closed());
    // The open ones keep working; closing one frees a slot.
    assert_eq!(c1.get("/").status, 200);
    drop(c2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(Client::connect(p.addr).get("/").status, 200);
}

#[test]
fn worker_connection_cap_refuses_new_and_keeps_serving_open_ones() {
    let a = Backend::start("a");
    let p = Proxy::start(&config_with_limits(
        &a.addr.to_string(),
        "",
        "max_connections = 2",
    ));
    let mut c1 = Client::connect(p.addr);
    let mut c2 = Client::connect(p.addr);
    assert_eq!(c1.get("/").status, 200);
    assert_eq!(c2.get("/").status, 200);
    let mut c3 = Client::connect(p.addr);
    assert_eq!(c3.read_response(false).map(|r| r.status), Some(503));
    assert!(c3.is_closed());
    assert_eq!(c1.get("/").status, 200);
    assert_eq!(c2.get("/").status, 200);
}

#[test]
fn deny_and_allow_lists_are_checked_at_accept() {
    let a = Backend::start("a");
    let denied = |limits: &str, bind: &str| {
        let cfg = config_with_limits(&a.addr.to_string(), limits, "").replace("127.0.0.1:0", bind);
        let p = Proxy::start(&cfg);
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        }
    };
    assert!(denied("deny = [\"127.0.0.0/8\"]", "127.0.0.1:0"));
    assert!(denied("allow = [\"10.0.0.0/8\"]", "127.0.0.1:0"));
    assert!(!denied(
        "allow = [\"127.0.0.1/32\"]\ndeny = [\"10.0.0.0/8\"]",
        "127.0.0.1:0"
    ));
    // IPv6.
    assert!(denied("deny = [\"::1/128\"]", "[::1]:0"));
    assert!(!denied("allow = [\"::1/128\"]", "[::1]:0"));
    assert_eq!(
        a.requests(),
        2,
        "only the admitted clients reached the backend"
    );
}

#[test]
fn rejections_are_counted_by_kind_in_metrics() {
    let a = Backend::start("a");
    let cfg = config_with_limits(&a.addr.to_string(), "requests_per_second_per_ip = 1", "")
        + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let p = Proxy::start(&cfg);
    raw(p.addr, b"GET / HTTP/1.1\r\nX: 1\r\n\r\n");
    raw(p.addr, b"GET / HTTP/2.0\r\nHost: t\r\n\r\n");
    let mut c = Client::connect(p.addr);
    while c.get("/").status == 200 {}
    let admin = p.admin();
    let m = admin_request(admin, "GET", "/metrics", None, None).text();
    let count = |kind: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("ringlb_rejections_total") && l.contains(&format!("kind=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(count("bad_request"), Some(1), "{m}");
    assert_eq!(count("version_not_supported"), Some(1));
    assert_eq!(count("rate_limited"), Some(1));
    assert_eq!(count("acl_denied"), Some(0));
}
