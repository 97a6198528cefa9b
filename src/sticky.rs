//! Session stickiness (`stickiness` on a target group): which target a request's cookie names,
//! and the `Set-Cookie` that pins a client to the target that served it.
//!
//! A target is named by an opaque token: the first 12 bytes of HMAC-SHA256 of its address under
//! a key drawn once per process, base64url in the cookie. Every worker computes the same token
//! for the same target (the key is process-wide), a reload that keeps a target keeps its token,
//! and the address never appears in clear. Pure functions plus one process-wide key; called on
//! the worker serving the request.

use std::net::SocketAddr;
use std::sync::OnceLock;

use base64::Engine;

use crate::config::traffic::{APP_COMPANION_COOKIE, LB_COOKIE};
use crate::config::Stickiness;
use crate::http::parse::RequestHead;

/// A target's name in a stickiness cookie.
pub type Token = [u8; 12];
/// Length of a token in base64url.
const ENCODED: usize = 16;

fn key() -> &'static ring::hmac::Key {
    static KEY: OnceLock<ring::hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // No system randomness: a key from the clock and the process id still keeps the
            // address out of the cookie (it only makes tokens guessable by a patient client).
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_bytes())
        })
    })
}

/// The token of the target at `addr`.
pub fn token_for(addr: SocketAddr) -> Token {
    let tag = ring::hmac::sign(key(), addr.to_string().as_bytes());
    let mut t = [0u8; 12];
    t.copy_from_slice(&tag.as_ref()[..12]);
    t
}

fn decode(v: &[u8]) -> Option<Token> {
    if v.len() != ENCODED {
        return None;
    }
    let mut t = [0u8; 12];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(v, &mut t)
        .ok()?;
    (n == 12).then_some(t)
}

/// What a request says about stickiness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The target its cookie names.
    pub token: Option<Token>,
    /// app_cookie: the request carries the application's cookie.
    pub app_cookie: bool,
}

/// Reads the request's cookies for `st`.
pub fn from_request(st: &Stickiness, buf: &[u8], head: &RequestHead) -> Affinity {
    let mut a = Affinity::default();
    let mut companion = None;
    for h in &head.headers {
        if !h.name.of(buf).eq_ignore_ascii_case(b"cookie") {
            continue;
        }
        for pair in h.value.of(buf).split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, value) = (&pair[..eq], pair[eq + 1..].trim_ascii());
            match st {
                Stickiness::LbCookie { .. } if name == LB_COOKIE.as_bytes() => {
                    a.token = decode(value);
                }
                Stickiness::AppCookie { cookie, .. } => {
                    if name == cookie.as_bytes() {
                        a.app_cookie = true;
                    } else if name == APP_COMPANION_COOKIE.as_bytes() {
                        companion = decode(value);
                    }
                }
                _ => {}
            }
        }
    }
    if matches!(st, Stickiness::AppCookie { .. }) {
        // The companion only counts beside the application's own cookie (as ALB's).
        a.token = companion.filter(|_| a.app_cookie);
    }
    a
}

/// A `Set-Cookie` value, built without allocating.
#[derive(Clone, Copy)]
pub struct SetCookie {
    len: u8,
    bytes: [u8; 128],
}

impl SetCookie {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    fn new(name: &str, token: &Token, max_age: u64, secure: bool) -> SetCookie {
        let mut c = SetCookie {
            len: 0,
            bytes: [0; 128],
        };
        let mut enc = [0u8; ENCODED];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(token, &mut enc)
            .unwrap_or(0);
        let mut push = |b: &[u8]| {
            let at = c.len as usize;
            let take = b.len().min(c.bytes.len() - at);
            c.bytes[at..at + take].copy_from_slice(&b[..take]);
            c.len += take as u8;
        };
        push(name.as_bytes());
        push(b"=");
        push(&enc[..n]);
        push(b"; Max-Age=");
        push(itoa::Buffer::new().format(max_age).as_bytes());
        push(b"; Path=/; HttpOnly");
        if secure {
            push(b"; Secure");
        }
        c
    }
}

