//! Checks that span several tables: unique names, references to target groups, protocol
//! pairing of listeners and groups, and clashing bind addresses. Runs on the main thread at
//! the end of `Config::parse`, over the facts the table readers gathered (so a reference is
//! checked even when the table it sits in had other errors).

use std::net::SocketAddr;

use super::listener::binds_conflict;
use super::reader::{Obj, Sink, OPT};
use super::{GroupProtocol, ListenerProtocol};

/// Longest listener or target group name (names appear in admin URLs and metrics labels).
pub const MAX_NAME_LEN: usize = 64;

/// What cross-checks need to know about one listener.
pub(crate) struct ListenerFacts {
    pub(crate) ctx: String,
    pub(crate) name: Option<(String, usize)>,
    /// `None` when the protocol field was invalid.
    pub(crate) protocol: Option<ListenerProtocol>,
    pub(crate) bind: Option<(SocketAddr, usize)>,
    pub(crate) target_group: Option<(String, usize)>,
    pub(crate) rules: Vec<RuleFacts>,
}

/// What cross-checks need to know about one rule.
pub(crate) struct RuleFacts {
    pub(crate) ctx: String,
    pub(crate) priority: Option<(u32, usize)>,
    /// Target groups its forward action names, with their offsets.
    pub(crate) forwards: Vec<(String, usize)>,
}

/// What cross-checks need to know about one target group.
pub(crate) struct GroupFacts {
    pub(crate) ctx: String,
    pub(crate) name: Option<(String, usize)>,
    /// `None` when the protocol field was invalid.
    pub(crate) protocol: Option<GroupProtocol>,
}

/// Records an error unless `name` is 1..=64 of `[A-Za-z0-9_.-]`; returns whether it is valid.
pub(crate) fn check_name(s: &mut Sink, o: &Obj, key: &str, name: &str, at: usize) -> bool {
    let ok = name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        o.err(
            s,
            at,
            key,
            format!("\"{name}\" is not a valid name: use at most {MAX_NAME_LEN} letters, digits, '_', '-' or '.'"),
        );
    }
    ok
}

/// The optional `congestion_control` of a listener or target group, checked against this host's
/// kernel (so `ringlb check` on the host that will run it catches a missing module).
pub(crate) fn congestion_control(s: &mut Sink, o: &mut Obj) -> Option<String> {
    let (name, at) = o.string(s, "congestion_control", OPT)?;
    match crate::sockopt::probe_congestion_control(&name) {
        Ok(()) => Some(name),
        Err(why) => {
            o.err(s, at, "congestion_control", why);
            None
        }
    }
}

fn group_protocol_name(p: GroupProtocol) -> &'static str {
    match p {
        GroupProtocol::Http => "http",
        GroupProtocol::Https => "https",
        GroupProtocol::Tcp => "tcp",
    }
}

/// Runs every cross-table check, recording errors in `s`.
pub(crate) fn cross_check(
    s: &mut Sink,
    listeners: &[ListenerFacts],
    groups: &[GroupFacts],
    admin_bind: Option<(SocketAddr, usize)>,
) {
    duplicate_names(s, groups.iter().map(|g| (&g.ctx, &g.name)), "target group");
    duplicate_names(s, listeners.iter().map(|l| (&l.ctx, &l.name)), "listener");

    let defined: Vec<&str> = groups
        .iter()
        .filter_map(|g| g.name.as_ref().map(|n| n.0.as_str()))
        .collect();
    for l in listeners {
        let mut refs: Vec<(&str, &(String, usize))> = Vec::new();
        if let Some(tg) = &l.target_group {
            refs.push((l.ctx.as_str(), tg));
        }
        for r in &l.rules {
            refs.extend(r.forwards.iter().map(|f| (r.ctx.as_str(), f)));
        }
        for (ctx, (name, at)) in refs {
            let Some(g) = groups
                .iter()
                .find(|g| g.name.as_ref().is_some_and(|n| &n.0 == name))
            else {
                let hint = if defined.is_empty() {
                    "no [[target_group]] is defined".to_string()
                } else {
                    format!("defined: {}", defined.join(", "))
                };
                s.error(
                    *at,
                    format!("{ctx}: target_group '{name}' is not defined ({hint})"),
                );
                continue;
            };
            let (Some(lp), Some(gp)) = (l.protocol, g.protocol) else {
                continue;
            };
            let gname = group_protocol_name(gp);
            if lp == ListenerProtocol::Tcp && gp != GroupProtocol::Tcp {
                s.error(
                    *at,
                    format!("{ctx}: target_group '{name}' has protocol {gname}; a tcp listener forwards only to tcp target groups"),
                );
            } else if lp != ListenerProtocol::Tcp && gp == GroupProtocol::Tcp {
                s.error(
                    *at,
                    format!("{ctx}: target_group '{name}' has protocol tcp; an http/https listener forwards only to http or https target groups"),
                );
            }
        }
    }

    let mut binds: Vec<(String, SocketAddr, usize)> = Vec::new();
    if let Some((a, at)) = admin_bind {
        binds.push(("admin".to_string(), a, at));
    }
    binds.extend(
        listeners
            .iter()
            .filter_map(|l| l.bind.map(|(a, at)| (l.ctx.clone(), a, at))),
    );
    for (i, (ctx, a, at)) in binds.iter().enumerate() {
        if let Some((other, b, bat)) = binds[..i].iter().find(|(_, b, _)| binds_conflict(*a, *b)) {
            let line = s.line_of(*bat);
            s.error(
                *at,
                format!("{ctx}: bind: {a} clashes with {b} of {other} (line {line}); each listener needs its own address"),
            );
        }
    }
}

fn duplicate_names<'a>(
    s: &mut Sink,
    items: impl Iterator<Item = (&'a String, &'a Option<(String, usize)>)>,
    what: &str,
) {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (ctx, name) in items {
        let Some((n, at)) = name else { continue };
        if let Some(&(_, first)) = seen.iter().find(|(m, _)| *m == n) {
            let line = s.line_of(first);
            s.error(
                *at,
                format!("{ctx}: name '{n}' is already used by another {what} (line {line})"),
            );
        } else {
            seen.push((n, *at));
        }
    }
}
