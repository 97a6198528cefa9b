//! Unit tests of the chunked body validator (test thread only).

use super::*;

const BODY: &[u8] = b"4\r\nWiki\r\n5;name=val;flag\r\npedia\r\nE \t;x=\"q v\"\r\n in\r\n\r\nchunks.\r\n0\r\nX-Sum: abc\r\nX-Two:\r\n\r\n";

fn whole(data: &[u8], max: u64) -> Result<ChunkProgress, BodyError> {
    ChunkedDecoder::new(max).advance(data)
}

#[test]
fn consumes_exactly_the_body_at_once() {
    let mut input = BODY.to_vec();
    input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
    let mut d = ChunkedDecoder::new(1 << 20);
    let p = d.advance(&input).expect("valid body");
    assert_eq!(
        p,
        ChunkProgress {
            consumed: BODY.len(),
            done: true
        }
    );
    assert!(d.is_done());
    assert_eq!(d.decoded_bytes(), 4 + 5 + 14);
    // Once done, nothing more is consumed.
    assert_eq!(d.advance(b"more").expect("done").consumed, 0);
}

#[test]
fn byte_at_a_time() {
    let mut d = ChunkedDecoder::new(1 << 20);
    for (i, b) in BODY.iter().enumerate() {
        let p = d.advance(std::slice::from_ref(b)).expect("valid byte");
        assert_eq!(p.consumed, 1, "byte {i}");
        assert_eq!(p.done, i == BODY.len() - 1, "byte {i}");
    }
    assert_eq!(d.decoded_bytes(), 23);
}

#[test]
fn empty_body_and_uppercase_hex() {
    assert_eq!(
        whole(b"0\r\n\r\n", 0),
        Ok(ChunkProgress {
            consumed: 5,
            done: true
        })
    );
    let mut d = ChunkedDecoder::new(100);
    let data = b"A\r\n0123456789\r\n00\r\n\r\n";
    assert_eq!(d.advance(data).expect("valid").consumed, data.len());
    assert_eq!(d.decoded_bytes(), 10);
}

#[test]
fn partial_input_is_not_done() {
    let mut d = ChunkedDecoder::new(100);
    let p = d.advance(b"5\r\nab").expect("valid so far");
    assert_eq!(
        p,
        ChunkProgress {
            consumed: 5,
            done: false
        }
    );
    assert_eq!(d.decoded_bytes(), 2);
    assert!(!d.is_done());
}

#[test]
fn framing_errors() {
    use BodyError::*;
    let cases: &[(&[u8], BodyError)] = &[
        (b"x\r\n", BadChunkSize),
        (b"+5\r\nhello\r\n", BadChunkSize),
        (b"-5\r\n", BadChunkSize),
        (b"0x5\r\nhello\r\n", BadChunkSize),
        (b"\r\n", BadChunkSize),
        (b"5 5\r\n", BadChunkSize),
        (b"5 \r\n", BadChunkSize),
        (b"00000000000000001\r\n", BadChunkSize),
        (b"5\nhello\r\n", BareLf),
        (b"5;a=b\nhello\r\n", BareLf),
        (b"5\rhello\r\n", MissingCrlf),
        (b"5\r\nhello\n0\r\n\r\n", BareLf),
        (b"5\r\nhelloX\r\n", MissingCrlf),
        (b"5\r\nhello\rX", MissingCrlf),
        (b"5;a\x01\r\n", BadChunkExtension),
        (b"0\r\nX: y\n\r\n", BareLf),
        (b"0\r\n\n", BareLf),
        (b"0\r\nX: y\r\n folded\r\n\r\n", BadTrailer),
        (b"0\r\nX : y\r\n\r\n", BadTrailer),
        (b"0\r\nNoColon\r\n\r\n", BadTrailer),
        (b"0\r\nX: a\x00b\r\n\r\n", BadTrailer),
        (b"0\r\nX: y\rZ", MissingCrlf),
        (b"0\r\n\rX", MissingCrlf),
    ];
    for (data, want) in cases {
        assert_eq!(
            whole(data, 1 << 40),
            Err(*want),
            "{:?}",
            String::from_utf8_lossy(data)
        );
        assert_eq!(want.status(), 400);
    }
}

