//! Writes the heads ringlb forwards: the request to a backend (hop-by-hop fields removed,
//! X-Forwarded-For/-Proto/-Port set) and the response to the client (hop-by-hop fields removed,
//! Connection set for the client side). Runs on the worker thread that owns the connection;
//! appends to the caller's buffer and allocates only when that buffer lacks capacity.

use std::io::Write;
use std::net::IpAddr;

use super::fields::{self, Name};
use super::{RequestHead, ResponseHead, Version};
use crate::http::rewrite::{RequestAdds, ResponseAdds};

/// Facts about the client connection that the backend learns through X-Forwarded-* fields
/// (and, with mutual TLS, X-Client-Cert-*).
#[derive(Clone, Copy, Debug)]
pub struct ForwardInfo<'a> {
    pub client_ip: IpAddr,
    /// "http" or "https".
    pub proto: &'static str,
    /// The listener's port.
    pub port: u16,
    /// The verified client certificate (its prepared `X-Client-Cert*` fields).
    pub client_cert: Option<&'a crate::tls::ClientCert>,
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `ip` as X-Forwarded-For carries it (IPv6 without brackets). IPv4, nearly every
/// client, is four integers written directly: `Display` would run the formatting machinery
/// (about 1% of a keep-alive request's CPU).
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(n.format(octet).as_bytes());
            }
        }
        // Display of IpAddr writes straight into the Vec: no allocation.
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends the request head to send to a backend: the original request line; every field except
/// the hop-by-hop ones (Upgrade kept, plus `Connection: upgrade`, when upgrading); Transfer-Encoding
/// kept; `X-Forwarded-For: <client's values>, <client_ip>`; our X-Forwarded-Proto and -Port
/// instead of the client's; Host as sent; no `Expect: 100-continue` (ringlb answers it).
pub fn write_request_head(
    buf: &[u8],
    head: &RequestHead,
    fwd: &ForwardInfo<'_>,
    adds: &RequestAdds,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.request_line.of(buf));
    out.extend_from_slice(b"\r\n");
    for h in head.headers.iter().filter(|h| !h.hop_by_hop) {
        let name = h.name.of(buf);
        if adds.drops(name) {
            continue;
        }
        push_field(out, name, h.value.of(buf));
    }
    adds.write_h1(out);
    // A rewrite that sets or removes one of these fields takes the place of ringlb's own (it
    // wrote its value above, or none).
    if !adds.drops(b"x-forwarded-for") {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if head.x_forwarded_for.is_some() {
            for h in head.headers.iter().filter(|h| h.hop_by_hop) {
                let value = h.value.of(buf);
                if !value.is_empty() && fields::classify(h.name.of(buf)) == Name::XForwardedFor {
                    out.extend_from_slice(value);
                    out.extend_from_slice(b", ");
                }
            }
        }
        push_ip(out, fwd.client_ip);
        out.extend_from_slice(b"\r\n");
    }
    if !adds.drops(b"x-forwarded-proto") {
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(fwd.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !adds.drops(b"x-forwarded-port") {
        out.extend_from_slice(b"X-Forwarded-Port: ");
        out.extend_from_slice(itoa::Buffer::new().format(fwd.port).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(cert) = fwd.client_cert {
        out.extend_from_slice(&cert.header_block);
    }
    if head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if head.version == Version::Http10 {
        // The upstream connection is ringlb's, not the client's: keep it for reuse even when an
        // HTTP/1.0 client will close its own.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the response head to send to the client: the status line with ringlb's own version
/// (`HTTP/1.1`, whatever the target spoke: RFC 9110 §6.2), every field except the hop-by-hop
/// ones, `Transfer-Encoding: chunked` when `chunked` (a close-delimited body ringlb re-frames, see
/// `relay::Framing::Rechunk`), then the Connection field for the client side: `upgrade` for a
/// 101 (Upgrade kept), `close` when `!keep_alive`, `keep-alive` for a kept HTTP/1.0 client.
/// Interim (1xx) responses get no Connection field. An HTTP/1.0 client gets no
/// Transfer-Encoding (it cannot have one: a chunked body goes to it as its data alone, see
/// `relay::Framing::Dechunk`).
#[allow(clippy::too_many_arguments)]
pub fn write_response_head(
    buf: &[u8],
    head: &ResponseHead,
    client_version: Version,
    keep_alive: bool,
    chunked: bool,
    adds: &ResponseAdds,
    out: &mut Vec<u8>,
) {
    let line = head.status_line.of(buf);
    match line.strip_prefix(b"HTTP/1.0") {
        Some(rest) => {
            out.extend_from_slice(b"HTTP/1.1");
            out.extend_from_slice(rest);
        }
        None => out.extend_from_slice(line),
    }
    out.extend_from_slice(b"\r\n");
    let http10 = client_version == Version::Http10;
    for h in head.headers.iter().filter(|h| !h.hop_by_hop) {
        let name = h.name.of(buf);
        if http10 && name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        if !head.is_interim() && adds.drops(name) {
            continue;
        }
        push_field(out, name, h.value.of(buf));
    }
    if !head.is_interim() {
        adds.write_h1(out);
    }
    if chunked && !http10 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if head.is_interim() {
        // An interim response says nothing about the connection.
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::push_ip;
    use std::net::IpAddr;

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.99.100.255",
            "192.168.9.10",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            let mut out = b"X: ".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8_lossy(&out), format!("X: {ip}"));
        }
    }
}
