//! Test support: in-process backends that record what they see, a raw HTTP/1.1 client, and a
//! helper that starts ringlb in-process from a TOML snippet.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request as a backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// An in-process HTTP/1.1 origin with behaviours chosen by path:
/// `/echo` echoes the body; `/sha` answers the SHA-256 of the body; `/big/N` sends N bytes;
/// `/chunked/N` sends N bytes chunked; `/close/N` sends N bytes close-delimited; `/status/N`
/// answers status N with no body; `/slow/MS` waits MS ms; anything else answers `name`.
/// `set_status` makes every path answer that status (with `name` as the body) until set to 0.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<AtomicU16>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_with_idle(name, None)
    }

    /// A backend that closes keep-alive connections idle longer than `idle` (as nginx or Node do).
    pub fn start_with_idle(name: &str, idle: Option<Duration>) -> Backend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        Backend::start_listener(name, idle, l)
    }

    /// A backend on a given address (e.g. one a test reserved earlier and left closed).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let l = std::net::TcpListener::bind(addr).expect("bind backend on its address");
        Backend::start_listener(name, None, l)
    }

    fn start_listener(name: &str, idle: Option<Duration>, l: std::net::TcpListener) -> Backend {
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(0));
        let (a, s, n, st) = (
            accepts.clone(),
            seen.clone(),
            name.to_string(),
            status.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    a.fetch_add(1, Ordering::SeqCst);
                    let (s, n, st) = (s.clone(), n.clone(), st.clone());
                    tokio::spawn(async move {
                        let _ = serve(sock, &n, &s, idle, &st).await;
                    });
                }
            });
        });
        Backend {
            addr,
            accepts,
            seen,
            status,
        }
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests seen other than ringlb's health checks (told apart by their User-Agent).
    pub fn traffic(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.header("user-agent") != Some(HEALTH_CHECK_AGENT))
            .count()
    }

    /// Makes every path answer `status` (0: back to normal behaviour).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw a request")
    }
}

async fn serve(
    mut s: tokio::net::TcpStream,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    idle: Option<Duration>,
    forced: &AtomicU16,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        // Head.
        let (head_len, method, target, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    headers,
                );
            }
            let n = match idle {
                Some(d) if buf.is_empty() => {
                    match tokio::time::timeout(d, s.read_buf(&mut buf)).await {
                        Ok(r) => r?,
                        Err(_) => return Ok(()),
                    }
                }
                _ => s.read_buf(&mut buf).await?,
            };
            if n == 0 {
                return Ok(());
            }
        };
        buf.drain(..head_len);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        // Body.
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if s.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                };
                let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or(0);
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    if s.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.trim().parse::<usize>().ok())
        {
            while buf.len() < len {
                if s.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            body = buf.drain(..len).collect();
        }
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            body_len: body.len(),
        });
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let parts: Vec<&str> = target.trim_start_matches('/').split('/').collect();
        let num = |i: usize| {
            parts
                .get(i)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let conn = if close { "Connection: close\r\n" } else { "" };
        let code = forced.load(Ordering::SeqCst);
        if code != 0 {
            let resp = format!(
                "HTTP/1.1 {code} Forced\r\nContent-Length: {}\r\n{conn}\r\n{name}",
                name.len()
            );
            s.write_all(resp.as_bytes()).await?;
            if close {
                return Ok(());
            }
            continue;
        }
        match parts.first().copied().unwrap_or("") {
            "echo" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).await?;
                s.write_all(&body).await?;
            }
            "sha" => {
                let hex = sha256_hex(&body);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n{hex}",
                    hex.len()
                );
                s.write_all(resp.as_bytes()).await?;
            }
            "big" => {
                let data = pattern(num(1));
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n",
                    data.len()
                );
                s.write_all(head.as_bytes()).await?;
                if method != "HEAD" {
                    s.write_all(&data).await?;
                }
            }
            "chunked" => {
                let data = pattern(num(1));
                s.write_all(
                    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{conn}\r\n")
                        .as_bytes(),
                )
                .await?;
                for piece in data.chunks(7777) {
                    s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                    s.write_all(piece).await?;
                    s.write_all(b"\r\n").await?;
                }
                s.write_all(b"0\r\n\r\n").await?;
            }
            "close" => {
                let data = pattern(num(1));
                s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await?;
                s.write_all(&data).await?;
                return Ok(());
            }
            "upgrade" => {
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
                    .await?;
                // Echo raw bytes both ways until the client half-closes.
                s.write_all(&buf).await?;
                buf.clear();
                let mut tmp = [0u8; 4096];
                loop {
                    let n = s.read(&mut tmp).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    s.write_all(&tmp[..n]).await?;
                }
            }
            "status" => {
                let code = num(1);
                // 204/304 must carry no body, even where headers would suggest one.
                let extra = if code == 304 {
                    "Content-Length: 1234\r\n"
                } else {
                    ""
                };
                s.write_all(format!("HTTP/1.1 {code} X\r\n{extra}{conn}\r\n").as_bytes())
                    .await?;
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(num(1) as u64)).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n{name}",
                    name.len()
                );
                s.write_all(resp.as_bytes()).await?;
            }
            _ => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n{name}",
                    name.len()
                );
                s.write_all(resp.as_bytes()).await?;
            }
        }
        if close {
            return Ok(());
        }
    }
}

