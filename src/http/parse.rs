//! Strict HTTP/1.1 request-head parsing in place over the connection's buffer (httparse plus the
//! checks it lacks: framing conflicts, bare LF, Host rules, target forms, limits). Runs on the
//! worker thread that owns the connection; the caller owns the buffer and the reused `RequestHead`.
//! Responses are in `parse/response.rs`, forwarded-head writing in `parse/forward.rs`.

mod diagnose;
mod fields;
mod forward;
mod response;

use std::mem::MaybeUninit;

use diagnose::{LineFault, StartFault};
use fields::{FieldFault, Framing, Name};

pub use fields::{is_client_cert_name, CLIENT_CERT_NAMES, MAX_CONTENT_LENGTH_DIGITS};
pub use forward::{write_request_head, write_response_head, ForwardInfo};
pub use response::{parse_response, ResponseError, ResponseHead};

/// Upper bound on `HeadLimits::max_headers`: the parser's header slots live on the stack.
pub const MAX_HEADERS_CAP: usize = 256;
/// Default `max_header_bytes`: 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default `max_headers`.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default `max_uri_bytes`: 8 KiB.
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;

/// Size limits of a request head (listener.limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Whole head including the request line and the final CRLFCRLF; 431 beyond.
    pub max_header_bytes: usize,
    /// Header fields; 431 beyond. Values above `MAX_HEADERS_CAP` act as `MAX_HEADERS_CAP`.
    pub max_headers: usize,
    /// Request-target; 414 beyond.
    pub max_uri_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
        }
    }
}

/// HTTP version of a message; nothing else is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Request method; methods are case-sensitive, so `get` is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    Other,
}

impl Method {
    /// RFC 9110 §9.2.2: a request that may be retried on a fresh connection.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }

    fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
}

/// A byte range into the buffer that was passed to the parser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes of this span in `buf` (the buffer that was parsed); empty when out of range.
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// The span of `part`, a subslice of `buf`. Callers guarantee that offsets fit in u32
    /// (heads are bounded by `max_header_bytes`, clamped to `MAX_HEAD_OFFSET`).
    fn within(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
}

/// Heads larger than this are refused whatever the configured limit, so spans fit in u32.
const MAX_HEAD_OFFSET: usize = u32::MAX as usize;

/// One header field of a parsed head: name and value (OWS trimmed) as spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
    /// Not copied verbatim by `write_request_head`/`write_response_head`: a hop-by-hop field
    /// (Connection, a field named in it, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade unless
    /// upgrading), or one ringlb replaces (X-Forwarded-For/-Proto/-Port, Expect: 100-continue).
    pub hop_by_hop: bool,
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (also Content-Length: 0).
    Empty,
    /// Exactly this many bytes (always > 0).
    Length(u64),
    /// Chunked; the chunks pass through unchanged (see `body::ChunkedDecoder`).
    Chunked,
    /// Until the backend closes (responses only).
    CloseDelimited,
}

/// A parsed request head: spans into the buffer given to `parse_request`. Reused across the
/// requests of a connection; `parse_request` clears it and allocates nothing once warm.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    /// The request-target as sent.
    pub target: Span,
    /// Path part of the target, without query; for absolute-form only the path (may be empty).
    pub path: Span,
    /// After '?'.
    pub query: Option<Span>,
    pub version: Version,
    pub headers: Vec<HeaderSpan>,
    /// Bytes including the final CRLFCRLF (and any empty lines before the request line).
    pub head_len: usize,
    /// Host header value, or the authority of an absolute-form target.
    pub host: Option<Span>,
    pub body: BodyKind,
    /// The client keeps the connection after this request (1.1 unless `Connection: close`;
    /// 1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Connection: upgrade` plus an `Upgrade` field (HTTP/1.1 only): a WebSocket or the like.
    pub upgrade: bool,
    /// HTTP/1.1 `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The first X-Forwarded-For value sent by the client.
    pub x_forwarded_for: Option<Span>,
    /// The request line without its CRLF.
    pub request_line: Span,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self::new()
    }
}

