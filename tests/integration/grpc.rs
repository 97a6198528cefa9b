//! gRPC and HTTP/2 to targets, told as a user meets them: a grpcio service behind ringlb
//! (`protocol_version = "grpc"`) answering unary and streaming calls with messages of megabytes,
//! its statuses and trailers passing through; ringlb's own answers to calls it cannot complete
//! (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, always as gRPC statuses); gRPC health
//! checks; TLS on both sides; and `protocol_version = "http2"` groups multiplexing streams over
//! few upstream connections.
//!
//! The origins are `tests/grpc/server.py` (grpcio, one process per test) and an in-process `h2`
//! server; the clients are `tests/grpc/client.py` (grpcio, and a raw `h2` mode that has no
//! deadline of its own) and the `h2` crate. They need python3 with grpcio,
//! grpcio-health-checking and h2: the tests panic, naming them, when they are missing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use serde_json::Value;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Python: the grpcio origin and client.

/// python3, once checked to have the modules the scripts import.
fn python() -> &'static str {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let need = "tests/integration/grpc.rs needs python3 with grpcio, grpcio-health-checking \
                    and h2 (pip install grpcio grpcio-health-checking h2)";
        let out = Command::new("python3")
            .args(["-c", "import grpc, grpc_health.v1.health, h2.connection"])
            .output()
            .unwrap_or_else(|e| panic!("{need}: python3 cannot be run: {e}"));
        assert!(
            out.status.success(),
            "{need}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    "python3"
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// A `tests/grpc/server.py` process: test.Echo, test.Control and grpc.health.v1.Health.
struct Origin {
    addr: SocketAddr,
    _child: KillOnDrop,
}

impl Origin {
    fn start() -> Origin {
        Origin::spawn(&[])
    }

    /// The origin serving TLS (ALPN h2) with `cert`.
    fn start_tls(cert: &Path, key: &Path) -> Origin {
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        Origin::spawn(&["--tls", &c, &k])
    }

    fn spawn(extra: &[&str]) -> Origin {
        let mut child = Command::new(python())
            .arg(script("server.py"))
            .args(["--port", "0"])
            .args(extra)
            .env("GRPC_VERBOSITY", "ERROR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/grpc/server.py");
        let stdout = child.stdout.take().expect("stdout");
        let child = KillOnDrop(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tests/grpc/server.py printed READY <port>");
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("server.py said {line:?}, not READY <port>"));
        Origin {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }

    /// test.Control/Stats, asked directly (not through ringlb).
    fn stats(&self) -> Value {
        let reply = control(self.addr, "Stats", b"");
        serde_json::from_slice(&reply).expect("Stats is JSON")
    }

    /// Calls of a test.Echo method the origin's handler ran.
    fn calls(&self, method: &str) -> u64 {
        self.stats()["calls"][method].as_u64().unwrap_or(0)
    }

    /// The health status of "" and "test.Echo".
    fn set_serving(&self, serving: bool) {
        let want: &[u8] = if serving { b"SERVING" } else { b"NOT_SERVING" };
        assert_eq!(control(self.addr, "SetServing", want), want);
    }
}

/// Runs `tests/grpc/client.py` once with `steps` (each a step and its arguments, split at spaces
/// except inside single quotes; a step may start with `--target ADDR` to call elsewhere) and
/// returns its JSON lines, one per call.
fn client(target: SocketAddr, steps: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(python());
    cmd.arg(script("client.py"))
        .args(["--target", &target.to_string()]);
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            cmd.arg("then");
        }
        cmd.args(words(step));
    }
    let out = cmd
        .env("GRPC_VERBOSITY", "ERROR")
        .stdin(Stdio::null())
        .output()
        .expect("run tests/grpc/client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `a 'b c' d` -> ["a", "b c", "d"].
fn words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for ch in s.chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `code` of a client.py result.
fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

/// A metadata value the origin saw, from a `meta` step's result.
fn metadata<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta["metadata"]
        .as_array()?
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_str())
}

/// The elapsed time of a client.py result.
fn elapsed_ms(v: &Value) -> u64 {
    v["elapsed_ms"].as_u64().expect("elapsed_ms")
}

