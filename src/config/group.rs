//! Reads one `[[target_group]]` table: its targets (static or DNS), balancing, upstream TLS,
//! health check and upstream timeouts. Runs on the main thread during `Config::parse`;
//! returns the built group (when complete) plus the facts `validate` needs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml_edit::Value;

use super::listener::{check_readable, resolve};
use super::reader::{Node, Obj, Sink, OPT, REQ};
use super::validate::{check_name, congestion_control, GroupFacts};
use super::{
    Algorithm, GroupProtocol, GroupTls, HealthCheckConfig, HealthProtocol, Matcher,
    ProtocolVersion, ProxyProtocol, TargetGroupConfig, TargetSpec,
};

/// Most targets one group may list in the file (more can be registered through the admin API).
pub const MAX_TARGETS: usize = 10_000;
/// Largest target weight.
pub const MAX_WEIGHT: i64 = 1000;
/// Most retries of a failed connect on other targets.
pub const MAX_RETRIES: i64 = 10;
/// Largest `passive_failures`.
pub const MAX_PASSIVE_FAILURES: i64 = 1000;
/// Health-check thresholds run 1..=MAX_THRESHOLD.
pub const MAX_THRESHOLD: i64 = 10;
/// Largest `max_idle_per_target`.
pub const MAX_IDLE_PER_TARGET: i64 = 100_000;
/// Default re-resolution period of a `dns` target.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(10);
/// Defaults of the optional group fields (DESIGN §5 and the documented extensions).
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_PASSIVE_FAILURES: u32 = 5;
pub const DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_MAX_IDLE_PER_TARGET: usize = 256;
/// Defaults of the health check fields.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
/// Longest `slow_start`.
pub const MAX_SLOW_START: Duration = Duration::from_secs(15 * 60);
/// Largest `max_connections`.
pub const MAX_CONNECTIONS: i64 = 1_000_000;
/// Default `queue_timeout`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest DNS name.
const MAX_HOST_LEN: usize = 253;

