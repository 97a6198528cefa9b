//! Reads the traffic-management settings of DESIGN §9: header rewriting (`request_headers`,
//! `response_headers` on listeners and rules), `request_id`, and a target group's `stickiness`
//! and `retry_on`. Runs on the main thread during `Config::parse`.

use super::reader::{Obj, Sink, OPT};
use super::{HeaderRewrite, RetryOn, Stickiness};

/// Most fields one `set` or `remove` may name.
pub const MAX_REWRITES: usize = 64;
/// Longest value a rewrite may set.
pub const MAX_REWRITE_VALUE: usize = 4096;
/// Longest `request_id` field name and `app_cookie` cookie name.
pub const MAX_NAME: usize = 64;
/// The lb_cookie's name (ALB calls its own AWSALB).
pub const LB_COOKIE: &str = "RINGLB";
/// The companion cookie ringlb sets beside an application's cookie (ALB: AWSALBAPP).
pub const APP_COMPANION_COOKIE: &str = "RINGLBAPP";
/// Default `request_id` field.
pub const DEFAULT_REQUEST_ID: &str = "x-request-id";
/// Longest stickiness duration (ALB: 7 days).
pub const MAX_STICKY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Fields a rewrite may not touch: they frame the message or belong to the connection, and
/// ringlb sets them itself.
pub fn reserved(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "host"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
    ) || crate::http::parse::is_client_cert_name(name.as_bytes())
}

pub(crate) fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `request_headers` / `response_headers`: `{ set = { name = "value" }, remove = ["name"] }`.
pub(crate) fn rewrite(s: &mut Sink, o: &mut Obj, key: &'static str) -> Option<HeaderRewrite> {
    let mut r = o.sub(s, key, OPT)?;
    let mut ok = true;
    let mut out = HeaderRewrite::default();
    let name_ok = |s: &mut Sink, r: &Obj, what: &str, name: &str, at: usize| -> bool {
        let lower = name.to_ascii_lowercase();
        if !is_token(name) {
            r.err(s, at, what, format!("\"{name}\" is not a header name"));
            false
        } else if crate::http::parse::is_client_cert_name(lower.as_bytes()) {
            r.err(
                s,
                at,
                what,
                format!("\"{name}\" carries the verified client certificate (mutual TLS); only ringlb sets it"),
            );
            false
        } else if reserved(&lower) || lower.starts_with(':') {
            r.err(
                s,
                at,
                what,
                format!("\"{name}\" frames the message or belongs to the connection; ringlb sets it itself and it cannot be rewritten"),
            );
            false
        } else {
            true
        }
    };
    if let Some(set) = r.string_map(s, "set", OPT) {
        if set.len() > MAX_REWRITES {
            r.err_here(s, format!("set names more than {MAX_REWRITES} fields"));
            ok = false;
        }
        for (name, value, at) in set {
            let key = format!("set.{name}");
            if !name_ok(s, &r, &key, &name, at) {
                ok = false;
                continue;
            }
            if value.len() > MAX_REWRITE_VALUE
                || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                r.err(
                    s,
                    at,
                    &key,
                    format!("value must be at most {MAX_REWRITE_VALUE} bytes without control characters"),
                );
                ok = false;
                continue;
            }
            out.set
                .push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    } else {
        ok &= !r.has("set");
    }
    if let Some(remove) = r.strings(s, "remove", OPT) {
        if remove.len() > MAX_REWRITES {
            r.err_here(s, format!("remove names more than {MAX_REWRITES} fields"));
            ok = false;
        }
        for (i, (name, at)) in remove.into_iter().enumerate() {
            if !name_ok(s, &r, &format!("remove[{i}]"), &name, at) {
                ok = false;
                continue;
            }
            out.remove.push(name.to_ascii_lowercase());
        }
    } else {
        ok &= !r.has("remove");
    }
    r.finish(s);
    ok.then_some(out)
}

