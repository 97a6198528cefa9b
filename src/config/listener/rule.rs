//! Reads one `[[listener.rule]]`: its priority, conditions and single action (forward,
//! redirect, fixed_response). Runs on the main thread during `Config::parse`; returns the
//! built rule (when complete) plus the facts `validate` needs (priority, forwarded groups).

use super::cidrs;
use crate::config::reader::{Node, Obj, Sink, OPT, REQ};
use crate::config::units::{MAX_STATUS, MIN_STATUS};
use crate::config::validate::RuleFacts;
use crate::config::{Action, Conditions, FixedResponse, Redirect, RuleConfig, WeightedGroup};

/// Highest rule priority.
pub const MAX_PRIORITY: i64 = u32::MAX as i64;
/// Most values one condition may list.
pub const MAX_CONDITION_VALUES: usize = 100;
/// Largest weight of a target group in a weighted forward.
pub const MAX_WEIGHT: i64 = 1000;
/// Largest fixed_response body, served from memory by every worker.
pub const MAX_FIXED_BODY_BYTES: usize = 64 * 1024;
/// Statuses a redirect may use.
pub const REDIRECT_STATUSES: [u16; 4] = [301, 302, 307, 308];

const ACTIONS: [&str; 3] = ["forward", "redirect", "fixed_response"];

pub(crate) fn read(s: &mut Sink, mut o: Obj) -> (Option<RuleConfig>, RuleFacts) {
    let priority = o.int::<u32>(s, "priority", REQ, 1..=MAX_PRIORITY);
    if let Some((p, _)) = priority {
        o.ctx = format!("{} (priority {p})", o.ctx);
    }
    let conditions = conditions(s, &mut o);

    let present: Vec<&str> = ACTIONS.iter().copied().filter(|a| o.has(a)).collect();
    if present.is_empty() {
        o.err_here(
            s,
            "needs exactly one action: forward = \"group\", redirect = { .. } or fixed_response = { .. }",
        );
    }
    let mut forwards = Vec::new();
    let mut action = None;
    if let Some((node, at)) = o.take(s, "forward", OPT) {
        action = forward(s, &o, node, at, &mut forwards).map(Action::Forward);
    }
    if let Some(r) = o.sub(s, "redirect", OPT) {
        action = redirect(s, r).map(Action::Redirect);
    }
    if let Some(f) = o.sub(s, "fixed_response", OPT) {
        action = fixed_response(s, f).map(Action::FixedResponse);
    }
    if present.len() > 1 {
        o.err_here(
            s,
            format!(
                "has {} actions ({}); a rule takes exactly one",
                present.len(),
                present.join(", ")
            ),
        );
    }
    let request_headers = crate::config::traffic::rewrite(s, &mut o, "request_headers");
    let response_headers = crate::config::traffic::rewrite(s, &mut o, "response_headers");
    if !matches!(action, Some(Action::Forward(_)) | None) {
        for key in ["request_headers", "response_headers"] {
            if let Some(at) = o.key_at(key) {
                o.err(
                    s,
                    at,
                    key,
                    "only forward rules rewrite headers (a redirect or fixed_response is ringlb's own answer)",
                );
            }
        }
    }
    let facts = RuleFacts {
        ctx: o.ctx.clone(),
        priority,
        forwards,
    };
    o.finish(s);
    let built = (|| {
        if present.len() != 1 {
            return None;
        }
        Some(RuleConfig {
            priority: priority?.0,
            conditions: conditions?,
            action: action?,
            request_headers: request_headers.unwrap_or_default(),
            response_headers: response_headers.unwrap_or_default(),
        })
    })();
    (built, facts)
}

/// Records an error for each pair of rules sharing a priority.
pub(crate) fn check_priorities(s: &mut Sink, listener: &Obj, rules: &[RuleFacts]) {
    for (i, r) in rules.iter().enumerate() {
        let Some((p, at)) = r.priority else { continue };
        if rules[..i]
            .iter()
            .any(|q| q.priority.map(|q| q.0) == Some(p))
        {
            s.error(
                at,
                format!(
                    "{}: rule priority {p} is used twice; priorities must be unique within a listener",
                    listener.ctx
                ),
            );
        }
    }
}

/// True when `v` holds a control character (CR/LF would split a response header).
fn has_ctl(v: &str) -> bool {
    v.chars().any(char::is_control)
}

fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn conditions(s: &mut Sink, o: &mut Obj) -> Option<Conditions> {
    let mut ok = true;
    let mut list =
        |s: &mut Sink, o: &mut Obj, key: &'static str, check: fn(&str) -> Option<&'static str>| {
            let items = o.strings(s, key, OPT).unwrap_or_default();
            let mut out = Vec::with_capacity(items.len());
            for (i, (v, at)) in items.into_iter().enumerate() {
                match check(&v) {
                    Some(problem) => {
                        o.err(s, at, &format!("{key}[{i}]"), format!("\"{v}\" {problem}"));
                        ok = false;
                    }
                    None => out.push(v),
                }
            }
            out
        };
    let host = list(s, o, "host", |v| {
        let bad = v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.*?_:[]".contains(&b));
        bad.then_some("is not a host name pattern (letters, digits, '-', '.', '*', '?')")
    });
    let path = list(s, o, "path", |v| {
        let bad = !(v.starts_with('/') || v.starts_with('*')) || has_ctl(v) || v.contains(' ');
        bad.then_some("is not a path pattern; it must start with '/' (or '*') and hold no spaces")
    });
    let method = list(s, o, "method", |v| {
        (!is_token(v)).then_some("is not an HTTP method (a token such as GET or POST)")
    });
    let client_cert_subject = list(s, o, "client_cert_subject", |v| {
        (v.is_empty() || has_ctl(v)).then_some(
            "is not a subject pattern (e.g. \"CN=admin*\", '*' any run, '?' one character)",
        )
    });
    let mut pairs = |s: &mut Sink, o: &mut Obj, key: &'static str, header: bool| {
        let mut out = Vec::new();
        for (k, v, at) in o.string_map(s, key, OPT).unwrap_or_default() {
            if header && crate::http::parse::is_client_cert_name(k.as_bytes()) {
                // What a client sends under these names is dropped, never trusted.
                o.err(
                    s,
                    at,
                    &format!("{key}.{k}"),
                    "names a field only ringlb sets (a client's is dropped); match the verified certificate with client_cert_subject",
                );
                ok = false;
            } else if (header && !is_token(&k))
                || (!header && k.is_empty())
                || has_ctl(&k)
                || has_ctl(&v)
            {
                o.err(
                    s,
                    at,
                    &format!("{key}.{k}"),
                    "is not a valid name/value pair",
                );
                ok = false;
            } else {
                out.push((k, v));
            }
        }
        out
    };
    let header = pairs(s, o, "header", true);
    let query = pairs(s, o, "query", false);
    let source_ip = cidrs(s, o, "source_ip");
    let c = Conditions {
        host,
        path,
        method,
        header,
        query,
        source_ip,
        client_cert_subject,
    };
    for (key, n) in [
        ("host", c.host.len()),
        ("path", c.path.len()),
        ("method", c.method.len()),
        ("source_ip", c.source_ip.len()),
        ("client_cert_subject", c.client_cert_subject.len()),
    ] {
        if n > MAX_CONDITION_VALUES {
            o.err_here(s, format!("{key}: more than {MAX_CONDITION_VALUES} values"));
            ok = false;
        }
    }
    let empty = c.host.is_empty()
        && c.path.is_empty()
        && c.method.is_empty()
        && c.header.is_empty()
        && c.query.is_empty()
        && c.source_ip.is_empty()
        && c.client_cert_subject.is_empty();
    if empty && ok {
        o.err_here(
            s,
            "has no condition; add host, path, method, header, query, source_ip or client_cert_subject (unmatched requests already go to the listener's target_group)",
        );
        ok = false;
    }
    ok.then_some(c)
}

fn forward(
    s: &mut Sink,
    o: &Obj,
    node: Node,
    at: usize,
    facts: &mut Vec<(String, usize)>,
) -> Option<Vec<WeightedGroup>> {
    if let Node::Value(toml_edit::Value::String(v)) = node {
        let name = v.value().clone();
        if name.trim().is_empty() {
            o.err(s, at, "forward", "must name a target group");
            return None;
        }
        facts.push((name.clone(), at));
        return Some(vec![WeightedGroup {
            target_group: name,
            weight: 1,
        }]);
    }
    let Node::Value(toml_edit::Value::Array(items)) = node else {
        o.err(
            s,
            at,
            "forward",
            "expected a target group name or an array of { target_group = \"..\", weight = N }",
        );
        return None;
    };
    if items.is_empty() {
        o.err(
            s,
            at,
            "forward",
            "list at least one { target_group = \"..\", weight = N }",
        );
        return None;
    }
    let mut ok = true;
    let mut out: Vec<WeightedGroup> = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let at = v.span().map_or(at, |r| r.start);
        let ctx = format!("{}: forward[{i}]", o.ctx);
        let Some(mut g) = Obj::from_node(s, Node::Value(v), ctx, at) else {
            ok = false;
            continue;
        };
        let name = g.text(s, "target_group", REQ);
        let weight = g.int::<u32>(s, "weight", OPT, 1..=MAX_WEIGHT);
        let weight_bad = g.has("weight") && weight.is_none();
        g.finish(s);
        let Some((name, nat)) = name else {
            ok = false;
            continue;
        };
        if out.iter().any(|w| w.target_group == name) {
            g.err(s, nat, "target_group", format!("'{name}' is listed twice"));
            ok = false;
        }
        facts.push((name.clone(), nat));
        ok &= !weight_bad;
        out.push(WeightedGroup {
            target_group: name,
            weight: weight.map_or(1, |w| w.0),
        });
    }
    ok.then_some(out)
}

