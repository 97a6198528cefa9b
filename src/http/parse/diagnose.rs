//! Names the first violation in a head that httparse refused (httparse says only "invalid header
//! name"), so that logs and metrics can tell obs-fold from a bare CR. Also measures the request
//! line of an incomplete head for the early 414. Runs on the parsing worker thread, only on the
//! error and partial paths; stateless.

use crate::http::syntax::{is_field_vchar, is_ows, is_tchar};

/// A fault in one header line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineFault {
    BareLf,
    ObsFold,
    SpaceBeforeColon,
    InvalidName,
    InvalidValue,
}

/// A fault in the request line or status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartFault {
    BareLf,
    Malformed,
    /// Well-formed `HTTP/x.y` that is not 1.0/1.1, or an HTTP/0.9 line without version.
    Version,
}

/// The first line of a head, after the empty lines that may precede it (RFC 9112 §2.2).
pub(crate) struct FirstLine<'a> {
    /// The line without its CRLF (without a trailing CR when incomplete).
    pub content: &'a [u8],
    /// The LF was seen.
    pub complete: bool,
    /// Offset just after the LF (the buffer length when incomplete).
    pub next: usize,
    /// A leading empty line or the line itself ends in LF without CR.
    pub bare_lf: bool,
}

pub(crate) fn first_line(buf: &[u8]) -> FirstLine<'_> {
    let mut pos = 0;
    let mut bare_lf = false;
    loop {
        match buf.get(pos..) {
            Some([b'\r', b'\n', ..]) => pos += 2,
            Some([b'\n', ..]) => {
                bare_lf = true;
                pos += 1;
            }
            _ => break,
        }
    }
    let rest = buf.get(pos..).unwrap_or_default();
    match memchr::memchr(b'\n', rest) {
        Some(lf) => {
            let (line, _) = rest.split_at(lf);
            let (content, bare) = match line.strip_suffix(b"\r") {
                Some(c) => (c, false),
                None => (line, true),
            };
            FirstLine {
                content,
                complete: true,
                next: pos + lf + 1,
                bare_lf: bare_lf || bare,
            }
        }
        None => FirstLine {
            content: rest.strip_suffix(b"\r").unwrap_or(rest),
            complete: false,
            next: buf.len(),
            bare_lf,
        },
    }
}

/// The first fault in the header lines starting at `pos`, or None when what is there (possibly
/// incomplete) is well-formed.
pub(crate) fn header_fault(buf: &[u8], mut pos: usize) -> Option<LineFault> {
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => match rest.split_at(lf).0.strip_suffix(b"\r") {
                Some(content) => (content, true),
                None => return Some(LineFault::BareLf),
            },
            None => (rest.strip_suffix(b"\r").unwrap_or(rest), false),
        };
        if complete && line.is_empty() {
            return None;
        }
        if let Some(fault) = line_fault(line, complete) {
            return Some(fault);
        }
        if !complete {
            return None;
        }
        pos += line.len() + 2;
    }
}

fn line_fault(line: &[u8], complete: bool) -> Option<LineFault> {
    if line.first().is_some_and(|&b| is_ows(b)) {
        return Some(LineFault::ObsFold);
    }
    let Some(stop) = line.iter().position(|&b| !is_tchar(b)) else {
        // Only name bytes so far: fine while incomplete, a line without colon otherwise.
        return complete.then_some(LineFault::InvalidName);
    };
    let (name, rest) = line.split_at(stop);
    match rest.split_first() {
        Some((b':', value)) if !name.is_empty() => {
            if value.iter().all(|&b| is_field_vchar(b)) {
                None
            } else {
                Some(LineFault::InvalidValue)
            }
        }
        Some((&b, _)) if is_ows(b) && !name.is_empty() => Some(LineFault::SpaceBeforeColon),
        _ => Some(LineFault::InvalidName),
    }
}

/// Checks a request line: `method SP request-target SP HTTP/1.x`, single spaces.
pub(crate) fn request_line_fault(line: &FirstLine<'_>) -> Option<StartFault> {
    if line.bare_lf {
        return Some(StartFault::BareLf);
    }
    let content = line.content;
    let Some(sp1) = content.iter().position(|&b| b == b' ') else {
        let ok = content.iter().all(|&b| is_tchar(b)) && !line.complete;
        return (!ok).then_some(StartFault::Malformed);
    };
    let (method, rest) = content.split_at(sp1);
    let rest = rest.get(1..).unwrap_or_default();
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Some(StartFault::Malformed);
    }
    let target_end = rest.iter().position(|&b| !is_target_byte(b));
    let (target, after) = rest.split_at(target_end.unwrap_or(rest.len()));
    let Some((&sep, version)) = after.split_first() else {
        // No version (yet): an HTTP/0.9 simple request when the line is complete.
        return match (line.complete, target.first()) {
            (false, _) => None,
            (true, Some(b'/')) => Some(StartFault::Version),
            (true, _) => Some(StartFault::Malformed),
        };
    };
    if sep != b' ' || target.is_empty() {
        return Some(StartFault::Malformed);
    }
    version_fault(version, line.complete)
}

