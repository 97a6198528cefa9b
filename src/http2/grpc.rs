//! What ringlb knows of gRPC on the request path: which requests are gRPC calls, the
//! `grpc-timeout` they carry, and how ringlb's own answers to them are written (a trailers-only
//! response: HTTP 200 with `grpc-status` and `grpc-message`, the form gRPC clients read a failed
//! call from; a bare HTTP 502 would reach the application as INTERNAL or UNKNOWN).
//!
//! Pure functions, run in the task of the stream they serve.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// gRPC status codes ringlb answers with (grpc/grpc doc/statuscodes.md).
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNAVAILABLE: u32 = 14;

/// True when the request's content-type names gRPC (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web`...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-timeout` of a call: 1 to 8 digits and a unit (H, M, S, m, u, n). `None` when absent
/// or malformed (a malformed one is ignored, as gRPC servers do).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status standing for one of ringlb's own HTTP answers: limits are
/// RESOURCE_EXHAUSTED, timeouts DEADLINE_EXCEEDED, an unreachable or failing target
/// UNAVAILABLE; the rest follow gRPC's HTTP-to-gRPC table (doc/http-grpc-status-mapping.md).
pub fn status_for(http: u16) -> u32 {
    match http {
        400 => 13,                      // INTERNAL
        401 => 16,                      // UNAUTHENTICATED
        403 => 7,                       // PERMISSION_DENIED
        404 | 501 => 12,                // UNIMPLEMENTED
        408 | 504 => DEADLINE_EXCEEDED, // a timeout
        413 | 414 | 429 | 431 => RESOURCE_EXHAUSTED,
        502 | 503 => UNAVAILABLE,
        500 => 13,
        _ => 2, // UNKNOWN
    }
}

/// The message of ringlb's own answer.
pub fn message_for(http: u16) -> &'static str {
    match http {
        408 => "ringlb: request body timed out",
        413 => "ringlb: request message too large",
        414 | 431 => "ringlb: request metadata too large",
        429 => "ringlb: too many requests",
        502 => "ringlb: upstream connect failed or reset",
        503 => "ringlb: no healthy upstream",
        504 => "ringlb: upstream timed out",
        _ => "ringlb: request refused",
    }
}

/// A trailers-only response with `code` (sent with END_STREAM).
pub fn trailers_only(code: u32, message: &str) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    put_status(h, code, message);
    r
}

/// Trailers ending a call whose response had started (a deadline met mid-stream).
pub fn trailers(code: u32, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    put_status(&mut h, code, message);
    h
}

fn put_status(h: &mut HeaderMap, code: u32, message: &str) {
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and '%', as %XX.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(v));
        m
    }

    #[test]
    fn timeouts_parse_in_every_unit() {
        let t = |v| timeout(&h("grpc-timeout", v));
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5M"), Some(Duration::from_secs(300)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn grpc_calls_are_known_by_content_type() {
        assert!(is_grpc(&h("content-type", "application/grpc")));
        assert!(is_grpc(&h("content-type", "application/grpc+proto")));
        assert!(!is_grpc(&h("content-type", "application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn own_answers_map_to_the_statuses_clients_expect() {
        assert_eq!(status_for(503), UNAVAILABLE);
        assert_eq!(status_for(502), UNAVAILABLE);
        assert_eq!(status_for(504), DEADLINE_EXCEEDED);
        assert_eq!(status_for(413), RESOURCE_EXHAUSTED);
        assert_eq!(status_for(431), RESOURCE_EXHAUSTED);
        assert_eq!(status_for(429), RESOURCE_EXHAUSTED);
        let r = trailers_only(14, "no 100% healthy\n");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no 100%25 healthy%0A");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }
}
