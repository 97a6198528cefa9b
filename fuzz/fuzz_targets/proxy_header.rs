//! Fuzz target: arbitrary bytes as the PROXY protocol header a listener with
//! `accept_proxy_protocol = true` reads first, from any client that can reach it. Parsing must
//! never panic; an accepted header lies within the buffer and the protocol's limits, does not
//! depend on the bytes after it, and no strict prefix of it is refused (a client that sends it
//! a byte at a time is waited for, not closed). Addresses built from the same bytes, of either
//! family or one of each, read back from the header ringlb writes for them (v1 and v2) as the
//! spec's single family makes them. Run with `cargo fuzz run proxy_header`
//! (libFuzzer thread).
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ringlb::proxy_protocol::{encode_v1, encode_v2, parse, ProxyAddrs, MAX_V1_LEN, MAX_V2_LEN};

/// Two addresses and two ports from the first bytes: both IPv4, both IPv6 or one of each
/// (chosen by the first byte), any of them possibly an IPv4-mapped IPv6 address.
fn addrs(data: &[u8]) -> Option<ProxyAddrs> {
    let (&kind, mut rest) = data.split_first()?;
    let mut ip = |v6: bool| -> Option<IpAddr> {
        let n = if v6 { 16 } else { 4 };
        let (b, more) = (rest.get(..n)?, rest.get(n..)?);
        rest = more;
        Some(if v6 {
            IpAddr::from(<[u8; 16]>::try_from(b).ok()?)
        } else {
            IpAddr::from(<[u8; 4]>::try_from(b).ok()?)
        })
    };
    let (src, dst) = (ip(kind & 1 != 0)?, ip(kind & 2 != 0)?);
    let p = rest.get(..4)?;
    Some(ProxyAddrs {
        src: SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]])),
    })
}

/// What a header written for `a` must read back as: IPv4 when both addresses are (or map) IPv4,
/// else both IPv6, an IPv4 one as its mapped form (one family per header, as the spec has it).
fn as_sent(a: ProxyAddrs) -> ProxyAddrs {
    let (s, d) = (a.src.ip().to_canonical(), a.dst.ip().to_canonical());
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    let (s, d) = if s.is_ipv4() && d.is_ipv4() {
        (s, d)
    } else {
        (v6(s), v6(d))
    };
    ProxyAddrs {
        src: SocketAddr::new(s, a.src.port()),
        dst: SocketAddr::new(d, a.dst.port()),
    }
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
            assert_eq!(parse(&out), Ok(Some((Some(as_sent(a)), want_len))));
        }
    }
});