/// Asserts a raw-mode result is ringlb's own answer: HTTP 200, trailers-only, `grpc_status`.
fn assert_trailers_only(v: &Value, grpc_status: &str) {
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["grpc_status"], grpc_status, "{v}");
    assert_eq!(v["trailers_only"], true, "{v}");
    assert!(
        v["headers"]["content-type"]
            .as_str()
            .is_some_and(|c| c.starts_with("application/grpc")),
        "{v}"
    );
}

// ---------------------------------------------------------------------------------------------
// Config.

pub(crate) const HEAD: &str = "[admin]\nbind = \"127.0.0.1:0\"\n\n[runtime]\nworkers = 1\n\n";

/// A listener with HTTP/2 on (h2c by prior knowledge on http); `extra` ends the table (keys,
/// then subtables such as [listener.limits]).
pub(crate) fn listener(name: &str, protocol: &str, group: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\n\
         target_group = \"{group}\"\nhttp2 = true\n{extra}\n\n"
    )
}

/// A target group speaking `version` to `targets`; `extra` ends the table.
pub(crate) fn group(name: &str, version: &str, targets: &[SocketAddr], extra: &str) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[target_group]]\nname = \"{name}\"\nprotocol_version = \"{version}\"\n\
         targets = [{}]\n{extra}\n\n",
        t.join(", ")
    )
}

/// A gRPC health check of `service` every 200 ms, two answers to change state.
fn grpc_health(service: &str) -> String {
    format!(
        "  [target_group.health_check]\n  protocol = \"grpc\"\n  grpc_service = \"{service}\"\n\
         \x20 interval = \"200ms\"\n  timeout = \"150ms\"\n  healthy_threshold = 2\n\
         \x20 unhealthy_threshold = 2\n"
    )
}

fn listener_addr(p: &Proxy, name: &str) -> SocketAddr {
    p.server
        .as_ref()
        .and_then(|s| s.listener_addr(name))
        .unwrap_or_else(|| panic!("listener {name} bound"))
}

/// An address nothing listens on.
fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::cli::free_port()))
}

/// (state, reason) of `addr` in target group `group` in `/status`.
fn group_target(admin: SocketAddr, group: &str, addr: SocketAddr) -> (String, String) {
    let s = status(admin);
    let t = s["target_groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == group))
        .and_then(|g| g["targets"].as_array())
        .and_then(|ts| {
            ts.iter()
                .find(|t| t["address"] == addr.to_string())
                .cloned()
        });
    match t {
        Some(t) => (
            t["state"].as_str().unwrap_or("").to_string(),
            t["reason"].as_str().unwrap_or("").to_string(),
        ),
        None => ("absent".to_string(), String::new()),
    }
}

/// Waits until `addr` in `group` is in `state`; returns its reason.
fn wait_group_state(admin: SocketAddr, group: &str, addr: SocketAddr, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = group_target(admin, group, addr);
        if last.0 == state {
            return last.1;
        }
        assert!(
            Instant::now() < deadline,
            "{group}/{addr} never became {state}; last {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 and gRPC framing with the `h2` crate.

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An h2c connection (prior knowledge); the connection runs as a task.
pub(crate) async fn h2c(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// What a stream brought back.
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Reply {
    /// grpc-status from the trailers, or from the head of a trailers-only response.
    fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }
}

pub(crate) async fn exchange(
    send: &SendRequest<Bytes>,
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
    let (parts, mut recv) = resp.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await?;
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: data,
        trailers,
    })
}

/// A gRPC request head (the message goes as the body).
pub(crate) fn grpc_request(authority: &str, path: &str, extra: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

/// A length-prefixed, uncompressed gRPC message.
pub(crate) fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let n = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let end = (5 + n).min(body.len());
        out.push(body[5..end].to_vec());
        body = &body[end..];
    }
    out
}

/// One test.Control call to an origin, directly: its reply message.
fn control(origin: SocketAddr, method: &str, body: &[u8]) -> Vec<u8> {
    rt().block_on(async {
        let send = h2c(origin).await;
        let req = grpc_request(&origin.to_string(), &format!("/test.Control/{method}"), &[]);
        let r = exchange(&send, req, Some(&grpc_frame(body)))
            .await
            .expect("control call");
        assert_eq!(r.grpc_status(), Some("0"), "test.Control/{method}");
        grpc_messages(&r.body).pop().unwrap_or_default()
    })
}

