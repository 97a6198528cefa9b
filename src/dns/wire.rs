//! The DNS wire format, just enough for A/AAAA lookups: encode one question, decode the
//! addresses of an answer (RFC 1035 §4, EDNS0 from RFC 6891).
//!
//! Pure functions with no state, called on the DNS resolver thread ([`crate::dns`]). Every byte of
//! an answer comes from the network: each read is bounds-checked and a malformed message is a
//! [`WireError`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record type A (IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type AAAA (IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Record type OPT (EDNS0 pseudo-record).
const TYPE_OPT: u16 = 41;
/// Class IN.
const CLASS_IN: u16 = 1;
/// The UDP payload size advertised with EDNS0 (the DNS flag day 2020 value: no fragmentation).
pub const EDNS_UDP_PAYLOAD: u16 = 1232;
/// Longest name in presentation form (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;
/// Most addresses taken from one answer; the rest are ignored.
pub const MAX_ADDRESSES: usize = 256;
/// Header length.
const HEADER_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("\"{0}\" is not a DNS name (labels of 1 to 63 letters, digits, '-' or '_', 253 bytes at most)")]
    BadName(String),
    #[error("the DNS answer is cut short or malformed at byte {0}")]
    Malformed(usize),
    #[error("the DNS answer does not match the question (id or question differs)")]
    Mismatch,
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the DNS server answered with error code {0} (2 = server failure, 5 = refused)")]
    Rcode(u8),
    #[error("the answer was truncated (TC bit); it must be asked again over TCP")]
    Truncated,
}

/// Encodes a recursive query for `name` of record type `qtype`, with an EDNS0 OPT record.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let bad = || WireError::BadName(name.to_string());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 2 + 4 + 11);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD: recursion desired
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&0u16.to_be_bytes()); // ANCOUNT
    out.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    out.extend_from_slice(&1u16.to_be_bytes()); // ARCOUNT: the OPT record
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root name, type, UDP payload size as class, extended rcode/flags 0, no options.
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(out)
}

/// Bounds-checked reader over a message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Malformed(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips a (possibly compressed) name: labels up to the root label or a pointer.
    fn skip_name(&mut self) -> Result<(), WireError> {
        // Each label is at least one byte, so a name that does not end within the message is
        // caught by `take`; the label count bound stops nothing else from looping.
        for _ in 0..=MAX_NAME_LEN {
            let len = self.u8()?;
            match len {
                0 => return Ok(()),
                l if l & 0xC0 == 0xC0 => {
                    self.take(1)?;
                    return Ok(());
                }
                l if l & 0xC0 != 0 => return Err(WireError::Malformed(self.pos - 1)),
                l => {
                    self.take(usize::from(l))?;
                }
            }
        }
        Err(WireError::Malformed(self.pos))
    }
}

