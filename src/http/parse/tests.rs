//! Unit tests of request/response head parsing and forwarded-head writing (test thread only).

use super::*;
use crate::http::rewrite::{RequestAdds, ResponseAdds};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn req(raw: &[u8]) -> Result<Option<usize>, RequestError> {
    let mut head = RequestHead::new();
    parse_request(raw, &HeadLimits::default(), &mut head)
}

fn parsed(raw: &[u8]) -> RequestHead {
    let mut head = RequestHead::new();
    let n = parse_request(raw, &HeadLimits::default(), &mut head)
        .expect("valid request")
        .expect("complete request");
    assert_eq!(n, head.head_len);
    head
}

#[test]
fn origin_form_spans() {
    let raw = b"GET /a/b?x=1&y HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\nBODY";
    let h = parsed(raw);
    assert_eq!(h.head_len, raw.len() - 4);
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.method_span.of(raw), b"GET");
    assert_eq!(h.target.of(raw), b"/a/b?x=1&y");
    assert_eq!(h.path.of(raw), b"/a/b");
    assert_eq!(h.query.map(|q| q.of(raw)), Some(&b"x=1&y"[..]));
    assert_eq!(h.host.map(|s| s.of(raw)), Some(&b"example.com:8080"[..]));
    assert_eq!(h.request_line.of(raw), b"GET /a/b?x=1&y HTTP/1.1");
    assert_eq!(h.version, Version::Http11);
    assert_eq!(h.body, BodyKind::Empty);
    assert!(h.keep_alive);
    assert!(!h.upgrade);
    assert_eq!(h.header(raw, "accept"), Some(&b"*/*"[..]));
    assert_eq!(h.header(raw, "missing"), None);
}

#[test]
fn absolute_form_takes_host_from_authority() {
    let raw = b"GET HTTP://Backend.example:81/p/q?z HTTP/1.1\r\nHost: other\r\n\r\n";
    let h = parsed(raw);
    assert_eq!(h.host.map(|s| s.of(raw)), Some(&b"Backend.example:81"[..]));
    assert_eq!(h.path.of(raw), b"/p/q");
    assert_eq!(h.query.map(|q| q.of(raw)), Some(&b"z"[..]));
    let raw = b"GET https://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let h = parsed(raw);
    assert!(h.path.is_empty());
    assert_eq!(h.host.map(|s| s.of(raw)), Some(&b"a.example"[..]));
}

