//! What ringlb adds to and removes from the heads it forwards: the listener's and a rule's
//! header rewrites (`request_headers`, `response_headers`), the request id, and the stickiness
//! cookie of a response.
//!
//! [`Rewrites`] are compiled once per listener and rule by the main thread (immutable, shared by
//! every worker through the plan); [`RequestId`] is made per request on the worker serving it,
//! without a syscall or an allocation.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderRewrite;

/// Fields to drop from a head and fields to add to it (names lower case).
#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    drop: Vec<Box<str>>,
    add: Vec<(Box<str>, Box<str>)>,
}

impl HeaderOps {
    /// The listener's rewrite followed by a rule's: what the rule removes or sets wins.
    pub fn merged(first: &HeaderRewrite, then: &HeaderRewrite) -> HeaderOps {
        let mut drop: Vec<Box<str>> = Vec::new();
        let mut push_drop = |n: &str| {
            if !drop.iter().any(|d| &**d == n) {
                drop.push(n.into());
            }
        };
        for n in first.remove.iter().chain(&then.remove) {
            push_drop(n);
        }
        for (n, _) in first.set.iter().chain(&then.set) {
            push_drop(n);
        }
        let mut add: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (n, v) in &first.set {
            let overridden = then.remove.contains(n) || then.set.iter().any(|(m, _)| m == n);
            if !overridden {
                add.push((n.as_str().into(), v.as_str().into()));
            }
        }
        for (n, v) in &then.set {
            add.push((n.as_str().into(), v.as_str().into()));
        }
        HeaderOps { drop, add }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty()
    }

    /// True when a field of this name must not go on as it came.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        !self.drop.is_empty()
            && self
                .drop
                .iter()
                .any(|d| d.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Appends the fields to set, in HTTP/1.1 form.
    pub fn write_h1(&self, out: &mut Vec<u8>) {
        for (n, v) in self.add.iter() {
            push_field(out, n.as_bytes(), v.as_bytes());
        }
    }

    /// Applies the rewrite to an HTTP/2 header map.
    pub fn apply(&self, map: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        for d in self.drop.iter() {
            map.remove(&**d);
        }
        for (n, v) in self.add.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                map.append(n, v);
            }
        }
    }
}

/// A listener's or a forward rule's rewrites, both directions.
#[derive(Debug, Default, Clone)]
pub struct Rewrites {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl Rewrites {
    pub fn new(
        listener: (&HeaderRewrite, &HeaderRewrite),
        rule: (&HeaderRewrite, &HeaderRewrite),
    ) -> Rewrites {
        Rewrites {
            request: HeaderOps::merged(listener.0, rule.0),
            response: HeaderOps::merged(listener.1, rule.1),
        }
    }
}

pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Longest request id kept as the client sent it (a longer one is replaced).
pub const MAX_REQUEST_ID: usize = 64;

/// One request's id: the client's (when it sent a usable one) or a fresh one.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    /// ringlb made it (the client sent none, or one too long or with odd bytes).
    pub generated: bool,
    bytes: [u8; MAX_REQUEST_ID],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

thread_local! {
    /// This thread's id source: a random prefix (drawn once) and a counter.
    static ID_SOURCE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The id as an HTTP/2 field value, cut from a per-thread chunk (`http2::arena`: no
    /// allocation per response).
    pub fn header_value(&self) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        HeaderValue::from_maybe_shared(crate::http2::arena::copy(self.as_bytes()))
    }

    /// The client's id, when it is 1..=64 bytes of visible ASCII.
    pub fn from_client(v: &[u8]) -> Option<RequestId> {
        let v = v.trim_ascii();
        if v.is_empty() || v.len() > MAX_REQUEST_ID || !v.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut bytes = [0u8; MAX_REQUEST_ID];
        bytes[..v.len()].copy_from_slice(v);
        Some(RequestId {
            len: v.len() as u8,
            generated: false,
            bytes,
        })
    }

    /// A fresh id in UUID form: a 64-bit random prefix per thread and a 64-bit counter, so ids
    /// are unique across threads and restarts without a syscall or a shared write per request.
    pub fn generate() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let (mut prefix, mut n) = ID_SOURCE.get();
        if prefix == 0 {
            prefix = fastrand::u64(1..);
        }
        n = n.wrapping_add(1);
        ID_SOURCE.set((prefix, n));
        // 8-4-4-4-12 hex digits: the prefix fills the first 16, the counter the last 16.
        let hex16 = |v: u64| {
            let mut out = [0u8; 16];
            for (i, o) in out.iter_mut().enumerate() {
                *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
            }
            out
        };
        let (p, c) = (hex16(prefix), hex16(n));
        let mut bytes = [0u8; MAX_REQUEST_ID];
        bytes[..8].copy_from_slice(&p[..8]);
        bytes[9..13].copy_from_slice(&p[8..12]);
        bytes[14..18].copy_from_slice(&p[12..]);
        bytes[19..23].copy_from_slice(&c[..4]);
        bytes[24..36].copy_from_slice(&c[4..]);
        for dash in [8, 13, 18, 23] {
            bytes[dash] = b'-';
        }
        RequestId {
            len: 36,
            generated: true,
            bytes,
        }
    }

    /// The id for a request whose field `name` holds `sent` (if any).
    pub fn for_request(sent: Option<&[u8]>) -> RequestId {
        sent.and_then(RequestId::from_client)
            .unwrap_or_else(RequestId::generate)
    }
}