/// One test.Echo/Unary call through `addr` with the `h2` crate: (grpc-status, reply message).
fn unary_via(addr: SocketAddr, msg: &[u8]) -> (Option<String>, Vec<u8>) {
    rt().block_on(async {
        let send = h2c(addr).await;
        let req = grpc_request(&addr.to_string(), "/test.Echo/Unary", &[]);
        let r = exchange(&send, req, Some(&grpc_frame(msg)))
            .await
            .expect("unary call");
        (
            r.grpc_status().map(str::to_string),
            grpc_messages(&r.body).pop().unwrap_or_default(),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// gRPC through ringlb to a grpcio origin.

#[test]
fn unary_calls_their_metadata_and_statuses_pass_through() {
    let origin = Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener("web", "http", "g", ""),
        group("g", "grpc", &[origin.addr], "")
    ));
    let out = client(
        p.addr,
        &[
            "unary --size 1000",
            "unary --status NOT_FOUND --message 'no such thing (100%)' --meta x-trailer=t1",
            "meta --meta x-trace=t1 --meta x-blob-bin=abc",
            "raw --header x-status=PERMISSION_DENIED --header 'x-message=no such thing (100%)'",
        ],
    );
    let (ok, not_found, meta, raw) = (&out[0], &out[1], &out[2], &out[3]);
    assert_eq!((code(ok), ok["len"].as_u64()), ("OK", Some(1000)), "{ok}");
    assert_eq!(ok["match"], true, "the message came back unchanged: {ok}");

    // The origin's status, message and trailing metadata reach the client unchanged.
    assert_eq!(code(not_found), "NOT_FOUND", "{not_found}");
    assert_eq!(not_found["details"], "no such thing (100%)", "{not_found}");
    assert_eq!(not_found["trailing"]["x-trailer"], "t1", "{not_found}");
    // On the wire grpc-message is percent-encoded by the origin; ringlb passes the bytes as sent.
    assert_eq!(raw["status"], 200, "{raw}");
    assert_eq!(raw["grpc_status"], "7", "{raw}");
    assert_eq!(raw["grpc_message"], "no such thing (100%25)", "{raw}");

    // What the origin saw: the client's metadata, forwarding headers, the client's :authority.
    assert_eq!(code(meta), "OK", "{meta}");
    let get = |k: &str| metadata(meta, k);
    assert_eq!(get("x-trace"), Some("t1"), "{meta}");
    assert_eq!(
        get("x-blob-bin"),
        Some("YWJj"),
        "binary metadata intact: {meta}"
    );
    assert_eq!(get("x-forwarded-for"), Some("127.0.0.1"), "{meta}");
    assert_eq!(get("x-forwarded-proto"), Some("http"), "{meta}");
    assert_eq!(meta["authority"], p.addr.to_string(), "{meta}");

    let stats = origin.stats();
    assert_eq!(stats["calls"]["Unary"], 3, "{stats}");
    assert_eq!(stats["calls"]["Meta"], 1, "{stats}");
}

#[test]
fn streaming_calls_move_multi_megabyte_messages_both_ways() {
    let origin = Origin::start();
    // Whole calls here are over the default max_body_bytes (10 MiB).
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener(
            "web",
            "http",
            "g",
            "  [listener.limits]\n  max_body_bytes = \"64MiB\""
        ),
        group("g", "grpc", &[origin.addr], "")
    ));
    let mib4 = 4 << 20;
    let out = client(
        p.addr,
        &[
            &format!("unary --size {}", 2 * mib4),
            &format!("client-stream --messages 3 --size {}", mib4 + 100),
            &format!("server-stream --count 3 --size {}", mib4 + 5),
            &format!("bidi --messages 4 --size {}", mib4 + 6),
        ],
    );
    let (u, cs, ss, bidi) = (&out[0], &out[1], &out[2], &out[3]);
    assert_eq!(code(u), "OK", "{u}");
    assert_eq!(u["len"].as_u64(), Some(2 * mib4 as u64), "{u}");
    assert_eq!(u["match"], true, "{u}");

    assert_eq!(code(cs), "OK", "{cs}");
    assert_eq!(
        cs["sent_len"].as_u64(),
        Some(3 * (mib4 as u64 + 100)),
        "{cs}"
    );
    assert_eq!(cs["match"], true, "the origin hashed what was sent: {cs}");

    assert_eq!(code(ss), "OK", "{ss}");
    assert_eq!(ss["count"], 3, "{ss}");
    assert_eq!(ss["pattern_ok"], true, "every message's bytes intact: {ss}");

    assert_eq!(code(bidi), "OK", "{bidi}");
    assert_eq!(
        (bidi["received"].as_u64(), bidi["match"].as_bool()),
        (Some(4), Some(true)),
        "{bidi}"
    );
    assert_eq!(
        bidi["lockstep"], true,
        "each message reached the origin and came back before the next was sent: {bidi}"
    );
}

