//! HTTPS listeners and re-encryption: SNI, protocol versions, ALPN, resumption across workers,
//! large bodies, garbage on the TLS port, an https target group, and located certificate errors.
//! Certificates come from a per-test CA made with rcgen; the client is rustls.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::support::*;

/// A test CA and the files of the leaf certificates it signed.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// One leaf: its files and DER (to compare with what a client was shown).
pub(crate) struct Leaf {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) der: CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new(test: &str) -> Pki {
        let dir = crate::testdir::test_path(&format!("tls-{test}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringlb test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA cert");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki { dir, ca, ca_key }
    }

    /// An ECDSA P-256 leaf for `names`.
    pub(crate) fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        self.sign(file, names, key)
    }

    fn sign(&self, file: &str, names: &[&str], key: rcgen::KeyPair) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let (c, k) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        // The chain: leaf then CA, as servers usually ship it.
        std::fs::write(&c, format!("{}{}", cert.pem(), self.ca.pem())).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        Leaf {
            cert: c,
            key: k,
            der: cert.der().clone(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add CA");
        roots
    }

    /// A rustls client config trusting this CA, offering `alpn`.
    pub(crate) fn client(&self, alpn: &[&str]) -> rustls::ClientConfig {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(self.roots())
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        c
    }
}

pub(crate) fn cert_list(leaves: &[&Leaf]) -> String {
    let items: Vec<String> = leaves
        .iter()
        .map(|l| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                l.cert.display(),
                l.key.display()
            )
        })
        .collect();
    items.join(", ")
}

fn https_config(workers: usize, leaves: &[&Leaf], target: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = {workers}\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"https\"\ntarget_group = \"app\"\n  [listener.tls]\n  certificates = [{}]\n\
         \x20 [listener.limits]\n  header_timeout = \"1s\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{target}\"]\n",
        cert_list(leaves)
    )
}

fn name(n: &str) -> ServerName<'static> {
    ServerName::try_from(n.to_string()).expect("server name")
}

/// Connects, sends one GET, and returns the response with the session it came over.
pub(crate) fn https_get(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> (Response, rustls::ClientConnection) {
    let conn = rustls::ClientConnection::new(cfg.clone(), name(sni)).expect("client conn");
    let mut c = Client::with_tls(addr, conn);
    let r = c.get(path);
    (r, c.tls.take().expect("tls session"))
}

pub(crate) fn peer_cert(conn: &rustls::ClientConnection) -> CertificateDer<'static> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("a peer certificate")
}

/// An RSA 2048 leaf (the key made by openssl, which rcgen cannot generate with ring).
fn rsa_leaf(pki: &Pki, file: &str, names: &[&str]) -> Option<Leaf> {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .ok()?;
    let pem = String::from_utf8(out.stdout).ok()?;
    let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).ok()?;
    Some(pki.sign(file, names, key))
}

#[test]
fn sni_chooses_among_certificates_and_the_first_is_the_default() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test", "*.wild.test"]);
    let rsa = rsa_leaf(&pki, "rsa", &["rsa.test"]);
    let mut leaves = vec![&a, &b];
    if let Some(r) = &rsa {
        leaves.push(r);
    } else {
        eprintln!("openssl not found: the RSA certificate case is skipped");
    }
    let backend = Backend::start("app");
    let p = Proxy::start(&https_config(1, &leaves, backend.addr));
    let cfg = Arc::new(pki.client(&["http/1.1"]));

    for (sni, want) in [("a.test", &a), ("b.test", &b), ("x.wild.test", &b)] {
        let (r, conn) = https_get(p.addr, &cfg, sni, "/");
        assert_eq!(r.status, 200, "{sni}");
        assert_eq!(peer_cert(&conn), want.der, "{sni} gets its certificate");
    }
    if let Some(rsa) = &rsa {
        let (r, conn) = https_get(p.addr, &cfg, "rsa.test", "/");
        assert_eq!(r.status, 200);
        assert_eq!(peer_cert(&conn), rsa.der, "RSA certificate served");
    }
    // The backend was told the request came over https.
    assert_eq!(backend.last().header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        backend.last().header("x-forwarded-port"),
        Some(p.addr.port().to_string().as_str())
    );

    // Without SNI: the first certificate.
    let mut no_sni = pki.client(&["http/1.1"]);
    no_sni.enable_sni = false;
    let (r, conn) = https_get(p.addr, &Arc::new(no_sni), "a.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(peer_cert(&conn), a.der, "no SNI: the default certificate");
}