/// What a forwarded request head gains beyond X-Forwarded-*: the rewrites, and a request id
/// ringlb made (replacing any the client sent).
#[derive(Clone, Copy)]
pub struct RequestAdds<'a> {
    pub ops: &'a HeaderOps,
    /// (field name, id) when the id is ringlb's own.
    pub id: Option<(&'a str, &'a RequestId)>,
}

impl RequestAdds<'_> {
    pub const NONE: RequestAdds<'static> = RequestAdds {
        ops: &EMPTY_OPS,
        id: None,
    };

    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        self.ops.drops(name)
            || self
                .id
                .is_some_and(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    }

    pub fn write_h1(&self, out: &mut Vec<u8>) {
        self.ops.write_h1(out);
        if let Some((n, id)) = self.id {
            push_field(out, n.as_bytes(), id.as_bytes());
        }
    }
}

static EMPTY_OPS: HeaderOps = HeaderOps {
    drop: Vec::new(),
    add: Vec::new(),
};

/// What a response head gains on its way to the client: the rewrites, the request id, and a
/// stickiness cookie.
#[derive(Clone, Copy)]
pub struct ResponseAdds<'a> {
    pub ops: &'a HeaderOps,
    pub id: Option<(&'a str, &'a RequestId)>,
    /// A whole `Set-Cookie` value.
    pub cookie: Option<&'a [u8]>,
}

impl ResponseAdds<'_> {
    pub const NONE: ResponseAdds<'static> = ResponseAdds {
        ops: &EMPTY_OPS,
        id: None,
        cookie: None,
    };

    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        self.ops.drops(name)
            || self
                .id
                .is_some_and(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    }

    pub fn write_h1(&self, out: &mut Vec<u8>) {
        self.ops.write_h1(out);
        if let Some((n, id)) = self.id {
            push_field(out, n.as_bytes(), id.as_bytes());
        }
        if let Some(c) = self.cookie {
            push_field(out, b"set-cookie", c);
        }
    }

    pub fn apply(&self, map: &mut HeaderMap) {
        self.ops.apply(map);
        // Unique per response: "never indexed" in HPACK (`sensitive`), so they do not push the
        // fields that repeat out of the connection's compression table.
        if let Some((n, id)) = self.id {
            // The default name costs no parse and no allocation.
            let name = if n == crate::config::traffic::DEFAULT_REQUEST_ID {
                Ok(HeaderName::from_static(
                    crate::config::traffic::DEFAULT_REQUEST_ID,
                ))
            } else {
                HeaderName::from_bytes(n.as_bytes())
            };
            if let (Ok(n), Ok(mut v)) = (name, id.header_value()) {
                v.set_sensitive(true);
                map.insert(n, v);
            }
        }
        if let Some(c) = self.cookie {
            if let Ok(mut v) = HeaderValue::from_bytes(c) {
                v.set_sensitive(true);
                map.append(http::header::SET_COOKIE, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(set: &[(&str, &str)], remove: &[&str]) -> HeaderRewrite {
        HeaderRewrite {
            set: set
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_rule_rewrites_after_its_listener() {
        let listener = rw(&[("x-env", "prod"), ("x-tier", "web")], &["x-debug"]);
        let rule = rw(&[("x-tier", "api")], &["x-env"]);
        let ops = HeaderOps::merged(&listener, &rule);
        assert!(ops.drops(b"X-Debug") && ops.drops(b"x-env") && ops.drops(b"x-tier"));
        assert!(!ops.drops(b"x-other"));
        let mut out = Vec::new();
        ops.write_h1(&mut out);
        assert_eq!(out, b"x-tier: api\r\n");
        let mut map = HeaderMap::new();
        map.insert("x-env", HeaderValue::from_static("dev"));
        map.insert("x-keep", HeaderValue::from_static("1"));
        ops.apply(&mut map);
        assert!(map.get("x-env").is_none());
        assert_eq!(map["x-tier"], "api");
        assert_eq!(map["x-keep"], "1");
    }

    #[test]
    fn request_ids_are_kept_when_usable_and_fresh_ones_are_unique() {
        let kept = RequestId::for_request(Some(b" abc-123 "));
        assert_eq!(kept.as_bytes(), b"abc-123");
        assert!(!kept.generated);
        let long = [b'a'; 65];
        assert!(RequestId::for_request(Some(&long)).generated);
        assert!(RequestId::for_request(Some(b"a b")).generated);
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_str().len(), 36);
        assert_eq!(a.as_str().matches('-').count(), 4);
        // UUID form: dashes at 8, 13, 18 and 23, lowercase hex elsewhere; one thread's ids
        // share their prefix and count up by one.
        for (i, ch) in a.as_str().char_indices() {
            if [8, 13, 18, 23].contains(&i) {
                assert_eq!(ch, '-', "{}", a.as_str());
            } else {
                assert!(matches!(ch, '0'..='9' | 'a'..='f'), "{}", a.as_str());
            }
        }
        assert_eq!(a.as_str()[..19], b.as_str()[..19]);
        let counter = |id: &RequestId| {
            u64::from_str_radix(&id.as_str()[19..].replace('-', ""), 16).expect("hex counter")
        };
        assert_eq!(counter(&b), counter(&a) + 1);
    }
}
