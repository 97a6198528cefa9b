//! Request/response head parsing and chunked framing as a client or backend would exercise them:
//! a table of valid and malformed requests with the status each gets, incomplete input at every
//! split point, and property tests (header round trips, chunked bodies in random pieces).

use proptest::prelude::*;
use ringlb::http::body::ChunkedDecoder;
use ringlb::http::parse::{
    parse_request, parse_response, BodyKind, HeadLimits, Method, RequestHead, ResponseHead,
};

/// What a request gets: Ok(()) or the (status, kind) it is refused with.
type Verdict = Result<(), (u16, &'static str)>;

/// Each strictness rule has at least one failing row.
const TABLE: &[(&str, Verdict)] = &[
    // ---- valid ----
    ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(())),
    ("GET /p?q=1 HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\n\r\n", Ok(())),
    ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(())),
    ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Ok(())),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n", Ok(())),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(())),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(())),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: GZIP ,\tChunked\r\n\r\n", Ok(())),
    ("GET / HTTP/1.0\r\n\r\n", Ok(())),
    ("GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", Ok(())),
    ("PROPFIND /dav HTTP/1.1\r\nHost: [::1]:8080\r\nDepth: 1\r\n\r\n", Ok(())),
    ("GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab: a\tb\r\nX-Utf8: caf\u{e9}\r\n\r\n", Ok(())),
    ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Ok(())),
    // ---- framing ----
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Err((400, "cl_and_te"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Err((400, "cl_and_te"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Err((400, "duplicate_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Err((400, "bad_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Err((400, "bad_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", Err((400, "bad_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", Err((400, "bad_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Err((400, "bad_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", Err((400, "bad_content_length"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Err((400, "te_not_chunked"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Err((400, "te_not_chunked"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Err((400, "te_not_chunked"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", Err((501, "unknown_transfer_encoding"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n", Err((501, "unknown_transfer_encoding"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", Err((400, "bad_transfer_encoding"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", Err((400, "bad_transfer_encoding"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", Err((400, "bad_transfer_encoding"))),
    ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", Err((400, "bad_transfer_encoding"))),
    ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Err((400, "te_on_http10"))),
    // ---- field syntax ----
    ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", Err((400, "obs_fold"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", Err((400, "obs_fold"))),
    ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", Err((400, "obs_fold"))),
    ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", Err((400, "space_before_colon"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n", Err((400, "space_before_colon"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", Err((400, "invalid_header_value"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", Err((400, "invalid_header_value"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", Err((400, "invalid_header_value"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", Err((400, "invalid_header_value"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX\0A: b\r\n\r\n", Err((400, "invalid_header_name"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", Err((400, "invalid_header_name"))),
    ("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", Err((400, "invalid_header_name"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", Err((400, "invalid_header_name"))),
    ("GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n", Err((400, "invalid_header_name"))),
    // ---- bare LF anywhere ----
    ("GET / HTTP/1.1\nHost: a\r\n\r\n", Err((400, "bare_lf"))),
    ("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", Err((400, "bare_lf"))),
    ("GET / HTTP/1.1\r\nHost: a\r\n\n", Err((400, "bare_lf"))),
    ("GET / HTTP/1.1\nHost: a\n\n", Err((400, "bare_lf"))),
    ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bare_lf"))),
    // ---- Host ----
    ("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", Err((400, "missing_host"))),
    ("GET http://a/ HTTP/1.1\r\n\r\n", Err((400, "missing_host"))),
    ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Err((400, "duplicate_host"))),
    ("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", Err((400, "duplicate_host"))),
    ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Err((400, "bad_host"))),
    ("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", Err((400, "bad_host"))),
    ("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", Err((400, "bad_host"))),
    // ---- request line ----
    ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("/ HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET / http/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET / HTTP/11\r\nHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    ("GET / HTTP/1.1\rHost: a\r\n\r\n", Err((400, "bad_request_line"))),
    // ---- versions ----
    ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err((505, "unsupported_version"))),
    ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", Err((505, "unsupported_version"))),
    ("GET / HTTP/0.9\r\nHost: a\r\n\r\n", Err((505, "unsupported_version"))),
    ("GET /\r\n", Err((505, "unsupported_version"))),
    ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Err((505, "unsupported_version"))),
    // ---- request-target forms ----
    ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_target"))),
    ("GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_target"))),
    ("GET ftp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_target"))),
    ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_target"))),
    ("GET http://u:p@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_target"))),
    ("GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n", Err((400, "bad_target"))),
    ("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", Err((501, "connect_not_supported"))),
];

fn parse(raw: &[u8], limits: &HeadLimits) -> Result<Option<usize>, (u16, &'static str)> {
    let mut head = RequestHead::new();
    parse_request(raw, limits, &mut head).map_err(|e| (e.status(), e.kind()))
}

#[test]
fn request_table() {
    let limits = HeadLimits::default();
    for (raw, want) in TABLE {
        let got = parse(raw.as_bytes(), &limits);
        match want {
            Ok(()) => assert_eq!(got, Ok(Some(raw.len())), "{raw:?}"),
            Err(e) => assert_eq!(got, Err(*e), "{raw:?}"),
        }
    }
}

#[test]
fn limits_table() {
    let limits = HeadLimits {
        max_header_bytes: 200,
        max_headers: 4,
        max_uri_bytes: 32,
    };
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(32));
    assert_eq!(
        parse(long_uri.as_bytes(), &limits),
        Err((414, "uri_too_long"))
    );
    let ok_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(31));
    assert_eq!(parse(ok_uri.as_bytes(), &limits), Ok(Some(ok_uri.len())));
    // 414 before the request line is complete.
    let partial = format!("GET /{}", "u".repeat(40));
    assert_eq!(
        parse(partial.as_bytes(), &limits),
        Err((414, "uri_too_long"))
    );
    let five = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert_eq!(
        parse(five.as_bytes(), &limits),
        Err((431, "too_many_headers"))
    );
    let four = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(parse(four.as_bytes(), &limits), Ok(Some(four.len())));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(200)
    );
    assert_eq!(
        parse(big.as_bytes(), &limits),
        Err((431, "header_too_large"))
    );
    // Same, never completed: refused once the buffer passes the limit.
    assert_eq!(
        parse(&big.as_bytes()[..201], &limits),
        Err((431, "header_too_large"))
    );
    assert_eq!(parse(&big.as_bytes()[..200], &limits), Ok(None));
}

#[test]
fn every_split_point_of_a_valid_request_is_incomplete() {
    let limits = HeadLimits::default();
    for (raw, want) in TABLE {
        if want.is_err() {
            continue;
        }
        for cut in 0..raw.len() {
            let got = parse(&raw.as_bytes()[..cut], &limits);
            assert_eq!(got, Ok(None), "{raw:?} cut at {cut}");
        }
    }
}

#[test]
fn every_split_point_of_a_valid_response_is_incomplete() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b c\r\n\r\n";
    let mut head = ResponseHead::new();
    for cut in 0..raw.len() {
        let got = parse_response(&raw[..cut], Method::Get, 1024, &mut head);
        assert_eq!(got, Ok(None), "cut at {cut}");
    }
    assert_eq!(
        parse_response(raw, Method::Get, 1024, &mut head),
        Ok(Some(raw.len()))
    );
    assert_eq!(head.body, BodyKind::Length(3));
}

#[test]
fn pipelined_requests_parse_one_after_another() {
    let raw = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
    let limits = HeadLimits::default();
    let mut head = RequestHead::new();
    let mut at = 0;
    let mut paths = Vec::new();
    while at < raw.len() {
        let buf = &raw[at..];
        let n = parse_request(buf, &limits, &mut head)
            .expect("valid")
            .expect("complete");
        paths.push(String::from_utf8_lossy(head.path.of(buf)).into_owned());
        at += n + match head.body {
            BodyKind::Length(len) => len as usize,
            _ => 0,
        };
    }
    assert_eq!(paths, ["/1", "/2", "/3"]);
}

fn header_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,20}".prop_map(|s| format!("X-{s}"))
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[!-~]".prop_map(|s| s),
        "[!-~][ -~\t]{0,40}[!-~]".prop_map(|s| s),
    ]
}

/// The bytes of a chunked encoding of `body` cut into chunks of the given sizes.
fn chunk_encode(body: &[u8], sizes: &[usize], ext: bool, trailers: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let n = sizes[i % sizes.len()].min(body.len() - at);
        out.extend_from_slice(format!("{n:x}").as_bytes());
        if ext && i % 2 == 0 {
            out.extend_from_slice(b";ext=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    if trailers {
        out.extend_from_slice(b"X-Checksum: 1234\r\nX-Other:\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    #[test]
    fn header_sets_round_trip(fields in prop::collection::vec((header_name(), header_value()), 0..30)) {
        let mut raw = String::from("GET /r HTTP/1.1\r\nHost: h\r\n");
        for (n, v) in &fields {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let raw = raw.as_bytes();
        let mut head = RequestHead::new();
        let n = parse_request(raw, &HeadLimits::default(), &mut head);
        prop_assert_eq!(n, Ok(Some(raw.len())));
        prop_assert_eq!(head.headers.len(), fields.len() + 1);
        for (h, (name, value)) in head.headers[1..].iter().zip(&fields) {
            prop_assert_eq!(h.name.of(raw), name.as_bytes());
            prop_assert_eq!(h.value.of(raw), value.as_bytes());
            prop_assert!(!h.hop_by_hop);
        }
    }

    #[test]
    fn chunked_bodies_in_random_pieces(
        body in prop::collection::vec(any::<u8>(), 0..3000),
        sizes in prop::collection::vec(1usize..700, 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ext in any::<bool>(),
        trailers in any::<bool>(),
    ) {
        let encoded = chunk_encode(&body, &sizes, ext, trailers);
        let mut stream = encoded.clone();
        stream.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut d = ChunkedDecoder::new(body.len() as u64);
        let (mut from, mut consumed, mut done) = (0, 0, false);
        for to in points {
            let p = d.advance(&stream[from.max(consumed)..to.max(consumed)]).expect("valid encoding");
            consumed += p.consumed;
            done = p.done;
            if done {
                break;
            }
            from = to;
        }
        prop_assert!(done);
        prop_assert_eq!(consumed, encoded.len());
        prop_assert_eq!(d.decoded_bytes(), body.len() as u64);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut head = RequestHead::new();
        let _ = parse_request(&data, &HeadLimits::default(), &mut head);
        let mut resp = ResponseHead::new();
        let _ = parse_response(&data, Method::Get, 1024, &mut resp);
        let _ = ChunkedDecoder::new(1 << 20).advance(&data);
    }

    #[test]
    fn mutated_requests_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut raw = b"POST /x?y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n".to_vec();
        let i = pos.index(raw.len());
        raw[i] = byte;
        let mut head = RequestHead::new();
        if let Ok(Some(n)) = parse_request(&raw, &HeadLimits::default(), &mut head) {
            // Whatever was accepted must still be CRLF-clean and sanely framed.
            prop_assert!(!raw[..n].windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
            prop_assert!(matches!(head.body, BodyKind::Chunked | BodyKind::Empty | BodyKind::Length(_)));
        }
    }
}
