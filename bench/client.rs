//! The load client's connection: target URL parsing, the prebuilt request, connect (+ TLS),
//! and one request/response exchange with allocation-free buffers.
//! Runs on the load threads; each `Conn` and its buffers belong to one connection task.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::http::{self, BodyKind, Chunked};
use crate::io::{IoKind, Stream};
use crate::tls::TlsConn;

/// Read buffer per connection; response heads must fit in it.
pub const READ_BUF: usize = 64 * 1024;

/// The URL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("bad URL '{0}': expected http://host[:port][/path] or https://host[:port][/path]")]
    Syntax(String),
    #[error("bad URL '{url}': {why}")]
    Invalid { url: String, why: &'static str },
    #[error("cannot resolve '{host}' from URL '{url}': {err}")]
    Resolve {
        url: String,
        host: String,
        err: String,
    },
    #[error("bad header '{0}': expected 'Name: value'")]
    Header(String),
}

/// A parsed and resolved target.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'.
    pub path: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `http[s]://host[:port][/path]` and resolves the host.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let syntax = || TargetError::Syntax(url.to_string());
        let invalid = |why| TargetError::Invalid {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(syntax)?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid("the path contains spaces or control characters"));
        }
        let path = path.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(invalid("user:password@ is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(syntax)?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        if host.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f) {
            return Err(invalid("the host contains invalid characters"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
            None if https => 443,
            None => 80,
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| TargetError::Resolve {
                url: url.to_string(),
                host: host.to_string(),
                err: e.to_string(),
            })?
            .next()
            .ok_or_else(|| TargetError::Resolve {
                url: url.to_string(),
                host: host.to_string(),
                err: "no addresses".into(),
            })?;
        Ok(Target {
            url: url.to_string(),
            https,
            host: host.to_string(),
            port,
            path,
            addr,
        })
    }

    /// The Host header value (port omitted when it is the scheme's default).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Parses `-H 'Name: value'`.
pub fn parse_header(h: &str) -> Result<(String, String), TargetError> {
    let (n, v) = h
        .split_once(':')
        .ok_or_else(|| TargetError::Header(h.to_string()))?;
    let n = n.trim();
    let ok_name = !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok_name || v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(TargetError::Header(h.to_string()));
    }
    Ok((n.to_string(), v.trim().to_string()))
}

/// Builds the request bytes once: `GET path HTTP/1.1`, Host, user headers, `Connection: close`.
pub fn build_request(t: &Target, headers: &[(String, String)], close: bool) -> Vec<u8> {
    let mut r = format!("GET {} HTTP/1.1\r\n", t.path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        r.push_str(&format!("Host: {}\r\n", t.host_header()));
    }
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Failure kinds, as reported in `errors_by_kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrKind {
    Connect,
    Refused,
    Reset,
    Timeout,
    BadResponse,
    Status,
    Tls,
}

impl ErrKind {
    pub const ALL: [ErrKind; 7] = [
        ErrKind::Connect,
        ErrKind::Refused,
        ErrKind::Reset,
        ErrKind::Timeout,
        ErrKind::BadResponse,
        ErrKind::Status,
        ErrKind::Tls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrKind::Connect => "connect",
            ErrKind::Refused => "refused",
            ErrKind::Reset => "reset",
            ErrKind::Timeout => "timeout",
            ErrKind::BadResponse => "bad_response",
            ErrKind::Status => "status",
            ErrKind::Tls => "tls",
        }
    }

    pub fn from_io(e: &io::Error, tls: bool) -> ErrKind {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ErrKind::Refused,
            K::TimedOut => ErrKind::Timeout,
            K::InvalidData if tls => ErrKind::Tls,
            K::OutOfMemory | K::InvalidData => ErrKind::BadResponse,
            _ => ErrKind::Reset,
        }
    }
}

thread_local! {
    /// The first connect/TLS (or HTTP/2 connection) failure's message on this load thread
    /// (shown in the summary).
    pub static FIRST_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Remembers `e` as this thread's first error message, if none is yet.
pub fn note_error(what: &str, e: &dyn std::fmt::Display) {
    FIRST_ERROR.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            *f = Some(format!("{what}: {e}"));
        }
    });
}

/// What every connection of a load run shares (read-only).
pub struct ConnSetup {
    pub kind: IoKind,
    pub addr: SocketAddr,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// An open connection, plain or TLS.
pub enum Conn {
    Plain(Stream),
    Tls(Box<TlsConn>),
}

impl Conn {
    /// Connects (and handshakes for https).
    pub async fn open(s: &ConnSetup) -> Result<Conn, ErrKind> {
        let stream = Stream::connect(s.kind, s.addr)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionRefused => ErrKind::Refused,
                io::ErrorKind::TimedOut => ErrKind::Timeout,
                _ => ErrKind::Connect,
            })?;
        match &s.tls {
            None => Ok(Conn::Plain(stream)),
            Some((cfg, name)) => {
                let t = TlsConn::connect(stream, cfg.clone(), name.clone())
                    .await
                    .map_err(|e| {
                        note_error("TLS handshake", &e);
                        match e.kind() {
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                                ErrKind::Reset
                            }
                            _ => ErrKind::Tls,
                        }
                    })?;
                Ok(Conn::Tls(Box::new(t)))
            }
        }
    }

    async fn read_append(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Plain(s) => s.read_append(buf).await,
            Conn::Tls(t) => t.read_append(buf).await,
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Conn::Plain(s) => s.write_all(buf).await,
            Conn::Tls(t) => t.write_all(buf).await,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Shuts the socket down (wakes a pending read) before the connection is dropped.
    pub fn shutdown(&self) {
        match self {
            Conn::Plain(s) => s.shutdown(),
            Conn::Tls(t) => t.shutdown(),
        }
    }

    /// Sends `req` (one write) and reads one whole response; `Ok(true)` when the connection
    /// may be reused. `req` and `buf` are handed back through the `&mut` (never reallocated).
    pub async fn exchange(
        &mut self,
        req: &mut Vec<u8>,
        buf: &mut Vec<u8>,
    ) -> Result<bool, ErrKind> {
        let tls = self.is_tls();
        let (res, r) = self.write_all(std::mem::take(req)).await;
        *req = r;
        res.map_err(|e| ErrKind::from_io(&e, tls))?;

        buf.clear();
        let head = loop {
            let (res, b) = self.read_append(std::mem::take(buf)).await;
            *buf = b;
            match res {
                Ok(0) => return Err(ErrKind::Reset),
                Ok(_) => {}
                Err(e) => return Err(ErrKind::from_io(&e, tls)),
            }
            match http::parse_response_head(buf) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    // Interim response: drop it and keep reading for the final one.
                    buf.drain(..h.head_len);
                }
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() == buf.capacity() => return Err(ErrKind::BadResponse),
                Ok(None) => {}
                Err(_) => return Err(ErrKind::BadResponse),
            }
        };
        let extra = buf.len() - head.head_len;
        match head.body {
            BodyKind::None => {
                if extra != 0 {
                    return Err(ErrKind::BadResponse);
                }
            }
            BodyKind::Length(n) => {
                let mut left = n.checked_sub(extra as u64).ok_or(ErrKind::BadResponse)?;
                while left > 0 {
                    let got = self.read_more(buf, tls).await?;
                    left = left.checked_sub(got as u64).ok_or(ErrKind::BadResponse)?;
                }
            }
            BodyKind::Chunked => {
                let mut dec = Chunked::default();
                let used = dec
                    .feed(&buf[head.head_len..])
                    .map_err(|_| ErrKind::BadResponse)?;
                if used != extra {
                    return Err(ErrKind::BadResponse);
                }
                while !dec.is_done() {
                    let got = self.read_more(buf, tls).await?;
                    let used = dec.feed(&buf[..got]).map_err(|_| ErrKind::BadResponse)?;
                    if used != got {
                        return Err(ErrKind::BadResponse);
                    }
                }
            }
            BodyKind::UntilClose => loop {
                buf.clear();
                let (res, b) = self.read_append(std::mem::take(buf)).await;
                *buf = b;
                match res {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(ErrKind::from_io(&e, tls)),
                }
            },
        }
        if !(200..400).contains(&head.status) {
            return Err(ErrKind::Status);
        }
        Ok(!head.close)
    }

    /// Reads more body bytes into a cleared `buf`; end of stream is an error here.
    async fn read_more(&mut self, buf: &mut Vec<u8>, tls: bool) -> Result<usize, ErrKind> {
        buf.clear();
        let (res, b) = self.read_append(std::mem::take(buf)).await;
        *buf = b;
        match res {
            Ok(0) => Err(ErrKind::Reset),
            Ok(n) => Ok(n),
            Err(e) => Err(ErrKind::from_io(&e, tls)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_fail_clearly() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?x=1").unwrap();
        assert_eq!(
            (t.https, t.port, t.path.as_str()),
            (false, 8080, "/a/b?x=1")
        );
        let t = Target::parse("https://127.0.0.1").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/"));
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!(t.host_header(), "[::1]:9");
        for bad in [
            "127.0.0.1:80",
            "ftp://x/",
            "http://",
            "http://h:99999/",
            "http://h:x/",
            "http://a b/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_is_prebuilt_with_host_and_headers() {
        let t = Target::parse("http://127.0.0.1:81/p").unwrap();
        let h = vec![parse_header("X-A: 1").unwrap()];
        let r = String::from_utf8(build_request(&t, &h, true)).unwrap();
        assert_eq!(
            r,
            "GET /p HTTP/1.1\r\nHost: 127.0.0.1:81\r\nX-A: 1\r\nConnection: close\r\n\r\n"
        );
        let h = vec![parse_header("host: example.com").unwrap()];
        let r = String::from_utf8(build_request(&t, &h, false)).unwrap();
        assert_eq!(r, "GET /p HTTP/1.1\r\nhost: example.com\r\n\r\n");
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header("Bad Name: v").is_err());
    }
}
