//! Header field semantics shared by request and response parsing: which well-known field a name
//! is, Content-Length and Transfer-Encoding validation, Connection tokens, Host syntax, and the
//! marking of hop-by-hop fields. Pure functions over the caller's buffer, run on the worker
//! thread that parses; the only state is the per-head accumulator `Framing`, owned by the parse call.

use super::{BodyKind, HeaderSpan, Span};
use crate::http::syntax::{is_token, list_elements};

/// Longest Content-Length accepted, in digits (u64::MAX has 20; 19 always fits).
pub const MAX_CONTENT_LENGTH_DIGITS: usize = 19;

/// The header fields the parser acts on; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedPort,
    /// `X-Client-Cert` and `X-Client-Cert-{Subject,Issuer,Serial,Fingerprint}`: ringlb's to
    /// set (mutual TLS), never the client's.
    XClientCert,
    Other,
}

/// Classifies a field name, case-insensitively; dispatches on length first so the common case
/// (an `Other` name) costs one or two comparisons.
#[inline]
pub(crate) fn classify(name: &[u8]) -> Name {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if is("te") => Name::Te,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::Trailer,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::KeepAlive,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::XForwardedFor,
        16 if is("proxy-connection") => Name::ProxyConnection,
        16 if is("x-forwarded-port") => Name::XForwardedPort,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::XForwardedProto,
        13 | 20 | 21 | 25 if is_client_cert_name(name) => Name::XClientCert,
        _ => Name::Other,
    }
}

/// The names ringlb forwards a verified client certificate in (mutual TLS).
pub const CLIENT_CERT_NAMES: [&str; 5] = [
    "x-client-cert",
    "x-client-cert-subject",
    "x-client-cert-issuer",
    "x-client-cert-serial",
    "x-client-cert-fingerprint",
];

/// Whether `name` is one of [`CLIENT_CERT_NAMES`], case-insensitively and with `_` for `-`
/// (CGI-style servers read `X_Client_Cert_Subject` as the same variable): a client must not
/// send any spelling of them.
pub fn is_client_cert_name(name: &[u8]) -> bool {
    CLIENT_CERT_NAMES.iter().any(|n| {
        n.len() == name.len()
            && n.bytes().zip(name).all(|(want, &got)| {
                want.eq_ignore_ascii_case(&got) || (want == b'-' && got == b'_')
            })
    })
}

/// A framing or field-syntax fault found while accumulating fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldFault {
    BadContentLength,
    DuplicateContentLength,
    BadTransferEncoding,
}

/// What the fields of one head say about framing and the connection, accumulated field by field.
#[derive(Default)]
pub(crate) struct Framing {
    pub content_length: Option<u64>,
    pub te_present: bool,
    /// The last transfer coding seen (over all Transfer-Encoding fields) is `chunked`.
    pub te_last_chunked: bool,
    /// `chunked` appeared in a non-final position or twice.
    pub te_chunked_not_last: bool,
    pub te_unknown: bool,
    /// A coding other than `chunked` and `identity` (gzip, ...) appeared.
    pub te_other_coding: bool,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
    pub conn_upgrade: bool,
    /// A Connection field named some other field, which then is hop-by-hop.
    pub conn_names_other: bool,
    pub upgrade_field: bool,
}

