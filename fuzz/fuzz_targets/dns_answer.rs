//! Fuzz target: arbitrary bytes as the answer to one of ringlb's A/AAAA queries (a `dns:`
//! target's resolver reads them from UDP, where anyone who can guess the port may send them).
//! Decoding must never panic, must end, and keeps at most `MAX_ADDRESSES` distinct addresses
//! of the asked family. The query id and type come from the first three bytes. Run with
//! `cargo fuzz run dns_answer` (libFuzzer thread).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::dns::wire::{decode_answer, MAX_ADDRESSES, TYPE_A, TYPE_AAAA};

fuzz_target!(|data: &[u8]| {
    let Some((head, answer)) = data.split_first_chunk::<3>() else {
        return;
    };
    let id = u16::from_be_bytes([head[0], head[1]]);
    let qtype = if head[2] & 1 == 0 { TYPE_A } else { TYPE_AAAA };
    if let Ok(addrs) = decode_answer(answer, id, qtype) {
        assert!(addrs.len() <= MAX_ADDRESSES);
        assert!(addrs.iter().all(|ip| ip.is_ipv4() == (qtype == TYPE_A)));
        for (i, ip) in addrs.iter().enumerate() {
            assert!(!addrs[..i].contains(ip), "{ip} twice");
        }
    }
});
