//! Fuzz target: arbitrary bytes as a backend response head must never panic; the request method
//! comes from the first byte. Run with `cargo fuzz run parse_response` (libFuzzer thread).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::parse::{parse_response, Method, ResponseHead};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 0 {
        Method::Get
    } else {
        Method::Head
    };
    let mut head = ResponseHead::new();
    if let Ok(Some(n)) = parse_response(rest, method, 4096, &mut head) {
        assert!(n <= rest.len() && n <= 4096);
    }
});