#[test]
fn alpn_without_http2_negotiates_http11_and_a_client_without_it_is_refused() {
    let pki = Pki::new("alpn");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    // With HTTP/2 off (it is on by default on https listeners), only http/1.1 is offered.
    let toml = https_config(1, &[&a], backend.addr).replace(
        "protocol = \"https\"\n",
        "protocol = \"https\"\nhttp2 = false\n",
    );
    let p = Proxy::start(&toml);

    let cfg = Arc::new(pki.client(&["h2", "http/1.1"]));
    let (r, conn) = https_get(p.addr, &cfg, "a.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));

    // Only h2 offered: no common protocol, the handshake fails (no_application_protocol).
    let h2_only = Arc::new(pki.client(&["h2"]));
    let conn = rustls::ClientConnection::new(h2_only, name("a.test")).expect("conn");
    let mut tcp = TcpStream::connect(p.addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = conn;
    let res = rustls::Stream::new(&mut conn, &mut tcp).write_all(b"GET / HTTP/1.1\r\n\r\n");
    let res = res.and_then(|_| {
        let mut b = [0u8; 16];
        rustls::Stream::new(&mut conn, &mut tcp).read(&mut b)
    });
    let err = res.expect_err("handshake without a common ALPN protocol must fail");
    assert!(
        err.to_string().contains("NoApplicationProtocol"),
        "the server's alert says why: {err}"
    );
}

/// A ClientHello offering only TLS 1.1 (legacy_version 0x0302, no supported_versions).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
                                           // signature_algorithms (ecdsa_secp256r1_sha256): rustls looks for it before the version.
    body.extend_from_slice(&[0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// Reads until EOF (or 5 s), returning what came and how long it took.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    (got, start.elapsed())
}

#[test]
fn tls11_is_refused_with_a_protocol_version_alert() {
    let pki = Pki::new("tls11");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let p = Proxy::start(&https_config(1, &[&a], backend.addr));
    let mut s = TcpStream::connect(p.addr).expect("connect");
    s.write_all(&tls11_client_hello()).expect("send hello");
    let (got, took) = read_to_close(&mut s);
    // An alert record (0x15), fatal (2), protocol_version (70), then the close.
    assert_eq!(got.first(), Some(&0x15), "an alert record: {got:?}");
    assert_eq!(
        got.get(5..7),
        Some(&[2u8, 70][..]),
        "protocol_version: {got:?}"
    );
    assert!(took < Duration::from_secs(3), "closed promptly: {took:?}");
    assert_eq!(backend.requests(), 0);
}

#[test]
fn garbage_or_plain_http_on_the_tls_port_is_closed_promptly() {
    let pki = Pki::new("garbage");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let config = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n{}",
        https_config(1, &[&a], backend.addr)
    );
    let p = Proxy::start(&config);

    // Plain HTTP: not a TLS record, an alert then close.
    let mut s = TcpStream::connect(p.addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("send");
    let (got, took) = read_to_close(&mut s);
    assert!(
        got.is_empty() || got.first() == Some(&0x15),
        "only an alert may come back: {got:?}"
    );
    assert!(took < Duration::from_secs(3), "closed promptly: {took:?}");

    // A client that starts a record and stalls: closed at the handshake timeout (1 s here).
    let mut s = TcpStream::connect(p.addr).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("send");
    let (_, took) = read_to_close(&mut s);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed at the handshake timeout: {took:?}"
    );
    // The proxy still serves.
    let cfg = Arc::new(pki.client(&["http/1.1"]));
    assert_eq!(https_get(p.addr, &cfg, "a.test", "/").0.status, 200);
    assert_eq!(backend.requests(), 1);
    // Both failures are counted for the operator.
    let metrics = admin_request(p.admin(), "GET", "/metrics", None, None).text();
    assert!(
        metrics.contains("ringlb_errors_total{listener=\"web\",kind=\"tls_handshake\"} 2"),
        "{metrics}"
    );
}

#[test]
fn sessions_resume_across_two_workers_with_tickets_and_session_ids() {
    let pki = Pki::new("resume");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let p = Proxy::start(&https_config(2, &[&a], backend.addr));

    let tls13 = Arc::new(pki.client(&["http/1.1"]));
    let mut tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("tls12")
    .with_root_certificates(pki.roots())
    .with_no_client_auth();
    tls12.resumption = rustls::client::Resumption::default()
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    let tls12 = Arc::new(tls12);

    for (label, cfg) in [("TLS 1.3 tickets", &tls13), ("TLS 1.2 session IDs", &tls12)] {
        let (r, first) = https_get(p.addr, cfg, "a.test", "/");
        assert_eq!(r.status, 200);
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        // SO_REUSEPORT spreads these over both workers by address hash: all must resume, so
        // a session made on one worker resumes on the other.
        let resumed = (0..16)
            .filter(|_| {
                let (r, c) = https_get(p.addr, cfg, "a.test", "/");
                assert_eq!(r.status, 200);
                c.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            })
            .count();
        assert_eq!(resumed, 16, "{label}: every later connection resumed");
    }
}

#[test]
fn five_megabyte_bodies_both_ways_over_tls() {
    let pki = Pki::new("bodies");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let p = Proxy::start(&https_config(1, &[&a], backend.addr));
    let data = pattern(5 * 1024 * 1024);
    let want = sha256_hex(&data);
    let cfg = Arc::new(pki.client(&["http/1.1"]));
    let conn = rustls::ClientConnection::new(cfg, name("a.test")).expect("conn");
    let mut c = Client::with_tls(p.addr, conn);

    c.send(
        format!(
            "POST /sha HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    c.send(&data);
    let r = c.read_response(false).expect("upload response");
    assert_eq!((r.status, r.text()), (200, want.clone()));

    let r = c.get(&format!("/big/{}", data.len()));
    assert_eq!(sha256_hex(&r.body), want, "download");
    let r = c.get(&format!("/chunked/{}", data.len()));
    assert_eq!(sha256_hex(&r.body), want, "chunked download");

    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    c.send(&data);
    let r = c.read_response(false).expect("echo response");
    assert_eq!(sha256_hex(&r.body), want, "echo");
}

/// A TLS backend: answers every request with the SNI name it was reached by; counts connections.
struct TlsBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn tls_backend(leaf: &Leaf) -> TlsBackend {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::fs::read(&leaf.cert).expect("cert").as_slice())
            .collect::<Result<_, _>>()
            .expect("pem");
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut std::fs::read(&leaf.key).expect("key").as_slice())
            .expect("pem")
            .expect("a key");
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config"),
    );
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (acc, reqs) = (accepts.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            acc.fetch_add(1, Ordering::SeqCst);
            let (cfg, reqs) = (cfg.clone(), reqs.clone());
            std::thread::spawn(move || serve_tls(s, cfg, reqs));
        }
    });
    TlsBackend {
        addr,
        accepts,
        requests,
    }
}