impl Framing {
    /// Records one field; returns the first fault of its value.
    pub(crate) fn add(&mut self, name: Name, value: &[u8]) -> Result<(), FieldFault> {
        match name {
            Name::ContentLength => {
                if self.content_length.is_some() {
                    return Err(FieldFault::DuplicateContentLength);
                }
                self.content_length = Some(parse_content_length(value)?);
            }
            Name::TransferEncoding => self.add_transfer_encoding(value)?,
            Name::Connection => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        self.conn_upgrade = true;
                    } else if !token.is_empty() {
                        self.conn_names_other = true;
                    }
                }
            }
            Name::Upgrade => self.upgrade_field |= !value.is_empty(),
            _ => {}
        }
        Ok(())
    }

    fn add_transfer_encoding(&mut self, value: &[u8]) -> Result<(), FieldFault> {
        self.te_present = true;
        for coding in list_elements(value) {
            if !is_token(coding) {
                // Empty elements, parameters and stray bytes: nothing ambiguous passes.
                return Err(FieldFault::BadTransferEncoding);
            }
            if self.te_last_chunked {
                // Another coding after chunked (or chunked twice).
                self.te_chunked_not_last = true;
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.te_last_chunked = true;
            } else {
                self.te_last_chunked = false;
                // identity (deprecated) changes nothing; any other coding does.
                self.te_other_coding |= !coding.eq_ignore_ascii_case(b"identity");
                if !is_known_coding(coding) {
                    self.te_unknown = true;
                }
            }
        }
        Ok(())
    }

    /// The body framing these fields announce (request rules: no Transfer-Encoding and no
    /// Content-Length means no body). Callers have rejected CL+TE and bad codings already.
    pub(crate) fn request_body(&self) -> BodyKind {
        if self.te_present {
            BodyKind::Chunked
        } else {
            match self.content_length {
                Some(0) | None => BodyKind::Empty,
                Some(n) => BodyKind::Length(n),
            }
        }
    }
}

fn is_known_coding(coding: &[u8]) -> bool {
    ["gzip", "x-gzip", "deflate", "compress", "x-compress"]
        .iter()
        .any(|k| coding.eq_ignore_ascii_case(k.as_bytes()))
}

/// `Content-Length = 1*DIGIT`, nothing else: no sign, no list, no hex, no whitespace inside.
pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, FieldFault> {
    if value.is_empty() || value.len() > MAX_CONTENT_LENGTH_DIGITS {
        return Err(FieldFault::BadContentLength);
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(FieldFault::BadContentLength);
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Ok(n)
}

/// Host syntax (RFC 9110 §7.2): `uri-host [ ":" port ]`, where uri-host is a reg-name or an
/// IP literal in brackets. Empty is allowed (RFC 9112 §3.2). Commas are refused: a Host with a
/// comma is two hosts folded into one.
pub(crate) fn is_valid_host(value: &[u8]) -> bool {
    let (host, rest) = if let Some(inner) = value.strip_prefix(b"[") {
        match inner.iter().position(|&b| b == b']') {
            Some(close) => {
                let (literal, rest) = inner.split_at(close);
                if literal.is_empty() || !literal.iter().all(|&b| is_host_byte(b) || b == b':') {
                    return false;
                }
                (&[][..], rest.get(1..).unwrap_or_default())
            }
            None => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => value.split_at(colon),
            None => (value, &[][..]),
        }
    };
    if !host.iter().all(|&b| is_host_byte(b)) {
        return false;
    }
    match rest {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// unreserved / pct-encoded / sub-delims, without ','.
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\''
        )
        || matches!(b, b'(' | b')' | b'*' | b'+' | b';' | b'=')
}

/// Marks every field named in a Connection field as hop-by-hop. The framing fields (Host,
/// Content-Length, Transfer-Encoding) are never stripped this way: removing them would change
/// how the next hop frames the message, which is exactly what a smuggler wants.
pub(crate) fn mark_connection_named(buf: &[u8], headers: &mut [HeaderSpan]) {
    for i in 0..headers.len() {
        let Some(h) = headers.get(i) else { continue };
        if h.hop_by_hop {
            continue;
        }
        let name = h.name.of(buf);
        if matches!(
            classify(name),
            Name::Host | Name::ContentLength | Name::TransferEncoding
        ) {
            continue;
        }
        let named = headers.iter().any(|c| {
            classify(c.name.of(buf)) == Name::Connection
                && list_elements(c.value.of(buf)).any(|t| t.eq_ignore_ascii_case(name))
        });
        if named {
            if let Some(h) = headers.get_mut(i) {
                h.hop_by_hop = true;
            }
        }
    }
}

/// A request-target split into its parts (offsets into the parse buffer).
pub(crate) struct Target {
    pub path: Span,
    pub query: Option<Span>,
    /// The authority of an absolute-form target.
    pub authority: Option<Span>,
}

/// Why a request-target is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetFault {
    /// Not origin-form, absolute-form (http/https) or `*` with OPTIONS.
    Bad,
}