/// `request_id = "x-request-id"` (the default) or `""` (off).
pub(crate) fn request_id(s: &mut Sink, o: &mut Obj) -> Option<Option<String>> {
    let Some((name, at)) = o.string(s, "request_id", OPT) else {
        return (!o.has("request_id")).then(|| Some(DEFAULT_REQUEST_ID.to_string()));
    };
    if name.is_empty() {
        return Some(None);
    }
    let lower = name.to_ascii_lowercase();
    if !is_token(&name) || name.len() > MAX_NAME || reserved(&lower) {
        o.err(
            s,
            at,
            "request_id",
            format!("\"{name}\" is not a usable header name (like \"x-request-id\"; \"\" turns request ids off)"),
        );
        return None;
    }
    Some(Some(lower))
}

/// `stickiness = { type = "lb_cookie", duration = "1h" }` or
/// `{ type = "app_cookie", cookie = "SESSIONID", duration = "1h" }`.
pub(crate) fn stickiness(s: &mut Sink, o: &mut Obj) -> Option<Option<Stickiness>> {
    let Some(mut t) = o.sub(s, "stickiness", OPT) else {
        return (!o.has("stickiness")).then_some(None);
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Lb,
        App,
    }
    let kind = t.choice(
        s,
        "type",
        super::reader::REQ,
        &[("lb_cookie", Kind::Lb), ("app_cookie", Kind::App)],
    );
    let duration = t.duration(s, "duration", OPT, false);
    let mut ok = duration.is_some() || !t.has("duration");
    let d = duration.map_or(std::time::Duration::from_secs(86_400), |d| d.0);
    if d > MAX_STICKY {
        let at = duration.map_or(t.at, |d| d.1);
        t.err(s, at, "duration", "must be at most 7d");
        ok = false;
    }
    let cookie = t.text(s, "cookie", OPT);
    let built = match kind {
        Some((Kind::Lb, _)) => {
            if let Some((_, at)) = &cookie {
                t.err(
                    s,
                    *at,
                    "cookie",
                    format!("lb_cookie stickiness uses ringlb's own cookie ({LB_COOKIE}); cookie names the application's, for type = \"app_cookie\""),
                );
                ok = false;
            }
            Some(Stickiness::LbCookie { duration: d })
        }
        Some((Kind::App, _)) => match cookie {
            Some((c, at)) => {
                if !is_token(&c)
                    || c.len() > MAX_NAME
                    || c == LB_COOKIE
                    || c == APP_COMPANION_COOKIE
                {
                    t.err(
                        s,
                        at,
                        "cookie",
                        format!("\"{c}\" is not a usable cookie name"),
                    );
                    ok = false;
                }
                Some(Stickiness::AppCookie {
                    cookie: c,
                    duration: d,
                })
            }
            None => {
                t.err_here(
                    s,
                    "app_cookie stickiness needs cookie = \"<the application's cookie name>\"",
                );
                None
            }
        },
        None => None,
    };
    t.finish(s);
    if ok {
        built.map(Some)
    } else {
        None
    }
}

/// `retry_on = ["connect-failure", "reset", "timeout"]`.
pub(crate) fn retry_on(s: &mut Sink, o: &mut Obj) -> Option<RetryOn> {
    let Some(items) = o.strings(s, "retry_on", OPT) else {
        return (!o.has("retry_on")).then(RetryOn::default);
    };
    let mut r = RetryOn {
        connect_failure: false,
        reset: false,
        timeout: false,
    };
    let mut ok = true;
    for (i, (v, at)) in items.into_iter().enumerate() {
        match v.as_str() {
            "connect-failure" => r.connect_failure = true,
            "reset" => r.reset = true,
            "timeout" => r.timeout = true,
            other => {
                o.err(
                    s,
                    at,
                    &format!("retry_on[{i}]"),
                    format!("expected one of \"connect-failure\", \"reset\", \"timeout\", found \"{other}\""),
                );
                ok = false;
            }
        }
    }
    ok.then_some(r)
}
