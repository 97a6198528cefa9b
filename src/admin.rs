//! The admin API (DESIGN §6): `/health`, `/status`, `/metrics`, `/latency`, target
//! (de)registration and `/reload`, over plain HTTP/1.1 with keep-alive; `GET /` is the dashboard
//! and `/series` its one-second time series.
//!
//! Runs on its own thread (`ringlb-admin`, a tokio current-thread runtime with a `LocalSet`: not
//! the data path). The thread owns its connections, the deregistration timers and the series
//! sampler (`series::run`) with its store; it reads the
//! shared table and the workers' metric slots, and writes only target membership and state
//! (`Group::edit_members`, `Target::set_state`). It stops when the server drains.

mod api;
mod dashboard;
mod metrics;
mod series;

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::Shared;

pub use api::{deregister, register, status_json, target_json};
pub use metrics::{hgrm, prometheus};

/// Largest request head the admin API reads (431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
/// Headers parsed per request.
pub const MAX_HEADERS: usize = 64;
/// A keep-alive admin connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a started request (head and body) may take to arrive.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin request failed; each message tells the caller what to change.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token: send \"Authorization: Bearer <admin.token>\"")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("request head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("send the body with Content-Length (chunked request bodies are not accepted)")]
    LengthRequired,
    #[error("a request from another site's page may not change ringlb (its Origin is not this admin address); use curl or the dashboard itself")]
    CrossSite,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized => 401,
            ApiError::CrossSite => 403,
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::LengthRequired => 411,
            ApiError::BodyTooLarge => 413,
            ApiError::HeadTooLarge => 431,
        }
    }

    fn response(&self) -> Reply {
        let mut r = Reply::json(
            self.status(),
            serde_json::json!({ "error": self.to_string() }).to_string(),
        );
        match self {
            ApiError::Unauthorized => r.extra.push(("WWW-Authenticate", "Bearer".to_string())),
            ApiError::MethodNotAllowed { allow, .. } => {
                r.extra.push(("Allow", (*allow).to_string()))
            }
            _ => {}
        }
        r
    }
}

/// An answer, before framing.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
            extra: Vec::new(),
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into_bytes(),
            extra: Vec::new(),
        }
    }
}

/// One parsed request, owned (the admin API is not the data path).
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    authorization: Option<Vec<u8>>,
    close: bool,
    /// A browser sent it from another site's page (`Sec-Fetch-Site: cross-site`, or an
    /// `Origin` that is not the admin address): it may read nothing and change nothing.
    cross_site: bool,
}

/// How long a draining admin thread lets requests in progress finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Binds the admin address (port 0 allowed) on the calling thread, so a bind error stops start-up.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Starts the admin thread on an already bound socket. It runs until the server drains.
pub fn spawn(shared: Arc<Shared>, listener: TcpListener) -> std::io::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringlb-admin".to_string())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, serve(shared, listener));
        })
}