#[test]
fn ringlb_answers_deadline_exceeded_for_grpc_timeout_and_response_timeout() {
    let origin = Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}{}{}",
        listener("patient", "http", "patient", ""),
        listener("impatient", "http", "impatient", ""),
        group(
            "patient",
            "grpc",
            &[origin.addr],
            "response_timeout = \"60s\""
        ),
        group(
            "impatient",
            "grpc",
            &[origin.addr],
            "response_timeout = \"500ms\""
        ),
    ));
    let impatient = listener_addr(&p, "impatient");
    let out = client(
        p.addr,
        &[
            // grpc-timeout: 300m on a call the origin sleeps 3 s in. The raw client has no
            // deadline of its own; the origin would honour a grpc-timeout passed on too, so
            // the test with an in-process origin below is the one that proves ringlb's.
            "raw-timeout",
            // No deadline from the client: the group's response_timeout ends the call.
            &format!("--target {impatient} unary --sleep-ms 2500"),
            &format!("--target {impatient} raw --header x-sleep-ms=2500"),
        ],
    );
    let (grpc_timeout, rt_grpcio, rt_raw) = (&out[0], &out[1], &out[2]);
    assert_eq!(grpc_timeout["status"], 200, "{grpc_timeout}");
    assert_eq!(grpc_timeout["grpc_status"], "4", "{grpc_timeout}");
    let t = elapsed_ms(grpc_timeout);
    assert!(
        (250..1500).contains(&t),
        "grpc-timeout 300m answered after {t} ms"
    );

    assert_eq!(code(rt_grpcio), "DEADLINE_EXCEEDED", "{rt_grpcio}");
    let t = elapsed_ms(rt_grpcio);
    assert!(
        (400..1800).contains(&t),
        "response_timeout 500ms answered after {t} ms"
    );
    assert_trailers_only(rt_raw, "4");
    let t = elapsed_ms(rt_raw);
    assert!(
        (400..1800).contains(&t),
        "response_timeout 500ms answered after {t} ms"
    );

    // The upstream calls were cancelled, not left running to the end of their sleep.
    wait_for(
        Duration::from_secs(3),
        "the origin to see 3 calls cancelled",
        || origin.stats()["cancelled"].as_u64() >= Some(3),
    );
}

#[test]
fn calls_ringlb_cannot_deliver_are_unavailable() {
    let origin = Origin::start();
    origin.set_serving(false);
    let p = Proxy::start(&format!(
        "{HEAD}{}{}{}{}",
        listener("web", "http", "down", ""),
        listener("refused", "http", "refused", ""),
        group(
            "down",
            "grpc",
            &[origin.addr],
            &format!("fail_open = false\n{}", grpc_health(""))
        ),
        group("refused", "grpc", &[closed_addr()], ""),
    ));
    let admin = p.admin();
    assert_eq!(
        wait_group_state(admin, "down", origin.addr, "unhealthy"),
        "Target.ResponseCodeMismatch"
    );
    let refused = listener_addr(&p, "refused");
    let out = client(
        p.addr,
        &[
            "unary",
            "raw",
            &format!("--target {refused} unary"),
            &format!("--target {refused} raw"),
        ],
    );
    assert_eq!(
        code(&out[0]),
        "UNAVAILABLE",
        "no healthy target: {}",
        out[0]
    );
    assert_trailers_only(&out[1], "14");
    assert_eq!(code(&out[2]), "UNAVAILABLE", "connect refused: {}", out[2]);
    assert_trailers_only(&out[3], "14");
    assert_eq!(
        origin.calls("Unary"),
        0,
        "nothing reached the unhealthy origin"
    );

    // SERVING again: the target turns healthy and takes calls.
    origin.set_serving(true);
    assert_eq!(wait_group_state(admin, "down", origin.addr, "healthy"), "");
    let (status, reply) = unary_via(p.addr, b"back");
    assert_eq!(
        (status.as_deref(), reply.as_slice()),
        (Some("0"), &b"back"[..])
    );
}