/// Splits `target` (at `offset` in the buffer) into path and query: origin-form (`/p?q`),
/// absolute-form (`http://host/p?q`, scheme case-insensitive) or asterisk-form (`*`, when
/// `asterisk_ok`). Fragments and userinfo are refused.
pub(crate) fn split_target(
    target: &[u8],
    offset: u32,
    asterisk_ok: bool,
) -> Result<Target, TargetFault> {
    let span = |from: usize, to: usize| Span {
        start: offset + from as u32,
        end: offset + to as u32,
    };
    if target.contains(&b'#') {
        return Err(TargetFault::Bad);
    }
    if target == b"*" {
        return if asterisk_ok {
            Ok(Target {
                path: span(0, 1),
                query: None,
                authority: None,
            })
        } else {
            Err(TargetFault::Bad)
        };
    }
    let (authority, path_start) = if target.first() == Some(&b'/') {
        (None, 0)
    } else {
        let scheme_len = if starts_with_ignore_case(target, b"http://") {
            7
        } else if starts_with_ignore_case(target, b"https://") {
            8
        } else {
            return Err(TargetFault::Bad);
        };
        let rest = target.get(scheme_len..).unwrap_or_default();
        let auth_len = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let auth = rest.get(..auth_len).unwrap_or_default();
        if auth.is_empty() || auth.contains(&b'@') || !is_valid_host(auth) {
            return Err(TargetFault::Bad);
        }
        (
            Some(span(scheme_len, scheme_len + auth_len)),
            scheme_len + auth_len,
        )
    };
    let after = target.get(path_start..).unwrap_or_default();
    let (path, query) = match after.iter().position(|&b| b == b'?') {
        Some(q) => (
            span(path_start, path_start + q),
            Some(span(path_start + q + 1, target.len())),
        ),
        None => (span(path_start, target.len()), None),
    };
    Ok(Target {
        path,
        query,
        authority,
    })
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// True when `value` is exactly the `100-continue` expectation.
pub(crate) fn is_100_continue(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"100-continue")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert_eq!(parse_content_length(b"0012"), Ok(12));
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Ok(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b"0x5",
            b"5, 5",
            b"5 5",
            b"18446744073709551616",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_content_length(bad),
                Err(FieldFault::BadContentLength),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn host_syntax() {
        for ok in [
            &b""[..],
            b"example.com",
            b"example.com:8080",
            b"127.0.0.1:1",
            b"[::1]",
            b"[::1]:443",
            b"a_b-c.d",
        ] {
            assert!(is_valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"a b"[..],
            b"a,b",
            b"a/b",
            b"a@b",
            b"[::1",
            b"[]",
            b"a:80:90",
            b"a:port",
            b"a:123456",
            b"[::1]x",
        ] {
            assert!(!is_valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn classify_is_case_insensitive() {
        assert_eq!(classify(b"CONTENT-length"), Name::ContentLength);
        assert_eq!(classify(b"x-forwarded-PROTO"), Name::XForwardedProto);
        for n in [
            &b"X-Client-Cert"[..],
            b"x-client-cert-subject",
            b"X_Client_Cert_Issuer",
            b"x-client_cert-serial",
            b"X-CLIENT-CERT-FINGERPRINT",
        ] {
            assert_eq!(
                classify(n),
                Name::XClientCert,
                "{}",
                String::from_utf8_lossy(n)
            );
        }
        assert_eq!(classify(b"x-client-cert-other"), Name::Other);
        assert_eq!(classify(b"x-client=cert"), Name::Other);
        assert_eq!(classify(b"Hosts"), Name::Other);
        assert_eq!(classify(b"TE"), Name::Te);
    }
}