async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin API: cannot register the listening socket");
            return;
        }
    };
    let mut drain = shared.drain_rx();
    tokio::task::spawn_local(series::run(shared.clone()));
    // Connections being served: a drain lets their requests finish (after an upgrade the new
    // process takes the next ones on the same socket).
    let active = Rc::new(std::cell::Cell::new(0usize));
    loop {
        if *drain.borrow_and_update() {
            break;
        }
        tokio::select! {
            r = drain.changed() => if r.is_err() { break },
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    let shared = shared.clone();
                    let active = active.clone();
                    active.set(active.get() + 1);
                    tokio::task::spawn_local(async move {
                        let _ = sock.set_nodelay(true);
                        connection(shared, sock).await;
                        active.set(active.get() - 1);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let until = tokio::time::Instant::now() + DRAIN_GRACE;
    while active.get() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves requests on one connection until it closes, idles out or asks to close.
async fn connection(shared: Arc<Shared>, mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let req = match read_request(&mut s, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_reply(&mut s, e.response(), true).await;
                return;
            }
        };
        // Draining: this answer is the connection's last (`Connection: close`).
        let close = req.close || shared.stopping();
        let reply = match handle(&shared, &req) {
            Ok(r) => r,
            Err(e) => e.response(),
        };
        if write_reply(&mut s, reply, close).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request. `Ok(None)`: the peer closed or idled out between requests.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Request>, ApiError> {
    let mut waited_idle = buf.is_empty();
    let (head_len, mut req, content_length) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if buf.len() >= MAX_HEAD {
            return Err(ApiError::HeadTooLarge);
        }
        let limit = if waited_idle {
            IDLE_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        waited_idle = false;
        match tokio::time::timeout(limit, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
    };
    buf.drain(..head_len);
    while buf.len() < content_length {
        match tokio::time::timeout(REQUEST_TIMEOUT, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Ok(None),
        }
    }
    req.body = buf.drain(..content_length).collect();
    Ok(Some(req))
}

/// Parses a complete head from `buf`: (head length, request, body length), or `None` if partial.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Request, usize)>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ApiError::BadRequest(format!("malformed request: {e}"))),
    };
    let target = r.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut content_length = 0usize;
    let mut authorization = None;
    let mut close = r.version == Some(0);
    let mut origin: Option<&[u8]> = None;
    let mut host: Option<&[u8]> = None;
    let mut fetch_cross = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("origin") {
            origin = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("host") {
            host = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("sec-fetch-site") {
            fetch_cross = h.value.eq_ignore_ascii_case(b"cross-site");
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))?;
            if content_length > MAX_BODY {
                return Err(ApiError::BodyTooLarge);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    // A browser's Origin is "scheme://host[:port]"; the page's own requests carry its Host.
    let foreign_origin = origin.is_some_and(|o| {
        let o = o.trim_ascii();
        let authority = o
            .strip_prefix(b"http://")
            .or_else(|| o.strip_prefix(b"https://"));
        match (authority, host) {
            (Some(a), Some(h)) => !a.eq_ignore_ascii_case(h.trim_ascii()),
            _ => true,
        }
    });
    let req = Request {
        method: r.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        body: Vec::new(),
        authorization,
        close,
        cross_site: fetch_cross || foreign_origin,
    };
    Ok(Some((n, req, content_length)))
}

async fn write_reply(s: &mut TcpStream, reply: Reply, close: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&reply.body);
    s.write_all(&out).await
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "",
    }
}

/// Compares without an early exit, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    if given.len() != token.len() {
        return false;
    }
    given
        .iter()
        .zip(token)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn authorized(shared: &Shared, req: &Request) -> bool {
    let snapshot = shared.snapshot();
    let Some(token) = snapshot
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
    else {
        return true;
    };
    let Some(value) = req.authorization.as_deref() else {
        return false;
    };
    let Some(given) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return false;
    };
    token_matches(given.trim_ascii(), token.as_bytes())
}

/// Routes one request.
pub fn handle(shared: &Arc<Shared>, req: &Request) -> Result<Reply, ApiError> {
    if req.path == "/" {
        // A static page with no data: served without the token, which the data endpoints it
        // calls require.
        return match req.method.as_str() {
            "GET" => Ok(dashboard::page()),
            _ => Err(ApiError::MethodNotAllowed {
                method: req.method.clone(),
                path: req.path.clone(),
                allow: "GET",
            }),
        };
    }
    if req.cross_site {
        // Another site's page (CSRF through the operator's browser): without a token a "simple"
        // POST would otherwise register a target.
        return Err(ApiError::CrossSite);
    }
    if !authorized(shared, req) {
        return Err(ApiError::Unauthorized);
    }
    let method = req.method.as_str();
    let not_allowed = |allow: &'static str| ApiError::MethodNotAllowed {
        method: req.method.clone(),
        path: req.path.clone(),
        allow,
    };
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["health"] => match method {
            "GET" | "HEAD" => Ok(Reply::text(200, "text/plain", "ok\n".to_string())),
            _ => Err(not_allowed("GET")),
        },
        ["status"] => match method {
            "GET" => Ok(Reply::json(200, status_json(shared).to_string())),
            _ => Err(not_allowed("GET")),
        },
        ["metrics"] => match method {
            "GET" => Ok(Reply::text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                prometheus(shared),
            )),
            _ => Err(not_allowed("GET")),
        },
        ["latency"] => match method {
            "GET" => latency(shared, &req.query),
            _ => Err(not_allowed("GET")),
        },
        ["series"] => match method {
            "GET" => series::reply(&req.query),
            _ => Err(not_allowed("GET")),
        },
        ["target_groups", group, "targets"] => match method {
            "POST" => register(shared, &percent_decode(group)?, &req.body),
            _ => Err(not_allowed("POST")),
        },
        ["target_groups", group, "targets", address] => match method {
            "DELETE" => deregister(shared, &percent_decode(group)?, &percent_decode(address)?),
            _ => Err(not_allowed("DELETE")),
        },
        ["reload"] => match method {
            "POST" => reload(shared),
            _ => Err(not_allowed("POST")),
        },
        _ => Err(ApiError::NotFound(format!(
            "no admin endpoint at {}; see / (dashboard), /status, /metrics, /latency?listener=NAME, /series, /target_groups/NAME/targets",
            req.path
        ))),
    }
}

