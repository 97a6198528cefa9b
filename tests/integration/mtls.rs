//! Client certificates (mutual TLS) on https listeners: the five X-Client-Cert-* headers (checked
//! against what `openssl x509` prints), refusals by reason (no certificate, unknown CA, revoked,
//! expired) counted in /metrics, forged headers stripped on every listener, rules on the subject,
//! the CRL re-read on reload, resumption keeping the identity, OCSP stapling (and `ringlb check`
//! on OCSP files), cipher_preference, and the access log fields.
//! The PKI is made once per test process by tests/mtls/pki.sh (openssl CLI); the clients are
//! `curl` and `openssl s_client`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;

const PKI_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mtls/pki.sh");

/// The five headers a verified client certificate adds (and that clients may never send).
const CERT_HEADERS: [&str; 5] = [
    "x-client-cert-subject",
    "x-client-cert-issuer",
    "x-client-cert-serial",
    "x-client-cert-fingerprint",
    "x-client-cert",
];

/// Forged values for the five headers, names in odd cases.
const FORGED: [&str; 5] = [
    "X-Client-Cert-Subject: CN=admin-forged,O=Example Corp,C=US",
    "x-CLIENT-cert-issuer: CN=Forged CA",
    "X-Client-Cert-Serial: 1",
    "X-CLIENT-CERT-FINGERPRINT: 0000000000000000000000000000000000000000000000000000000000000000",
    "x-client-cert: -----BEGIN%20CERTIFICATE-----forged",
];

/// The shared PKI (made once per test process; tests that change the CA work on a copy).
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::testdir::test_path("mtls");
        let _ = std::fs::remove_dir_all(&dir);
        run_ok(
            Command::new("sh").arg(PKI_SCRIPT).arg(&dir),
            "tests/mtls/pki.sh",
        );
        dir
    })
}

/// A file of the shared PKI, as a string for configs and command lines.
fn f(name: &str) -> String {
    pki().join(name).display().to_string()
}

