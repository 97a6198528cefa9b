//! Strict HTTP/1.1 response-head parsing in place over the upstream connection's buffer, with
//! body framing per RFC 9112 §6.3. Runs on the worker thread that owns the upstream connection;
//! the caller owns the buffer and the reused `ResponseHead`.

use std::mem::MaybeUninit;

use super::diagnose::{self, LineFault, StartFault};
use super::fields::{self, FieldFault, Framing, Name};
use super::{BodyKind, HeaderSpan, Method, Span, Version, MAX_HEADERS_CAP, MAX_HEAD_OFFSET};

/// A parsed response head: spans into the buffer given to `parse_response`. Reused across
/// responses; `parse_response` clears it and allocates nothing once warm.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub version: Version,
    pub headers: Vec<HeaderSpan>,
    /// Bytes including the final CRLFCRLF.
    pub head_len: usize,
    pub body: BodyKind,
    /// The backend lets us reuse the connection after this response's body.
    pub keep_alive: bool,
    /// 101 Switching Protocols: the connection becomes a tunnel.
    pub upgrade: bool,
    /// The status line without its CRLF.
    pub status_line: Span,
    /// Transfer-Encoding names a coding besides `chunked` (gzip, ...): the body cannot be given
    /// to an HTTP/1.0 client, which has no way to be told.
    pub te_other_coding: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ResponseHead {
    fn drop(&mut self) {
        super::give_spans(std::mem::take(&mut self.headers));
    }
}

impl ResponseHead {
    pub fn new() -> Self {
        ResponseHead {
            status: 0,
            version: Version::Http11,
            headers: super::take_spans(),
            head_len: 0,
            body: BodyKind::Empty,
            keep_alive: false,
            upgrade: false,
            status_line: Span::default(),
            te_other_coding: false,
        }
    }

    /// An interim response (1xx other than 101): the final response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The value of the first field called `name` (case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        super::find_header(&self.headers, buf, name)
    }

    fn clear(&mut self) {
        self.status = 0;
        self.version = Version::Http11;
        self.headers.clear();
        self.head_len = 0;
        self.body = BodyKind::Empty;
        self.keep_alive = false;
        self.upgrade = false;
        self.status_line = Span::default();
        self.te_other_coding = false;
    }
}

/// Why a backend's response head is refused; the proxy answers 502 and drops the connection.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    #[error("backend response head exceeds {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("backend response has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("malformed status line from backend: expected `HTTP/1.x NNN reason` then CRLF")]
    BadStatusLine,
    #[error("bare LF line ending in the backend response head")]
    BareLf,
    #[error("obsolete line folding in the backend response head")]
    ObsFold,
    #[error("whitespace between a header name and its colon in the backend response")]
    SpaceBeforeColon,
    #[error("invalid header name in the backend response")]
    InvalidHeaderName,
    #[error("invalid byte (control byte, bare CR) in a backend response header value")]
    InvalidHeaderValue,
    #[error("backend response has both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    #[error("invalid Content-Length in the backend response: digits only, fitting 64 bits")]
    BadContentLength,
    #[error("backend response has more than one Content-Length field")]
    DuplicateContentLength,
    #[error("invalid Transfer-Encoding in the backend response (syntax, or chunked twice)")]
    BadTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 backend response")]
    TransferEncodingOnHttp10,
}

impl ResponseError {
    /// The status ringlb answers the client with: always 502 Bad Gateway.
    pub fn status(&self) -> u16 {
        502
    }

    /// Short snake_case label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        use ResponseError::*;
        match self {
            HeaderTooLarge { .. } => "upstream_header_too_large",
            TooManyHeaders { .. } => "upstream_too_many_headers",
            BadStatusLine => "upstream_bad_status_line",
            BareLf => "upstream_bare_lf",
            ObsFold => "upstream_obs_fold",
            SpaceBeforeColon => "upstream_space_before_colon",
            InvalidHeaderName => "upstream_invalid_header_name",
            InvalidHeaderValue => "upstream_invalid_header_value",
            ContentLengthAndTransferEncoding => "upstream_cl_and_te",
            BadContentLength => "upstream_bad_content_length",
            DuplicateContentLength => "upstream_duplicate_content_length",
            BadTransferEncoding => "upstream_bad_transfer_encoding",
            TransferEncodingOnHttp10 => "upstream_te_on_http10",
        }
    }
}

