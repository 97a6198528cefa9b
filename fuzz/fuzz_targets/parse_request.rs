//! Fuzz target: arbitrary bytes as a request head must never panic, and an accepted head must
//! stay within the buffer and its limits. Run with `cargo fuzz run parse_request` (libFuzzer thread).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::parse::{parse_request, HeadLimits, RequestHead};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_header_bytes: 2048,
        max_headers: 16,
        max_uri_bytes: 512,
    };
    let mut head = RequestHead::new();
    if let Ok(Some(n)) = parse_request(data, &limits, &mut head) {
        assert!(n <= data.len() && n <= limits.max_header_bytes);
        assert!(head.target.len() <= limits.max_uri_bytes);
        assert!(head.headers.len() <= limits.max_headers);
        for h in &head.headers {
            assert!(h.name.end as usize <= n && h.value.end as usize <= n);
        }
    }
});