/// A fresh folder for one test's own files.
fn test_dir(test: &str) -> PathBuf {
    let dir = crate::testdir::test_path(&format!("mtls-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// What a command did.
#[derive(Debug)]
struct Ran {
    /// None: killed at the time limit.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with `stdin`, killing it after `limit`.
fn run(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Ran {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (out, killed) = match rx.recv_timeout(limit) {
        Ok(out) => (out, false),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (rx.recv().expect("child output"), true)
        }
    };
    let out = out.expect("child output");
    Ran {
        code: if killed { None } else { out.status.code() },
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// A curl request to https://localhost:PORT (resolved to 127.0.0.1).
#[derive(Debug)]
struct Curl {
    ran: Ran,
    status: u16,
    /// "1.1" or "2".
    http_version: String,
}

/// GET `path` with curl, presenting `cert` (NAME.crt/NAME.key of the PKI) when given, plus `extra`
/// arguments (-H, --http1.1).
fn curl(port: u16, path: &str, cert: Option<&str>, extra: &[&str]) -> Curl {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{http_version}"])
        .arg("--cacert")
        .arg(f("ca/ca.crt"))
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"));
    if let Some(c) = cert {
        cmd.arg("--cert")
            .arg(f(&format!("{c}.crt")))
            .arg("--key")
            .arg(f(&format!("{c}.key")));
    }
    cmd.args(extra)
        .arg(format!("https://localhost:{port}{path}"));
    let ran = run(&mut cmd, b"", Duration::from_secs(10));
    let mut w = ran.stdout.split_whitespace();
    let status = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let http_version = w.next().unwrap_or("").to_string();
    Curl {
        ran,
        status,
        http_version,
    }
}

/// curl arguments that send the five forged headers.
fn forged_args() -> Vec<&'static str> {
    FORGED.iter().flat_map(|h| ["-H", h]).collect()
}

/// `openssl s_client` to 127.0.0.1:PORT (SNI localhost, trusting the PKI's CA) with `args`,
/// `stdin` sent once connected.
fn s_client(port: u16, args: &[&str], stdin: &[u8]) -> Ran {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(f("ca/ca.crt"))
        .args(args);
    run(&mut cmd, stdin, Duration::from_secs(10))
}

/// Runs `cmd` to its end; panics with its stderr unless it succeeded. Returns its stdout.
fn run_ok(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({cmd:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One field of `openssl x509` for a certificate file, without its `name=` prefix.
fn x509_field(cert: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-nameopt", "RFC2253", "-in"])
            .arg(cert)
            .args(args),
        "openssl x509",
    );
    let text = String::from_utf8(out).expect("utf-8");
    let line = text.lines().next().expect("a line").trim();
    line.split_once('=')
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// The five header values a certificate should give, from openssl (normalized: the
/// fingerprint without colons, lowercase), and its PEM file.
struct Expected {
    subject: String,
    issuer: String,
    serial: String,
    fingerprint: String,
    pem: String,
}

fn expected(name: &str) -> Expected {
    let cert = pki().join(format!("{name}.crt"));
    Expected {
        subject: x509_field(&cert, &["-subject"]),
        issuer: x509_field(&cert, &["-issuer"]),
        serial: x509_field(&cert, &["-serial"]),
        fingerprint: x509_field(&cert, &["-fingerprint", "-sha256"])
            .replace(':', "")
            .to_ascii_lowercase(),
        pem: std::fs::read_to_string(&cert).expect("cert file"),
    }
}

fn count(seen: &Seen, name: &str) -> usize {
    seen.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// Percent-encoding of the spec: every byte but A-Z a-z 0-9 - . _ ~ as %XX (uppercase).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| panic!("bad percent escape at {i} in {s}"));
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The request `seen` carries exactly one of each header, with `cert`'s values.
fn assert_cert_headers(seen: &Seen, cert: &str, ctx: &str) {
    let want = expected(cert);
    for h in CERT_HEADERS {
        assert_eq!(
            count(seen, h),
            1,
            "{ctx}: one {h} header: {:?}",
            seen.headers
        );
    }
    let h = |n: &str| seen.header(n).unwrap_or("").to_string();
    assert_eq!(h("x-client-cert-subject"), want.subject, "{ctx}: subject");
    assert_eq!(h("x-client-cert-issuer"), want.issuer, "{ctx}: issuer");
    assert_eq!(h("x-client-cert-serial"), want.serial, "{ctx}: serial");
    assert_eq!(
        h("x-client-cert-fingerprint"),
        want.fingerprint,
        "{ctx}: fingerprint"
    );
    // The PEM: percent-encoded exactly as specified (re-encoding the decoded value gives the
    // header back), and the leaf certificate itself.
    let raw = h("x-client-cert");
    assert!(
        raw.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "{ctx}: only unreserved characters and escapes: {raw}"
    );
    let decoded = String::from_utf8(percent_decode(&raw)).expect("PEM is ASCII");
    assert_eq!(
        percent_encode(&decoded),
        raw,
        "{ctx}: uppercase %XX escapes"
    );
    assert!(
        decoded.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ctx}: {decoded}"
    );
    assert_eq!(
        strip_ws(&decoded),
        strip_ws(&want.pem),
        "{ctx}: the leaf's PEM"
    );
    let der: Vec<_> = rustls_pemfile::certs(&mut decoded.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM parses");
    assert_eq!(der.len(), 1, "{ctx}: the leaf only");
    assert_eq!(sha256_hex(&der[0]), want.fingerprint, "{ctx}: DER digest");
}

fn assert_no_cert_headers(seen: &Seen, ctx: &str) {
    for h in CERT_HEADERS {
        assert_eq!(
            count(seen, h),
            0,
            "{ctx}: no {h} header: {:?}",
            seen.headers
        );
    }
}

/// How an https listener "websecure" is set up.
#[derive(Default)]
struct Listener<'a> {
    /// None: no client_auth / client_ca / client_crl keys at all.
    client_auth: Option<&'a str>,
    /// Keys of [[listener]] (before [listener.tls]).
    listener_extra: &'a str,
    /// Replaces the `certificates = [...]` line.
    certificates: Option<String>,
    /// More [listener.tls] keys.
    tls_extra: &'a str,
    /// The CRL files (default: the PKI's revoked.crl.pem).
    crl: Option<String>,
    /// [[listener.rule]] tables.
    rules: &'a str,
}

/// A config: one worker, an admin API, the https listener "websecure" forwarding to `app`,
/// then `rest` (more listeners and groups).
fn config(l: &Listener, app: SocketAddr, rest: &str) -> String {
    let certificates = l.certificates.clone().unwrap_or_else(|| {
        format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            f("site.crt"),
            f("site.key")
        )
    });
    let auth = match l.client_auth {
        None => String::new(),
        Some(a) => format!(
            "  client_auth = \"{a}\"\n  client_ca = \"{}\"\n  client_crl = [{}]\n",
            f("clients-ca.pem"),
            l.crl
                .clone()
                .unwrap_or_else(|| format!("\"{}\"", f("revoked.crl.pem")))
        ),
    };
    format!(
        "[runtime]\nworkers = 1\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"websecure\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         target_group = \"app\"\n{}\n  [listener.tls]\n  {certificates}\n{auth}{}\n{}\n\
         {rest}\n[[target_group]]\nname = \"app\"\ntargets = [\"{app}\"]\n",
        l.listener_extra, l.tls_extra, l.rules
    )
}

/// `ringlb_tls_handshake_failures_total{listener="websecure",reason=R}` (0 when absent).
fn failures(admin: SocketAddr, reason: &str) -> u64 {
    let text = admin_request(admin, "GET", "/metrics", None, None).text();
    let key = format!(
        "ringlb_tls_handshake_failures_total{{listener=\"websecure\",reason=\"{reason}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse::<f64>().expect("a number") as u64)
        .unwrap_or(0)
}

fn wait_failures(admin: SocketAddr, reason: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = failures(admin, reason);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let text = admin_request(admin, "GET", "/metrics", None, None).text();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("tls_handshake"))
                .collect();
            panic!("reason {reason}: counted {got}, want {want}; metrics: {lines:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// curl arguments for a refusal over HTTP/1.1 (curl writes its request once, then reads). With
/// curl's default HTTP/2 it writes its preface right after the handshake as well; ringlb's
/// lingering close still lets it read the alert (tested too).
const H1: &[&str] = &["--http1.1"];

/// curl was refused at the handshake with an alert, promptly.
fn assert_refused(c: &Curl, ctx: &str) {
    assert!(
        c.ran.code.is_some_and(|code| code != 0),
        "{ctx}: curl must fail: {c:?}"
    );
    assert_eq!(c.status, 0, "{ctx}: no HTTP response: {c:?}");
    assert!(
        c.ran.took < Duration::from_secs(4),
        "{ctx}: refused promptly (no hang): {c:?}"
    );
    assert!(
        c.ran.stderr.to_ascii_lowercase().contains("alert"),
        "{ctx}: a TLS alert says why: {}",
        c.ran.stderr
    );
}

fn reload(p: &Proxy) {
    let r = admin_request(p.admin(), "POST", "/reload", None, None);
    assert_eq!(r.status, 200, "reload: {}", r.text());
}

/// A target and ringlb in front of it, with `client_auth` on its https listener.
fn proxy_with(client_auth: Option<&'static str>) -> (Backend, Proxy) {
    let app = Backend::start("app");
    let l = Listener {
        client_auth,
        ..Default::default()
    };
    let p = Proxy::start(&config(&l, app.addr, ""));
    (app, p)
}

#[test]
fn required_with_a_good_certificate_forwards_the_five_headers() {
    let (app, p) = proxy_with(Some("required"));
    let port = p.addr.port();

    // What the spec's own examples say, before comparing with openssl.
    let alice = expected("alice");
    assert_eq!(alice.subject, "CN=alice,OU=eng,O=Example Corp,C=US");
    assert_eq!(alice.serial, "1000", "serial 4096");

    // HTTP/1.1 and HTTP/2, each with forged headers the client sent itself.
    let mut forged_h1 = forged_args();
    forged_h1.push("--http1.1");
    let forged = forged_args();
    for (label, args) in [
        ("HTTP/1.1", &forged_h1),
        ("HTTP/2 (if negotiated)", &forged),
    ] {
        let c = curl(port, "/alice", Some("alice"), args);
        assert_eq!(c.status, 200, "{label}: {c:?}");
        let seen = app.last();
        assert_eq!(seen.target, "/alice");
        assert_cert_headers(&seen, "alice", label);
        assert_eq!(
            seen.header("x-client-cert-issuer"),
            Some("CN=Example Client CA,O=Example Corp,C=US")
        );
    }
    assert_eq!(
        curl(port, "/", Some("alice"), &[]).http_version,
        "2",
        "curl and ringlb negotiate HTTP/2 (the h2 path is covered)"
    );

    // Escapes in the subject (, + ; " \ < > and a leading #), UTF-8 as \XX, and a serial whose
    // DER integer starts with a zero byte.
    let c = curl(port, "/weird", Some("weird"), &["--http1.1"]);
    assert_eq!(c.status, 200, "{c:?}");
    let seen = app.last();
    assert_cert_headers(&seen, "weird", "special characters");
    assert_eq!(
        seen.header("x-client-cert-subject"),
        Some(r#"CN=\#Zo\C3\AB \"Z\" \\ x,OU=R&D \<lab\>,O=Smith\, Jones \+ Co\; Ltd,C=US"#)
    );
    assert_eq!(
        seen.header("x-client-cert-serial"),
        Some("9F00000000000001")
    );
    let c = curl(port, "/weird2", Some("weird"), &[]);
    assert_eq!(c.status, 200, "{c:?}");
    assert_cert_headers(&app.last(), "weird", "special characters over HTTP/2");
}

#[test]
fn required_refuses_missing_unknown_revoked_and_expired_certificates_and_counts_them() {
    let (app, p) = proxy_with(Some("required"));
    let (port, admin) = (p.addr.port(), p.admin());

    for (cert, reason) in [
        (None, "no_certificate"),
        (Some("rogue"), "unknown_ca"),
        (Some("revoked"), "revoked"),
        (Some("expired"), "expired"),
    ] {
        let c = curl(port, "/", cert, H1);
        assert_refused(&c, reason);
        wait_failures(admin, reason, 1);
        // curl's default (ALPN h2): it writes the HTTP/2 preface before reading the alert; the
        // alert must still reach it, not a reset (a lingering close).
        for _ in 0..3 {
            let c = curl(port, "/", cert, &[]);
            assert_refused(&c, &format!("{reason} over h2"));
        }
        wait_failures(admin, reason, 4);
    }
    // Each reason counted once: no refusal was counted under another reason.
    for reason in ["bad_certificate", "other"] {
        assert_eq!(failures(admin, reason), 0, "{reason}");
    }
    // openssl s_client without a certificate: an alert, not a hang.
    let r = s_client(
        port,
        &["-ign_eof"],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(r.code.is_some(), "s_client ended by itself: {r:?}");
    assert!(r.took < Duration::from_secs(3), "{r:?}");
    assert!(r.all().contains("alert"), "{}", r.all());
    wait_failures(admin, "no_certificate", 5);
    assert_eq!(app.requests(), 0, "nothing refused reached the target");

    // The same listener serves a good certificate.
    let c = curl(port, "/", Some("alice"), &[]);
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(app.requests(), 1);
}

#[test]
fn optional_without_a_certificate_forwards_none_of_the_headers_even_forged_ones() {
    let (app, p) = proxy_with(Some("optional"));
    let port = p.addr.port();

    let mut h1 = forged_args();
    h1.push("--http1.1");
    for (label, args) in [("HTTP/1.1", h1), ("HTTP/2", forged_args())] {
        let c = curl(port, "/anon", None, &args);
        assert_eq!(c.status, 200, "{label}: {c:?}");
        let seen = app.last();
        assert_eq!(seen.target, "/anon");
        assert_no_cert_headers(&seen, label);
        // With a certificate, the real values replace the forged ones.
        let c = curl(port, "/alice", Some("alice"), &args);
        assert_eq!(c.status, 200, "{label}: {c:?}");
        assert_cert_headers(&app.last(), "alice", label);
    }
    assert_eq!(
        failures(p.admin(), "no_certificate"),
        0,
        "optional: not a failure"
    );

    // A certificate from an unknown CA is never taken for an identity: refused, or forwarded
    // without any client-cert header.
    let before = app.requests();
    let mut args = forged_args();
    args.push("--http1.1");
    let c = curl(port, "/rogue", Some("rogue"), &args);
    if c.status == 200 {
        assert_eq!(app.requests(), before + 1);
        assert_no_cert_headers(&app.last(), "unknown CA on an optional listener");
    } else {
        assert_refused(&c, "unknown CA on an optional listener");
        assert_eq!(app.requests(), before);
    }
}

#[test]
fn forged_client_cert_headers_are_stripped_on_plain_http_and_tls_without_client_auth() {
    let app = Backend::start("app");
    let plain = "[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
                 target_group = \"app\"\n\n";
    let p = Proxy::start(&config(&Listener::default(), app.addr, plain));
    let plain_addr = p
        .server
        .as_ref()
        .and_then(|s| s.listener_addr("plain"))
        .expect("plain listener");

    // Plain HTTP, each forged header twice, next to a header that must pass.
    let mut head = String::from("GET /plain HTTP/1.1\r\nHost: t\r\nX-Keep: yes\r\n");
    for h in FORGED.iter().chain(FORGED.iter()) {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut c = Client::connect(plain_addr);
    c.send(head.as_bytes());
    assert_eq!(c.read_response(false).expect("response").status, 200);
    let seen = app.last();
    assert_eq!(seen.target, "/plain");
    assert_eq!(seen.header("x-keep"), Some("yes"), "other headers pass");
    assert_no_cert_headers(&seen, "plain http");
    // The next request on the same connection too.
    c.send(head.replace("/plain", "/plain2").as_bytes());
    assert_eq!(c.read_response(false).expect("response").status, 200);
    assert_eq!(app.last().target, "/plain2");
    assert_no_cert_headers(&app.last(), "plain http, second request");

    // An https listener without client_auth (off by default), HTTP/1.1 and HTTP/2; a client
    // certificate offered anyway is not asked for, so not forwarded.
    let mut h1 = forged_args();
    h1.extend(["--http1.1", "-H", "X-Keep: yes"]);
    let mut h2 = forged_args();
    h2.extend(["-H", "X-Keep: yes"]);
    for (label, args) in [("https HTTP/1.1", h1), ("https HTTP/2", h2)] {
        for cert in [None, Some("alice")] {
            let c = curl(p.addr.port(), "/tls", cert, &args);
            assert_eq!(c.status, 200, "{label}: {c:?}");
            let seen = app.last();
            assert_eq!(seen.header("x-keep"), Some("yes"), "{label}");
            assert_no_cert_headers(&seen, &format!("{label}, cert {cert:?}"));
        }
    }

    // The CGI spelling with underscores is dropped as well.
    let mut c = Client::connect(plain_addr);
    c.send(b"GET /underscore HTTP/1.1\r\nHost: t\r\nX_Client_Cert_Subject: CN=admin\r\n\r\n");
    assert_eq!(c.read_response(false).expect("response").status, 200);
    let seen = app.last();
    assert_eq!(seen.target, "/underscore");
    assert!(!seen.has("x_client_cert_subject"), "{seen:?}");

    // A chunked request whose trailer forges one: refused, and the target is cut off before
    // the trailer is complete.
    let before = app.requests();
    let mut c = Client::connect(plain_addr);
    c.send(
        b"POST /trailer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nWiki\r\n0\r\nX-Client-Cert-Subject: CN=admin\r\n\r\n",
    );
    let r = c.read_response(false);
    assert!(
        r.as_ref().is_none_or(|r| r.status == 400),
        "a forged trailer: {:?}",
        r.map(|r| r.status)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(app.requests(), before, "the target completed no request");
}

#[test]
fn rules_route_on_the_client_certificate_subject() {
    let (app, admin, carol) = (
        Backend::start("app"),
        Backend::start("admin"),
        Backend::start("carol"),
    );
    let rules = "[[listener.rule]]\npriority = 10\nclient_cert_subject = [\"CN=admin*\"]\n\
                 forward = \"admin\"\n\n\
                 [[listener.rule]]\npriority = 20\n\
                 client_cert_subject = [\"cn=nobody*\", \"cn=CAROL,o=example corp,c=u?\"]\n\
                 forward = \"carol\"\n\n";
    let groups = format!(
        "[[target_group]]\nname = \"admin\"\ntargets = [\"{}\"]\n\n\
         [[target_group]]\nname = \"carol\"\ntargets = [\"{}\"]\n\n",
        admin.addr, carol.addr
    );
    let l = Listener {
        client_auth: Some("optional"),
        rules,
        ..Default::default()
    };
    let p = Proxy::start(&config(&l, app.addr, &groups));
    let port = p.addr.port();
    // A forged subject header must not steer the rule.
    let forged = ["-H", "X-Client-Cert-Subject: CN=admin-forged", "--http1.1"];
    for (cert, want) in [
        (Some("admin"), "admin"),
        (Some("alice"), "app"),
        (Some("carol"), "carol"),
        (None, "app"),
        (Some("weird"), "app"),
    ] {
        let counts = |b: &Backend| b.requests();
        let before = [counts(&app), counts(&admin), counts(&carol)];
        let c = curl(port, "/who", cert, &forged);
        assert_eq!(c.status, 200, "{cert:?}: {c:?}");
        let after = [counts(&app), counts(&admin), counts(&carol)];
        let went: Vec<&str> = ["app", "admin", "carol"]
            .iter()
            .zip(before.iter().zip(after.iter()))
            .filter(|(_, (b, a))| a > b)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(went, vec![want], "{cert:?} routed to {want}");
    }
    assert_cert_headers(&admin.last(), "admin", "admin group");
}

#[test]
fn a_reload_re_reads_the_crl() {
    let dir = test_dir("crl");
    // A copy of the CA database, and the CRL the listener reads.
    let ca = dir.join("ca");
    run_ok(
        Command::new("cp").arg("-r").arg(pki().join("ca")).arg(&ca),
        "cp -r",
    );
    let crl = dir.join("crl.pem");
    std::fs::copy(pki().join("revoked.crl.pem"), &crl).expect("copy CRL");

    let app = Backend::start("app");
    let l = Listener {
        client_auth: Some("required"),
        crl: Some(format!("\"{}\"", crl.display())),
        ..Default::default()
    };
    let path = dir.join("ringlb.toml");
    std::fs::write(&path, config(&l, app.addr, "")).expect("write config");
    let p = Proxy::from_file(&path);
    let port = p.addr.port();
    assert_eq!(
        curl(port, "/", Some("later"), &[]).status,
        200,
        "dave not revoked yet"
    );
    assert_refused(&curl(port, "/", Some("revoked"), H1), "mallory");
    // Dave also keeps sessions (TLS 1.3 ticket, TLS 1.2 session id) from before his revocation.
    let req = b"GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (cert, key) = (f("later.crt"), f("later.key"));
    let sessions: Vec<(&str, String)> = ["-tls1_3", "-tls1_2"]
        .into_iter()
        .map(|v| {
            let sess = dir.join(format!("dave{v}.pem")).display().to_string();
            let r = s_client(
                port,
                &[
                    v,
                    "-ign_eof",
                    "-cert",
                    &cert,
                    "-key",
                    &key,
                    "-sess_out",
                    &sess,
                ],
                req,
            );
            assert!(r.stdout.contains("HTTP/1.1 200"), "{v}: {r:?}");
            (v, sess)
        })
        .collect();

    // Revoke dave, publish the new CRL; nothing changes until the reload.
    let ca_cmd = |args: &[&str]| {
        run_ok(
            Command::new("openssl")
                .current_dir(&ca)
                .args(["ca", "-config", "openssl.cnf"])
                .args(args),
            "openssl ca",
        );
    };
    ca_cmd(&["-revoke", &f("later.crt")]);
    let new_crl = dir.join("crl.new");
    ca_cmd(&["-gencrl", "-out", &new_crl.display().to_string()]);
    std::fs::rename(&new_crl, &crl).expect("publish the CRL");
    assert_eq!(
        curl(port, "/", Some("later"), &[]).status,
        200,
        "the CRL is read at start and on reload only"
    );
    reload(&p);
    let c = curl(port, "/", Some("later"), H1);
    assert_refused(&c, "dave after the reload");
    wait_failures(p.admin(), "revoked", 2);
    // His old sessions do not resume: a CRL change renews the ticket keys and session cache.
    let served = app.requests();
    for (v, sess) in &sessions {
        let r = s_client(port, &[v, "-ign_eof", "-sess_in", sess], req);
        assert!(
            !r.stdout.contains("Reused,") && !r.stdout.contains("HTTP/1.1 200"),
            "{v}: a session from before the revocation: {}",
            r.all()
        );
    }
    assert_eq!(app.requests(), served, "nothing reached the target");
    // Everyone else still gets in.
    let c = curl(port, "/alice", Some("alice"), &[]);
    assert_eq!(c.status, 200, "{c:?}");
    assert_cert_headers(&app.last(), "alice", "after the reload");
}

#[test]
fn resumed_sessions_keep_the_client_certificate_headers() {
    let dir = test_dir("resume");
    let (app, p) = proxy_with(Some("required"));
    let port = p.addr.port();
    let (cert, key) = (f("alice.crt"), f("alice.key"));
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.join(format!("sess{version}.pem")).display().to_string();
        let req = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        };
        let first = s_client(
            port,
            &[
                version,
                "-ign_eof",
                "-cert",
                &cert,
                "-key",
                &key,
                "-sess_out",
                &sess,
            ],
            req("/first").as_bytes(),
        );
        assert!(
            first.stdout.contains("HTTP/1.1 200"),
            "{version}: {first:?}"
        );
        assert!(
            first.stdout.contains("New, TLSv1."),
            "{version}: full handshake"
        );
        let seen = app.last();
        assert_eq!(seen.target, "/first");
        assert_cert_headers(&seen, "alice", version);

        // Resumed without presenting the certificate again: the session carries it.
        let second = s_client(
            port,
            &[version, "-ign_eof", "-sess_in", &sess],
            req("/resumed").as_bytes(),
        );
        assert!(
            second.stdout.contains("Reused, TLSv1."),
            "{version}: the session resumed: {}",
            second.all()
        );
        assert!(
            second.stdout.contains("HTTP/1.1 200"),
            "{version}: {second:?}"
        );
        let seen = app.last();
        assert_eq!(seen.target, "/resumed");
        assert_cert_headers(&seen, "alice", &format!("{version} resumed"));
    }
}

/// The "Next Update:" line of the stapled response in s_client -status output (None: nothing
/// stapled).
fn stapled(port: u16) -> (String, Option<String>) {
    let r = s_client(port, &["-status"], b"");
    let out = r.all();
    let next = out
        .lines()
        .find(|l| l.trim_start().starts_with("Next Update:"))
        .map(|l| l.trim().to_string());
    (out, next)
}

fn ocsp_next_update(file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["ocsp", "-noverify", "-resp_text", "-respin"])
        .arg(file)
        .output()
        .expect("openssl ocsp");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("Next Update:"))
        .map(|l| l.trim().to_string())
        .expect("Next Update in the response")
}

/// An OCSP response for site.crt made by the PKI's CA, valid `days`.
fn make_ocsp(ca: &Path, out: &Path, days: u32) {
    let req = out.with_extension("req");
    let sh = |args: Vec<String>| {
        run_ok(Command::new("openssl").args(&args), "openssl ocsp");
    };
    let p = |p: &Path| p.display().to_string();
    sh(vec![
        "ocsp".into(),
        "-issuer".into(),
        p(&ca.join("ca.crt")),
        "-cert".into(),
        f("site.crt"),
        "-no_nonce".into(),
        "-reqout".into(),
        p(&req),
    ]);
    sh(vec![
        "ocsp".into(),
        "-index".into(),
        p(&ca.join("index.txt")),
        "-rsigner".into(),
        p(&ca.join("ca.crt")),
        "-rkey".into(),
        p(&ca.join("ca.key")),
        "-CA".into(),
        p(&ca.join("ca.crt")),
        "-reqin".into(),
        p(&req),
        "-respout".into(),
        p(out),
        "-ndays".into(),
        days.to_string(),
    ]);
}

#[test]
fn ocsp_response_is_stapled_and_re_read_on_reload() {
    let dir = test_dir("ocsp");
    let ocsp = dir.join("site.ocsp.der");
    std::fs::copy(pki().join("site.ocsp.der"), &ocsp).expect("copy OCSP response");
    let app = Backend::start("app");
    let l = Listener {
        certificates: Some(format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }}]",
            f("site.crt"),
            f("site.key"),
            ocsp.display()
        )),
        ..Default::default()
    };
    let path = dir.join("ringlb.toml");
    std::fs::write(&path, config(&l, app.addr, "")).expect("write config");
    let p = Proxy::from_file(&path);
    let port = p.addr.port();

    let (out, next) = stapled(port);
    assert!(
        out.contains("OCSP Response Status: successful"),
        "stapled: {out}"
    );
    assert!(out.contains("Cert Status: good"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert_eq!(next.as_deref(), Some(ocsp_next_update(&ocsp).as_str()));

    // A new response (valid 7 days instead of 1): served after the reload.
    let new = dir.join("new.der");
    make_ocsp(&pki().join("ca"), &new, 7);
    std::fs::rename(&new, &ocsp).expect("replace the response");
    let want = ocsp_next_update(&ocsp);
    assert_ne!(Some(&want), next.as_ref(), "the new response differs");
    reload(&p);
    let (out, next) = stapled(port);
    assert!(out.contains("Cert Status: good"), "{out}");
    assert_eq!(next, Some(want), "the re-read response is stapled");
    // And plain clients are served as before.
    assert_eq!(curl(port, "/", None, &[]).status, 200);

    // Without `ocsp`, nothing is stapled.
    let l = Listener::default();
    let p2 = Proxy::start(&config(&l, app.addr, ""));
    let (out, next) = stapled(p2.addr.port());
    assert!(
        out.contains("OCSP response: no response sent") && next.is_none(),
        "{out}"
    );
}

/// DER: (header length, content length) of the element at `at`, checking its tag.
fn der(b: &[u8], at: usize, tag: u8) -> (usize, usize) {
    assert_eq!(b[at], tag, "DER tag at {at}");
    let l = b[at + 1] as usize;
    if l < 0x80 {
        return (2, l);
    }
    let n = l & 0x7f;
    let len = b[at + 2..at + 2 + n]
        .iter()
        .fold(0usize, |a, &x| (a << 8) | x as usize);
    (2 + n, len)
}

/// An OCSP response whose every time (producedAt, thisUpdate, nextUpdate) is a year earlier than
/// in `good`, re-signed with the CA key: a correctly signed response that expired long ago.
/// (`openssl ocsp` only makes responses from now on.)
fn expired_ocsp(good: &Path, ca_key: &Path, out: &Path) {
    let mut b = std::fs::read(good).expect("OCSP response");
    // OCSPResponse { status, [0] { type, OCTET STRING { BasicOCSPResponse } } }
    let (h, _) = der(&b, 0, 0x30);
    let mut at = h;
    let (h, l) = der(&b, at, 0x0a);
    at += h + l;
    let (h, _) = der(&b, at, 0xa0);
    at += h;
    let (h, _) = der(&b, at, 0x30);
    at += h;
    let (h, l) = der(&b, at, 0x06);
    at += h + l;
    let (h, _) = der(&b, at, 0x04);
    at += h;
    // BasicOCSPResponse { tbsResponseData, signatureAlgorithm, signature BIT STRING, ... }
    let (h, _) = der(&b, at, 0x30);
    at += h;
    let tbs_at = at;
    let (h, l) = der(&b, at, 0x30);
    let tbs_end = at + h + l;
    at = tbs_end;
    let (h, l) = der(&b, at, 0x30);
    at += h + l;
    let (h, l) = der(&b, at, 0x03);
    let (sig_at, sig_len) = (at + h + 1, l - 1);
    // Every GeneralizedTime in the signed data: the year minus one.
    let mut shifted = 0;
    let mut i = tbs_at;
    while i + 17 <= tbs_end {
        if b[i] == 0x18 && b[i + 1] == 15 && b[i + 16] == b'Z' {
            let year: u32 = std::str::from_utf8(&b[i + 2..i + 6])
                .unwrap()
                .parse()
                .unwrap();
            b[i + 2..i + 6].copy_from_slice(format!("{:04}", year - 1).as_bytes());
            shifted += 1;
            i += 17;
        } else {
            i += 1;
        }
    }
    assert_eq!(shifted, 3, "producedAt, thisUpdate and nextUpdate");
    // Re-sign; ECDSA signatures vary in length, so sign until one fits in place.
    let key = rustls_pemfile::private_key(&mut std::fs::read(ca_key).expect("key").as_slice())
        .expect("PEM")
        .expect("a key");
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_der(),
        &rng,
    )
    .expect("the CA key (P-256, PKCS#8)");
    let sig = (0..1000)
        .map(|_| pair.sign(&rng, &b[tbs_at..tbs_end]).expect("sign"))
        .find(|s| s.as_ref().len() == sig_len)
        .expect("a signature of the same length");
    b[sig_at..sig_at + sig_len].copy_from_slice(sig.as_ref());
    std::fs::write(out, &b).expect("write OCSP response");
}

fn check(dir: &Path, text: &str) -> Ran {
    let path = dir.join("check.toml");
    std::fs::write(&path, text).expect("write config");
    let mut cmd = Command::new(crate::cli::bin());
    cmd.args(["check", "--config"]).arg(&path);
    run(&mut cmd, b"", Duration::from_secs(20))
}

#[test]
fn check_refuses_an_ocsp_response_for_another_certificate_and_warns_on_an_expired_one() {
    let dir = test_dir("check");
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with_ocsp = |ocsp: &str| Listener {
        certificates: Some(format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\", ocsp = \"{ocsp}\" }}]",
            f("site.crt"),
            f("site.key")
        )),
        ..Default::default()
    };

    // The good response passes, without a warning.
    let r = check(&dir, &config(&with_ocsp(&f("site.ocsp.der")), app, ""));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.all().to_ascii_lowercase().contains("expired"), "{r:?}");

    // A response about another certificate (other serial): a located error.
    let text = config(&with_ocsp(&f("other.ocsp.der")), app, "");
    let line = text
        .lines()
        .position(|l| l.contains("ocsp = "))
        .expect("the certificates line")
        + 1;
    let r = check(&dir, &text);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&format!("check.toml:{line}:")) && r.stderr.contains("ocsp"),
        "located at the certificates line {line}: {r:?}"
    );

    // An expired response (nextUpdate a year ago, correctly signed): a warning, exit 0.
    let expired = dir.join("expired.ocsp.der");
    expired_ocsp(
        &pki().join("site.ocsp.der"),
        &pki().join("ca/ca.key"),
        &expired,
    );
    let verify = Command::new("openssl")
        .args(["ocsp", "-resp_text", "-respin"])
        .arg(&expired)
        .arg("-CAfile")
        .arg(f("ca/ca.crt"))
        .output()
        .expect("openssl ocsp");
    let verify = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.contains("Response verify OK"),
        "the test's expired response is well signed: {verify}"
    );
    let r = check(
        &dir,
        &config(&with_ocsp(&expired.display().to_string()), app, ""),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.all().contains("expired"), "warns: {r:?}");

    // client_auth without client_ca is an error too.
    let text = config(&Listener::default(), app, "").replace(
        "\n  [listener.tls]\n",
        "\n  [listener.tls]\n  client_auth = \"required\"\n",
    );
    let r = check(&dir, &text);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("client_ca"), "{r:?}");
}