/// Checks `HTTP/DIGIT.DIGIT` (complete) or a prefix of it (incomplete).
fn version_fault(v: &[u8], complete: bool) -> Option<StartFault> {
    const SHAPE: usize = b"HTTP/1.1".len();
    let shaped = v.len() <= SHAPE
        && v.iter().enumerate().all(|(i, &b)| match i {
            0..=4 => b == b"HTTP/"[i],
            5 | 7 => b.is_ascii_digit(),
            _ => b == b'.',
        });
    if !shaped {
        return Some(StartFault::Malformed);
    }
    let supported = |full: &[u8]| full.starts_with(v);
    if supported(b"HTTP/1.0") || supported(b"HTTP/1.1") {
        // A prefix of a supported version, or one of them exactly.
        return (complete && v.len() < SHAPE).then_some(StartFault::Malformed);
    }
    if complete && v.len() < SHAPE {
        return Some(StartFault::Malformed);
    }
    // HTTP/2.0, HTTP/0.9, HTTP/1.2 ... (or an unmistakable prefix of one).
    (v.len() > 5).then_some(StartFault::Version)
}

/// A byte of a request-target as httparse accepts it: VCHAR except DEL, or obs-text.
fn is_target_byte(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) || b >= 0x80
}

/// Checks a status line: `HTTP/1.x SP 3DIGIT [SP reason]`.
pub(crate) fn status_line_fault(line: &FirstLine<'_>) -> Option<StartFault> {
    if line.bare_lf {
        return Some(StartFault::BareLf);
    }
    let c = line.content;
    let prefix_ok = |full: &[u8]| {
        let n = c.len().min(full.len());
        c.get(..n) == full.get(..n)
    };
    if !(prefix_ok(b"HTTP/1.0 ") || prefix_ok(b"HTTP/1.1 ")) {
        return Some(StartFault::Malformed);
    }
    let code = c.get(9..c.len().min(12)).unwrap_or_default();
    if !code.iter().all(u8::is_ascii_digit) {
        return Some(StartFault::Malformed);
    }
    match c.get(12..) {
        None if line.complete => Some(StartFault::Malformed),
        None | Some([]) => None,
        Some([b' ', reason @ ..]) if reason.iter().all(|&b| is_field_vchar(b)) => None,
        Some(_) => Some(StartFault::Malformed),
    }
}

/// Length of the request-target seen so far in an incomplete head (for the early 414): the bytes
/// after the method's space up to the next space or the end of what arrived.
pub(crate) fn partial_target_len(line: &FirstLine<'_>) -> usize {
    match line.content.iter().position(|&b| b == b' ') {
        Some(sp) => {
            let rest = line.content.get(sp + 1..).unwrap_or_default();
            rest.iter().position(|&b| b == b' ').unwrap_or(rest.len())
        }
        None => line.content.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &[u8]) -> Option<StartFault> {
        request_line_fault(&first_line(s))
    }

    #[test]
    fn request_lines() {
        assert_eq!(req(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(req(b"GET / HTTP/1."), None);
        assert_eq!(req(b"GET / HTTP/2.0\r\n"), Some(StartFault::Version));
        assert_eq!(req(b"GET / HTTP/2"), Some(StartFault::Version));
        assert_eq!(req(b"GET / HTTP/1.\r\n"), Some(StartFault::Malformed));
        assert_eq!(req(b"GET /\r\n"), Some(StartFault::Version));
        assert_eq!(req(b"GET HTTP/1.1\r\n"), Some(StartFault::Malformed));
        assert_eq!(req(b"GET  / HTTP/1.1\r\n"), Some(StartFault::Malformed));
        assert_eq!(req(b"GET / HTTP/1.1\n"), Some(StartFault::BareLf));
        assert_eq!(req(b"GET / http/1.1\r\n"), Some(StartFault::Malformed));
        assert_eq!(req(b"GET /\x7f HTTP/1.1\r\n"), Some(StartFault::Malformed));
    }

    #[test]
    fn status_lines() {
        let st = |s: &[u8]| status_line_fault(&first_line(s));
        assert_eq!(st(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(st(b"HTTP/1.1 200\r\n"), None);
        assert_eq!(st(b"HTTP/1.1 20"), None);
        assert_eq!(st(b"HTTP/1.1 20\r\n"), Some(StartFault::Malformed));
        assert_eq!(st(b"HTTP/2 200 OK\r\n"), Some(StartFault::Malformed));
        assert_eq!(st(b"HTTP/1.1 2x0 OK\r\n"), Some(StartFault::Malformed));
        assert_eq!(st(b"HTTP/1.1 200 O\x01K\r\n"), Some(StartFault::Malformed));
    }

    #[test]
    fn header_lines() {
        let h = |s: &[u8]| header_fault(s, 0);
        assert_eq!(h(b"A: b\r\nC: d\r\n\r\n"), None);
        assert_eq!(h(b"A: b\r\nC: "), None);
        assert_eq!(h(b"A: b\nC: d\r\n"), Some(LineFault::BareLf));
        assert_eq!(h(b"A: b\r\n c\r\n"), Some(LineFault::ObsFold));
        assert_eq!(h(b"A : b\r\n"), Some(LineFault::SpaceBeforeColon));
        assert_eq!(h(b"A\x00: b\r\n"), Some(LineFault::InvalidName));
        assert_eq!(h(b"A: b\rc\r\n"), Some(LineFault::InvalidValue));
        assert_eq!(h(b"NoColon\r\n"), Some(LineFault::InvalidName));
        assert_eq!(h(b": v\r\n"), Some(LineFault::InvalidName));
    }
}