/// Header slots reserved up front so that typical requests never grow the Vec.
const INITIAL_HEADER_SLOTS: usize = 32;
/// Header-span vectors kept per thread for the next head (an HTTP/2 stream in flight holds two:
/// its request's and its target's response's; a worker serves hundreds of streams at once):
/// taking one is a pop, not an allocation. Only vectors of up to twice the initial slots are
/// kept, so at most 1.3 MiB per thread (1,024 of 64 slots of 20 bytes).
const MAX_FREE_SPANS: usize = 1024;

thread_local! {
    static FREE_SPANS: std::cell::RefCell<Vec<Vec<HeaderSpan>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header-span vector from this thread's free list (or a new one).
pub(crate) fn take_spans() -> Vec<HeaderSpan> {
    FREE_SPANS
        .with_borrow_mut(|f| f.pop())
        .unwrap_or_else(|| Vec::with_capacity(INITIAL_HEADER_SLOTS))
}

/// Gives a header-span vector back (a dropped head does); oversized ones are freed.
pub(crate) fn give_spans(mut v: Vec<HeaderSpan>) {
    if v.capacity() < INITIAL_HEADER_SLOTS || v.capacity() > 2 * INITIAL_HEADER_SLOTS {
        return;
    }
    v.clear();
    FREE_SPANS.with_borrow_mut(|f| {
        if f.len() < MAX_FREE_SPANS {
            f.push(v);
        }
    });
}

impl Drop for RequestHead {
    fn drop(&mut self) {
        give_spans(std::mem::take(&mut self.headers));
    }
}

impl RequestHead {
    pub fn new() -> Self {
        RequestHead {
            method: Method::Get,
            method_span: Span::default(),
            target: Span::default(),
            path: Span::default(),
            query: None,
            version: Version::Http11,
            headers: take_spans(),
            head_len: 0,
            host: None,
            body: BodyKind::Empty,
            keep_alive: false,
            upgrade: false,
            expect_continue: false,
            x_forwarded_for: None,
            request_line: Span::default(),
        }
    }

    /// Resets every field for the next parse, keeping the headers' allocation.
    fn clear(&mut self) {
        self.method = Method::Get;
        self.method_span = Span::default();
        self.target = Span::default();
        self.path = Span::default();
        self.query = None;
        self.version = Version::Http11;
        self.headers.clear();
        self.head_len = 0;
        self.host = None;
        self.body = BodyKind::Empty;
        self.keep_alive = false;
        self.upgrade = false;
        self.expect_continue = false;
        self.x_forwarded_for = None;
        self.request_line = Span::default();
    }

    /// The value of the first field called `name` (case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }
}

fn find_header<'a>(headers: &[HeaderSpan], buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.of(buf))
}