impl From<LineFault> for ResponseError {
    fn from(f: LineFault) -> Self {
        match f {
            LineFault::BareLf => ResponseError::BareLf,
            LineFault::ObsFold => ResponseError::ObsFold,
            LineFault::SpaceBeforeColon => ResponseError::SpaceBeforeColon,
            LineFault::InvalidName => ResponseError::InvalidHeaderName,
            LineFault::InvalidValue => ResponseError::InvalidHeaderValue,
        }
    }
}

impl From<FieldFault> for ResponseError {
    fn from(f: FieldFault) -> Self {
        match f {
            FieldFault::BadContentLength => ResponseError::BadContentLength,
            FieldFault::DuplicateContentLength => ResponseError::DuplicateContentLength,
            FieldFault::BadTransferEncoding => ResponseError::BadTransferEncoding,
        }
    }
}

/// Parses the response head at the start of `buf` into `head` (cleared first). `request_method`
/// is the method of the request this answers (HEAD responses have no body).
///
/// `Ok(Some(head_len))`: complete; `Ok(None)`: read more (an error once `buf` exceeds
/// `max_header_bytes` without a complete head). At most `MAX_HEADERS_CAP` fields.
pub fn parse_response(
    buf: &[u8],
    request_method: Method,
    max_header_bytes: usize,
    head: &mut ResponseHead,
) -> Result<Option<usize>, ResponseError> {
    head.clear();
    let max_bytes = max_header_bytes.min(MAX_HEAD_OFFSET);
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            return Err(ResponseError::HeaderTooLarge {
                limit: max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(diagnose_response(buf, e)),
    };
    if head_len > max_bytes {
        return Err(ResponseError::HeaderTooLarge {
            limit: max_header_bytes,
        });
    }
    if crate::http::syntax::has_bare_lf(buf.get(..head_len).unwrap_or_default()) {
        return Err(ResponseError::BareLf);
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(ResponseError::BadStatusLine);
    };
    if status < 100 {
        return Err(ResponseError::BadStatusLine);
    }
    let line = diagnose::first_line(buf);
    head.status_line = Span::within(buf, line.content);
    head.status = status;
    head.version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    head.head_len = head_len;

    let mut framing = Framing::default();
    for h in resp.headers.iter() {
        let name = fields::classify(h.name.as_bytes());
        framing.add(name, h.value)?;
        let hop_by_hop = matches!(
            name,
            Name::Connection | Name::KeepAlive | Name::ProxyConnection | Name::Te | Name::Trailer
        ) || (name == Name::Upgrade && status != 101);
        head.headers.push(HeaderSpan {
            name: Span::within(buf, h.name.as_bytes()),
            value: Span::within(buf, h.value),
            hop_by_hop,
        });
    }
    if framing.te_present {
        if framing.content_length.is_some() {
            return Err(ResponseError::ContentLengthAndTransferEncoding);
        }
        if head.version == Version::Http10 {
            return Err(ResponseError::TransferEncodingOnHttp10);
        }
        if framing.te_last_chunked && framing.te_chunked_not_last {
            return Err(ResponseError::BadTransferEncoding);
        }
    }
    if framing.conn_names_other {
        fields::mark_connection_named(buf, &mut head.headers);
    }

    head.upgrade = status == 101;
    head.te_other_coding = framing.te_other_coding;
    head.body = if request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        BodyKind::Empty
    } else if framing.te_present {
        if framing.te_last_chunked {
            BodyKind::Chunked
        } else {
            BodyKind::CloseDelimited
        }
    } else {
        match framing.content_length {
            Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::CloseDelimited,
        }
    };
    head.keep_alive = !head.upgrade
        && head.body != BodyKind::CloseDelimited
        && match head.version {
            Version::Http11 => !framing.conn_close,
            Version::Http10 => framing.conn_keep_alive && !framing.conn_close,
        };
    Ok(Some(head_len))
}

fn diagnose_response(buf: &[u8], err: httparse::Error) -> ResponseError {
    let line = diagnose::first_line(buf);
    match diagnose::status_line_fault(&line) {
        Some(StartFault::BareLf) => return ResponseError::BareLf,
        Some(_) => return ResponseError::BadStatusLine,
        None => {}
    }
    if err == httparse::Error::TooManyHeaders {
        return ResponseError::TooManyHeaders {
            limit: MAX_HEADERS_CAP,
        };
    }
    if let Some(fault) = diagnose::header_fault(buf, line.next) {
        return fault.into();
    }
    match err {
        httparse::Error::HeaderName => ResponseError::InvalidHeaderName,
        httparse::Error::HeaderValue | httparse::Error::NewLine => {
            ResponseError::InvalidHeaderValue
        }
        _ => ResponseError::BadStatusLine,
    }
}
