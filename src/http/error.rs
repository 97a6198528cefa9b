//! ringlb's own short responses: canned error responses as static bytes (no allocation on the
//! error path), a writer for fixed responses and redirects, and reason phrases. Pure code, any
//! thread; the caller owns the output buffer.

/// Builds the pair (keep-alive, close) of a canned text/plain response whose body is the
/// reason phrase and a newline. `$len` is checked against the body by the tests.
macro_rules! canned_pair {
    ($code:literal, $reason:literal, $len:literal) => {
        (
            concat!(
                "HTTP/1.1 ",
                $code,
                " ",
                $reason,
                "\r\nContent-Length: ",
                $len,
                "\r\nContent-Type: text/plain\r\n\r\n",
                $reason,
                "\n"
            )
            .as_bytes(),
            concat!(
                "HTTP/1.1 ",
                $code,
                " ",
                $reason,
                "\r\nContent-Length: ",
                $len,
                "\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                $reason,
                "\n"
            )
            .as_bytes(),
        )
    };
}

type Pair = (&'static [u8], &'static [u8]);

const C400: Pair = canned_pair!("400", "Bad Request", "12");
const C403: Pair = canned_pair!("403", "Forbidden", "10");
const C404: Pair = canned_pair!("404", "Not Found", "10");
const C408: Pair = canned_pair!("408", "Request Timeout", "16");
const C413: Pair = canned_pair!("413", "Content Too Large", "18");
const C414: Pair = canned_pair!("414", "URI Too Long", "13");
const C421: Pair = canned_pair!("421", "Misdirected Request", "20");
const C429: Pair = canned_pair!("429", "Too Many Requests", "18");
const C431: Pair = canned_pair!("431", "Request Header Fields Too Large", "32");
const C500: Pair = canned_pair!("500", "Internal Server Error", "22");
const C501: Pair = canned_pair!("501", "Not Implemented", "16");
const C502: Pair = canned_pair!("502", "Bad Gateway", "12");
const C503: Pair = canned_pair!("503", "Service Unavailable", "20");
const C504: Pair = canned_pair!("504", "Gateway Timeout", "16");
const C505: Pair = canned_pair!("505", "HTTP Version Not Supported", "27");

/// The statuses `canned` has a response for.
pub const CANNED_STATUSES: [u16; 15] = [
    400, 403, 404, 408, 413, 414, 421, 429, 431, 500, 501, 502, 503, 504, 505,
];

/// The full bytes of a short text/plain response for `status` (one of `CANNED_STATUSES`; any
/// other status gets 500's), with `Connection: close` when `close`.
pub fn canned(status: u16, close: bool) -> &'static [u8] {
    let pair = match status {
        400 => C400,
        403 => C403,
        404 => C404,
        408 => C408,
        413 => C413,
        414 => C414,
        421 => C421,
        429 => C429,
        431 => C431,
        501 => C501,
        502 => C502,
        503 => C503,
        504 => C504,
        505 => C505,
        _ => C500,
    };
    if close {
        pair.1
    } else {
        pair.0
    }
}

/// The reason phrase of `status` (RFC 9110 names); "Unknown" for codes it does not define.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends bytes of a header name or value, leaving out CR, LF and NUL so that a value built
/// from configuration or request data can never start a new header line.
fn push_sanitized(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n' && b != 0));
}

/// Appends a complete HTTP/1.1 response: status line, Content-Length, Content-Type (left out
/// when empty), `extra_headers`, `Connection: close` when `close`, then `body`. For 1xx, 204 and
/// Appends one of ringlb's own short answers: the canned one for `status`, or one with `extra`
/// header fields (and the reason as its body).
pub fn write_own(out: &mut Vec<u8>, status: u16, extra: &[(&str, &str)], close: bool) {
    if extra.is_empty() {
        out.extend_from_slice(canned(status, close));
    } else {
        write_response(
            out,
            status,
            extra,
            "text/plain",
            format!("{}\n", reason(status)).as_bytes(),
            close,
        );
    }
}

/// 304 no Content-Length and no body are written, as those responses cannot have one.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    close: bool,
) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = status < 200 || status == 204 || status == 304;
    if !bodiless {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(num.format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        if !content_type.is_empty() {
            out.extend_from_slice(b"Content-Type: ");
            push_sanitized(out, content_type);
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in extra_headers {
        push_sanitized(out, name);
        out.extend_from_slice(b": ");
        push_sanitized(out, value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(resp: &[u8]) -> (String, Vec<u8>) {
        let text = String::from_utf8_lossy(resp).into_owned();
        let at = text.find("\r\n\r\n").expect("head end");
        (text[..at].to_string(), resp[at + 4..].to_vec())
    }

    #[test]
    fn canned_responses_are_well_formed() {
        for status in CANNED_STATUSES {
            for close in [false, true] {
                let bytes = canned(status, close);
                let (head, body) = split(bytes);
                let status_line = format!("HTTP/1.1 {status} {}", reason(status));
                assert!(head.starts_with(&status_line), "{head}");
                assert!(
                    head.contains(&format!("\r\nContent-Length: {}", body.len())),
                    "{head}"
                );
                assert_eq!(body, format!("{}\n", reason(status)).into_bytes());
                assert_eq!(head.contains("Connection: close"), close, "{head}");
            }
        }
        assert_eq!(
            canned(502, true),
            &b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 12\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nBad Gateway\n"[..]
        );
    }

    #[test]
    fn unknown_status_gets_500() {
        assert_eq!(canned(299, false), canned(500, false));
        assert_eq!(canned(0, true), canned(500, true));
    }

    #[test]
    fn writes_fixed_response_and_redirect() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            404,
            &[("X-A", "1")],
            "text/html",
            b"<p>no</p>",
            false,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nContent-Type: text/html\r\nX-A: 1\r\n\r\n<p>no</p>"
        );
        out.clear();
        write_response(
            &mut out,
            301,
            &[("Location", "https://a.example/x\r\nSet-Cookie: evil=1")],
            "",
            b"",
            true,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 301 Moved Permanently\r\nContent-Length: 0\r\nLocation: https://a.example/xSet-Cookie: evil=1\r\nConnection: close\r\n\r\n"
        );
        out.clear();
        write_response(&mut out, 204, &[], "text/plain", b"ignored", false);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
