//! PROXY protocol v1 (text) and v2 (binary): writing the header a tcp target group sends to each
//! target, and reading the header a balancer in front sends (`accept_proxy_protocol = true`).
//!
//! Runs inside a connection task on the worker that accepted the connection; the buffers are
//! owned by that task. Reading is bounded in size (`MAX_V1_LEN`, `MAX_V2_LEN`) and in time.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::io::Stream;
use crate::worker::ListenerPlan;

/// The 12-byte signature that opens a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's limit).
pub const MAX_V1_LEN: usize = 107;
/// Longest v2 header accepted: 16 fixed bytes plus addresses and TLVs.
pub const MAX_V2_LEN: usize = 16 + 2048;
/// Initial read buffer for a header (the bytes after it are kept for the connection).
const READ_BUF: usize = 4096;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header within {0:?}; the listener has accept_proxy_protocol = true, so every client must send one (is a balancer in front configured to?)")]
    Timeout(Duration),
    #[error("the client closed the connection before completing its PROXY protocol header")]
    Closed,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// The addresses a PROXY header carries: the original client and the address it connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyAddrs {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A client as the listener sees it after any PROXY header.
pub struct Client {
    /// The original client (from the header), or the socket's peer.
    pub peer: SocketAddr,
    /// The address the client connected to, from the header; `None`: the socket's own local
    /// address, looked up only where it is needed (a PROXY header sent on), not per connection.
    pub local: Option<SocketAddr>,
    /// Bytes read after the header: the start of the client's own traffic.
    pub rest: Vec<u8>,
}

/// Appends a v1 header (`PROXY TCP4 src dst sport dport\r\n`).
pub fn encode_v1(a: ProxyAddrs, out: &mut Vec<u8>) {
    let (src, dst) = same_family(a.src.ip(), a.dst.ip());
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    let line = format!(
        "PROXY {fam} {src} {dst} {} {}\r\n",
        a.src.port(),
        a.dst.port()
    );
    out.extend_from_slice(line.as_bytes());
}

/// Appends a v2 header (PROXY command, TCP over IPv4 or IPv6, no TLVs).
pub fn encode_v2(a: ProxyAddrs, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match same_family(a.src.ip(), a.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&a.src.port().to_be_bytes());
    out.extend_from_slice(&a.dst.port().to_be_bytes());
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family: IPv4 when both are (or map to) IPv4, else both IPv6.
fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    match (a.to_canonical(), b.to_canonical()) {
        (x @ IpAddr::V4(_), y @ IpAddr::V4(_)) => (x, y),
        (x, y) => (IpAddr::V6(v6(x)), IpAddr::V6(v6(y))),
    }
}

/// Parses a v1 or v2 header at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `Ok(Some((addrs, len)))`: the header is `len` bytes; `addrs` is `None` for `UNKNOWN`/`LOCAL`
/// (the connection's own addresses stand).
pub fn parse(buf: &[u8]) -> Result<Option<(Option<ProxyAddrs>, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyError::Malformed(
        "the connection does not start with a PROXY v1 or v2 header",
    ))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<ProxyAddrs>, usize)>, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_V1_LEN {
            return Err(ProxyError::Malformed("v1 header longer than 107 bytes"));
        }
        return Ok(None);
    };
    if end + 2 > MAX_V1_LEN {
        return Err(ProxyError::Malformed("v1 header longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII"))?;
    let mut f = line.split(' ');
    f.next(); // "PROXY"
    let fam = f
        .next()
        .ok_or(ProxyError::Malformed("v1 header lacks a protocol"))?;
    if fam == "UNKNOWN" {
        return Ok(Some((None, end + 2)));
    }
    let want_v4 = match fam {
        "TCP4" => true,
        "TCP6" => false,
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let bad = ProxyError::Malformed("v1 header has a bad address or port");
    let mut ip = || -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = f.next().and_then(|v| v.parse().ok()).ok_or(bad.clone())?;
        if ip.is_ipv4() == want_v4 {
            Ok(ip)
        } else {
            Err(bad.clone())
        }
    };
    let (src, dst) = (ip()?, ip()?);
    let mut port = || -> Result<u16, ProxyError> {
        f.next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or(bad.clone())
    };
    let (sport, dport) = (port()?, port()?);
    if f.next().is_some() {
        return Err(ProxyError::Malformed("v1 header has extra fields"));
    }
    let addrs = ProxyAddrs {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
    };
    Ok(Some((Some(addrs), end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<ProxyAddrs>, usize)>, ProxyError> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let (ver_cmd, fam) = (fixed[12], fixed[13]);
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    if 16 + len > MAX_V2_LEN {
        return Err(ProxyError::Malformed("v2 header longer than 2064 bytes"));
    }
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let total = 16 + len;
    match ver_cmd & 0x0f {
        0 => return Ok(Some((None, total))), // LOCAL: a health check from the balancer itself
        1 => {}
        _ => {
            return Err(ProxyError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ))
        }
    }
    let short = ProxyError::Malformed("v2 address block shorter than its family needs");
    let port = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let addrs = match fam >> 4 {
        1 => {
            let b = body.get(..12).ok_or(short)?;
            let ip = |at: usize| IpAddr::from([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            Some(ProxyAddrs {
                src: SocketAddr::new(ip(0), port(b, 8)),
                dst: SocketAddr::new(ip(4), port(b, 10)),
            })
        }
        2 => {
            let b = body.get(..36).ok_or(short)?;
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[at..at + 16]);
                IpAddr::from(o)
            };
            Some(ProxyAddrs {
                src: SocketAddr::new(ip(0), port(b, 32)),
                dst: SocketAddr::new(ip(16), port(b, 34)),
            })
        }
        // UNSPEC or unix sockets: keep the connection's own addresses.
        _ => None,
    };
    Ok(Some((addrs, total)))
}

/// Reads and parses the PROXY header a client must send first, within `limit`.
pub async fn read_header(
    stream: &Stream,
    limit: Duration,
) -> Result<(Option<ProxyAddrs>, Vec<u8>), ProxyError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::with_capacity(READ_BUF);
    loop {
        if let Some((addrs, len)) = parse(&buf)? {
            buf.drain(..len);
            return Ok((addrs, buf));
        }
        match tokio::time::timeout_at(deadline, stream.read(buf)).await {
            Err(_) => {
                // A timed-out read is never awaited again: shut the socket down.
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Err(ProxyError::Timeout(limit));
            }
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return Err(ProxyError::Closed),
            Ok((Ok(_), b)) => buf = b,
        }
    }
}

