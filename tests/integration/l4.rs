//! TCP listeners and the PROXY protocol: large echo transfers with half-close, connect failover,
//! PROXY v1/v2 sent to targets and accepted from a balancer in front, and the congestion control
//! a listener and a group set. (Throughput is measured by `bench/tools/tcp_throughput.py`.)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// A TCP echo server: echoes every connection's bytes as they come, then half-closes after EOF.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// A server that records each connection's bytes up to and including `end` (a PROXY header and
/// a payload), then answers "ok".
fn recording_server(end: &'static [u8]) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut got = Vec::new();
                let mut byte = [0u8; 1];
                while !got.ends_with(end) && got.len() < 4096 {
                    match s.read(&mut byte) {
                        Ok(1) => got.push(byte[0]),
                        _ => break,
                    }
                }
                let _ = s.write_all(b"ok");
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

pub fn tcp_config(targets: &[SocketAddr], group_extra: &str, listener_extra: &str) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\
         target_group = \"echo\"\n{listener_extra}\n\n\
         [[target_group]]\nname = \"echo\"\nprotocol = \"tcp\"\ntargets = [{}]\n{group_extra}\n",
        t.join(", ")
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to ringlb");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Sends `data`, half-closes, and returns everything read back until EOF (or a reset).
pub fn echo_through(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let mut s = connect(addr);
    let mut w = s.try_clone().expect("clone");
    // A connection ringlb closes (no target) shows as a short echo, not a panic here.
    let writer = thread::spawn(move || {
        let _ = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
    });
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    let _ = writer.join();
    back
}

#[test]
fn tcp_listener_echoes_large_payloads_with_half_close() {
    let echo = echo_server();
    let p = Proxy::start(&tcp_config(&[echo], "", ""));
    let data = pattern(16 << 20);
    let back = echo_through(p.addr, data.clone());
    assert_eq!(back.len(), data.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
    // An empty transfer: EOF passes through both ways.
    assert!(echo_through(p.addr, Vec::new()).is_empty());
}

#[test]
fn tcp_connect_failure_tries_another_target() {
    let echo = echo_server();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], crate::cli::free_port()));
    let p = Proxy::start(&tcp_config(
        &[dead, echo],
        "retries = 1\npassive_failures = 0\n",
        "",
    ));
    for i in 0..6 {
        let msg = format!("hello {i}").into_bytes();
        assert_eq!(echo_through(p.addr, msg.clone()), msg, "connection {i}");
    }
}

#[test]
fn tcp_health_checks_keep_connections_off_a_dead_target() {
    let echo = echo_server();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], crate::cli::free_port()));
    // No retries: only the health check keeps connections away from the dead target.
    let p = Proxy::start(&tcp_config(
        &[dead, echo],
        "retries = 0\npassive_failures = 0\n[target_group.health_check]\nprotocol = \"tcp\"\n\
         interval = \"100ms\"\ntimeout = \"80ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n",
        "",
    ));
    // Both start `initial` (no traffic); once the live one has passed a check, the dead one is
    // `initial` or `unhealthy`, and never picked.
    wait_for(
        Duration::from_secs(5),
        "the live target to pass a check",
        || echo_through(p.addr, b"x".to_vec()) == b"x",
    );
    for i in 0..6 {
        let msg = format!("hello {i}").into_bytes();
        assert_eq!(echo_through(p.addr, msg.clone()), msg, "connection {i}");
    }
}

#[test]
fn tcp_idle_timeout_closes_a_silent_tunnel() {
    let echo = echo_server();
    let p = Proxy::start(&tcp_config(
        &[echo],
        "",
        "[listener.limits]\nidle_timeout = \"300ms\"\n",
    ));
    let mut s = connect(p.addr);
    s.write_all(b"ping").expect("send");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("echo");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[test]
fn tcp_group_sends_proxy_v1_and_v2_headers() {
    for version in ["v1", "v2"] {
        let (addr, rx) = recording_server(b"hello");
        let p = Proxy::start(&tcp_config(
            &[addr],
            &format!("proxy_protocol = \"{version}\"\n"),
            "",
        ));
        let mut s = connect(p.addr);
        let me = s.local_addr().expect("local");
        s.write_all(b"hello").expect("payload");
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("recorded");
        let want = if version == "v1" {
            format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhello",
                me.port(),
                p.addr.port()
            )
            .into_bytes()
        } else {
            let mut w = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
            w.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
            w.extend_from_slice(&me.port().to_be_bytes());
            w.extend_from_slice(&p.addr.port().to_be_bytes());
            w.extend_from_slice(b"hello");
            w
        };
        assert_eq!(got, want, "{version}");
        let mut ok = [0u8; 2];
        s.read_exact(&mut ok).expect("answer through the tunnel");
        assert_eq!(&ok, b"ok");
    }
}

