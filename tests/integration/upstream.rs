//! Upstream behaviour: connection reuse, failover, 502/503/504.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::*;

/// An address nothing listens on (bound then closed: connections are refused).
fn refused_addr() -> String {
    format!("127.0.0.1:{}", crate::cli::free_port())
}

#[test]
fn upstream_connections_are_reused() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    for _ in 0..20 {
        // A new client connection each time: the upstream connection is still pooled.
        assert_eq!(get(p.addr, "/").status, 200);
    }
    assert_eq!(a.requests(), 20);
    assert_eq!(
        a.accepts.load(Ordering::SeqCst),
        1,
        "one upstream connection served all requests"
    );
}

#[test]
fn pooled_upstream_connections_run_the_groups_congestion_control() {
    let a = Backend::start("a");
    let (default, chosen) = congestion_controls();
    assert_ne!(chosen, default, "this host offers no second algorithm");
    let group = format!("congestion_control = \"{chosen}\"");
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], &group));
    assert_eq!(get(p.addr, "/").status, 200);
    // The response is in: ringlb's upstream connection now waits in its pool.
    let pooled = congestion_control_of(None, a.addr).expect("ringlb's pooled upstream socket");
    assert_eq!(pooled, chosen, "the host default is {default}");
}

#[test]
fn a_refusing_target_fails_over_to_another() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(&[refused_addr(), a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    for _ in 0..10 {
        let r = c.get("/");
        assert_eq!((r.status, r.text()), (200, "a".to_string()));
    }
}

#[test]
fn all_targets_refusing_gives_502() {
    let p = Proxy::start(&simple_config(&[refused_addr(), refused_addr()], ""));
    let mut c = Client::connect(p.addr);
    let r = c.get("/");
    assert_eq!(r.status, 502);
    // The client connection survives an error that consumed the whole request.
    let r = c.get("/");
    assert_eq!(r.status, 502);
}

/// A response 2 s late behind a 300 ms `response_timeout` is a 504 well before it would have
/// come, and the client connection goes on.
fn late_response_is_a_504_in_time(c: &mut Client) {
    let t = Instant::now();
    let r = c.get("/slow/2000");
    assert_eq!(r.status, 504);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(c.get("/").status, 200, "the next request is served");
}

#[test]
fn slow_response_gives_504_after_response_timeout() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(
        &[a.addr.to_string()],
        "response_timeout = \"300ms\"\n",
    ));
    let mut c = Client::connect(p.addr);
    late_response_is_a_504_in_time(&mut c);
}

/// On a pooled connection (io_uring: one that reads through a standing receive, and waits for
/// the response before it takes a read buffer) a late response still ends at
/// `response_timeout`, and a response that comes in time is read whole.
#[test]
fn a_late_response_on_a_pooled_connection_gives_504_in_time() {
    let a = Backend::start("a");
    let p = Proxy::start(&simple_config(
        &[a.addr.to_string()],
        "response_timeout = \"300ms\"\n",
    ));
    let mut c = Client::connect(p.addr);
    for _ in 0..3 {
        // Each response goes back to the pool: the connection settles there.
        let r = c.get("/");
        assert_eq!((r.status, r.text()), (200, "a".to_string()));
    }
    assert_eq!(a.accepts.load(Ordering::SeqCst), 1, "one pooled connection");
    let r = c.get("/slow/100");
    assert_eq!(r.status, 200, "a response within the timeout");
    late_response_is_a_504_in_time(&mut c);
}

#[test]
fn a_pooled_connection_closed_by_the_backend_is_retried_fresh() {
    // The backend drops idle keep-alive connections after 100 ms; ringlb's pool keeps them 4 s.
    let a = Backend::start_with_idle("a", Some(Duration::from_millis(100)));
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut c = Client::connect(p.addr);
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        a.requests(),
        5,
        "every request reached the backend exactly once"
    );
    assert_eq!(
        a.accepts.load(Ordering::SeqCst),
        5,
        "each retry used a fresh connection"
    );
}

/// A listener whose accept queue is full: further SYNs are dropped, so connects hang.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, String) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 still admits one).
    let fill: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (s, fill, addr.to_string())
}

#[test]
fn connect_timeout_moves_on_to_the_next_target_and_504_when_none_answer() {
    let a = Backend::start("a");
    let (_hole, _fill, hole) = blackhole();
    let extra = "connect_timeout = \"200ms\"\nretries = 1\n";
    let p = Proxy::start(&simple_config(&[hole.clone(), a.addr.to_string()], extra));
    let mut c = Client::connect(p.addr);
    for _ in 0..4 {
        let t = Instant::now();
        let r = c.get("/");
        assert_eq!((r.status, r.text()), (200, "a".to_string()));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    drop(p);
    let p = Proxy::start(&simple_config(&[hole], extra));
    let t = Instant::now();
    let r = get(p.addr, "/");
    assert_eq!(
        r.status, 504,
        "a connect that never completes is a gateway timeout"
    );
    assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(3));
}

/// POSTs 8 MiB of body to `addr` and reads until the connection ends: what came back. That is
/// far more than the sockets between hold, so ringlb's writes to a target that answered early
/// and went fail; ringlb closes once it has answered, so the client's send may fail too.
fn upload_8_mib(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let size = 8 << 20;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req =
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    req.resize(req.len() + size, b'u');
    let _ = s.write_all(&req);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_target_that_refuses_an_upload_early_is_heard_not_turned_into_a_502() {
    // Straight away, and after an interim 103.
    const HINTED_413: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
        HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
    for (hints, response) in [(false, EARLY_413), (true, HINTED_413)] {
        let target = scripted_backend(response, false);
        let p = Proxy::start(&simple_config(&[target.to_string()], ""));
        let started = Instant::now();
        let text = upload_8_mib(p.addr);
        assert!(
            text.starts_with("HTTP/1.1 413 "),
            "the target's own answer (hints: {hints}), got {:?}",
            &text[..text.len().min(200)]
        );
        assert!(text.ends_with("\r\n\r\ntoo large"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// The same on a connection from the pool (io_uring: one that reads through a standing receive,
/// where the early answer is waited for before a read buffer is taken): a GET is served on it
/// first, then the upload that the target refuses before reading it.
#[test]
fn a_pooled_connection_whose_target_refuses_an_upload_early_is_heard_too() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = l.local_addr().expect("addr");
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepts.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    if got.starts_with(b"POST") {
                        // Refused before a byte of its body is read; gone after the answer.
                        let _ = s.write_all(EARLY_413);
                        return;
                    }
                    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    got.drain(..end);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let p = Proxy::start(&simple_config(&[target.to_string()], ""));
    for _ in 0..3 {
        let r = get(p.addr, "/");
        assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 1, "one pooled connection");
    let started = Instant::now();
    let text = upload_8_mib(p.addr);
    assert!(
        text.starts_with("HTTP/1.1 413 ") && text.ends_with("\r\n\r\ntoo large"),
        "the target's own answer, got {:?}",
        &text[..text.len().min(200)]
    );
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "the upload went over the pooled connection"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
