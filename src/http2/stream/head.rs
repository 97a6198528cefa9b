//! An HTTP/2 request head in the HTTP/1.1 form it is forwarded in (RFC 9113 §8.2.3, §8.3.1):
//! `:method :path HTTP/1.1`, Host from `:authority`, cookies joined, `te` dropped, the body
//! framed by its content-length or chunked. Checks what h2 leaves to the application: a Host
//! that disagrees with `:authority`, whitespace around values, and a missing authority.
//!
//! Pure code, run by a stream's task; the caller owns the output buffer.

use std::fmt;

use http::request::Parts;
use http::HeaderMap;

/// Why a stream's request is malformed (a stream error: RST_STREAM PROTOCOL_ERROR).
#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Neither `:authority` nor Host.
    NoAuthority,
    /// Host names another authority than `:authority`.
    HostMismatch,
    /// A field value starts or ends with whitespace (RFC 9113 §8.2.1).
    Whitespace(String),
    /// No `:path`, or one that is not origin-form (`/...`, or `*` for OPTIONS): an absolute
    /// URL there would route by a host other than `:authority` (RFC 9113 §8.3.1).
    NoPath,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NoAuthority => write!(f, "no :authority and no host field"),
            Malformed::HostMismatch => write!(f, "host field disagrees with :authority"),
            Malformed::Whitespace(n) => write!(f, "value of {n} starts or ends with whitespace"),
            Malformed::NoPath => write!(f, "no :path in origin form"),
        }
    }
}

/// What the HTTP/1.1 form leaves out and the stream needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// The client sent `te: trailers`: a chunked response's trailers reach it.
    pub wants_trailers: bool,
    /// The client sent `expect: 100-continue` (answered by ringlb, not forwarded).
    pub expect_continue: bool,
}

/// Fields the HTTP/1.1 form writes itself or must not carry.
fn dropped(name: &str) -> bool {
    matches!(name, "host" | "cookie" | "te" | "expect")
}