/// The client of a freshly accepted connection: read from a PROXY header when the listener asks
/// for one (`None` then means: close, the header was missing or bad), else the socket's own.
pub async fn client_of(plan: &ListenerPlan, stream: &Stream, peer: SocketAddr) -> Option<Client> {
    if !plan.accept_proxy_protocol {
        return Some(Client {
            peer,
            local: None,
            rest: Vec::new(),
        });
    }
    match read_header(stream, plan.limits.header_timeout).await {
        Ok((addrs, rest)) => Some(Client {
            peer: addrs.map_or(peer, |a| a.src),
            local: addrs.map(|a| a.dst),
            rest,
        }),
        Err(e) => {
            tracing::debug!(listener = %plan.name, client = %peer, error = %e, "PROXY header refused");
            None
        }
    }
}

/// The address a connection was accepted on (`fallback` if the socket cannot say).
pub fn local_addr(stream: &Stream, fallback: SocketAddr) -> SocketAddr {
    socket2::SockRef::from(stream)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(src: &str, dst: &str) -> ProxyAddrs {
        ProxyAddrs {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
        }
    }

    #[test]
    fn v1_and_v2_round_trip_for_both_families() {
        for a in [
            addrs("192.0.2.7:4321", "198.51.100.1:443"),
            addrs("[2001:db8::7]:4321", "[2001:db8::1]:443"),
        ] {
            for enc in [encode_v1, encode_v2] {
                let mut out = Vec::new();
                enc(a, &mut out);
                let len = out.len();
                out.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(parse(&out), Ok(Some((Some(a), len))));
                // Every strict prefix asks for more bytes.
                for cut in 0..len {
                    assert_eq!(parse(&out[..cut]), Ok(None), "prefix {cut}");
                }
            }
        }
    }

    #[test]
    fn v1_text_is_exactly_the_spec_line() {
        let mut out = Vec::new();
        encode_v1(addrs("192.0.2.7:4321", "198.51.100.1:443"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.7 198.51.100.1 4321 443\r\n");
        // Mixed families go out as IPv6.
        let mut out = Vec::new();
        encode_v1(addrs("192.0.2.7:1", "[2001:db8::1]:2"), &mut out);
        assert_eq!(out, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n");
    }

    #[test]
    fn unknown_and_local_keep_the_socket_addresses() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\nrest"), Ok(Some((None, 15))));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&v2), Ok(Some((None, 16))));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A v1 line that never ends is refused once past the limit, not buffered forever.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(parse(&long).is_err());
        // v2: wrong version, wrong command, too long, address block too short.
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert!(parse(&v2).is_err());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x23, 0x11, 0, 12]);
        v2.extend_from_slice(&[0; 12]);
        assert!(parse(&v2).is_err());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&v2).is_err());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&v2).is_err());
    }
}
