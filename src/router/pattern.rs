//! Pattern matching for rule conditions: `*`/`?` globs over bytes, host names without their
//! port, and the literal keys rules are indexed by.
//!
//! Pure functions, called by whichever worker evaluates a request; they own no state.

/// Matches `text` against `pattern`, where `*` matches any run of bytes (also empty, also `/`)
/// and `?` exactly one byte. With `fold`, ASCII letters compare case-insensitively. Linear in
/// practice: one backtrack point (the last `*`), so at most O(pattern × text) in the worst case.
pub fn glob(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if fold {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || text.get(t).is_some_and(|&x| eq(c, x)) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Whether a pattern holds glob characters.
pub fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// The host of a `Host` value without its port: `example.com:8080` → `example.com`,
/// `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// The port of a `Host` value, when it names one.
pub fn host_port(host: &[u8]) -> Option<u16> {
    let bare = strip_port(host);
    let rest = host.get(bare.len()..)?.strip_prefix(b":")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The first segment of a path: `/api/v1` → `api`, `/` → ``. `None` unless the path starts with `/`.
pub fn first_segment(path: &[u8]) -> Option<&[u8]> {
    let rest = path.strip_prefix(b"/")?;
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The first segment every path matching `pattern` must have, when the pattern fixes it:
/// `/api/*` and `/api` give `api`; `/api*`, `*` and `/*` give `None`.
pub fn pattern_first_segment(pattern: &str) -> Option<&str> {
    let rest = pattern.strip_prefix('/')?;
    let end = rest.find(['/', '*', '?']).unwrap_or(rest.len());
    let seg = &rest[..end];
    // The segment is fixed only when it ends at a '/' or at the end of a literal pattern.
    match rest.as_bytes().get(end) {
        None | Some(b'/') => Some(seg),
        _ => None,
    }
}

/// Lower-cases ASCII `src` into `buf`; `None` when it does not fit or is not UTF-8.
pub fn lower_into<'a>(src: &[u8], buf: &'a mut [u8]) -> Option<&'a str> {
    let out = buf.get_mut(..src.len())?;
    for (o, s) in out.iter_mut().zip(src) {
        *o = s.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob(b"/api/*", b"/api/v1/users", false));
        assert!(glob(b"/api/*", b"/api/", false));
        assert!(!glob(b"/api/*", b"/api", false));
        assert!(glob(b"*.png", b"/img/a.b.png", false));
        assert!(!glob(b"*.png", b"/img/a.png/x", false));
        assert!(glob(b"/a?c", b"/abc", false));
        assert!(!glob(b"/a?c", b"/ac", false));
        assert!(glob(b"*", b"", false));
        assert!(glob(b"*a*b*", b"xxaxxbxx", false));
        assert!(!glob(b"*a*b*", b"xxbxxaxx", false));
        assert!(glob(b"/Exact", b"/Exact", false));
        assert!(!glob(b"/Exact", b"/exact", false));
        assert!(glob(b"/Exact", b"/exact", true));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port(b"example.com:8080"), b"example.com");
        assert_eq!(strip_port(b"example.com"), b"example.com");
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(host_port(b"[::1]:80"), Some(80));
        assert_eq!(host_port(b"a.b:8443"), Some(8443));
        assert_eq!(host_port(b"a.b"), None);
        assert_eq!(host_port(b"a.b:x"), None);
    }

    #[test]
    fn first_segments_of_paths_and_patterns() {
        assert_eq!(first_segment(b"/api/v1"), Some(&b"api"[..]));
        assert_eq!(first_segment(b"/"), Some(&b""[..]));
        assert_eq!(first_segment(b"*"), None);
        assert_eq!(pattern_first_segment("/api/*"), Some("api"));
        assert_eq!(pattern_first_segment("/api"), Some("api"));
        assert_eq!(pattern_first_segment("/api*"), None);
        assert_eq!(pattern_first_segment("/*"), None);
        assert_eq!(pattern_first_segment("*.png"), None);
    }
}