/// Appends the HTTP/1.1 form of `parts` to `out`. `end_stream`: HEADERS ended the stream, so
/// there is no body.
pub fn write_h1(parts: &Parts, end_stream: bool, out: &mut Vec<u8>) -> Result<Shape, Malformed> {
    let mut shape = Shape::default();
    let authority = parts.uri.authority().map(|a| a.as_str());
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host = hosts.next().map(|h| h.as_bytes());
    if authority.is_none() && hosts.next().is_some() {
        // As over HTTP/1.1: two Host fields name no one authority.
        return Err(Malformed::HostMismatch);
    }
    let host = match (authority, host) {
        (Some(a), Some(h)) if !h.eq_ignore_ascii_case(a.as_bytes()) => {
            return Err(Malformed::HostMismatch)
        }
        (Some(a), _) => a.as_bytes(),
        (None, Some(h)) => h,
        (None, None) => return Err(Malformed::NoAuthority),
    };
    let target = if parts.method == http::Method::CONNECT {
        authority.unwrap_or_default()
    } else {
        match parts.uri.path_and_query().map(|p| p.as_str()) {
            Some(p) if p.starts_with('/') => p,
            Some("*") if parts.method == http::Method::OPTIONS => "*",
            _ => return Err(Malformed::NoPath),
        }
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut cookies = 0;
    let mut has_length = false;
    for (name, value) in &parts.headers {
        let v = value.as_bytes();
        if v.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
            || v.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
        {
            return Err(Malformed::Whitespace(name.as_str().to_string()));
        }
        let n = name.as_str();
        match n {
            "cookie" => cookies += 1,
            "te" => shape.wants_trailers = v.eq_ignore_ascii_case(b"trailers"),
            "expect" => shape.expect_continue |= v.eq_ignore_ascii_case(b"100-continue"),
            "content-length" => has_length = true,
            _ => {}
        }
        if dropped(n) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
        out.extend_from_slice(b"cookie: ");
        for (i, c) in parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .enumerate()
        {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !end_stream && !has_length {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(shape)
}

/// Starts a chunk of `len` bytes.
pub fn chunk_start(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// Trailer fields that must not be forwarded (framing, routing, authentication, and the client
/// certificate fields only ringlb sets).
pub fn forbidden_trailer(name: &str) -> bool {
    crate::http::parse::is_client_cert_name(name.as_bytes())
        || matches!(
            name,
            "content-length"
                | "transfer-encoding"
                | "host"
                | "te"
                | "trailer"
                | "connection"
                | "keep-alive"
                | "upgrade"
                | "authorization"
                | "cookie"
                | "set-cookie"
        )
}

/// Appends the trailer fields of a chunked body (after its `0\r\n`), skipping forbidden ones.
pub fn write_trailers(trailers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in trailers {
        if forbidden_trailer(name.as_str()) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses the trailer section of a chunked body (its lines and final CRLF, as the decoder
/// collected them) into fields for HTTP/2 trailers; skips forbidden and unparsable lines.
pub fn parse_trailers(section: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.trim_ascii();
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        if !forbidden_trailer(name.as_str()) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn h1(req: http::Request<()>, end: bool) -> Result<(String, Shape), Malformed> {
        let mut out = Vec::new();
        let shape = write_h1(&parts(req), end, &mut out)?;
        Ok((String::from_utf8(out).unwrap_or_default(), shape))
    }

    #[test]
    fn authority_becomes_host_and_cookies_join() {
        let req = http::Request::builder()
            .method("GET")
            .uri("https://example.com/a?b=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("x-y", "z")
            .body(())
            .unwrap_or_default();
        let (text, shape) = h1(req, true).unwrap_or_default();
        assert_eq!(
            text,
            "GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-y: z\r\ncookie: a=1; b=2\r\n\r\n"
        );
        assert!(shape.wants_trailers);
    }

    #[test]
    fn a_body_without_length_goes_chunked() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://h/up")
            .body(())
            .unwrap_or_default();
        let (text, _) = h1(req, false).unwrap_or_default();
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        let req = http::Request::builder()
            .method("POST")
            .uri("http://h/up")
            .header("content-length", "5")
            .body(())
            .unwrap_or_default();
        let (text, _) = h1(req, false).unwrap_or_default();
        assert!(!text.contains("chunked"), "{text}");
    }

    #[test]
    fn malformed_heads_are_refused() {
        let mismatch = http::Request::builder()
            .uri("http://a.example/")
            .header("host", "b.example")
            .body(())
            .unwrap_or_default();
        assert_eq!(h1(mismatch, true).err(), Some(Malformed::HostMismatch));
        let no_authority = http::Request::builder()
            .uri("/")
            .body(())
            .unwrap_or_default();
        assert_eq!(h1(no_authority, true).err(), Some(Malformed::NoAuthority));
        let space = http::Request::builder()
            .uri("http://a/")
            .header("x", " padded")
            .body(())
            .unwrap_or_default();
        assert!(matches!(h1(space, true), Err(Malformed::Whitespace(_))));
    }

    #[test]
    fn only_origin_form_paths_pass() {
        let absolute = http::Request::builder()
            .uri("http://a.example/x")
            .body(())
            .unwrap_or_default();
        let mut p = parts(absolute);
        // The http crate refuses `:path: http://internal/x` itself; a bare query it lets through.
        let mut up = http::uri::Parts::default();
        up.scheme = Some(http::uri::Scheme::HTTP);
        up.authority = http::uri::Authority::from_maybe_shared("a.example").ok();
        up.path_and_query = http::uri::PathAndQuery::from_maybe_shared("?a=1").ok();
        p.uri = http::Uri::from_parts(up).unwrap_or_default();
        assert_eq!(p.uri.path_and_query().map(|q| q.as_str()), Some("?a=1"));
        let mut out = Vec::new();
        assert_eq!(write_h1(&p, true, &mut out).err(), Some(Malformed::NoPath));
        let star = http::Request::builder()
            .method("OPTIONS")
            .uri("*")
            .header("host", "a")
            .body(())
            .unwrap_or_default();
        let mut out = Vec::new();
        assert!(write_h1(&parts(star), true, &mut out).is_ok(), "OPTIONS *");
        let star_get = http::Request::builder()
            .uri("*")
            .header("host", "a")
            .body(())
            .unwrap_or_default();
        assert_eq!(h1(star_get, true).err(), Some(Malformed::NoPath));
    }

    #[test]
    fn trailers_round_trip_without_forbidden_fields() {
        let map = parse_trailers(b"grpc-status: 0\r\nContent-Length: 5\r\nx-sum:  abc \r\n\r\n");
        assert_eq!(
            map.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        assert_eq!(map.get("x-sum").map(|v| v.as_bytes()), Some(&b"abc"[..]));
        assert!(map.get("content-length").is_none());
        let mut out = Vec::new();
        write_trailers(&map, &mut out);
        assert_eq!(out, b"grpc-status: 0\r\nx-sum: abc\r\n");
    }
}
