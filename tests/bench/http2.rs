//! `load --http2` end to end: an in-process HTTP/2 origin (the `h2` crate's server on a tokio
//! runtime in a background thread; h2c, or TLS with rcgen certificates and a chosen ALPN) that
//! counts connections, requests and requests in flight; and the bench binary run against it,
//! against HTTP/1.1-only servers and a silent one. Part of the `bench` test target; the servers
//! live until the test process exits.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{counting_origin, decode, read_json, run, tmp_dir, u, Backend};

/// What the in-process HTTP/2 origin saw.
#[derive(Default)]
struct H2Counts {
    /// TCP connections accepted.
    accepted: AtomicU64,
    /// Connections whose HTTP/2 handshake succeeded.
    h2_conns: AtomicU64,
    /// HTTP/2 requests answered.
    requests: AtomicU64,
    /// Requests received and not yet answered, and the most of them at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// An HTTP/2 origin (the `h2` crate's server on a tokio runtime in a background thread):
/// h2c with prior knowledge, or TLS offering `alpn` when `tls` is set. Answers every request
/// with 200 and a small body, after `delay` when set.
fn h2_origin(tls: Option<&[&[u8]]>) -> (SocketAddr, Arc<H2Counts>) {
    h2_origin_delayed(tls, None)
}

fn h2_origin_delayed(
    tls: Option<&[&[u8]]>,
    delay: Option<Duration>,
) -> (SocketAddr, Arc<H2Counts>) {
    let acceptor = tls.map(|alpn| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(H2Counts::default());
    let c = counts.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let (c, acceptor) = (c.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_h2(s, c, delay).await,
                        Some(a) => {
                            if let Ok(t) = a.accept(s).await {
                                serve_h2(t, c, delay).await;
                            }
                        }
                    }
                });
            }
        });
    });
    (addr, counts)
}

async fn serve_h2<T>(io: T, c: Arc<H2Counts>, delay: Option<Duration>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    c.h2_conns.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        if req.version() == http::Version::HTTP_2 {
            c.requests.fetch_add(1, Ordering::SeqCst);
        }
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let c = c.clone();
        let answer = async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let resp = http::Response::builder().status(200).body(()).unwrap();
            if let Ok(mut body) = respond.send_response(resp, false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"hello h2\n"), true);
            }
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
        };
        if delay.is_some() {
            tokio::spawn(answer);
        } else {
            answer.await;
        }
    }
}