/// The TLS 1.3 suite s_client negotiated offering `suites` in that order.
fn negotiated(port: u16, suites: &str) -> String {
    let r = s_client(port, &["-tls1_3", "-ciphersuites", suites], b"");
    let out = r.all();
    out.lines()
        .find_map(|l| {
            l.split_once("Cipher is ")
                .map(|(_, c)| c.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no cipher in: {out}"))
}

#[test]
fn cipher_preference_server_ignores_the_client_order_and_client_follows_it() {
    let app = Backend::start("app");
    let forward = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
    let reverse = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
    let aes_ni = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "aes"));
    for pref in [None, Some("server")] {
        let l = Listener {
            tls_extra: match pref {
                None => "",
                Some(_) => "  cipher_preference = \"server\"\n",
            },
            ..Default::default()
        };
        let p = Proxy::start(&config(&l, app.addr, ""));
        let a = negotiated(p.addr.port(), forward);
        let b = negotiated(p.addr.port(), reverse);
        assert_eq!(a, b, "{pref:?}: the server's order, whatever the client's");
        if aes_ni {
            assert_eq!(
                a, "TLS_AES_256_GCM_SHA384",
                "{pref:?}: rustls' first choice"
            );
        }
    }
    let l = Listener {
        tls_extra: "  cipher_preference = \"client\"\n",
        ..Default::default()
    };
    let p = Proxy::start(&config(&l, app.addr, ""));
    assert_eq!(negotiated(p.addr.port(), forward), "TLS_AES_128_GCM_SHA256");
    assert_eq!(negotiated(p.addr.port(), reverse), "TLS_AES_256_GCM_SHA384");
}

#[test]
fn access_log_lines_carry_the_client_certificate() {
    let dir = test_dir("alog");
    let log = dir.join("web.log");
    let app = Backend::start("app");
    let extra = format!("access_log = \"{}\"", log.display());
    let l = Listener {
        client_auth: Some("optional"),
        listener_extra: &extra,
        ..Default::default()
    };
    let p = Proxy::start(&config(&l, app.addr, ""));
    let port = p.addr.port();
    assert_eq!(
        curl(port, "/with", Some("alice"), &["--http1.1"]).status,
        200
    );
    assert_eq!(curl(port, "/without", None, &forged_args()).status, 200);
    assert_eq!(curl(port, "/weird", Some("weird"), &[]).status, 200);

    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    wait_for(Duration::from_millis(2500), "3 access log lines", || {
        read().len() >= 3
    });
    let lines = read();
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("a line for {p}: {lines:?}"))
            .clone()
    };
    let (alice, weird) = (expected("alice"), expected("weird"));
    let with = by_path("/with");
    assert_eq!(
        with["client_cert_subject"],
        alice.subject.as_str(),
        "{with}"
    );
    assert_eq!(
        with["client_cert_fingerprint"],
        alice.fingerprint.as_str(),
        "{with}"
    );
    let without = by_path("/without");
    for k in ["client_cert_subject", "client_cert_fingerprint"] {
        assert!(
            without.get(k).is_some_and(|v| v.is_null()),
            "{k} is null without a certificate: {without}"
        );
    }
    let w = by_path("/weird");
    assert_eq!(w["client_cert_subject"], weird.subject.as_str(), "{w}");
    assert_eq!(w["client_cert_fingerprint"], weird.fingerprint.as_str());
}