/// Why a request head is refused; `status()` is the answer to send, then close.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    #[error("request head exceeds max_header_bytes ({limit} bytes): send fewer or shorter headers, or raise listener.limits.max_header_bytes")]
    HeaderTooLarge { limit: usize },
    #[error("request has more than max_headers ({limit}) header fields: send fewer, or raise listener.limits.max_headers")]
    TooManyHeaders { limit: usize },
    #[error("request-target exceeds max_uri_bytes ({limit} bytes): shorten the URL, or raise listener.limits.max_uri_bytes")]
    UriTooLong { limit: usize },
    #[error("malformed request line: expected `METHOD SP request-target SP HTTP/1.1` then CRLF, single spaces, no control bytes")]
    BadRequestLine,
    #[error("unsupported HTTP version: only HTTP/1.0 and HTTP/1.1 are served on this listener")]
    UnsupportedVersion,
    #[error("bare LF line ending in the request head: every line must end with CRLF")]
    BareLf,
    #[error("obsolete line folding (a header line starting with a space or tab) is not accepted")]
    ObsFold,
    #[error("whitespace between a header name and its colon is not allowed")]
    SpaceBeforeColon,
    #[error("invalid header name: names are tokens (letters, digits, !#$%&'*+-.^_`|~) followed by a colon")]
    InvalidHeaderName,
    #[error("invalid byte in a header value: control bytes (NUL, bare CR, DEL, ...) other than tab are not allowed")]
    InvalidHeaderValue,
    #[error("request has both Content-Length and Transfer-Encoding: ambiguous framing is refused")]
    ContentLengthAndTransferEncoding,
    #[error("invalid Content-Length: it must be decimal digits only (no sign, list, hex or spaces) and fit in 64 bits")]
    BadContentLength,
    #[error("request has more than one Content-Length field")]
    DuplicateContentLength,
    #[error("invalid Transfer-Encoding: expected a comma-separated list of codings ending in `chunked`, chunked only once")]
    BadTransferEncoding,
    #[error(
        "request Transfer-Encoding does not end with `chunked`, so its length cannot be determined"
    )]
    TransferEncodingNotChunked,
    #[error("unknown transfer coding: only chunked, gzip, deflate and compress are understood")]
    UnknownTransferEncoding,
    #[error(
        "Transfer-Encoding on an HTTP/1.0 request is not allowed: send Content-Length instead"
    )]
    TransferEncodingOnHttp10,
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("request has more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header: expected `host[:port]` (or an absolute-form authority) without userinfo or commas")]
    BadHost,
    #[error("invalid request-target: expected `/path`, `http(s)://authority/path` or `*` (OPTIONS only), without a fragment")]
    BadTarget,
    #[error("CONNECT is not supported: ringlb is not a forward proxy")]
    ConnectNotSupported,
}

impl RequestError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        use RequestError::*;
        match self {
            HeaderTooLarge { .. } | TooManyHeaders { .. } => 431,
            UriTooLong { .. } => 414,
            UnsupportedVersion => 505,
            UnknownTransferEncoding | ConnectNotSupported => 501,
            _ => 400,
        }
    }

    /// Short snake_case label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        use RequestError::*;
        match self {
            HeaderTooLarge { .. } => "header_too_large",
            TooManyHeaders { .. } => "too_many_headers",
            UriTooLong { .. } => "uri_too_long",
            BadRequestLine => "bad_request_line",
            UnsupportedVersion => "unsupported_version",
            BareLf => "bare_lf",
            ObsFold => "obs_fold",
            SpaceBeforeColon => "space_before_colon",
            InvalidHeaderName => "invalid_header_name",
            InvalidHeaderValue => "invalid_header_value",
            ContentLengthAndTransferEncoding => "cl_and_te",
            BadContentLength => "bad_content_length",
            DuplicateContentLength => "duplicate_content_length",
            BadTransferEncoding => "bad_transfer_encoding",
            TransferEncodingNotChunked => "te_not_chunked",
            UnknownTransferEncoding => "unknown_transfer_encoding",
            TransferEncodingOnHttp10 => "te_on_http10",
            MissingHost => "missing_host",
            DuplicateHost => "duplicate_host",
            BadHost => "bad_host",
            BadTarget => "bad_target",
            ConnectNotSupported => "connect_not_supported",
        }
    }
}

impl From<LineFault> for RequestError {
    fn from(f: LineFault) -> Self {
        match f {
            LineFault::BareLf => RequestError::BareLf,
            LineFault::ObsFold => RequestError::ObsFold,
            LineFault::SpaceBeforeColon => RequestError::SpaceBeforeColon,
            LineFault::InvalidName => RequestError::InvalidHeaderName,
            LineFault::InvalidValue => RequestError::InvalidHeaderValue,
        }
    }
}