#[test]
fn too_large_as_soon_as_announced() {
    let mut d = ChunkedDecoder::new(10);
    d.advance(b"6\r\nabcdef\r\n").expect("within limit");
    // The second size digit already takes the total over 10: refused before any data.
    let err = d.advance(b"5").expect_err("6 + 5 > 10");
    assert_eq!(err, BodyError::TooLarge { limit: 10 });
    assert_eq!(err.status(), 413);
    assert_eq!(err.kind(), "body_too_large");
    // The decoder stays failed.
    assert_eq!(d.advance(b"\r\n"), Err(BodyError::TooLarge { limit: 10 }));
    assert_eq!(
        whole(b"fffffffffffffff\r\n", 1 << 20),
        Err(BodyError::TooLarge { limit: 1 << 20 })
    );
}

#[test]
fn bounded_lines_and_trailers() {
    let mut line = b"1;".to_vec();
    line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
    assert_eq!(whole(&line, 100), Err(BodyError::ChunkLineTooLong));
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < MAX_TRAILER_BYTES + 100 {
        trailers.extend_from_slice(b"X-Pad: 0123456789012345678901234567890123456789\r\n");
    }
    assert_eq!(whole(&trailers, 100), Err(BodyError::TrailerTooLarge));
}

#[test]
fn dechunking_in_place_keeps_the_data_and_what_follows() {
    let body: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let end = body.len() - 4;
    // Any split of the input into two reads gives the same data.
    for cut in 0..=body.len() {
        let mut d = ChunkedDecoder::new(u64::MAX);
        let mut data = Vec::new();
        let mut consumed = 0;
        for piece in [&body[..cut], &body[cut..]] {
            let mut buf = piece.to_vec();
            let (p, n) = d.advance_dechunked(&mut buf, None).unwrap();
            data.extend_from_slice(&buf[..n]);
            // Bytes past the body are left as they were.
            assert_eq!(&buf[p.consumed..], &piece[p.consumed..]);
            consumed += p.consumed;
        }
        assert_eq!(data, b"hello, world", "cut at {cut}");
        assert!(d.is_done());
        assert_eq!(consumed, end, "cut at {cut}");
    }
    // Reads of every small size, each one compacted on its own.
    for size in 1..=7 {
        let mut d = ChunkedDecoder::new(u64::MAX);
        let mut data = Vec::new();
        let mut trailers = Vec::new();
        for piece in body[..end].chunks(size) {
            let mut buf = piece.to_vec();
            let (p, n) = d.advance_dechunked(&mut buf, Some(&mut trailers)).unwrap();
            assert_eq!(p.consumed, piece.len());
            data.extend_from_slice(&buf[..n]);
        }
        assert_eq!(data, b"hello, world", "reads of {size}");
        // The trailer section comes out whole (for an HTTP/2 client that asked for trailers).
        assert_eq!(trailers, b"Trailer: x\r\n\r\n", "reads of {size}");
        assert!(d.is_done());
    }
    // Broken framing is still refused.
    let mut d = ChunkedDecoder::new(u64::MAX);
    let mut bad = b"5\r\nhelloXX".to_vec();
    assert_eq!(
        d.advance_dechunked(&mut bad, None),
        Err(BodyError::MissingCrlf)
    );
}

#[test]
fn a_request_trailer_named_like_a_client_certificate_field_is_refused() {
    let forged = b"4\r\nWiki\r\n0\r\nX-Sum: 1\r\nx_client_cert_SUBJECT: CN=admin\r\n\r\n";
    assert_eq!(
        ChunkedDecoder::for_request(1 << 20).advance(forged),
        Err(BodyError::BadTrailer)
    );
    // Fed one byte at a time: the same verdict.
    let mut d = ChunkedDecoder::for_request(1 << 20);
    let verdict = forged.iter().try_for_each(|b| d.advance(&[*b]).map(drop));
    assert_eq!(verdict, Err(BodyError::BadTrailer));
    // Other trailers pass; a response decoder does not look at names.
    assert!(
        ChunkedDecoder::for_request(1 << 20)
            .advance(BODY)
            .expect("valid")
            .done
    );
    assert!(
        ChunkedDecoder::new(1 << 20)
            .advance(forged)
            .expect("valid")
            .done
    );
    let longer = b"0\r\nX-Client-Cert-Subjects: x\r\n\r\n";
    assert!(
        ChunkedDecoder::for_request(1 << 20)
            .advance(longer)
            .expect("a longer name is another field")
            .done
    );
}