pub(crate) fn read(
    s: &mut Sink,
    mut o: Obj,
    base: &Path,
) -> (Option<TargetGroupConfig>, GroupFacts) {
    let name = o.text(s, "name", REQ);
    if let Some((n, at)) = &name {
        if check_name(s, &o, "name", n, *at) {
            o.ctx = format!("target_group '{n}'");
        }
    }
    let protocol = o.choice(
        s,
        "protocol",
        OPT,
        &[
            ("http", GroupProtocol::Http),
            ("https", GroupProtocol::Https),
            ("tcp", GroupProtocol::Tcp),
        ],
    );
    let proto_ok = protocol.is_some() || !o.has("protocol");
    let proto = protocol.map_or(GroupProtocol::Http, |p| p.0);
    let version = o.choice(
        s,
        "protocol_version",
        OPT,
        &[
            ("http1", ProtocolVersion::Http1),
            ("http2", ProtocolVersion::Http2),
            ("grpc", ProtocolVersion::Grpc),
        ],
    );
    let mut version_ok = version.is_some() || !o.has("protocol_version");
    if let Some((v, at)) = version {
        if v.is_h2() && proto == GroupProtocol::Tcp {
            o.err(
                s,
                at,
                "protocol_version",
                "tcp target groups relay bytes; protocol_version applies to http and https groups",
            );
            version_ok = false;
        }
    }
    let algorithm = o.choice(
        s,
        "algorithm",
        OPT,
        &[
            ("round_robin", Algorithm::RoundRobin),
            ("least_outstanding", Algorithm::LeastOutstanding),
            ("power_of_two", Algorithm::PowerOfTwo),
            ("source_hash", Algorithm::SourceHash),
        ],
    );
    // Optional fields that fail record an error (so no Config comes back) and fall back to
    // their defaults here; `ok` only tracks what makes the group unusable for cross-checks.
    let mut ok = version_ok;
    let targets = targets(s, &mut o);
    let retries = o.int(s, "retries", OPT, 0..=MAX_RETRIES);
    let fail_open = o.bool(s, "fail_open", OPT);
    let passive = o.int(s, "passive_failures", OPT, 0..=MAX_PASSIVE_FAILURES);
    let dereg = o.duration(s, "deregistration_delay", OPT, true);
    let proxy = o.choice(
        s,
        "proxy_protocol",
        OPT,
        &[
            ("off", ProxyProtocol::Off),
            ("v1", ProxyProtocol::V1),
            ("v2", ProxyProtocol::V2),
        ],
    );
    if let Some((p, at)) = proxy {
        if p != ProxyProtocol::Off && proto != GroupProtocol::Tcp {
            o.err(
                s,
                at,
                "proxy_protocol",
                "only tcp target groups send a PROXY header; http groups get X-Forwarded-For instead",
            );
            ok = false;
        }
    }
    let tls = match o.take(s, "tls", OPT) {
        Some((node, at)) => {
            if proto != GroupProtocol::Https {
                o.err(
                    s,
                    at,
                    "tls",
                    "only https target groups take TLS settings; set protocol = \"https\" or remove [target_group.tls]",
                );
                ok = false;
            }
            let t = Obj::from_node(s, node, format!("{}: tls", o.ctx), at)
                .and_then(|t| group_tls(s, t, base));
            ok &= t.is_some();
            t
        }
        None => None,
    };
    let health = match o.take(s, "health_check", OPT) {
        Some((node, at)) => {
            let h = Obj::from_node(s, node, format!("{}: health_check", o.ctx), at)
                .and_then(|h| health_check(s, h, proto, version.map(|v| v.0)));
            ok &= h.is_some();
            h
        }
        None => None,
    };
    let connect = o.duration(s, "connect_timeout", OPT, false);
    let response = o.duration(s, "response_timeout", OPT, false);
    let keepalive = o.duration(s, "keepalive_timeout", OPT, true);
    let idle = o.int(s, "max_idle_per_target", OPT, 0..=MAX_IDLE_PER_TARGET);
    let congestion_control = congestion_control(s, &mut o);
    let stickiness = super::traffic::stickiness(s, &mut o);
    ok &= stickiness.is_some();
    let slow_start = o.duration(s, "slow_start", OPT, true);
    ok &= slow_start.is_some() || !o.has("slow_start");
    if let Some((d, at)) = slow_start {
        if d > MAX_SLOW_START {
            o.err(s, at, "slow_start", "must be at most 15m (ALB's limit)");
            ok = false;
        }
    }
    let max_conns = o.int::<u32>(s, "max_connections", OPT, 0..=MAX_CONNECTIONS);
    ok &= max_conns.is_some() || !o.has("max_connections");
    let queue_timeout = o.duration(s, "queue_timeout", OPT, true);
    ok &= queue_timeout.is_some() || !o.has("queue_timeout");
    let retry_on = super::traffic::retry_on(s, &mut o);
    ok &= retry_on.is_some();
    if proto == GroupProtocol::Tcp {
        let http_only = [
            ("stickiness", "stickiness needs HTTP cookies"),
            (
                "max_connections",
                "the request queue is for http and https groups",
            ),
            (
                "queue_timeout",
                "the request queue is for http and https groups",
            ),
        ];
        for (key, why) in http_only {
            if let Some(at) = o.key_at(key) {
                o.err(s, at, key, format!("{why}; tcp groups cannot take it"));
                ok = false;
            }
        }
        if retry_on.is_some_and(|r| r.reset || r.timeout) {
            let at = o.key_at("retry_on").unwrap_or(o.at);
            o.err(
                s,
                at,
                "retry_on",
                "tcp groups retry only \"connect-failure\" (ringlb cannot replay a byte stream)",
            );
            ok = false;
        }
    }
    o.finish(s);

    let facts = GroupFacts {
        ctx: o.ctx.clone(),
        name: name.clone(),
        protocol: proto_ok.then_some(proto),
    };
    let built = (|| {
        if !ok {
            return None;
        }
        Some(TargetGroupConfig {
            name: name?.0,
            protocol: proto,
            algorithm: algorithm.map_or(Algorithm::RoundRobin, |a| a.0),
            targets: targets?,
            retries: retries.map_or(DEFAULT_RETRIES, |v| v.0),
            fail_open: fail_open.unwrap_or(true),
            passive_failures: passive.map_or(DEFAULT_PASSIVE_FAILURES, |v| v.0),
            deregistration_delay: dereg.map_or(DEFAULT_DEREGISTRATION_DELAY, |v| v.0),
            proxy_protocol: proxy.map_or(ProxyProtocol::Off, |v| v.0),
            tls,
            protocol_version: version.map_or(ProtocolVersion::Http1, |v| v.0),
            health_check: health,
            connect_timeout: connect.map_or(DEFAULT_CONNECT_TIMEOUT, |v| v.0),
            response_timeout: response.map_or(DEFAULT_RESPONSE_TIMEOUT, |v| v.0),
            keepalive_timeout: keepalive.map_or(DEFAULT_KEEPALIVE_TIMEOUT, |v| v.0),
            max_idle_per_target: idle.map_or(DEFAULT_MAX_IDLE_PER_TARGET, |v| v.0),
            congestion_control,
            stickiness: stickiness.flatten(),
            slow_start: slow_start.map_or(Duration::ZERO, |v| v.0),
            max_connections: max_conns.map_or(0, |v| v.0),
            queue_timeout: queue_timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |v| v.0),
            retry_on: retry_on.unwrap_or_default(),
        })
    })();
    (built, facts)
}