fn serve_tls(s: TcpStream, cfg: Arc<rustls::ServerConfig>, reqs: Arc<Mutex<Vec<String>>>) {
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, s);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match tls.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let sni = tls.conn.server_name().unwrap_or("").to_string();
        reqs.lock().unwrap().push(head);
        let body = format!("tls-backend sni={sni}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn https_target_group_re_encrypts_and_pools_connections() {
    let pki = Pki::new("reencrypt");
    let backend_leaf = pki.leaf("backend", &["backend.test"]);
    let tb = tls_backend(&backend_leaf);
    let config = format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         target_group = \"secure\"\n\n\
         [[target_group]]\nname = \"secure\"\nprotocol = \"https\"\ntargets = [\"{}\"]\n\
         retries = 0\n  [target_group.tls]\n  ca_file = \"{}\"\n  server_name = \"backend.test\"\n",
        tb.addr,
        pki.ca_file().display()
    );
    let p = Proxy::start(&config);
    let mut c = Client::connect(p.addr);
    for _ in 0..3 {
        let r = c.get("/re");
        assert_eq!(
            (r.status, r.text()),
            (200, "tls-backend sni=backend.test".into())
        );
    }
    assert_eq!(
        tb.accepts.load(Ordering::SeqCst),
        1,
        "one pooled TLS connection"
    );
    let reqs = tb.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[0].starts_with("GET /re HTTP/1.1"), "{reqs:?}");

    // A backend whose certificate does not match the expected name is refused: 502.
    let wrong = pki.leaf("wrong", &["other.test"]);
    let tb2 = tls_backend(&wrong);
    let config = config.replace(&tb.addr.to_string(), &tb2.addr.to_string());
    let p2 = Proxy::start(&config);
    assert_eq!(get(p2.addr, "/").status, 502);
    assert!(tb2.requests.lock().unwrap().is_empty());
    drop(p2);

    // Health checks of an https group speak TLS too: the target turns healthy (serves) only
    // after a check over TLS passed.
    let with_hc = format!("{config}\n{}", health_check(100, 1, 1))
        .replace(&tb2.addr.to_string(), &tb.addr.to_string());
    let p3 = Proxy::start(&with_hc);
    wait_for(
        Duration::from_secs(5),
        "an https health check passes",
        || get(p3.addr, "/re").status == 200,
    );
    let checks = tb
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("GET /hc "))
        .count();
    assert!(checks >= 1, "the backend saw TLS health checks");
}

