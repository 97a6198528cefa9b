//! Memory of idle connections: the ringlb binary (a process of its own, so its RSS is its own)
//! in front of a real backend; clients go through one full exchange, then stay idle; the RSS each
//! further idle connection adds must stay within a budget, and every parked connection must
//! still serve its next request. The budgets are generous (a debug build, a shared machine) but
//! well below what a connection holding a read buffer would cost: that is the regression caught.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{wait_for, Backend, Client, KillOnDrop};

/// Connections opened before the first reading (warm-up: pools, slabs), and added before the second.
const WARM: usize = 300;
const MORE: usize = 1200;
/// KiB per idle connection. Release builds measure ~0.5 (plain), ~8 (TLS), ~2 (WebSocket)
/// over thousands of connections; over these few the allocator commits memory in 4 MiB steps;
/// before parking they held 16, 58 and 81 (bench/tools/idle_memory.py). h2c measures 5-6 here
/// (41 before h2's idle buffers were given back, 17 before its Huffman buffer was too, 12-14
/// before its stream slabs shrank, 8.5-9.7 before the connection's future boxed h2's
/// connection: vendor/h2/PATCHES.md; `tests/h2_buffers.rs` counts h2's part exactly,
/// `http2::size_tests` the future).
const PLAIN_BUDGET_KIB: f64 = 6.0;
const TLS_BUDGET_KIB: f64 = 24.0;
const TUNNEL_BUDGET_KIB: f64 = 12.0;
const H2C_BUDGET_KIB: f64 = 16.0;

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn start_ringlb(dir: &std::path::Path, toml: &str, addr: SocketAddr) -> KillOnDrop {
    let cfg = dir.join("ringlb.toml");
    std::fs::write(&cfg, toml).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RINGLB_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringlb");
    let child = KillOnDrop(child);
    wait_for(Duration::from_secs(20), "ringlb listening", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    child
}

/// Opens connections with `open` up to `WARM`, reads the RSS, opens `MORE`, waits for them to
/// park, reads it again: KiB per further connection. Returns the clients, still open.
fn per_connection<C>(pid: u32, mut open: impl FnMut() -> C) -> (f64, Vec<C>) {
    let mut clients: Vec<C> = (0..WARM).map(|_| open()).collect();
    // Parked after 50-75 ms without bytes; give it ample time.
    std::thread::sleep(Duration::from_millis(400));
    let before = rss_kib(pid);
    clients.extend((0..MORE).map(|_| open()));
    std::thread::sleep(Duration::from_millis(400));
    let after = rss_kib(pid);
    let kib = (after - before) / MORE as f64;
    eprintln!("idle memory: {kib:.2} KiB per connection");
    (kib, clients)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = crate::testdir::test_path(&format!("memory-{name}"));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn listener(name: &str, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n\
         target_group = \"app\"\n{extra}\n"
    )
}

/// A fresh ringlb (one worker, the backend the suite runs on) with a plain and an https
/// listener in front of `backend`: (process, plain address, TLS address, the TLS root).
fn fresh_ringlb(
    name: &str,
    backend: SocketAddr,
) -> (KillOnDrop, SocketAddr, SocketAddr, rustls::RootCertStore) {
    let dir = temp_dir(name);
    let (plain, tls) = (crate::cli::free_port(), crate::cli::free_port());
    let io = std::env::var("RINGLB_TEST_IO").unwrap_or_else(|_| "auto".into());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join("c.pem"), cert.cert.pem()).expect("cert file");
    std::fs::write(dir.join("k.pem"), cert.key_pair.serialize_pem()).expect("key file");
    let toml = format!(
        "[runtime]\nworkers = 1\nio = \"{io}\"\n{}{}[[target_group]]\nname = \"app\"\ntargets = [\"{backend}\"]\n",
        listener("plain", plain, "http", ""),
        listener(
            "tls",
            tls,
            "https",
            &format!(
                "  [listener.tls]\n  certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
                dir.join("c.pem").display(),
                dir.join("k.pem").display()
            )
        ),
    );
    let plain: SocketAddr = format!("127.0.0.1:{plain}").parse().unwrap();
    let tls: SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    let proc = start_ringlb(&dir, &toml, plain);
    wait_for(Duration::from_secs(20), "ringlb listening on TLS", || {
        std::net::TcpStream::connect(tls).is_ok()
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    (proc, plain, tls, roots)
}

#[test]
fn idle_plain_connections_cost_little_memory_and_still_serve() {
    let backend = Backend::start("a");
    let (proc, plain, _, _) = fresh_ringlb("plain", backend.addr);
    let (kib, mut clients) = per_connection(proc.0.id(), || {
        let mut c = Client::connect(plain);
        assert_eq!(c.get("/").status, 200);
        c
    });
    assert!(
        kib < PLAIN_BUDGET_KIB,
        "an idle plain connection costs {kib:.2} KiB"
    );
    // Every parked connection wakes for its next request.
    for c in clients.iter_mut() {
        assert_eq!(c.get("/again").status, 200);
    }
}

#[test]
fn idle_tls_connections_cost_little_memory_and_still_serve() {
    let backend = Backend::start("a");
    let (proc, _, tls, roots) = fresh_ringlb("tls", backend.addr);
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let (kib, mut clients) = per_connection(proc.0.id(), || {
        let name = "localhost".try_into().expect("name");
        let conn = rustls::ClientConnection::new(config.clone(), name).expect("tls client");
        let mut c = Client::with_tls(tls, conn);
        assert_eq!(c.get("/").status, 200);
        c
    });
    assert!(
        kib < TLS_BUDGET_KIB,
        "an idle TLS connection costs {kib:.2} KiB"
    );
    for c in clients.iter_mut() {
        assert_eq!(c.get("/again").status, 200);
    }
}

#[test]
fn idle_upgraded_tunnels_cost_little_memory_and_still_carry_bytes() {
    let backend = Backend::start("a");
    let (proc, plain, _, _) = fresh_ringlb("tunnel", backend.addr);
    let (kib, mut clients) = per_connection(proc.0.id(), || {
        let mut c = Client::connect(plain);
        c.send(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
        assert_eq!(c.read_response(true).expect("101").status, 101);
        c.stream.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        c.stream.read_exact(&mut got).expect("echo");
        assert_eq!(&got, b"ping");
        c
    });
    assert!(
        kib < TUNNEL_BUDGET_KIB,
        "an idle upgraded tunnel costs {kib:.2} KiB"
    );
    // An idle tunnel still carries bytes both ways.
    for c in clients.iter_mut().step_by(50) {
        c.stream.write_all(b"pong").expect("write");
        let mut got = [0u8; 4];
        c.stream.read_exact(&mut got).expect("echo");
        assert_eq!(&got, b"pong");
    }
}

/// An HTTP/2 connection without streams gives h2's read and write buffers back (24 KiB between
/// them; vendor/h2/PATCHES.md), and each idle connection still serves its next stream. h2c
/// (prior knowledge, no TLS), so the figure is HTTP/2's own state.
#[test]
fn idle_http2_connections_give_their_buffers_back_and_still_serve() {
    let backend = Backend::start("a");
    let dir = temp_dir("h2c");
    let port = crate::cli::free_port();
    let io = std::env::var("RINGLB_TEST_IO").unwrap_or_else(|_| "auto".into());
    let toml = format!(
        "[runtime]\nworkers = 1\nio = \"{io}\"\n{}[[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
        listener("h2c", port, "http", "http2 = true\n"),
        backend.addr
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proc = start_ringlb(&dir, &toml, addr);
    // The client connections' tasks run whenever the test blocks on the runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let get = |send: &mut h2::client::SendRequest<bytes::Bytes>| {
        rt.block_on(async {
            let req = http::Request::builder()
                .uri(format!("http://{addr}/"))
                .body(())
                .expect("request");
            let mut send = send.clone().ready().await.expect("ready");
            let (resp, _) = send.send_request(req, true).expect("send");
            let resp = resp.await.expect("response");
            let mut body = resp.into_body();
            while let Some(chunk) = body.data().await {
                chunk.expect("data");
            }
            200
        })
    };
    let (kib, mut clients) = per_connection(proc.0.id(), || {
        let mut send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        });
        assert_eq!(get(&mut send), 200);
        send
    });
    assert!(
        kib < H2C_BUDGET_KIB,
        "an idle HTTP/2 connection costs {kib:.2} KiB"
    );
    for s in clients.iter_mut() {
        assert_eq!(get(s), 200);
    }
}
