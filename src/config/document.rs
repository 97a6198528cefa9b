//! Top of a config load: TOML syntax, the root tables, `[runtime]` and `[admin]`; hands
//! listeners and target groups to their readers and the cross-checks to `validate`.
//! Runs on the main thread; everything here lives for one `Config::parse` call.

use std::net::SocketAddr;
use std::path::Path;

use toml_edit::ImDocument;

use super::reader::{table_list, Obj, Sink, OPT, REQ};
use super::{group, listener, validate};
use super::{AdminConfig, Config, ConfigErrors, IoBackend, RuntimeConfig};

/// Most worker threads `runtime.workers` may ask for.
pub const MAX_WORKERS: i64 = 1024;

/// Parses and validates a whole document.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut s = Sink::new(path, text);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let at = e.span().map_or(0, |r| r.start);
            let msg = e.message().trim().replace('\n', "; ");
            s.error(at, format!("invalid TOML: {msg}"));
            return Err(ConfigErrors(s.errors));
        }
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut root = Obj::from_table(doc.as_table(), String::new(), 0);

    let runtime = match root.sub(&mut s, "runtime", OPT) {
        Some(obj) => runtime(&mut s, obj),
        None => RuntimeConfig::default(),
    };
    let (admin, admin_bind) = match root.sub(&mut s, "admin", OPT) {
        Some(o) => admin(&mut s, o),
        None => (None, None),
    };

    let mut groups = Vec::new();
    let mut group_facts = Vec::new();
    if let Some((node, at)) = root.take(&mut s, "target_group", OPT) {
        for (i, (node, at)) in table_list(&mut s, node, "target_group", at)
            .into_iter()
            .enumerate()
        {
            let ctx = format!("target_group[{i}]");
            if let Some(obj) = Obj::from_node(&mut s, node, ctx, at) {
                let (built, facts) = group::read(&mut s, obj, base);
                groups.extend(built);
                group_facts.push(facts);
            }
        }
    }

    let mut listeners = Vec::new();
    let mut listener_facts = Vec::new();
    if let Some((node, at)) = root.take(&mut s, "listener", OPT) {
        for (i, (node, at)) in table_list(&mut s, node, "listener", at)
            .into_iter()
            .enumerate()
        {
            let ctx = format!("listener[{i}]");
            if let Some(obj) = Obj::from_node(&mut s, node, ctx, at) {
                let (built, facts) = listener::read(&mut s, obj, base);
                listeners.extend(built);
                listener_facts.push(facts);
            }
        }
    }
    root.finish(&mut s);

    validate::cross_check(&mut s, &listener_facts, &group_facts, admin_bind);
    if s.errors.is_empty()
        && (listeners.len() != listener_facts.len() || groups.len() != group_facts.len())
    {
        // Every reader records an error when it cannot build; this guards that promise.
        s.error(0, "internal error: a listener or target group was dropped without a reason; please report this");
    }

    if !s.errors.is_empty() {
        let mut errors = s.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(errors));
    }
    for l in &mut listeners {
        l.rules.sort_by_key(|r| r.priority);
    }
    Ok(Config {
        path: path.to_path_buf(),
        runtime,
        admin,
        listeners,
        target_groups: groups,
    })
}

fn runtime(s: &mut Sink, mut o: Obj) -> RuntimeConfig {
    let d = RuntimeConfig::default();
    let workers = o.int(s, "workers", OPT, 0..=MAX_WORKERS).map(|v| v.0);
    let pin = o.bool(s, "pin", OPT);
    let io = o.choice(
        s,
        "io",
        OPT,
        &[
            ("auto", IoBackend::Auto),
            ("uring", IoBackend::Uring),
            ("epoll", IoBackend::Epoll),
        ],
    );
    let drain_timeout = o.duration(s, "drain_timeout", OPT, true).map(|v| v.0);
    let max_connections: Option<usize> = o
        .int(
            s,
            "max_connections",
            OPT,
            1..=super::MAX_MAX_CONNECTIONS as i64,
        )
        .map(|v| v.0);
    let resolver = o.text(s, "resolver", OPT);
    if let Some((r, at)) = &resolver {
        if r != "system" {
            match r.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => o.err(s, *at, "resolver", "port must not be 0"),
                Ok(_) => {}
                Err(_) => o.err(
                    s,
                    *at,
                    "resolver",
                    format!("expected \"system\" or a DNS server as \"ip:port\" (e.g. \"127.0.0.1:53\"), found \"{r}\""),
                ),
            }
        }
    }
    o.finish(s);
    RuntimeConfig {
        workers: workers.unwrap_or(d.workers),
        pin: pin.unwrap_or(d.pin),
        io: io.map_or(d.io, |v| v.0),
        drain_timeout: drain_timeout.unwrap_or(d.drain_timeout),
        resolver: resolver.map_or(d.resolver, |v| v.0),
        max_connections: max_connections.unwrap_or(d.max_connections),
    }
}

/// The admin table, plus its bind address and offset for the clash check.
fn admin(s: &mut Sink, mut o: Obj) -> (Option<AdminConfig>, Option<(SocketAddr, usize)>) {
    let bind = o
        .string(s, "bind", REQ)
        .and_then(|(b, at)| bind_addr(s, &o, "bind", &b, at).map(|a| (a, at)));
    let token = o.text(s, "token", OPT).map(|v| v.0);
    o.finish(s);
    let admin = bind.map(|(bind, _)| AdminConfig { bind, token });
    (admin, bind)
}

/// Parses a bind address "ip:port", recording an error on `o`'s field `key`. Port 0 asks the
/// kernel for a free port (tests, `ringlb demo`); the bound address is logged and shown in /status.
pub(crate) fn bind_addr(
    s: &mut Sink,
    o: &Obj,
    key: &str,
    text: &str,
    at: usize,
) -> Option<SocketAddr> {
    match text.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let msg = match addr_problem(text) {
                AddrProblem::PortOutOfRange(p) => {
                    format!("\"{text}\": port {p} is out of range (0..=65535; 0 picks a free port)")
                }
                _ => format!("\"{text}\" is not a socket address; write \"ip:port\" like \"0.0.0.0:8080\" or \"[::1]:8080\""),
            };
            o.err(s, at, key, msg);
            None
        }
    }
}

/// Why a text that does not parse as `ip:port` does not (for an error message that says so).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AddrProblem {
    /// The port is a number, but over 65535.
    PortOutOfRange(u64),
    /// The part before the port is not an IP address (a host name, most likely).
    HostNotIp,
    /// Anything else (no port, a port that is not a number, ...).
    Other,
}

/// Tells what is wrong with `text` as `ip:port` (`[v6]:port` for IPv6).
pub(crate) fn addr_problem(text: &str) -> AddrProblem {
    let t = text.trim();
    let Some((host, port)) = t.rsplit_once(':') else {
        return AddrProblem::Other;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_is_ip = host.parse::<std::net::IpAddr>().is_ok();
    match port.parse::<u64>() {
        Ok(p) if p > u64::from(u16::MAX) && host_is_ip => AddrProblem::PortOutOfRange(p),
        _ if !host_is_ip && !host.is_empty() && !host.contains(':') => AddrProblem::HostNotIp,
        _ => AddrProblem::Other,
    }
}