fn check(config_text: &str, dir: &Path) -> (i32, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config_text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run ringlb check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_certificate_or_key_file_is_a_located_config_error() {
    let pki = Pki::new("badcert");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let not_pem = pki.dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello, I am not a certificate\n").unwrap();
    let cfg = |cert: &Path, key: &Path| {
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
             target_group = \"app\"\n  [listener.tls]\n  certificates = [{}, {{ cert = \"{}\", key = \"{}\" }}]\n\n\
             [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\n",
            cert_list(&[&a]),
            cert.display(),
            key.display()
        )
    };
    let (code, err) = check(&cfg(&not_pem, &b.key), &pki.dir);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("check.toml:")
            && err.contains("listener 'web': tls: certificates[1]: cert:")
            && err.contains("no certificate found"),
        "{err}"
    );
    // A key that belongs to another certificate.
    let (code, err) = check(&cfg(&b.cert, &a.key), &pki.dir);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("certificates[1]: key:") && err.contains("does not belong"),
        "{err}"
    );
    // A certificate file given as the key.
    let (code, err) = check(&cfg(&b.cert, &b.cert), &pki.dir);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no private key found"), "{err}");
    // And the good pair passes.
    let (code, err) = check(&cfg(&b.cert, &b.key), &pki.dir);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn upgrade_tunnel_over_tls_echoes_both_ways() {
    let pki = Pki::new("tunnel");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let p = Proxy::start(&https_config(1, &[&a], backend.addr));
    let cfg = Arc::new(pki.client(&["http/1.1"]));
    let conn = rustls::ClientConnection::new(cfg, name("a.test")).expect("conn");
    let mut c = Client::with_tls(p.addr, conn);
    c.send(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let r = c.read_response(true).expect("101");
    assert_eq!(r.status, 101);
    assert!(c.pending().is_empty());
    // The echo comes back while the client is still sending: the proxy reads and writes the
    // client's TLS session at once.
    let data = pattern(300_000);
    c.send(&data);
    let mut back = vec![0u8; data.len()];
    let tls = c.tls.as_mut().expect("tls");
    rustls::Stream::new(tls, &mut c.stream)
        .read_exact(&mut back)
        .expect("echoed bytes");
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
}

/// A TLS keep-alive client that goes quiet is closed at `idle_timeout` the way TLS closes: a
/// close_notify alert before the end of the stream, so the client can tell a clean close from a
/// cut connection (rustls reports the latter as an unexpected EOF).
#[test]
fn a_quiet_tls_client_is_closed_at_idle_timeout_with_close_notify() {
    let pki = Pki::new("idle");
    let a = pki.leaf("a", &["a.test"]);
    let backend = Backend::start("app");
    let p = Proxy::start(&https_config(1, &[&a], backend.addr).replace(
        "  header_timeout = \"1s\"\n",
        "  header_timeout = \"1s\"\n  idle_timeout = \"1s\"\n",
    ));
    let cfg = Arc::new(pki.client(&["http/1.1"]));
    let conn = rustls::ClientConnection::new(cfg, name("a.test")).expect("client conn");
    let mut c = Client::with_tls(p.addr, conn);
    let asked = Instant::now();
    assert_eq!(c.get("/").status, 200);
    let mut tls = c.tls.take().expect("tls session");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    let got = rustls::Stream::new(&mut tls, &mut c.stream).read(&mut buf);
    let took = asked.elapsed();
    assert!(
        matches!(got, Ok(0)),
        "a clean TLS close (close_notify, then EOF), not {got:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "closed {took:?} after the request (idle_timeout 1 s)"
    );
}
