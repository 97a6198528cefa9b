//! JSON access logs: the content of lines (forwarded, 404 from the backend, rejected 400, POST
//! body, HTTPS), flushing within about a second without traffic, reopening after a rename (in
//! process and with SIGUSR1 to the binary), flushing on SIGTERM, and an unwritable path refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::Value;

use crate::support::*;

/// Lines appear within this long of a request, traffic or not (flush interval 1 s + slack).
const FLUSH_WITHIN: Duration = Duration::from_millis(2500);

fn temp_dir(test: &str) -> PathBuf {
    let dir = crate::testdir::test_path(&format!("alog-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The lines of `path`, each parsed as JSON (a line that is not JSON fails the test).
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "only whole lines: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until `path` holds `n` lines and returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_for(
        FLUSH_WITHIN,
        &format!("{n} lines in {}", path.display()),
        || lines(path).len() >= n,
    );
    lines(path)
}

fn config(log: &Path, target: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ntarget_group = \"app\"\naccess_log = \"{}\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{target}\"]\n",
        log.display()
    )
}

#[test]
fn one_json_line_per_request_with_what_happened() {
    let dir = temp_dir("content");
    let log = dir.join("web.log");
    let a = Backend::start("a");
    let p = Proxy::start(&config(&log, a.addr));

    let mut c = Client::connect(p.addr);
    c.send(b"GET /hello?x=1&y=%22 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200);
    c.send(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read_response(false).expect("response");
    assert_eq!((r.status, r.text()), (200, "hello".to_string()));
    a.set_status(404);
    assert_eq!(c.get("/missing").status, 404);
    a.set_status(0);
    // A malformed head is refused at ringlb: 400, and it is logged too.
    let mut bad = Client::connect(p.addr);
    let bad_req = b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n";
    bad.send(bad_req);
    assert_eq!(bad.read_response(false).expect("400").status, 400);
    let sent_at = Instant::now();

    let got = wait_lines(&log, 4);
    assert!(
        sent_at.elapsed() < FLUSH_WITHIN,
        "flushed without more traffic"
    );
    assert_eq!(got.len(), 4, "{got:?}");
    let client_port = c.stream.local_addr().unwrap().port();

    let get = &got[0];
    assert_eq!(get["method"], "GET");
    assert_eq!(get["host"], "example.com");
    assert_eq!(get["path"], "/hello?x=1&y=%22");
    assert_eq!(get["status"], 200);
    assert_eq!(get["listener"], "web");
    assert_eq!(get["client"], format!("127.0.0.1:{client_port}"));
    assert_eq!(get["target"], a.addr.to_string());
    assert!(get["tls"].is_null());
    let (up, total) = (
        get["upstream_ms"].as_f64().expect("upstream_ms"),
        get["total_ms"].as_f64().expect("total_ms"),
    );
    assert!(
        up >= 0.0 && total >= up,
        "upstream {up} within total {total}"
    );
    let time = get["time"].as_str().expect("time");
    assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    let head_len = "GET /hello?x=1&y=%22 HTTP/1.1\r\nHost: example.com\r\n\r\n".len();
    assert_eq!(get["bytes_in"], head_len);
    assert!(get["bytes_out"].as_u64().unwrap() > 0);

    let post = &got[1];
    assert_eq!(
        (post["method"].as_str(), post["path"].as_str()),
        (Some("POST"), Some("/echo"))
    );
    let post_head = "POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\n".len();
    assert_eq!(post["bytes_in"], post_head + 5, "head + body");
    let out = post["bytes_out"].as_u64().unwrap();
    assert!(out > 5 && out < 300, "head + 5-byte body: {out}");

    let missing = &got[2];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["path"], "/missing");
    assert_eq!(missing["target"], a.addr.to_string());

    let rejected = &got[3];
    assert_eq!(rejected["status"], 400);
    assert!(rejected["target"].is_null() && rejected["upstream_ms"].is_null());
    assert!(
        rejected["method"].is_null(),
        "a malformed head names nothing"
    );
    assert_eq!(rejected["bytes_in"], bad_req.len());
    assert_eq!(a.traffic(), 3, "the 400 never reached the backend");
}

#[test]
fn reopen_after_rename_writes_to_the_new_file() {
    let dir = temp_dir("reopen");
    let log = dir.join("web.log");
    let a = Backend::start("a");
    let p = Proxy::start(&config(&log, a.addr));
    assert_eq!(get(p.addr, "/before").status, 200);
    wait_lines(&log, 1);
    let rotated = dir.join("web.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.server.as_ref().expect("server").reopen_logs();
    wait_for(FLUSH_WITHIN, "the log reopened under its path", || {
        log.exists()
    });
    assert_eq!(get(p.addr, "/after").status, 200);
    let new = wait_lines(&log, 1);
    assert_eq!(new[0]["path"], "/after");
    let old = lines(&rotated);
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["path"], "/before");
}

#[test]
fn sigusr1_reopens_and_sigterm_flushes_in_the_binary() {
    let dir = temp_dir("sigusr1");
    let log = dir.join("web.log");
    let a = Backend::start("a");
    let port = crate::cli::free_port();
    let cfg = dir.join("ringlb.toml");
    let text = config(&log, a.addr).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), "ringlb listening", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    assert_eq!(get(addr, "/one").status, 200);
    wait_lines(&log, 1);
    let rotated = dir.join("web.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    wait_for(FLUSH_WITHIN, "SIGUSR1 reopened the log", || log.exists());
    assert_eq!(get(addr, "/two").status, 200);
    // SIGTERM right away: the line still in the worker's buffer is written before exit.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let new = lines(&log);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["path"], "/two");
    assert_eq!(lines(&rotated).len(), 1);
}

#[test]
fn an_unwritable_log_path_refuses_to_start() {
    let dir = temp_dir("unwritable");
    let log = dir.join("no-such-dir").join("web.log");
    let text = config(&log, "127.0.0.1:9".parse().unwrap());
    let cfg = ringlb::config::Config::parse(&text, Path::new("test.toml")).expect("valid config");
    let err = match ringlb::runtime::Server::start(cfg) {
        Ok(s) => {
            s.drain(Duration::from_secs(1));
            panic!("started with an access log it cannot open");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("listener 'web'"), "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
}

/// A CA and a leaf for `localhost`, as PEM files in `dir`; returns (cert, key, trusted roots).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, rustls::RootCertStore) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    let (c, k) = (dir.join("site.crt"), dir.join("site.key"));
    std::fs::write(&c, leaf.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    (c, k, roots)
}

/// GET `path` over TLS limited to `version`.
fn https_get(
    addr: SocketAddr,
    roots: &rustls::RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
    path: &str,
) -> u16 {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("versions")
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    Client::with_tls(addr, conn).get(path).status
}

#[test]
fn https_requests_name_their_tls_version() {
    let dir = temp_dir("https");
    let log = dir.join("web.log");
    let a = Backend::start("a");
    let (cert, key, roots) = tls_files(&dir);
    let text = format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"https\"\ntarget_group = \"app\"\naccess_log = \"{}\"\n\
         \x20 [listener.tls]\n  certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
        log.display(),
        cert.display(),
        key.display(),
        a.addr
    );
    let p = Proxy::start(&text);
    assert_eq!(
        https_get(p.addr, &roots, &rustls::version::TLS13, "/v13"),
        200
    );
    assert_eq!(
        https_get(p.addr, &roots, &rustls::version::TLS12, "/v12"),
        200
    );
    let got = wait_lines(&log, 2);
    let by_path = |path: &str| {
        got.iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {got:?}"))
    };
    assert_eq!(by_path("/v13")["tls"], "TLSv1.3");
    assert_eq!(by_path("/v12")["tls"], "TLSv1.2");
    assert_eq!(by_path("/v13")["listener"], "secure");
    assert_eq!(by_path("/v12")["status"], 200);
}

#[test]
fn tcp_connections_and_refused_connections_get_a_line() {
    let dir = temp_dir("tcp");
    let log = dir.join("tcp.log");
    let echo = crate::l4::echo_server();
    let listener_extra = format!("access_log = \"{}\"", log.display());
    let p = Proxy::start(&crate::l4::tcp_config(&[echo], "", &listener_extra));
    let data = pattern(100_000);
    assert_eq!(crate::l4::echo_through(p.addr, data.clone()), data);
    let got = wait_lines(&log, 1);
    let line = &got[0];
    assert_eq!(line["listener"], "tcp");
    assert_eq!(line["target"], echo.to_string());
    assert_eq!(
        (line["bytes_in"].as_u64(), line["bytes_out"].as_u64()),
        (Some(100_000), Some(100_000))
    );
    assert!(line["status"].is_null() && line["method"].is_null() && line["tls"].is_null());
    drop(p);

    // An http client over the per-IP connection cap: 503 at accept, logged with what is known.
    let log = dir.join("capped.log");
    let a = Backend::start("a");
    let capped = config(&log, a.addr).replace(
        "\n\n[[target_group]]",
        "\n  [listener.limits]\n  max_connections_per_ip = 1\n\n[[target_group]]",
    );
    let p = Proxy::start(&capped);
    let mut first = Client::connect(p.addr);
    assert_eq!(first.get("/held").status, 200);
    let mut second = Client::connect(p.addr);
    assert_eq!(second.read_response(false).expect("503").status, 503);
    let got = wait_lines(&log, 2);
    let refused = got.iter().find(|l| l["status"] == 503).expect("a 503 line");
    assert!(refused["path"].is_null() && refused["target"].is_null());
    assert_eq!(
        refused["client"],
        second.stream.local_addr().unwrap().to_string()
    );
}