#[test]
fn limits_answer_resource_exhausted() {
    let origin = Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener(
            "web",
            "http",
            "g",
            "  [listener.limits]\n  max_header_bytes = \"4KiB\"\n  max_body_bytes = \"1MiB\"\n\
             \x20 requests_per_second_per_ip = 5"
        ),
        group("g", "grpc", &[origin.addr], "")
    ));
    let big_header = format!("--header x-big={}", "v".repeat(6000));
    let two_mib = 2 << 20;
    let out = client(
        p.addr,
        &[
            "unary --size 10",
            // Metadata over max_header_bytes (431 for HTTP).
            &format!("raw {big_header}"),
            &format!("unary {}", big_header.replace("--header", "--meta")),
            // A message over max_body_bytes (413 for HTTP).
            &format!("raw --size {two_mib}"),
            &format!("unary --size {two_mib}"),
            // Beyond the per-IP request rate (429 for HTTP): a burst of twice the rate, then 8.
            "unary --count 20",
        ],
    );
    assert_eq!(code(&out[0]), "OK", "{}", out[0]);
    assert_trailers_only(&out[1], "8");
    assert_eq!(code(&out[2]), "RESOURCE_EXHAUSTED", "{}", out[2]);
    assert_eq!(out[3]["status"], 200, "{}", out[3]);
    assert_eq!(out[3]["grpc_status"], "8", "{}", out[3]);
    assert_eq!(code(&out[4]), "RESOURCE_EXHAUSTED", "{}", out[4]);

    let burst: Vec<&str> = out[5..].iter().map(code).collect();
    assert_eq!(burst.len(), 20);
    assert!(
        burst
            .iter()
            .all(|c| *c == "OK" || *c == "RESOURCE_EXHAUSTED"),
        "{burst:?}"
    );
    // At most the burst (10 tokens, some spent above) plus what came back meanwhile (5/s).
    let ok = burst.iter().filter(|c| **c == "OK").count();
    assert!(ok >= 1, "tokens were left: {burst:?}");
    assert!(20 - ok >= 5, "the rest are refused: {burst:?}");

    // Only the calls answered OK ran on the origin.
    assert_eq!(origin.calls("Unary"), 1 + ok as u64);
}

#[test]
fn grpc_health_checks_follow_the_serving_status() {
    let origin = Origin::start();
    let refused = closed_addr();
    let o = origin.addr;
    let p = Proxy::start(&format!(
        "{HEAD}{}{}{}{}{}",
        listener("web", "http", "all", ""),
        group("all", "grpc", &[o], &grpc_health("")),
        group("echo", "grpc", &[o], &grpc_health("test.Echo")),
        group("unknown", "grpc", &[o], &grpc_health("no.such.Service")),
        group("refused", "grpc", &[refused], &grpc_health("")),
    ));
    let admin = p.admin();
    assert_eq!(wait_group_state(admin, "all", o, "healthy"), "");
    assert_eq!(wait_group_state(admin, "echo", o, "healthy"), "");
    // An unknown service is answered NOT_FOUND: not SERVING.
    assert_eq!(
        wait_group_state(admin, "unknown", o, "unhealthy"),
        "Target.ResponseCodeMismatch"
    );
    assert_eq!(
        wait_group_state(admin, "refused", refused, "unhealthy"),
        "Target.FailedHealthChecks"
    );

    origin.set_serving(false);
    for g in ["all", "echo"] {
        assert_eq!(
            wait_group_state(admin, g, o, "unhealthy"),
            "Target.ResponseCodeMismatch",
            "{g}"
        );
    }
    origin.set_serving(true);
    for g in ["all", "echo"] {
        assert_eq!(wait_group_state(admin, g, o, "healthy"), "", "{g}");
    }
    assert_eq!(
        group_target(admin, "unknown", o).0,
        "unhealthy",
        "still no such service"
    );

    // The checks were grpc.health.v1.Health/Check calls naming each group's service.
    let checks = origin.stats()["health_checks"].clone();
    for service in ["", "test.Echo", "no.such.Service"] {
        assert!(checks[service].as_u64() >= Some(2), "{service:?}: {checks}");
    }
    let (status, reply) = unary_via(p.addr, b"hi");
    assert_eq!(
        (status.as_deref(), reply.as_slice()),
        (Some("0"), &b"hi"[..])
    );
}