fn targets(s: &mut Sink, o: &mut Obj) -> Option<Vec<TargetSpec>> {
    let (items, at) = o.array(s, "targets", REQ)?;
    if items.is_empty() {
        o.err(
            s,
            at,
            "targets",
            "list at least one target, like [\"127.0.0.1:3000\"]",
        );
        return None;
    }
    if items.len() > MAX_TARGETS {
        o.err(
            s,
            o.at,
            "targets",
            format!("more than {MAX_TARGETS} targets"),
        );
        return None;
    }
    let mut ok = true;
    let mut out: Vec<TargetSpec> = Vec::with_capacity(items.len());
    for (i, (v, at)) in items.into_iter().enumerate() {
        let key = format!("targets[{i}]");
        match target(s, o, &key, v, at) {
            Some(t) => {
                if out.iter().any(|u| same_target(u, &t)) {
                    o.err(s, at, &key, "is listed twice");
                    ok = false;
                }
                out.push(t);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn same_target(a: &TargetSpec, b: &TargetSpec) -> bool {
    match (a, b) {
        (TargetSpec::Static { address: x, .. }, TargetSpec::Static { address: y, .. }) => x == y,
        (
            TargetSpec::Dns {
                host: h1, port: p1, ..
            },
            TargetSpec::Dns {
                host: h2, port: p2, ..
            },
        ) => h1.eq_ignore_ascii_case(h2) && p1 == p2,
        _ => false,
    }
}

fn static_addr(s: &mut Sink, o: &Obj, key: &str, text: &str, at: usize) -> Option<SocketAddr> {
    match text.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            o.err(s, at, key, format!("port must not be 0 in \"{text}\""));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            use super::document::{addr_problem, AddrProblem};
            let msg = match addr_problem(text) {
                AddrProblem::PortOutOfRange(p) => {
                    format!("\"{text}\": port {p} is out of range (1..=65535)")
                }
                AddrProblem::HostNotIp => format!(
                    "\"{text}\" is not \"ip:port\"; for a host name write {{ dns = \"{text}\" }}"
                ),
                AddrProblem::Other => format!(
                    "\"{text}\" is not \"ip:port\" (like \"10.0.0.5:8080\" or \"[::1]:8080\")"
                ),
            };
            o.err(s, at, key, msg);
            None
        }
    }
}

fn target(s: &mut Sink, o: &Obj, key: &str, v: &Value, at: usize) -> Option<TargetSpec> {
    if let Value::String(text) = v {
        let address = static_addr(s, o, key, text.value(), at)?;
        return Some(TargetSpec::Static { address, weight: 1 });
    }
    let ctx = format!("{}: {key}", o.ctx);
    let mut t = Obj::from_node(s, Node::Value(v), ctx, at)?;
    let weight = t.int::<u32>(s, "weight", OPT, 1..=MAX_WEIGHT);
    let weight_ok = weight.is_some() || !t.has("weight");
    let weight = weight.map_or(1, |w| w.0);
    let spec = match (t.has("address"), t.has("dns")) {
        (true, false) => {
            let (a, at) = t.string(s, "address", REQ)?;
            let address = static_addr(s, &t, "address", &a, at);
            if t.has("refresh") {
                let at = t.take(s, "refresh", OPT).map_or(t.at, |n| n.1);
                t.err(
                    s,
                    at,
                    "refresh",
                    "only dns targets are re-resolved; remove refresh or use dns = \"host:port\"",
                );
                None
            } else {
                address.map(|address| TargetSpec::Static { address, weight })
            }
        }
        (false, true) => {
            let dns = t.text(s, "dns", REQ);
            let refresh = t.duration(s, "refresh", OPT, false);
            let refresh_ok = refresh.is_some() || !t.has("refresh");
            let hp = dns.and_then(|(d, at)| dns_name(s, &t, &d, at));
            match hp {
                Some((host, port)) if refresh_ok => Some(TargetSpec::Dns {
                    host,
                    port,
                    refresh: refresh.map_or(DEFAULT_DNS_REFRESH, |r| r.0),
                    weight,
                }),
                _ => None,
            }
        }
        (true, true) => {
            t.err_here(s, "has both address and dns; give one");
            t.take(s, "address", OPT);
            t.take(s, "dns", OPT);
            t.take(s, "refresh", OPT);
            None
        }
        (false, false) => {
            t.err_here(s, "needs address = \"ip:port\" or dns = \"host:port\"");
            t.take(s, "address", OPT);
            t.take(s, "dns", OPT);
            t.take(s, "refresh", OPT);
            None
        }
    };
    t.finish(s);
    spec.filter(|_| weight_ok)
}

/// Splits "host:port" of a dns target and checks both parts.
fn dns_name(s: &mut Sink, t: &Obj, d: &str, at: usize) -> Option<(String, u16)> {
    let Some((host, port)) = d.trim().rsplit_once(':') else {
        t.err(
            s,
            at,
            "dns",
            format!("\"{d}\" needs a port: write \"host:port\""),
        );
        return None;
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => {
            t.err(
                s,
                at,
                "dns",
                format!("\"{port}\" is not a port (1..=65535)"),
            );
            return None;
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !host_ok {
        t.err(s, at, "dns", format!("\"{host}\" is not a host name"));
        return None;
    }
    Some((host.to_string(), port))
}

fn group_tls(s: &mut Sink, mut o: Obj, base: &Path) -> Option<GroupTls> {
    let ca = o.text(s, "ca_file", OPT);
    let ca_ok = ca.is_some() || !o.has("ca_file");
    let ca_file = ca.and_then(|(p, at)| {
        let path = resolve(base, Path::new(&p));
        check_readable(s, &o, "ca_file", &path, at).then_some(path)
    });
    let server_name = o.text(s, "server_name", OPT).map(|v| v.0);
    let sn_ok = server_name.is_some() || !o.has("server_name");
    let file_ok = ca_file.is_some() || !o.has("ca_file");
    o.finish(s);
    (ca_ok && sn_ok && file_ok).then_some(GroupTls {
        ca_file,
        server_name,
    })
}

fn health_check(
    s: &mut Sink,
    mut o: Obj,
    group: GroupProtocol,
    version: Option<ProtocolVersion>,
) -> Option<HealthCheckConfig> {
    // A gRPC group is checked the gRPC way unless told otherwise (gRPC servers rarely answer an
    // HTTP/1.1 GET).
    let default_proto = match (group, version) {
        (GroupProtocol::Tcp, _) => HealthProtocol::Tcp,
        (_, Some(ProtocolVersion::Grpc)) => HealthProtocol::Grpc,
        _ => HealthProtocol::Http,
    };
    let protocol = o.choice(
        s,
        "protocol",
        OPT,
        &[
            ("http", HealthProtocol::Http),
            ("tcp", HealthProtocol::Tcp),
            ("grpc", HealthProtocol::Grpc),
        ],
    );
    let mut ok = protocol.is_some() || !o.has("protocol");
    let proto = protocol.map_or(default_proto, |p| p.0);
    if let Some((HealthProtocol::Grpc, at)) = protocol {
        if group == GroupProtocol::Tcp {
            o.err(
                s,
                at,
                "protocol",
                "tcp target groups are checked with protocol = \"tcp\"; grpc checks need an http or https group",
            );
            ok = false;
        }
    }
    let service = o.string(s, "grpc_service", OPT);
    if let Some((_, at)) = &service {
        if proto != HealthProtocol::Grpc {
            o.err(
                s,
                *at,
                "grpc_service",
                "only grpc health checks name a service; set protocol = \"grpc\"",
            );
            ok = false;
        }
    }
    ok &= service.is_some() || !o.has("grpc_service");
    let path = o.string(s, "path", OPT);
    if let Some((p, at)) = &path {
        if proto == HealthProtocol::Tcp {
            o.err(s, *at, "path", "only http health checks request a path");
            ok = false;
        } else if proto == HealthProtocol::Grpc {
            o.err(
                s,
                *at,
                "path",
                "grpc checks call grpc.health.v1.Health/Check; name the service with grpc_service",
            );
            ok = false;
        } else if !p.starts_with('/') || p.contains(' ') || p.chars().any(char::is_control) {
            o.err(
                s,
                *at,
                "path",
                format!("\"{p}\" must start with '/' and hold no spaces"),
            );
            ok = false;
        }
    }
    ok &= path.is_some() || !o.has("path");
    let interval = o.duration(s, "interval", OPT, false);
    let timeout = o.duration(s, "timeout", OPT, false);
    ok &= (interval.is_some() || !o.has("interval")) && (timeout.is_some() || !o.has("timeout"));
    let interval_v = interval.map_or(DEFAULT_HEALTH_INTERVAL, |v| v.0);
    let timeout_v = timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |v| v.0);
    if timeout_v >= interval_v && ok {
        let at = timeout.or(interval).map_or(o.at, |v| v.1);
        o.err(
            s,
            at,
            "timeout",
            format!("{timeout_v:?} must be shorter than interval ({interval_v:?})"),
        );
        ok = false;
    }
    let healthy = o.int(s, "healthy_threshold", OPT, 1..=MAX_THRESHOLD);
    let unhealthy = o.int(s, "unhealthy_threshold", OPT, 1..=MAX_THRESHOLD);
    ok &= (healthy.is_some() || !o.has("healthy_threshold"))
        && (unhealthy.is_some() || !o.has("unhealthy_threshold"));
    let mut matcher = Matcher::default();
    if let Some((m, at)) = o.string(s, "matcher", OPT) {
        if proto != HealthProtocol::Http {
            o.err(
                s,
                at,
                "matcher",
                "only http health checks have a status matcher (grpc checks pass on SERVING)",
            );
            ok = false;
        }
        match Matcher::parse(&m) {
            Ok(m) => matcher = m,
            Err(e) => {
                o.err(s, at, "matcher", e);
                ok = false;
            }
        }
    } else {
        ok &= !o.has("matcher");
    }
    o.finish(s);
    ok.then(|| HealthCheckConfig {
        protocol: proto,
        path: path.map_or_else(|| "/".to_string(), |p| p.0),
        interval: interval_v,
        timeout: timeout_v,
        healthy_threshold: healthy.map_or(DEFAULT_HEALTHY_THRESHOLD, |v| v.0),
        unhealthy_threshold: unhealthy.map_or(DEFAULT_UNHEALTHY_THRESHOLD, |v| v.0),
        matcher,
        grpc_service: service.map(|v| v.0).unwrap_or_default(),
    })
}
