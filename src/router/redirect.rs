//! Builds the `Location` of a redirect rule from the request: every part the rule does not set
//! is kept from the request (as ALB's `#{host}`, `#{path}`, ... defaults), and a default port
//! (80 for http, 443 for https) is left out. Set parts may use ALB's placeholders `#{protocol}`,
//! `#{host}`, `#{port}`, `#{path}` (without its leading `/`) and `#{query}`.
//!
//! Pure functions over the request's bytes, run by the worker serving the request.

use super::pattern::{host_port, strip_port};
use crate::config::Redirect;

/// The parts of a request a redirect may keep.
pub struct RequestParts<'a> {
    /// "http" or "https": how the client reached the listener.
    pub scheme: &'static str,
    /// The Host value (with its port, if any); `None` for an HTTP/1.0 request without one.
    pub host: Option<&'a [u8]>,
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    /// The listener's port, used when the Host value names none and no fallback applies.
    pub listener_port: u16,
    /// The listener's address as text, used as host when the request names none.
    pub listener_host: &'a str,
}

/// The default port of a scheme.
pub fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// The `Location` value for `rule` applied to `req`.
pub fn location(rule: &Redirect, req: &RequestParts<'_>) -> String {
    let scheme = rule.protocol.as_deref().unwrap_or(req.scheme);
    let req_host = req.host.map(strip_port).filter(|h| !h.is_empty());
    let orig_host = match req_host {
        Some(h) => String::from_utf8_lossy(h).into_owned(),
        None => req.listener_host.to_string(),
    };
    let orig_port = req
        .host
        .and_then(host_port)
        .unwrap_or(if req.host.is_some() {
            default_port(req.scheme)
        } else {
            req.listener_port
        });
    let fill = |v: &str| -> String {
        if !v.contains("#{") {
            return v.to_string();
        }
        let path = String::from_utf8_lossy(req.path);
        v.replace("#{protocol}", req.scheme)
            .replace("#{host}", &orig_host)
            .replace("#{port}", itoa::Buffer::new().format(orig_port))
            .replace("#{path}", path.strip_prefix('/').unwrap_or(&path))
            .replace(
                "#{query}",
                &String::from_utf8_lossy(req.query.unwrap_or(b"")),
            )
    };
    let host: String = match &rule.host {
        Some(h) => fill(h),
        None => orig_host.clone(),
    };
    let port = match rule.port {
        Some(p) => p,
        // A scheme change without a port goes to the new scheme's default port: keeping
        // `:80` on an https URL is never what an http → https redirect means.
        None if scheme != req.scheme => default_port(scheme),
        None => orig_port,
    };
    let path: std::borrow::Cow<'_, [u8]> = match &rule.path {
        Some(p) => fill(p).into_bytes().into(),
        None if req.path.is_empty() => b"/"[..].into(),
        None => req.path.into(),
    };
    let query: Option<std::borrow::Cow<'_, [u8]>> = match &rule.query {
        Some(q) => Some(fill(q).into_bytes().into()),
        None => req.query.map(Into::into),
    };
    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(&host);
    if port != default_port(scheme) {
        out.push(':');
        out.push_str(itoa::Buffer::new().format(port));
    }
    out.push_str(&String::from_utf8_lossy(&path));
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(&String::from_utf8_lossy(&q));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            protocol: protocol.map(str::to_string),
            host: None,
            port,
            path: None,
            query: None,
            status: 301,
        }
    }

    fn req<'a>(
        host: Option<&'a [u8]>,
        path: &'a [u8],
        query: Option<&'a [u8]>,
    ) -> RequestParts<'a> {
        RequestParts {
            scheme: "http",
            host,
            path,
            query,
            listener_port: 8080,
            listener_host: "127.0.0.1",
        }
    }

    #[test]
    fn http_to_https_keeps_host_path_query_and_drops_default_port() {
        let r = rule(Some("https"), Some(443));
        let l = location(&r, &req(Some(b"shop.example:80"), b"/cart", Some(b"id=7")));
        assert_eq!(l, "https://shop.example/cart?id=7");
        // No port given: the new scheme's default.
        let r = rule(Some("https"), None);
        let l = location(&r, &req(Some(b"shop.example:8080"), b"/", None));
        assert_eq!(l, "https://shop.example/");
    }

    #[test]
    fn overridden_parts_replace_the_request_parts() {
        let r = Redirect {
            protocol: None,
            host: Some("new.example".into()),
            port: Some(8443),
            path: Some("/moved".into()),
            query: Some("a=1".into()),
            status: 308,
        };
        let l = location(&r, &req(Some(b"old.example"), b"/x", Some(b"b=2")));
        assert_eq!(l, "http://new.example:8443/moved?a=1");
    }

    #[test]
    fn placeholders_take_the_request_parts() {
        let r = Redirect {
            protocol: Some("https".into()),
            host: Some("www.#{host}".into()),
            port: None,
            path: Some("/v2/#{path}".into()),
            query: Some("#{query}&from=#{protocol}-#{port}".into()),
            status: 301,
        };
        let l = location(&r, &req(Some(b"example.com:8080"), b"/a/b", Some(b"x=1")));
        assert_eq!(l, "https://www.example.com/v2/a/b?x=1&from=http-8080");
    }

    #[test]
    fn a_request_port_is_kept_when_the_scheme_stays() {
        let r = Redirect {
            path: Some("/new".into()),
            ..rule(None, None)
        };
        assert_eq!(
            location(&r, &req(Some(b"h.example:8080"), b"/old", None)),
            "http://h.example:8080/new"
        );
        assert_eq!(
            location(&r, &req(Some(b"h.example"), b"/old", None)),
            "http://h.example/new"
        );
        assert_eq!(
            location(&r, &req(None, b"/old", None)),
            "http://127.0.0.1:8080/new"
        );
    }
}