impl From<FieldFault> for RequestError {
    fn from(f: FieldFault) -> Self {
        match f {
            FieldFault::BadContentLength => RequestError::BadContentLength,
            FieldFault::DuplicateContentLength => RequestError::DuplicateContentLength,
            FieldFault::BadTransferEncoding => RequestError::BadTransferEncoding,
        }
    }
}

/// Parses the request head at the start of `buf` into `head` (cleared first).
///
/// `Ok(Some(head_len))`: complete head of `head_len` bytes (the body or the next request follows).
/// `Ok(None)`: incomplete; read more and call again with the grown buffer. Errors arrive as early
/// as the bytes allow: a request line whose target already exceeds `max_uri_bytes` is 414, a
/// buffer over `max_header_bytes` without a complete head is 431.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Option<usize>, RequestError> {
    head.clear();
    let max_bytes = limits.max_header_bytes.min(MAX_HEAD_OFFSET);
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let mut req = httparse::Request::new(&mut []);
    let parsed =
        req.parse_with_uninit_headers(buf, slots.get_mut(..max_headers).unwrap_or_default());
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let line = diagnose::first_line(buf);
            if diagnose::partial_target_len(&line) > limits.max_uri_bytes {
                return Err(RequestError::UriTooLong {
                    limit: limits.max_uri_bytes,
                });
            }
            if buf.len() > max_bytes {
                return Err(RequestError::HeaderTooLarge {
                    limit: limits.max_header_bytes,
                });
            }
            return Ok(None);
        }
        Err(e) => return Err(diagnose_request(buf, e, limits)),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::BadRequestLine);
    };
    if target.len() > limits.max_uri_bytes {
        return Err(RequestError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    if head_len > max_bytes {
        return Err(RequestError::HeaderTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    if syntax_bare_lf(buf, head_len) {
        return Err(RequestError::BareLf);
    }

    head.head_len = head_len;
    head.method = Method::from_bytes(method.as_bytes());
    head.method_span = Span::within(buf, method.as_bytes());
    head.target = Span::within(buf, target.as_bytes());
    head.version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    head.request_line = Span {
        start: head.method_span.start,
        end: head.target.end + b" HTTP/1.1".len() as u32,
    };
    if head.method == Method::Connect {
        return Err(RequestError::ConnectNotSupported);
    }
    let parts = fields::split_target(
        target.as_bytes(),
        head.target.start,
        head.method == Method::Options,
    )
    .map_err(|_| RequestError::BadTarget)?;
    head.path = parts.path;
    head.query = parts.query;

    let mut framing = Framing::default();
    let mut host_count = 0u32;
    for h in req.headers.iter() {
        let name_span = Span::within(buf, h.name.as_bytes());
        let value_span = Span::within(buf, h.value);
        let name = fields::classify(h.name.as_bytes());
        framing.add(name, h.value)?;
        let hop_by_hop = match name {
            Name::Connection
            | Name::KeepAlive
            | Name::ProxyConnection
            | Name::Te
            | Name::Trailer => true,
            Name::Host => {
                host_count += 1;
                head.host = Some(value_span);
                false
            }
            Name::Expect if fields::is_100_continue(h.value) => {
                head.expect_continue = head.version == Version::Http11;
                true
            }
            Name::XForwardedFor => {
                head.x_forwarded_for.get_or_insert(value_span);
                true
            }
            // Client-sent: dropped (mutual TLS listeners add their own).
            Name::XForwardedProto | Name::XForwardedPort | Name::XClientCert => true,
            _ => false,
        };
        head.headers.push(HeaderSpan {
            name: name_span,
            value: value_span,
            hop_by_hop,
        });
    }

    if framing.te_present {
        if head.version == Version::Http10 {
            return Err(RequestError::TransferEncodingOnHttp10);
        }
        if framing.content_length.is_some() {
            return Err(RequestError::ContentLengthAndTransferEncoding);
        }
        if framing.te_unknown {
            return Err(RequestError::UnknownTransferEncoding);
        }
        if framing.te_chunked_not_last || !framing.te_last_chunked {
            return Err(RequestError::TransferEncodingNotChunked);
        }
    }
    match host_count {
        0 if head.version == Version::Http11 => return Err(RequestError::MissingHost),
        0 | 1 => {}
        _ => return Err(RequestError::DuplicateHost),
    }
    if let Some(host) = head.host {
        if !fields::is_valid_host(host.of(buf)) {
            return Err(RequestError::BadHost);
        }
    }
    if parts.authority.is_some() {
        head.host = parts.authority;
    }
    head.body = framing.request_body();
    head.keep_alive = match head.version {
        Version::Http11 => !framing.conn_close,
        Version::Http10 => framing.conn_keep_alive && !framing.conn_close,
    };
    head.upgrade = head.version == Version::Http11 && framing.conn_upgrade && framing.upgrade_field;
    mark_hop_by_hop(buf, &mut head.headers, head.upgrade, &framing);
    Ok(Some(head_len))
}

/// Cheap pre-check for a connection reading a head in pieces: true when the bytes appended to
/// `buf` since it was `prev_len` long could end a head (an LF followed by CRLF or LF). Calling
/// `parse_request` only when this is true, or when `buf` has grown past `max_uri_bytes` (so the
/// early 414/431 still fire), keeps a client that sends one byte per packet from costing
/// quadratic parse time. A false positive only costs one parse.
pub fn could_complete(buf: &[u8], prev_len: usize) -> bool {
    let from = prev_len.saturating_sub(3);
    let tail = buf.get(from..).unwrap_or_default();
    memchr::memchr_iter(b'\n', tail).any(|i| matches!(tail.get(i + 1), Some(b'\n' | b'\r')))
}

/// Upgrade is hop-by-hop unless upgrading; fields named in Connection are hop-by-hop.
fn mark_hop_by_hop(buf: &[u8], headers: &mut [HeaderSpan], upgrade: bool, framing: &Framing) {
    if framing.upgrade_field || framing.conn_upgrade {
        for h in headers.iter_mut() {
            if fields::classify(h.name.of(buf)) == Name::Upgrade {
                h.hop_by_hop = !upgrade;
            }
        }
    }
    if framing.conn_names_other {
        fields::mark_connection_named(buf, headers);
    }
}

fn syntax_bare_lf(buf: &[u8], head_len: usize) -> bool {
    crate::http::syntax::has_bare_lf(buf.get(..head_len).unwrap_or_default())
}

/// Turns httparse's verdict into the precise rule that was broken.
fn diagnose_request(buf: &[u8], err: httparse::Error, limits: &HeadLimits) -> RequestError {
    let line = diagnose::first_line(buf);
    if let Some(fault) = diagnose::request_line_fault(&line) {
        return match fault {
            StartFault::BareLf => RequestError::BareLf,
            StartFault::Version => RequestError::UnsupportedVersion,
            StartFault::Malformed => {
                if diagnose::partial_target_len(&line) > limits.max_uri_bytes {
                    RequestError::UriTooLong {
                        limit: limits.max_uri_bytes,
                    }
                } else {
                    RequestError::BadRequestLine
                }
            }
        };
    }
    if err == httparse::Error::TooManyHeaders {
        return RequestError::TooManyHeaders {
            limit: limits.max_headers.min(MAX_HEADERS_CAP),
        };
    }
    if let Some(fault) = diagnose::header_fault(buf, line.next) {
        return fault.into();
    }
    match err {
        httparse::Error::HeaderName => RequestError::InvalidHeaderName,
        httparse::Error::HeaderValue | httparse::Error::NewLine => RequestError::InvalidHeaderValue,
        httparse::Error::Version => RequestError::UnsupportedVersion,
        _ => RequestError::BadRequestLine,
    }
}

#[cfg(test)]
mod tests;