/// `POST /reload`: re-reads the config file; 400 with the located error when it is refused (the
/// running configuration is kept), 409 while a binary upgrade is in progress.
fn reload(shared: &Shared) -> Result<Reply, ApiError> {
    match crate::reload::reload(shared) {
        Ok(s) => Ok(Reply::json(
            200,
            serde_json::json!({
                "reloaded": true,
                "listeners_added": s.added,
                "listeners_removed": s.removed,
                "listeners_kept": s.kept,
                "target_groups": s.target_groups,
                "ignored_until_restart": s.ignored,
            })
            .to_string(),
        )),
        // Not the file's fault: try again once the upgrade has ended.
        Err(e @ crate::reload::ReloadError::Upgrading) => Err(ApiError::Conflict(format!(
            "reload refused; the running configuration is kept: {e}"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "configuration refused; the running configuration is kept: {e}"
        ))),
    }
}

fn latency(shared: &Shared, query: &str) -> Result<Reply, ApiError> {
    let name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("listener="))
        .map(percent_decode)
        .transpose()?
        .ok_or_else(|| {
            ApiError::BadRequest("name the listener: /latency?listener=NAME".to_string())
        })?;
    let snapshot = shared.snapshot();
    let plan = snapshot
        .listeners
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no listener named '{name}'")))?;
    Ok(Reply::text(
        200,
        "text/plain; charset=utf-8",
        plan.stats.with_latency(hgrm),
    ))
}

/// Decodes `%XX` escapes of a path segment or query value (e.g. `%5B%3A%3A1%5D%3A80`).
pub fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::BadRequest(format!("bad percent-escape in \"{s}\"")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest(format!("\"{s}\" is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A80").unwrap(), "[::1]:80");
        assert_eq!(percent_decode("127.0.0.1:80").unwrap(), "127.0.0.1:80");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("abc%4").is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret2", b"secret"));
        assert!(!token_matches(b"", b"secret"));
    }

    #[test]
    fn heads_parse_with_limits() {
        let (n, r, len) = parse_head(b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!(
            (n, r.path.as_str(), r.query.as_str(), len),
            (43, "/x", "y=1", 3)
        );
        assert!(!r.close);
        assert!(parse_head(b"GET / HTTP/1.1\r\n").unwrap().is_none());
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(
            parse_head(big.as_bytes()),
            Err(ApiError::BodyTooLarge)
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ApiError::LengthRequired)
        ));
        let (_, r, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(r.close, "HTTP/1.0 closes unless asked");
    }
}