/// A CA and a "localhost" certificate it signed, as PEM files in a fresh directory.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(test: &str) -> Pki {
    let dir = crate::testdir::test_path(&format!("grpc-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringlb grpc test CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = params.self_signed(&ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&key, &ca, &ca_key)
        .expect("sign leaf");
    let p = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("localhost.crt"),
        key: dir.join("localhost.key"),
    };
    std::fs::write(&p.ca, ca.pem()).expect("write CA");
    std::fs::write(&p.cert, format!("{}{}", leaf.pem(), ca.pem())).expect("write cert");
    std::fs::write(&p.key, key.serialize_pem()).expect("write key");
    p
}

#[test]
fn grpc_runs_over_tls_to_clients_and_to_targets() {
    let pki = pki("tls");
    let origin = Origin::start_tls(&pki.cert, &pki.key);
    let secure = format!(
        "protocol = \"https\"\n{}  [target_group.tls]\n  ca_file = \"{}\"\n  server_name = \"localhost\"\n",
        grpc_health(""),
        pki.ca.display()
    );
    let p = Proxy::start(&format!(
        "{HEAD}{}{}{}",
        listener(
            "tls",
            "https",
            "secure",
            &format!(
                "  [listener.tls]\n  certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
                pki.cert.display(),
                pki.key.display()
            )
        ),
        listener("plain", "http", "secure", ""),
        group("secure", "grpc", &[origin.addr], &secure),
    ));
    // gRPC health checks over TLS (ALPN h2, the CA from ca_file, server_name).
    assert_eq!(
        wait_group_state(p.admin(), "secure", origin.addr, "healthy"),
        ""
    );
    let plain = listener_addr(&p, "plain");
    let tls = format!(
        "--target {} --tls-ca {} --authority localhost",
        p.addr,
        pki.ca.display()
    );
    let out = client(
        plain,
        &[
            // h2c from the client, TLS to the origin.
            "meta",
            "unary --size 100",
            // TLS both ways: a grpcio secure channel to the https listener (ALPN h2).
            &format!("{tls} unary --size {}", 3 << 20),
            &format!("{tls} meta"),
            &format!("{tls} bidi --messages 3 --size 70000"),
        ],
    );
    // Every call OK; messages came back intact.
    for r in &out {
        assert_eq!(code(r), "OK", "{r}");
        assert_ne!(r["match"], false, "{r}");
    }
    let (plain_meta, tls_meta) = (&out[0], &out[3]);
    assert_eq!(metadata(plain_meta, "x-forwarded-proto"), Some("http"));
    assert_eq!(metadata(tls_meta, "x-forwarded-proto"), Some("https"));
    assert_eq!(tls_meta["authority"], "localhost", "{tls_meta}");
}

// ---------------------------------------------------------------------------------------------
// An in-process HTTP/2 origin (h2 crate): counts connections, streams open at once, resets.

