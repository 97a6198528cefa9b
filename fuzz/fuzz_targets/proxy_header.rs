//! Fuzz target: arbitrary bytes as the PROXY protocol header a listener with
//! `accept_proxy_protocol = true` reads first, from any client that can reach it. Parsing must
//! never panic; an accepted header lies within the buffer and the protocol's limits, does not
//! depend on the bytes after it, and no strict prefix of it is refused (a client that sends it
//! a byte at a time is waited for, not closed). Addresses built from the same bytes survive
//! encoding (v1 and v2) and parsing unchanged. Run with `cargo fuzz run proxy_header`
//! (libFuzzer thread).
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ringlb::proxy_protocol::{encode_v1, encode_v2, parse, ProxyAddrs, MAX_V1_LEN, MAX_V2_LEN};

/// Two addresses of one family, and two ports, from the first 37 bytes (None: too short, or
/// both IPv6 addresses map IPv4 ones, which encoding turns into an IPv4 header).
fn addrs(data: &[u8]) -> Option<ProxyAddrs> {
    let (&kind, rest) = data.split_first()?;
    let port = |at: usize| {
        rest.get(at..at + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    let (src, dst, ports_at) = if kind & 1 == 0 {
        let b: [u8; 8] = rest.get(..8)?.try_into().ok()?;
        (
            IpAddr::from([b[0], b[1], b[2], b[3]]),
            IpAddr::from([b[4], b[5], b[6], b[7]]),
            8,
        )
    } else {
        let s: [u8; 16] = rest.get(..16)?.try_into().ok()?;
        let d: [u8; 16] = rest.get(16..32)?.try_into().ok()?;
        let (s, d) = (IpAddr::from(s), IpAddr::from(d));
        if s.to_canonical().is_ipv4() && d.to_canonical().is_ipv4() {
            return None;
        }
        (s, d, 32)
    };
    Some(ProxyAddrs {
        src: SocketAddr::new(src, port(ports_at)?),
        dst: SocketAddr::new(dst, port(ports_at + 2)?),
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((found, n))) = parse(data) {
        assert!(n <= data.len() && n <= MAX_V2_LEN.max(MAX_V1_LEN));
        assert_eq!(parse(&data[..n]), Ok(Some((found, n))));
        for cut in 0..n {
            assert_eq!(
                parse(&data[..cut]),
                Ok(None),
                "prefix of {cut} of {n} bytes"
            );
        }
    }
    if let Some(a) = addrs(data) {
        for encode in [encode_v1, encode_v2] {
            let mut out = Vec::new();
            encode(a, &mut out);
            out.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let want_len = out.len() - 16;
            assert_eq!(parse(&out), Ok(Some((Some(a), want_len))));
        }
    }
});