fn redirect(s: &mut Sink, mut o: Obj) -> Option<Redirect> {
    let mut ok = true;
    let protocol = o.choice(s, "protocol", OPT, &[("http", "http"), ("https", "https")]);
    ok &= protocol.is_some() || !o.has("protocol");
    let mut part =
        |s: &mut Sink, o: &mut Obj, key: &'static str, check: fn(&str) -> bool, why: &str| {
            let (v, at) = o.string(s, key, OPT)?;
            if !check(&v) {
                o.err(s, at, key, format!("\"{v}\" {why}"));
                ok = false;
                return None;
            }
            Some(v)
        };
    let host = part(
        s,
        &mut o,
        "host",
        |v| !v.is_empty() && !v.contains(['/', ' ']) && !has_ctl(v),
        "is not a host name",
    );
    let path = part(
        s,
        &mut o,
        "path",
        |v| v.starts_with('/') && !v.contains(' ') && !has_ctl(v),
        "must start with '/' and hold no spaces",
    );
    let query = part(
        s,
        &mut o,
        "query",
        |v| !v.replace("#{", "").contains([' ', '#']) && !has_ctl(v),
        "must hold no spaces or '#' (other than in placeholders such as #{query})",
    );
    let port = o.int::<u16>(s, "port", OPT, 1..=65535);
    ok &= port.is_some() || !o.has("port");
    let status = match o.int::<u16>(s, "status", OPT, 0..=999) {
        Some((st, at)) if !REDIRECT_STATUSES.contains(&st) => {
            o.err(
                s,
                at,
                "status",
                format!("{st} is not a redirect status; use 301, 302, 307 or 308"),
            );
            ok = false;
            st
        }
        Some((st, _)) => st,
        None => {
            ok &= !o.has("status");
            301
        }
    };
    let r = Redirect {
        protocol: protocol.map(|p| p.0.to_string()),
        host,
        port: port.map(|p| p.0),
        path,
        query,
        status,
    };
    let changes = ["protocol", "host", "port", "path", "query"]
        .iter()
        .any(|k| o.has(k));
    if !changes {
        o.err_here(
            s,
            "changes nothing and would redirect to itself; set protocol, host, port, path or query",
        );
        ok = false;
    }
    o.finish(s);
    ok.then_some(r)
}

fn fixed_response(s: &mut Sink, mut o: Obj) -> Option<FixedResponse> {
    let status = o.int::<u16>(
        s,
        "status",
        REQ,
        i64::from(MIN_STATUS)..=i64::from(MAX_STATUS),
    );
    let body = o.string(s, "body", OPT);
    if let Some((b, at)) = &body {
        if b.len() > MAX_FIXED_BODY_BYTES {
            let msg = format!("is {} bytes; at most {MAX_FIXED_BODY_BYTES}", b.len());
            o.err(s, *at, "body", msg);
        }
    }
    let content_type = o.text(s, "content_type", OPT);
    if let Some((c, at)) = &content_type {
        if has_ctl(c) {
            o.err(s, *at, "content_type", "must not hold control characters");
        }
    }
    let body_ok = body
        .as_ref()
        .is_none_or(|b| b.0.len() <= MAX_FIXED_BODY_BYTES)
        && (body.is_some() || !o.has("body"));
    let ct_ok = content_type.as_ref().is_none_or(|c| !has_ctl(&c.0))
        && (content_type.is_some() || !o.has("content_type"));
    o.finish(s);
    if !(body_ok && ct_ok) {
        return None;
    }
    Some(FixedResponse {
        status: status?.0,
        body: body.map_or_else(String::new, |b| b.0),
        content_type: content_type.map_or_else(|| "text/plain".to_string(), |c| c.0),
    })
}