/// A client certificate valid for `secs` seconds from now, signed by `ca`: (cert DER, key DER).
fn short_lived_client(
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
    secs: i64,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "short-lived");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let cert = p.signed_by(&key, ca, ca_key).expect("sign");
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    (cert.der().clone(), der.into())
}

#[test]
fn a_session_resumed_after_its_client_certificate_expired_is_refused() {
    let dir = test_dir("expire");
    // Our own CA (rcgen), so the client certificate can expire two seconds from now.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut cap = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    cap.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    cap.distinguished_name
        .push(rcgen::DnType::CommonName, "expiry test CA");
    let ca = cap.self_signed(&ca_key).expect("CA");
    let ca_path = dir.join("clients-ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let (client_cert, client_key) = short_lived_client(&ca, &ca_key, 2);

    let app = Backend::start("app");
    // No CRL: the PKI's is not from this CA.
    let l = Listener {
        client_auth: Some("required"),
        crl: Some(String::new()),
        ..Default::default()
    };
    let text =
        config(&l, app.addr, "").replace(&f("clients-ca.pem"), &ca_path.display().to_string());
    assert!(text.contains(&*ca_path.display().to_string()), "{text}");
    let p = Proxy::start(&text);

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(f("ca/ca.crt")).expect("server CA")[..]) {
        roots.add(c.expect("pem")).expect("root");
    }
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert], client_key)
        .expect("client cert"),
    );
    let connect = || {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(client.clone(), name).expect("conn");
        let mut c = Client::with_tls(p.addr, conn);
        c.send(b"GET /expiry HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = c.read_response(false);
        (
            r.map(|r| r.status),
            c.tls.take().and_then(|t| t.handshake_kind()),
        )
    };
    // Valid now: a full handshake, then a resumed one, both served.
    assert_eq!(connect(), (Some(200), Some(rustls::HandshakeKind::Full)));
    assert_eq!(connect(), (Some(200), Some(rustls::HandshakeKind::Resumed)));
    // Expired: the session's ticket still opens, but ringlb refuses the connection.
    std::thread::sleep(Duration::from_millis(2600));
    let served = app.requests();
    let (status, _) = connect();
    assert_eq!(
        status, None,
        "a session whose certificate expired is not served"
    );
    assert_eq!(app.requests(), served);
    wait_failures(p.admin(), "expired", 1);
}