/// Runs `load --http2 --streams 4 -c 2` against `url` and checks the JSON and what the server
/// saw: requests multiplexed over at most 2 HTTP/2 connections.
fn check_h2_load(url: &str, counts: &H2Counts, name: &str, extra: &[&str]) {
    let dir = tmp_dir(name);
    let json = dir.join("r.json");
    let out = run(&[
        &[
            "load",
            url,
            "--http2",
            "--streams",
            "4",
            "-c",
            "2",
            "-d",
            "1s",
            "--warmup",
            "200ms",
            "--json",
            json.to_str().unwrap(),
        ],
        extra,
    ]
    .concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP/2 ×4 streams"), "{stdout}");
    let j = read_json(&json);
    let requests = u(&j, "requests");
    assert!(requests > 100, "{requests}");
    assert_eq!(u(&j, "errors"), 0, "{j}");
    assert_eq!(j["protocol"], "HTTP/2");
    assert_eq!(u(&j, "streams"), 4);
    assert_eq!(u(&j, "connections"), 2);
    assert_eq!(j["mode"], "keepalive");
    let h = decode(j["histogram"].as_str().unwrap());
    assert_eq!(h.len(), requests);
    assert_eq!(h.value_at_quantile(0.5), u(&j["latency_us"], "p50"));
    // The server answered at least the measured requests (plus warm-up), all over HTTP/2,
    // on at most 2 connections: the 8 streams were multiplexed.
    let seen = counts.requests.load(Ordering::SeqCst);
    assert!(
        seen >= requests,
        "server saw {seen}, load reports {requests}"
    );
    let h2_conns = counts.h2_conns.load(Ordering::SeqCst);
    assert!((1..=2).contains(&h2_conns), "{h2_conns} HTTP/2 connections");
    assert!(counts.accepted.load(Ordering::SeqCst) <= 2);
}

#[test]
fn load_http2_h2c_multiplexes_streams_over_the_connections() {
    // Answers after 5 ms, so the streams of each connection are seen in flight together.
    let (addr, counts) = h2_origin_delayed(None, Some(Duration::from_millis(5)));
    check_h2_load(&format!("http://{addr}/x?y=1"), &counts, "h2c", &[]);
    // 2 connections × 4 streams: 8 requests at once, never more.
    assert_eq!(counts.max_in_flight.load(Ordering::SeqCst), 8);
}

#[test]
fn load_http2_over_tls_negotiates_h2_by_alpn() {
    let (addr, counts) = h2_origin(Some(&[b"h2"]));
    check_h2_load(
        &format!("https://127.0.0.1:{}/", addr.port()),
        &counts,
        "h2tls",
        &["--insecure"],
    );
}

#[test]
fn load_http2_tls_without_h2_alpn_counts_tls_errors() {
    // A server offering only http/1.1 refuses the handshake (no_application_protocol alert);
    // one with no ALPN at all completes it, and the client refuses to go on without h2.
    for (alpn, why) in [
        (&[&b"http/1.1"[..]][..], "NoApplicationProtocol"),
        (&[][..], "the server did not select h2 (no ALPN)"),
    ] {
        h2_without_alpn(alpn, why);
    }
}

fn h2_without_alpn(alpn: &[&[u8]], why: &str) {
    let (addr, counts) = h2_origin(Some(alpn));
    let dir = tmp_dir("h2alpn");
    let json = dir.join("r.json");
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let out = run(&[
        "load",
        &url,
        "--http2",
        "--insecure",
        "-c",
        "1",
        "-d",
        "300ms",
        "--warmup",
        "0s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(why), "{stdout}");
    assert!(
        stdout.contains("(the server does not offer HTTP/2 by ALPN h2)"),
        "{stdout}"
    );
    let j = read_json(&json);
    assert_eq!(u(&j, "requests"), 0);
    assert!(u(&j["errors_by_kind"], "tls") > 0, "{j}");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn load_http2_against_http1_only_server_reports_errors_promptly() {
    // This origin answers anything ending in a blank line with an HTTP/1.1 response and keeps
    // the connection: the client reads it as a malformed HTTP/2 frame.
    let (addr, accepted) = counting_origin();
    let url = format!("http://{addr}/");
    let dir = tmp_dir("h2on1");
    let json = dir.join("r.json");
    let started = std::time::Instant::now();
    let out = run(&[
        "load",
        &url,
        "--http2",
        "--streams",
        "4",
        "-c",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "0s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run must not hang"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = read_json(&json);
    assert_eq!(u(&j, "requests"), 0);
    let errors = u(&j, "errors");
    assert!(errors > 0);
    assert_eq!(u(&j["errors_by_kind"], "bad_response"), errors, "{j}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("first error: HTTP/2 connection"),
        "{stdout}"
    );
    // Failed connections are retried after a pause, not in a tight loop (~10 ms each).
    let conns = accepted.load(Ordering::SeqCst);
    assert!((2..=120).contains(&conns), "{conns} connections in 500ms");

    // The bench's own backend (HTTP/1.1 only) answers 400 and closes: the client sees a
    // malformed frame or a reset, never a success.
    let be = Backend::start(&[]);
    let out = run(&[
        "load",
        &be.url(),
        "--http2",
        "-c",
        "2",
        "-d",
        "300ms",
        "--warmup",
        "0s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let j = read_json(&json);
    assert_eq!(u(&j, "requests"), 0);
    let by_kind = &j["errors_by_kind"];
    let errors = u(&j, "errors");
    assert!(errors > 0);
    assert_eq!(
        u(by_kind, "bad_response") + u(by_kind, "reset"),
        errors,
        "{j}"
    );
}

#[test]
fn load_http2_rate_holds_the_requested_rate_and_timeouts_count() {
    let (addr, _) = h2_origin(None);
    let dir = tmp_dir("h2rate");
    let json = dir.join("r.json");
    let out = run(&[
        "load",
        &format!("http://{addr}/"),
        "--http2",
        "-m",
        "3",
        "-c",
        "2",
        "-d",
        "2s",
        "--warmup",
        "300ms",
        "--rate",
        "1500",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = read_json(&json);
    let rps = j["rps"].as_f64().unwrap();
    assert!((1400.0..=1600.0).contains(&rps), "rate 1500 gave {rps}");
    assert_eq!(u(&j, "errors"), 0);

    // A server that accepts but never answers: each stream times out, the run ends on time.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = run(&[
        "load",
        &url,
        "--http2",
        "-c",
        "2",
        "-d",
        "1s",
        "--warmup",
        "0s",
        "--timeout",
        "200ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(1));
    let j = read_json(&json);
    assert_eq!(u(&j, "requests"), 0);
    let timeouts = u(&j["errors_by_kind"], "timeout");
    assert!((6..=12).contains(&timeouts), "{timeouts}");
}

#[test]
fn load_http2_rejects_close_and_streams_without_http2() {
    let (addr, _) = h2_origin(None);
    let url = format!("http://{addr}/");
    let out = run(&["load", &url, "--http2", "--close", "-d", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--close cannot be combined with --http2"),
        "{err}"
    );
    let out = run(&["load", &url, "--streams", "4", "-d", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--streams needs --http2"));
    let out = run(&["load", &url, "--http2", "--streams", "0", "-d", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "load",
        &url,
        "--http2",
        "-H",
        "Connection: close",
        "-d",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed in HTTP/2"));
}
