//! Byte classes of RFC 9110/9112 (token, field value, request-target, OWS) shared by the head
//! parser and the chunked decoder. Pure lookup functions; no state, any thread.

/// `tchar` of RFC 9110 §5.6.2: the bytes of a token (header name, method, coding).
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// A non-empty run of `tchar`.
#[inline]
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A byte allowed inside a field value: HTAB, SP, VCHAR or obs-text (no CR, LF, NUL, DEL, ...).
#[inline]
pub(crate) fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Optional whitespace (OWS): SP or HTAB.
#[inline]
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Strips OWS from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// The elements of a comma-separated list value (`#element`), OWS trimmed; empty elements kept
/// so that callers can decide whether they are an error.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// True when `head` holds an LF that is not preceded by CR (a bare LF line ending).
#[inline]
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    // SIMD search for the few LFs of a head rather than a look at every byte (this runs on
    // every request and response head).
    memchr::memchr_iter(b'\n', head).any(|i| head.get(i.wrapping_sub(1)) != Some(&b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_splits_lists() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        let v: Vec<&[u8]> = list_elements(b"gzip ,\tchunked,, x").collect();
        assert_eq!(v, vec![&b"gzip"[..], b"chunked", b"", b"x"]);
    }

    #[test]
    fn finds_bare_lf() {
        assert!(!has_bare_lf(b"a\r\nb\r\n\r\n"));
        assert!(has_bare_lf(b"\na"));
        assert!(has_bare_lf(b"a\r\nb\n\r\n"));
        assert!(
            has_bare_lf(b"\nGET / HTTP/1.1\r\n\r\n"),
            "an LF first has no CR before it"
        );
        assert!(!has_bare_lf(b""));
        // Past the vector width of the search: a long head, clean and with one bare LF.
        let mut long = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            long.extend_from_slice(format!("X-Field-{i}: some value here\r\n").as_bytes());
        }
        long.extend_from_slice(b"\r\n");
        assert!(!has_bare_lf(&long));
        let at = long.len() - 30;
        long.insert(at, b'\n');
        assert!(has_bare_lf(&long));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(is_token(b"X-Custom_1"));
        assert!(!is_field_vchar(0x7f));
        assert!(!is_field_vchar(0));
        assert!(is_field_vchar(b'\t'));
    }
}