/// A request as the HTTP/2 origin saw it.
#[derive(Clone, Debug)]
pub(crate) struct H2Seen {
    method: String,
    path: String,
    authority: Option<String>,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl H2Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers by path: `/slow/MS` after MS ms; `/cl` with a content-length; `/test.Slow/Sleep`
/// (gRPC) holds the response 3 s unless the stream is reset (counted in `resets`); anything
/// else `h2 origin METHOD PATH BODY_LEN` with trailers `x-origin-trailer: done`. Settings:
/// SETTINGS_MAX_CONCURRENT_STREAMS = 4.
pub(crate) struct H2Origin {
    pub(crate) addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    pub(crate) resets: Arc<AtomicUsize>,
    /// Most streams open at once on one connection.
    peak: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<H2Seen>>>,
}

const H2_MAX_STREAMS: u32 = 4;

impl H2Origin {
    pub(crate) fn start() -> H2Origin {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let o = H2Origin {
            addr: l.local_addr().expect("addr"),
            accepts: Arc::default(),
            resets: Arc::default(),
            peak: Arc::default(),
            seen: Arc::default(),
        };
        let (accepts, resets, peak, seen) = (
            o.accepts.clone(),
            o.resets.clone(),
            o.peak.clone(),
            o.seen.clone(),
        );
        std::thread::spawn(move || {
            rt().block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let (resets, peak, seen) = (resets.clone(), peak.clone(), seen.clone());
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::Builder::new()
                            .max_concurrent_streams(H2_MAX_STREAMS)
                            .handshake::<_, Bytes>(sock)
                            .await
                        else {
                            return;
                        };
                        let open = Arc::new(AtomicUsize::new(0));
                        while let Some(Ok((req, respond))) = conn.accept().await {
                            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            let (open, resets, seen) = (open.clone(), resets.clone(), seen.clone());
                            tokio::spawn(async move {
                                let _ = h2_answer(req, respond, &resets, &seen).await;
                                open.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                    });
                }
            });
        });
        o
    }

    pub(crate) fn seen(&self) -> Vec<H2Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn h2_answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    resets: &AtomicUsize,
    seen: &Mutex<Vec<H2Seen>>,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let s = H2Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: data,
    };
    let body_len = s.body.len();
    seen.lock().expect("seen").push(s);

    if path == "/test.Slow/Sleep" {
        // A target that ignores grpc-timeout: only a reset from ringlb ends the call early.
        let reset = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3)) => false,
            r = std::future::poll_fn(|cx| respond.poll_reset(cx)) => r.is_ok(),
        };
        if reset {
            resets.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let head = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(())
            .expect("response");
        respond.send_response(head, true)?;
        return Ok(());
    }
    if let Some(ms) = parts.uri.path().strip_prefix("/slow/") {
        let ms = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let text = format!("h2 origin {} {path} {body_len}", parts.method);
    if path == "/cl" {
        let head = http::Response::builder()
            .header("content-type", "text/plain")
            .header("content-length", text.len())
            .body(())
            .expect("response");
        let mut send = respond.send_response(head, false)?;
        send.send_data(Bytes::from(text), true)?;
        return Ok(());
    }
    let head = http::Response::builder()
        .header("content-type", "text/plain")
        .body(())
        .expect("response");
    let mut send = respond.send_response(head, false)?;
    send.send_data(Bytes::from(text), false)?;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-origin-trailer", "done".parse().expect("value"));
    send.send_trailers(trailers)?;
    Ok(())
}