/// Decodes the answer to the query `id` for record type `qtype`: the A or AAAA addresses of its
/// answer section (CNAME records a recursive server includes are skipped; their targets' records
/// follow in the same section). An empty list means the name exists without such records.
pub fn decode_answer(buf: &[u8], id: u16, qtype: u16) -> Result<Vec<IpAddr>, WireError> {
    let mut r = Reader { buf, pos: 0 };
    let got_id = r.u16()?;
    let flags = r.u16()?;
    let qd = r.u16()?;
    let an = r.u16()?;
    r.u16()?; // NSCOUNT
    r.u16()?; // ARCOUNT
    let is_response = flags & 0x8000 != 0;
    if got_id != id || !is_response {
        return Err(WireError::Mismatch);
    }
    if flags & 0x0200 != 0 {
        return Err(WireError::Truncated);
    }
    match (flags & 0x000F) as u8 {
        0 => {}
        3 => return Err(WireError::NxDomain),
        code => return Err(WireError::Rcode(code)),
    }
    for _ in 0..qd {
        r.skip_name()?;
        let t = r.u16()?;
        r.u16()?; // class
        if t != qtype {
            return Err(WireError::Mismatch);
        }
    }
    let mut out = Vec::new();
    for _ in 0..an {
        r.skip_name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        r.take(4)?; // TTL: ringlb re-resolves on its own `refresh` interval
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if class != CLASS_IN || rtype != qtype || out.len() >= MAX_ADDRESSES {
            continue;
        }
        let ip = match (rtype, data) {
            (TYPE_A, &[a, b, c, d]) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            (TYPE_AAAA, d) if d.len() == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(d);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(WireError::Malformed(r.pos - len)),
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `encode_query(7, "app.test", A)` with the given records (name by pointer).
    fn answer(flags: u16, records: &[(u16, &[u8])]) -> Vec<u8> {
        let q = encode_query(7, "app.test", TYPE_A).unwrap();
        let question_end = q.len() - 11; // without the OPT record
        let mut m = q[..question_end].to_vec();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        m[10..12].copy_from_slice(&0u16.to_be_bytes());
        for (t, data) in records {
            m.extend_from_slice(&[0xC0, 12]); // pointer to the question's name
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&30u32.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn query_has_the_name_as_labels_and_an_edns_record() {
        let q = encode_query(0xBEEF, "app.internal.", TYPE_AAAA).unwrap();
        assert_eq!(&q[..2], &[0xBE, 0xEF]);
        assert_eq!(&q[12..26], b"\x03app\x08internal\x00");
        assert_eq!(&q[26..30], &[0, 28, 0, 1]);
        assert_eq!(q.len(), 30 + 11);
        assert_eq!(&q[33..35], &EDNS_UDP_PAYLOAD.to_be_bytes());
    }

    #[test]
    fn bad_names_are_refused() {
        for n in ["", "a..b", "bad name", &"x".repeat(64), &"a.".repeat(130)] {
            assert!(
                matches!(encode_query(1, n, TYPE_A), Err(WireError::BadName(_))),
                "{n}"
            );
        }
    }

    #[test]
    fn addresses_of_an_answer_skipping_cname() {
        let m = answer(
            0x8180,
            &[
                (5, b"\x03www\x00"),
                (TYPE_A, &[10, 0, 0, 1]),
                (TYPE_A, &[10, 0, 0, 2]),
                (TYPE_A, &[10, 0, 0, 1]),
            ],
        );
        let ips = decode_answer(&m, 7, TYPE_A).unwrap();
        assert_eq!(
            ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn error_codes_and_mismatches() {
        assert_eq!(
            decode_answer(&answer(0x8183, &[]), 7, TYPE_A),
            Err(WireError::NxDomain)
        );
        assert_eq!(
            decode_answer(&answer(0x8182, &[]), 7, TYPE_A),
            Err(WireError::Rcode(2))
        );
        assert_eq!(
            decode_answer(&answer(0x8380, &[]), 7, TYPE_A),
            Err(WireError::Truncated)
        );
        assert_eq!(
            decode_answer(&answer(0x8180, &[]), 8, TYPE_A),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            decode_answer(&answer(0x8180, &[]), 7, TYPE_AAAA),
            Err(WireError::Mismatch)
        );
        assert_eq!(decode_answer(&answer(0x8180, &[]), 7, TYPE_A), Ok(vec![]));
    }

    #[test]
    fn a_record_with_a_wrong_length_is_malformed() {
        let m = answer(0x8180, &[(TYPE_A, &[1, 2, 3])]);
        assert!(matches!(
            decode_answer(&m, 7, TYPE_A),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn every_truncation_of_an_answer_is_an_error_not_a_panic() {
        let m = answer(0x8180, &[(TYPE_A, &[10, 0, 0, 1])]);
        for cut in 0..m.len() {
            assert!(decode_answer(&m[..cut], 7, TYPE_A).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode_answer(&bytes, u16::from_be_bytes([
                bytes.first().copied().unwrap_or(0),
                bytes.get(1).copied().unwrap_or(0),
            ]), TYPE_A);
        }
    }
}