#[test]
fn tcp_listener_accepts_a_proxy_header_and_passes_the_client_on() {
    // A balancer in front says the client is 203.0.113.9:5555; the target group re-sends it (v2).
    let (addr, rx) = recording_server(b"ping");
    let p = Proxy::start(&tcp_config(
        &[addr],
        "proxy_protocol = \"v2\"\n",
        "accept_proxy_protocol = true\n",
    ));
    let mut s = connect(p.addr);
    s.write_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 5555 443\r\nping")
        .expect("send");
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("recorded");
    let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    want.extend_from_slice(&[203, 0, 113, 9, 198, 51, 100, 1]);
    want.extend_from_slice(&5555u16.to_be_bytes());
    want.extend_from_slice(&443u16.to_be_bytes());
    want.extend_from_slice(b"ping");
    assert_eq!(got, want);
}

fn proxied_http_config(backend: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         target_group = \"app\"\naccept_proxy_protocol = true\n\
         [listener.limits]\nheader_timeout = \"500ms\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{backend}\"]\n"
    )
}

#[test]
fn http_listener_takes_x_forwarded_for_from_proxy_v1_and_v2() {
    let b = Backend::start("b");
    let p = Proxy::start(&proxied_http_config(b.addr));
    // v1, then a keep-alive request on the same connection.
    let mut c = Client::connect(p.addr);
    c.send(b"PROXY TCP4 203.0.113.9 198.51.100.1 5555 80\r\nGET /one HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(b.last().header("x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(c.get("/two").status, 200);
    assert_eq!(b.last().header("x-forwarded-for"), Some("203.0.113.9"));
    // v2 over IPv6.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    let src: std::net::Ipv6Addr = "2001:db8::42".parse().expect("v6");
    v2.extend_from_slice(&src.octets());
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&[0x12, 0x34, 0, 80]);
    v2.extend_from_slice(b"GET /three HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut c = Client::connect(p.addr);
    c.send(&v2);
    assert_eq!(c.read_response(false).expect("response").status, 200);
    assert_eq!(b.last().header("x-forwarded-for"), Some("2001:db8::42"));
}

#[test]
fn a_missing_or_malformed_proxy_header_closes_the_connection() {
    let b = Backend::start("b");
    let p = Proxy::start(&proxied_http_config(b.addr));
    // Plain HTTP where a PROXY header must come first: closed, nothing forwarded.
    let mut c = Client::connect(p.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(c.read_response(false).is_none());
    // Silence: closed after header_timeout.
    let mut c = Client::connect(p.addr);
    let started = Instant::now();
    assert!(c.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(b.traffic(), 0);
}

/// Opens a tunnel through `proxy` to `echo` and returns the congestion control of ringlb's two
/// sockets: (the accepted client connection, the upstream connection).
fn tunnel_congestion_controls(proxy: SocketAddr, echo: SocketAddr) -> (String, String) {
    let mut s = connect(proxy);
    s.write_all(b"ping").expect("send");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");
    let client = s.local_addr().expect("addr");
    let accepted = congestion_control_of(Some(proxy), client).expect("ringlb's client socket");
    let upstream = congestion_control_of(None, echo).expect("ringlb's upstream socket");
    (accepted, upstream)
}

#[test]
fn tcp_listener_and_group_each_set_their_own_congestion_control() {
    let (default, chosen) = congestion_controls();
    assert_ne!(chosen, default, "this host offers no second algorithm");
    let line = format!("congestion_control = \"{chosen}\"");

    let echo = echo_server();
    let p = Proxy::start(&tcp_config(&[echo], "", &line));
    assert_eq!(
        tunnel_congestion_controls(p.addr, echo),
        (chosen.clone(), default.clone()),
        "the listener's setting is for accepted connections only"
    );

    let echo = echo_server();
    let p = Proxy::start(&tcp_config(&[echo], &line, ""));
    assert_eq!(
        tunnel_congestion_controls(p.addr, echo),
        (default, chosen),
        "the group's setting is for upstream connections only"
    );
}