/// Deterministic bytes for body tests.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// "HTTP/1.0" or "HTTP/1.1", from the status line.
    pub version: &'static str,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .get(&n.to_ascii_lowercase())
            .map(|s| s.as_str())
    }
}

/// A blocking HTTP/1.1 client connection with its own read buffer (keeps pipelined bytes).
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Set: requests and responses go through this TLS session (tests/integration/tls.rs).
    pub tls: Option<rustls::ClientConnection>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to ringlb");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            tls: None,
        }
    }

    /// A client speaking through `tls` (handshake driven by the first write/read).
    pub fn with_tls(addr: SocketAddr, tls: rustls::ClientConnection) -> Client {
        let mut c = Client::connect(addr);
        c.tls = Some(tls);
        c
    }

    /// Bytes read past the last response (nothing, unless the server sent more than asked).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub fn send(&mut self, raw: &[u8]) {
        match &mut self.tls {
            Some(t) => rustls::Stream::new(t, &mut self.stream).write_all(raw),
            None => self.stream.write_all(raw),
        }
        .expect("write request");
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response(false).expect("response")
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        let read = match &mut self.tls {
            Some(t) => rustls::Stream::new(t, &mut self.stream).read(&mut tmp),
            None => self.stream.read(&mut tmp),
        };
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Reads one response; `head_only` for answers to HEAD.
    pub fn read_response(&mut self, head_only: bool) -> Option<Response> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let status = r.code.unwrap_or(0);
                let version = if r.version == Some(0) {
                    "HTTP/1.0"
                } else {
                    "HTTP/1.1"
                };
                let headers: HashMap<String, String> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                let body = if head_only
                    || status == 204
                    || status == 304
                    || (100..200).contains(&status)
                {
                    Vec::new()
                } else if headers
                    .get("transfer-encoding")
                    .is_some_and(|v| v.contains("chunked"))
                {
                    self.read_chunked()?
                } else if let Some(len) = headers
                    .get("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                {
                    while self.buf.len() < len {
                        if !self.fill() {
                            return None;
                        }
                    }
                    self.buf.drain(..len).collect()
                } else {
                    while self.fill() {}
                    std::mem::take(&mut self.buf)
                };
                return Some(Response {
                    status,
                    version,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let i = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill() {
                    return None;
                }
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.buf[..i])
                    .ok()?
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            self.buf.drain(..i + 2);
            if size == 0 {
                while !self.buf.windows(2).any(|w| w == b"\r\n") {
                    if !self.fill() {
                        return None;
                    }
                }
                let j = self.buf.windows(2).position(|w| w == b"\r\n")?;
                self.buf.drain(..j + 2);
                return Some(body);
            }
            while self.buf.len() < size + 2 {
                if !self.fill() {
                    return None;
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
            || matches!(self.stream.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// One-shot GET on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

/// The User-Agent of ringlb's health checks.
pub const HEALTH_CHECK_AGENT: &str = "ringlb-health-check";

/// The path the tests' health checks request.
pub const HEALTH_PATH: &str = "/hc";

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `within`.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One admin API request on a new connection; `token` adds a bearer token.
pub fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Response {
    let mut c = Client::connect(admin);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    c.send(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read_response(method == "HEAD").expect("admin response")
}

/// `GET /status` as JSON.
pub fn status(admin: SocketAddr) -> serde_json::Value {
    let r = admin_request(admin, "GET", "/status", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("status is JSON")
}

/// A target's entry in `/status` (any group), if listed.
pub fn target_status(admin: SocketAddr, address: SocketAddr) -> Option<serde_json::Value> {
    let s = status(admin);
    s["target_groups"]
        .as_array()?
        .iter()
        .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
        .find(|t| t["address"] == address.to_string())
}

/// (state, reason) of a target in `/status`; ("absent", "") when not listed.
pub fn target_state(admin: SocketAddr, address: SocketAddr) -> (String, String) {
    match target_status(admin, address) {
        Some(t) => (
            t["state"].as_str().unwrap_or("").to_string(),
            t["reason"].as_str().unwrap_or("").to_string(),
        ),
        None => ("absent".to_string(), String::new()),
    }
}

/// Waits until `/status` shows `address` in `state`; returns its reason.
pub fn wait_state(admin: SocketAddr, address: SocketAddr, state: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let last = target_state(admin, address);
        if last.0 == state {
            return last.1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{address} never became {state}; last {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ringlb running in this process.
pub struct Proxy {
    pub server: Option<ringlb::runtime::Server>,
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts ringlb from a TOML config; the first listener's address is `addr`.
    pub fn start(toml: &str) -> Proxy {
        let config = ringlb::config::Config::parse(toml, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("config: {e}"));
        Proxy::run(config)
    }

    /// Starts ringlb from a config file, as `ringlb run` does, so `POST /reload` re-reads it.
    pub fn from_file(path: &Path) -> Proxy {
        let config = ringlb::config::Config::load(path).unwrap_or_else(|e| panic!("config: {e}"));
        Proxy::run(config)
    }

    /// On the backend RINGLB_TEST_IO names (epoll, or the config's).
    fn run(mut config: ringlb::config::Config) -> Proxy {
        if std::env::var("RINGLB_TEST_IO").as_deref() == Ok("epoll") {
            config.runtime.io = ringlb::config::IoBackend::Epoll;
        }
        let name = config.listeners[0].name.clone();
        let server = ringlb::runtime::Server::start(config).expect("start ringlb");
        let addr = server.listener_addr(&name).expect("listener bound");
        Proxy {
            server: Some(server),
            addr,
        }
    }
}

impl Proxy {
    /// The admin API's address (the config must have an `[admin]` table).
    pub fn admin(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.admin_addr)
            .expect("the config has an [admin] table")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.drain(Duration::from_secs(2));
        }
    }
}

/// A config with one http listener on an ephemeral port forwarding to `targets`.
pub fn simple_config(targets: &[String], extra_group: &str) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|t| {
            if t.starts_with('{') {
                t.clone()
            } else {
                format!("\"{t}\"")
            }
        })
        .collect();
    format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ntarget_group = \"app\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [{}]\n{extra_group}\n",
        t.join(", ")
    )
}

/// `simple_config` plus an admin API on an ephemeral loopback port (`admin_extra`: e.g. a token).
pub fn admin_config(targets: &[String], extra_group: &str, admin_extra: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{admin_extra}\n\n{}",
        simple_config(targets, extra_group)
    )
}

/// A health-check table for `simple_config`'s group: http GET /hc every `interval_ms`.
pub fn health_check(interval_ms: u64, healthy: u32, unhealthy: u32) -> String {
    format!(
        "[target_group.health_check]\npath = \"{HEALTH_PATH}\"\ninterval = \"{interval_ms}ms\"\n\
         timeout = \"{}ms\"\nhealthy_threshold = {healthy}\nunhealthy_threshold = {unhealthy}\n",
        interval_ms * 3 / 4
    )
}

/// A child process killed (and reaped) when the test ends, even when it fails half-way.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The congestion control of this process's TCP socket connected to `peer` (from `local`, when
/// given): ringlb runs in-process, so its sockets can be looked at directly.
pub fn congestion_control_of(local: Option<SocketAddr>, peer: SocketAddr) -> Option<String> {
    use std::os::fd::BorrowedFd;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|p| p.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: only borrowed for two getsockname/getpeername calls; a descriptor closed
        // meanwhile makes them fail, which skips it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let s = socket2::SockRef::from(&borrowed);
        let ends = (s.local_addr().ok(), s.peer_addr().ok());
        let (Some(l), Some(p)) = (
            ends.0.and_then(|a| a.as_socket()),
            ends.1.and_then(|a| a.as_socket()),
        ) else {
            continue;
        };
        if p == peer && local.is_none_or(|want| want == l) {
            return ringlb::sockopt::congestion_control(fd).ok();
        }
    }
    None
}

/// The host's default congestion control, and another algorithm this process may set (one in
/// the allowed list, which unprivileged processes are held to; reno is built into every kernel),
/// so a test can tell a configured choice from the default.
pub fn congestion_controls() -> (String, String) {
    let read =
        |f: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}")).unwrap_or_default();
    let default = read("tcp_congestion_control").trim().to_string();
    let other = read("tcp_allowed_congestion_control")
        .split_whitespace()
        .chain(["reno"])
        .find(|a| *a != default)
        .unwrap_or("reno")
        .to_string();
    (default, other)
}

/// Segments the client's side of `s` has received so far (TCP_INFO `tcpi_segs_in`).
pub fn segments_in(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

/// A backend that answers each connection's first request with `response` as it stands, then
/// closes; with `reset`, it closes with a TCP reset instead of a FIN.
pub fn scripted_backend(response: &'static [u8], reset: bool) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response);
                if reset {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
                }
            });
        }
    });
    addr
}

/// What an application server answers to an upload over its own limit, before reading it.
pub const EARLY_413: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";

/// Sends a POST whose head promises 100 bytes of body, then only 10, on a new connection to
/// `addr`, and reads until the connection ends: what came back, and how long that took.
pub fn stalled_upload(addr: std::net::SocketAddr, host: &str) -> (String, std::time::Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let started = std::time::Instant::now();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n0123456789")
            .as_bytes(),
    )
    .expect("send");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}
