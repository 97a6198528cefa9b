//! The HTTP/2 form of a forwarded request head: the head ringlb would send an HTTP/1.1 target
//! (hop-by-hop fields already removed, X-Forwarded-* set, see `http::parse::forward`) becomes
//! `:method`, `:scheme`, `:authority` (from Host) and `:path`, plus its fields without the
//! connection-specific ones; `te: trailers` goes along when the client asked for trailers.
//!
//! Runs in the task of the request it converts; allocates the `http::Request` it returns.

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// Fields HTTP/2 must not carry (RFC 9113 §8.2.2); Host becomes `:authority`.
fn dropped(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "expect"
    )
}

/// Why a forwarded head has no HTTP/2 form (each a 400 to the client).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    #[error("the head does not parse")]
    Head,
    #[error("the request target is not a path")]
    Target,
    #[error("a field has no HTTP/2 form")]
    Field,
}

/// Converts the forwarded HTTP/1.1 head in `h1` (through its blank line) for a target reached
/// over `scheme` ("http" for h2c, "https" for h2); `fallback_authority` stands in for a missing
/// Host (an HTTP/1.0 client).
pub fn from_h1(
    h1: &[u8],
    scheme: &str,
    fallback_authority: &str,
    te_trailers: bool,
) -> Result<Request<()>, Unmappable> {
    let lines = h1.windows(2).filter(|w| w == b"\r\n").count();
    let mut fields = vec![httparse::EMPTY_HEADER; lines.max(1)];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(h1) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Unmappable::Head),
    }
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(Unmappable::Head)?;
    let target = parsed.path.ok_or(Unmappable::Head)?;
    let host = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let uri = if target.starts_with('/') || (target == "*" && method == Method::OPTIONS) {
        let authority = match host {
            Some(h) => std::str::from_utf8(h).map_err(|_| Unmappable::Field)?,
            None => fallback_authority,
        };
        let path = if target == "*" { "*" } else { target };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| Unmappable::Target)?
    } else {
        // Absolute form (a client that talks to ringlb as to a proxy): its own authority.
        let u: Uri = target.parse().map_err(|_| Unmappable::Target)?;
        let authority = u.authority().ok_or(Unmappable::Target)?.clone();
        let path = u.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| Unmappable::Target)?
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    let map = req.headers_mut();
    map.reserve(parsed.headers.len() + 1);
    for h in parsed.headers.iter() {
        // Names are lower case in HTTP/2; HeaderName lowers them.
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Unmappable::Field)?;
        if dropped(name.as_str()) {
            continue;
        }
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Unmappable::Field)?;
        map.append(name, value);
    }
    if te_trailers {
        map.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_becomes_authority_and_hop_fields_go() {
        let h1 = b"POST /svc/Call?x=1 HTTP/1.1\r\nHost: api.example:8080\r\nContent-Type: application/grpc\r\n\
                   Transfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.1\r\nCookie: a=1\r\n\r\n";
        let r = from_h1(h1, "http", "127.0.0.1:1", true).expect("maps");
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().to_string(), "http://api.example:8080/svc/Call?x=1");
        assert!(r.headers().get("host").is_none());
        assert!(r.headers().get("transfer-encoding").is_none());
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["x-forwarded-for"], "10.0.0.1");
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn a_missing_host_takes_the_fallback_and_absolute_form_its_own() {
        let r = from_h1(b"GET / HTTP/1.0\r\n\r\n", "https", "10.1.1.1:443", false).expect("maps");
        assert_eq!(r.uri().to_string(), "https://10.1.1.1:443/");
        assert!(r.headers().get("te").is_none());
        let r = from_h1(
            b"GET http://other.example/p HTTP/1.1\r\nHost: other.example\r\n\r\n",
            "http",
            "x:1",
            false,
        )
        .expect("maps");
        assert_eq!(r.uri().to_string(), "http://other.example/p");
    }

    #[test]
    fn heads_without_an_http2_form_are_refused() {
        assert_eq!(
            from_h1(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "http", "x:1", false).unwrap_err(),
            Unmappable::Target
        );
        assert_eq!(
            from_h1(b"GET / HTTP/1.1\r\nHost: a\r\n", "http", "x:1", false).unwrap_err(),
            Unmappable::Head
        );
    }
}