/// The cookie a response carries, if any. lb_cookie: when the request's cookie did not name the
/// target that served it (a new client, or its target was replaced). app_cookie: when the
/// response sets the application's cookie, or the request carried it and went to another target
/// than its companion named.
pub fn response_cookie(
    st: &Stickiness,
    asked: &Affinity,
    served: &Token,
    sets_app_cookie: impl FnOnce(&str) -> bool,
    secure: bool,
) -> Option<SetCookie> {
    let max_age = st.duration().as_secs();
    let moved = asked.token.as_ref() != Some(served);
    match st {
        Stickiness::LbCookie { .. } => {
            moved.then(|| SetCookie::new(LB_COOKIE, served, max_age, secure))
        }
        Stickiness::AppCookie { cookie, .. } => (sets_app_cookie(cookie)
            || (asked.app_cookie && moved))
            .then(|| SetCookie::new(APP_COMPANION_COOKIE, served, max_age, secure)),
    }
}

/// True when a `Set-Cookie` value sets the cookie `name`.
pub fn sets_cookie(value: &[u8], name: &str) -> bool {
    let v = value.trim_ascii_start();
    v.len() > name.len() && v.starts_with(name.as_bytes()) && v[name.len()] == b'='
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_request, HeadLimits};
    use std::time::Duration;

    fn head(raw: &[u8]) -> RequestHead {
        let mut h = RequestHead::new();
        let limits = HeadLimits {
            max_header_bytes: 8192,
            max_headers: 100,
            max_uri_bytes: 8192,
        };
        parse_request(raw, &limits, &mut h)
            .expect("parses")
            .expect("whole");
        h
    }

    #[test]
    fn lb_cookies_name_targets_opaquely_and_come_back() {
        let st = Stickiness::LbCookie {
            duration: Duration::from_secs(3600),
        };
        let addr: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let t = token_for(addr);
        assert_eq!(t, token_for(addr), "the same on every call (and worker)");
        assert_ne!(t, token_for("10.0.0.8:8080".parse().unwrap()));
        let c = response_cookie(&st, &Affinity::default(), &t, |_| false, false).expect("set");
        let text = String::from_utf8(c.as_bytes().to_vec()).unwrap();
        assert!(
            text.starts_with("RINGLB=") && text.contains("Max-Age=3600"),
            "{text}"
        );
        assert!(!text.contains("10.0.0.7"));
        let value = &text["RINGLB=".len()..text.find(';').unwrap()];
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: x=1; RINGLB={value}; y=2\r\n\r\n");
        let a = from_request(&st, raw.as_bytes(), &head(raw.as_bytes()));
        assert_eq!(a.token, Some(t));
        // Already pinned there: no new cookie.
        assert!(response_cookie(&st, &a, &t, |_| false, false).is_none());
        // A garbled cookie names nothing.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: RINGLB=zz\r\n\r\n";
        assert_eq!(from_request(&st, raw, &head(raw)).token, None);
    }

    #[test]
    fn app_cookies_follow_the_application() {
        let st = Stickiness::AppCookie {
            cookie: "SESSIONID".into(),
            duration: Duration::from_secs(60),
        };
        let t = token_for("10.0.0.7:8080".parse().unwrap());
        // The application sets its cookie: the companion goes with it.
        let c = response_cookie(&st, &Affinity::default(), &t, |n| n == "SESSIONID", true)
            .expect("companion");
        let text = String::from_utf8(c.as_bytes().to_vec()).unwrap();
        assert!(
            text.starts_with("RINGLBAPP=") && text.ends_with("; Secure"),
            "{text}"
        );
        // Without the application's cookie nothing is set and nothing sticks.
        assert!(response_cookie(&st, &Affinity::default(), &t, |_| false, false).is_none());
        let enc = &text["RINGLBAPP=".len()..text.find(';').unwrap()];
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: RINGLBAPP={enc}\r\n\r\n");
        assert_eq!(
            from_request(&st, raw.as_bytes(), &head(raw.as_bytes())).token,
            None
        );
        let raw =
            format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: SESSIONID=abc; RINGLBAPP={enc}\r\n\r\n");
        let a = from_request(&st, raw.as_bytes(), &head(raw.as_bytes()));
        assert_eq!((a.token, a.app_cookie), (Some(t), true));
        assert!(sets_cookie(b"SESSIONID=abc; Path=/", "SESSIONID"));
        assert!(!sets_cookie(b"SESSIONIDX=abc", "SESSIONID"));
    }
}