#[test]
fn http2_groups_multiplex_streams_over_few_upstream_connections() {
    let origin = H2Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener("web", "http", "h2", ""),
        group("h2", "http2", &[origin.addr], "")
    ));
    let addr = p.addr;
    let authority = format!("h2.example:{}", addr.port());
    let up = pattern(100_000);
    rt().block_on(async {
        let send = h2c(addr).await;
        // A POST with a body: forwarded as sent, the origin's trailers come back.
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{authority}/upload?x=1"))
            .header("te", "trailers")
            .header("x-trace", "t1")
            .body(())
            .expect("request");
        let r = exchange(&send, req, Some(&up)).await.expect("POST");
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "h2 origin POST /upload?x=1 100000"
        );
        let trailer = r.trailers.as_ref().and_then(|t| t.get("x-origin-trailer"));
        assert_eq!(
            trailer.map(|v| v.as_bytes()),
            Some(&b"done"[..]),
            "{:?}",
            r.trailers
        );

        // Requests one after another share one upstream connection.
        for i in 0..20 {
            let req = Request::builder()
                .uri(format!("http://{authority}/seq/{i}"))
                .body(())
                .expect("request");
            let r = exchange(&send, req, None).await.expect("GET");
            assert_eq!(r.status, 200, "request {i}");
        }
        assert_eq!(
            origin.accepts.load(Ordering::SeqCst),
            1,
            "21 sequential requests, one upstream connection"
        );

        // 12 at once against SETTINGS_MAX_CONCURRENT_STREAMS = 4: more connections open.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let send = send.clone();
            let uri = format!("http://{authority}/slow/400?i={i}");
            tasks.push(tokio::spawn(async move {
                let req = Request::builder().uri(uri).body(()).expect("request");
                exchange(&send, req, None).await
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            let r = t.await.expect("task");
            statuses.push(r.map(|r| r.status).map_err(|e| e.to_string()));
        }
        let (accepts, peak) = (
            origin.accepts.load(Ordering::SeqCst),
            origin.peak.load(Ordering::SeqCst),
        );
        assert!(
            statuses.iter().all(|s| s == &Ok(200)),
            "every stream answered by the target ({accepts} connections, at most {peak} \
             streams at once on one): {statuses:?}"
        );
        assert!(
            accepts >= 3,
            "at most 4 streams a connection: {accepts} connections"
        );
        assert!(
            peak >= 2,
            "streams share connections: at most {peak} at once on one"
        );
    });

    let first = origin.seen()[0].clone();
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/upload?x=1")
    );
    assert_eq!(first.authority.as_deref(), Some(authority.as_str()));
    assert_eq!(first.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(first.header("x-forwarded-proto"), Some("http"));
    assert_eq!(first.header("x-trace"), Some("t1"));
    assert!(first.body == up, "the body arrived intact");

    // HTTP/1.1 clients of the same listener reach the HTTP/2 target too.
    let r = get(addr, "/cl");
    assert_eq!((r.status, r.text().as_str()), (200, "h2 origin GET /cl 0"));
    let mut c = Client::connect(addr);
    c.send(b"POST /form HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.read_response(false).expect("response");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "h2 origin POST /form 5"),
        "a body without a length (trailers from the origin) arrives whole"
    );
    let form = origin.seen().last().cloned().expect("seen");
    assert_eq!(
        form.authority.as_deref(),
        Some("test"),
        "Host becomes :authority"
    );
    assert_eq!(form.body, b"hello");
}

#[test]
fn grpc_timeout_is_enforced_by_ringlb_even_when_the_target_ignores_it() {
    let origin = H2Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener("web", "http", "g", ""),
        group("g", "grpc", &[origin.addr], "")
    ));
    let addr = p.addr;
    let (status, took) = rt().block_on(async {
        let send = h2c(addr).await;
        let req = grpc_request(
            &addr.to_string(),
            "/test.Slow/Sleep",
            &[("grpc-timeout", "300m")],
        );
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(&send, req, Some(&grpc_frame(b"zz"))),
        )
        .await
        .expect("an answer before the target's 3 s")
        .expect("call");
        (
            (r.status, r.grpc_status().map(str::to_string)),
            started.elapsed(),
        )
    });
    assert_eq!(status, (200, Some("4".to_string())), "DEADLINE_EXCEEDED");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    wait_for(Duration::from_secs(2), "the upstream stream reset", || {
        origin.resets.load(Ordering::SeqCst) == 1
    });
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/grpc"),
        "{seen:?}"
    );
    assert_eq!(seen[0].header("te"), Some("trailers"), "{seen:?}");
}

#[test]
fn bursts_of_streams_to_an_http2_group_keep_client_connections_open() {
    let origin = H2Origin::start();
    let p = Proxy::start(&format!(
        "{HEAD}{}{}",
        listener("web", "http", "h2", ""),
        group("h2", "http2", &[origin.addr], "")
    ));
    let addr = p.addr;
    // 40 clients one after another, each sending 12 streams at once (3 connections' worth).
    let failures = rt().block_on(async {
        let mut failures = Vec::new();
        for client in 0..40 {
            let send = h2c(addr).await;
            let tasks: Vec<_> = (0..12)
                .map(|i| {
                    let send = send.clone();
                    let uri = format!("http://burst.example/slow/{}?i={i}", client % 3);
                    tokio::spawn(async move {
                        let req = Request::builder().uri(uri).body(()).expect("request");
                        exchange(&send, req, None).await.map(|r| r.status)
                    })
                })
                .collect();
            for t in tasks {
                match t.await.expect("task") {
                    Ok(200) => {}
                    other => failures.push(format!("client {client}: {other:?}")),
                }
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{failures:#?}");
}