#[test]
fn keep_alive_rules() {
    assert!(parsed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    assert!(!parsed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
    assert!(!parsed(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(!parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
}

#[test]
fn upgrade_and_expect() {
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(parsed(raw).upgrade);
    // Upgrade without Connection: upgrade is not an upgrade, and is not forwarded.
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
    let h = parsed(raw);
    assert!(!h.upgrade);
    assert!(h
        .headers
        .iter()
        .any(|s| s.name.of(raw) == b"Upgrade" && s.hop_by_hop));
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
    let h = parsed(raw);
    assert!(h.expect_continue);
    assert_eq!(h.body, BodyKind::Length(3));
    assert!(!parsed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
}

#[test]
fn head_is_reused_without_growing() {
    let limits = HeadLimits::default();
    let mut head = RequestHead::new();
    let cap = head.headers.capacity();
    let a = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n";
    let b = b"GET /y HTTP/1.0\r\n\r\n";
    for _ in 0..3 {
        parse_request(a, &limits, &mut head)
            .expect("a")
            .expect("complete");
        assert_eq!(head.body, BodyKind::Length(5));
        assert!(head.x_forwarded_for.is_some());
        parse_request(b, &limits, &mut head)
            .expect("b")
            .expect("complete");
        assert_eq!(head.body, BodyKind::Empty);
        assert_eq!(head.host, None);
        assert_eq!(head.x_forwarded_for, None);
        assert!(head.headers.is_empty());
    }
    assert_eq!(head.headers.capacity(), cap);
}

#[test]
fn limits_apply_before_the_head_is_complete() {
    let limits = HeadLimits {
        max_header_bytes: 64,
        max_headers: 2,
        max_uri_bytes: 10,
    };
    let mut head = RequestHead::new();
    let r = parse_request(b"GET /0123456789a", &limits, &mut head);
    assert_eq!(r, Err(RequestError::UriTooLong { limit: 10 }));
    assert_eq!(
        parse_request(b"GET /012345678", &limits, &mut head),
        Ok(None)
    );
    let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 60]].concat();
    let r = parse_request(&big, &limits, &mut head);
    assert_eq!(r, Err(RequestError::HeaderTooLarge { limit: 64 }));
    let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    let r = parse_request(many, &limits, &mut head);
    assert_eq!(r, Err(RequestError::TooManyHeaders { limit: 2 }));
    // A complete head within limits is fine even when body bytes make the buffer large.
    let body = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
        &[b'z'; 200],
    ]
    .concat();
    assert_eq!(parse_request(&body, &limits, &mut head), Ok(Some(27)));
}

#[test]
fn request_error_labels_and_statuses() {
    assert_eq!(
        RequestError::ContentLengthAndTransferEncoding.kind(),
        "cl_and_te"
    );
    assert_eq!(RequestError::UriTooLong { limit: 1 }.status(), 414);
    assert_eq!(RequestError::TooManyHeaders { limit: 1 }.status(), 431);
    assert_eq!(RequestError::ConnectNotSupported.status(), 501);
    assert_eq!(RequestError::UnsupportedVersion.status(), 505);
    assert!(RequestError::HeaderTooLarge { limit: 16384 }
        .to_string()
        .contains("max_header_bytes (16384 bytes)"));
    assert!(Method::Put.is_idempotent());
    assert!(!Method::Post.is_idempotent());
    assert!(!Method::Patch.is_idempotent());
}

#[test]
fn span_out_of_range_is_empty() {
    let s = Span { start: 5, end: 50 };
    assert_eq!(s.of(b"short"), b"");
    assert_eq!(req(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
}

// ---- responses ----

fn resp(raw: &[u8], method: Method) -> Result<Option<usize>, ResponseError> {
    let mut head = ResponseHead::new();
    parse_response(raw, method, 16 * 1024, &mut head)
}

fn resp_head(raw: &[u8], method: Method) -> ResponseHead {
    let mut head = ResponseHead::new();
    parse_response(raw, method, 16 * 1024, &mut head)
        .expect("valid response")
        .expect("complete response");
    head
}

#[test]
fn response_framing() {
    use BodyKind::*;
    let cases: &[(&[u8], Method, BodyKind, bool)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::Get,
            Length(5),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::Head,
            Empty,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
            Empty,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Get,
            Chunked,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::Get,
            Chunked,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Method::Get,
            CloseDelimited,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\n",
            Method::Get,
            CloseDelimited,
            false,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", Method::Get, Empty, true),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            Method::Get,
            Empty,
            true,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post, Empty, true),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            Method::Get,
            Length(5),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::Get,
            Length(5),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
            Method::Get,
            Length(5),
            true,
        ),
    ];
    for (raw, method, body, keep) in cases {
        let h = resp_head(raw, *method);
        let text = String::from_utf8_lossy(raw);
        assert_eq!(h.body, *body, "{text}");
        assert_eq!(h.keep_alive, *keep, "{text}");
        assert_eq!(h.head_len, raw.len(), "{text}");
    }
    let h = resp_head(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post);
    assert!(h.is_interim());
    let h = resp_head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        Method::Get,
    );
    assert!(h.upgrade && !h.is_interim() && !h.keep_alive);
    assert_eq!(h.status, 101);
}

#[test]
fn response_errors() {
    use ResponseError::*;
    let cases: &[(&[u8], ResponseError)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            ContentLengthAndTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            DuplicateContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            BadContentLength,
        ),
        (b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n", BareLf),
        (b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n", BareLf),
        (b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", ObsFold),
        (b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", SpaceBeforeColon),
        (b"HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n", InvalidHeaderValue),
        (b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", InvalidHeaderValue),
        (b"HTTP/1.1 200 OK\r\nA\x01: b\r\n\r\n", InvalidHeaderName),
        (b"HTTP/2 200 OK\r\n\r\n", BadStatusLine),
        (b"HTTP/1.1 2000 OK\r\n\r\n", BadStatusLine),
        (b"HTTP/1.1 099 Low\r\n\r\n", BadStatusLine),
        (b"FOO\r\n\r\n", BadStatusLine),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            TransferEncodingOnHttp10,
        ),
    ];
    for (raw, want) in cases {
        let got = resp(raw, Method::Get);
        assert_eq!(got, Err(*want), "{}", String::from_utf8_lossy(raw));
        assert_eq!(want.status(), 502);
    }
    let big = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 100]].concat();
    let mut head = ResponseHead::new();
    assert_eq!(
        parse_response(&big, Method::Get, 64, &mut head),
        Err(HeaderTooLarge { limit: 64 })
    );
    assert_eq!(
        resp(b"HTTP/1.1 200 OK\r\nContent-Len", Method::Get),
        Ok(None)
    );
}

// ---- forwarded heads ----

fn fwd(ip: IpAddr) -> ForwardInfo<'static> {
    ForwardInfo {
        client_ip: ip,
        proto: "https",
        port: 443,
        client_cert: None,
    }
}

fn forwarded(raw: &[u8], ip: IpAddr) -> String {
    let h = parsed(raw);
    let mut out = Vec::with_capacity(512);
    write_request_head(raw, &h, &fwd(ip), &RequestAdds::NONE, &mut out);
    String::from_utf8(out).expect("ascii head")
}

#[test]
fn forwarded_request_drops_hop_by_hop_and_sets_x_forwarded() {
    let raw = b"POST /p?q HTTP/1.1\r\nHost: Site.example\r\nConnection: keep-alive, X-Secret, close\r\n\
Keep-Alive: timeout=5\r\nX-Secret: s\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\n\
X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nX-Forwarded-Proto: http\r\n\
X-Forwarded-Port: 80\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nX-Keep:  v  v \r\n\r\n";
    let out = forwarded(raw, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    assert_eq!(
        out,
        "POST /p?q HTTP/1.1\r\nHost: Site.example\r\nTransfer-Encoding: chunked\r\nX-Keep: v  v\r\n\
X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-Port: 443\r\n\r\n"
    );
}

#[test]
fn forwarded_request_without_xff_and_ipv6() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let out = forwarded(raw, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n\r\n"
    );
}

#[test]
fn forwarded_upgrade_keeps_upgrade() {
    let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
    let out = forwarded(raw, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        out,
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nX-Forwarded-For: 127.0.0.1\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nConnection: upgrade\r\n\r\n"
    );
}

#[test]
fn connection_cannot_strip_framing_fields() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Content-Length, Host\r\n\r\n";
    let out = forwarded(raw, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(out.contains("\r\nContent-Length: 3\r\n"), "{out}");
    assert!(out.contains("\r\nHost: a\r\n"), "{out}");
}

#[test]
fn write_does_not_allocate_with_capacity() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
    let h = parsed(raw);
    let mut out = Vec::with_capacity(1024);
    let ptr = out.as_ptr();
    write_request_head(
        raw,
        &h,
        &fwd(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        &RequestAdds::NONE,
        &mut out,
    );
    assert_eq!(out.as_ptr(), ptr);
    assert_eq!(out.capacity(), 1024);
}

fn forwarded_response(raw: &[u8], client: Version, keep: bool) -> String {
    let h = resp_head(raw, Method::Get);
    let mut out = Vec::new();
    write_response_head(raw, &h, client, keep, false, &ResponseAdds::NONE, &mut out);
    String::from_utf8(out).expect("ascii head")
}

#[test]
fn forwarded_responses_carry_ringlbs_own_version() {
    // RFC 9110 §6.2: an HTTP/1.0 target's status line reaches clients as HTTP/1.1.
    let raw = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\n\r\n";
    let h = resp_head(raw, Method::Get);
    let mut out = Vec::new();
    write_response_head(
        raw,
        &h,
        Version::Http11,
        true,
        true,
        &ResponseAdds::NONE,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 200 OK\r\nServer: SimpleHTTP/0.6\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[test]
fn forwarded_response_connection_field() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=4\r\nServer: s\r\n\r\n";
    assert_eq!(
        forwarded_response(raw, Version::Http11, true),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\n\r\n"
    );
    assert_eq!(
        forwarded_response(raw, Version::Http11, false),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        forwarded_response(raw, Version::Http10, true),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\nConnection: keep-alive\r\n\r\n"
    );
    let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
    assert_eq!(
        forwarded_response(raw, Version::Http11, false),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\nConnection: upgrade\r\n\r\n"
    );
    let raw = b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        forwarded_response(raw, Version::Http11, true),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[test]
fn could_complete_sees_only_possible_head_ends() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut hits = Vec::new();
    for len in 1..=raw.len() {
        if could_complete(&raw[..len], len - 1) {
            hits.push(len);
        }
    }
    // Only once the final CRLF has begun: at the CR and at the LF of the empty line.
    assert_eq!(hits, vec![raw.len() - 1, raw.len()]);
    assert!(could_complete(raw, 0));
    assert!(!could_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
    assert!(could_complete(b"GET / HTTP/1.1\nHost: a\n\n", 20));
}
