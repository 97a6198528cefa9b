//! Fuzz target: arbitrary bytes as a chunked body, fed whole and in two pieces, must never panic
//! and must give the same verdict either way. Run with `cargo fuzz run chunked` (libFuzzer thread).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::body::{BodyError, ChunkedDecoder};

/// (bytes consumed, done) after feeding `pieces` one after another.
fn feed(pieces: &[&[u8]]) -> Result<(usize, bool), BodyError> {
    let mut d = ChunkedDecoder::new(1 << 20);
    let mut consumed = 0;
    for piece in pieces {
        let p = d.advance(piece)?;
        consumed += p.consumed;
        if p.done {
            return Ok((consumed, true));
        }
    }
    Ok((consumed, d.is_done()))
}

fuzz_target!(|data: &[u8]| {
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let (a, b) = data.split_at(cut);
    let whole = feed(&[data]);
    let split = feed(&[a, b]);
    assert_eq!(whole, split);
    if let Ok((consumed, _)) = whole {
        assert!(consumed <= data.len());
    }
});
