//! Reads one `[[listener]]` table: bind, protocol, TLS certificate files, limits and (in
//! `listener/rule.rs`) its rules. Runs on the main thread during `Config::parse`; returns the
//! built listener (when complete) plus the facts `validate` needs for cross-checks.

mod rule;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::document::bind_addr;
use super::reader::{table_list, Node, Obj, Sink, OPT, REQ};
use super::validate::{check_name, congestion_control, ListenerFacts};
use super::{
    CertificateFiles, CipherPreference, ClientAuth, Http2Settings, Limits, ListenerConfig,
    ListenerProtocol, ListenerTls, MAX_H2_STREAMS,
};

/// Default `backlog` of a listening socket.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Largest `backlog` (the kernel clamps to somaxconn anyway).
pub const MAX_BACKLOG: i64 = 65535;
/// Smallest `max_header_bytes`.
pub const MIN_HEADER_BYTES: u64 = 1024;
/// Largest `max_header_bytes`.
pub const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Largest `max_headers`: the HTTP parser's own cap (`http::parse::MAX_HEADERS_CAP`).
pub const MAX_HEADERS: i64 = crate::http::parse::MAX_HEADERS_CAP as i64;
/// Most certificates one listener may carry.
pub const MAX_CERTIFICATES: usize = 1000;

/// Reads a listener table. The first value is `None` when a required field is missing or bad.
pub(crate) fn read(
    s: &mut Sink,
    mut o: Obj,
    base: &Path,
) -> (Option<ListenerConfig>, ListenerFacts) {
    let name = o.text(s, "name", REQ);
    if let Some((n, at)) = &name {
        if check_name(s, &o, "name", n, *at) {
            o.ctx = format!("listener '{n}'");
        }
    }
    let bind = o
        .string(s, "bind", REQ)
        .and_then(|(b, at)| bind_addr(s, &o, "bind", &b, at).map(|a| (a, at)));
    let protocol = o.choice(
        s,
        "protocol",
        OPT,
        &[
            ("http", ListenerProtocol::Http),
            ("https", ListenerProtocol::Https),
            ("tcp", ListenerProtocol::Tcp),
        ],
    );
    let proto = protocol.map_or(ListenerProtocol::Http, |p| p.0);
    let proto_known = (protocol.is_some() || !o.has("protocol")).then_some(proto);
    let target_group = o.text(s, "target_group", REQ);
    let backlog = o
        .int(s, "backlog", OPT, 1..=MAX_BACKLOG)
        .map_or(DEFAULT_BACKLOG, |v| v.0);
    let access_log = o.text(s, "access_log", OPT).map(|(p, _)| {
        if p == "-" {
            p
        } else {
            resolve(base, Path::new(&p)).to_string_lossy().into_owned()
        }
    });
    let accept_proxy_protocol = o.bool(s, "accept_proxy_protocol", OPT).unwrap_or(false);
    let congestion_control = congestion_control(s, &mut o);
    let defer_accept = o.bool(s, "defer_accept", OPT).unwrap_or(false);

    let tls = match o.take(s, "tls", OPT) {
        Some((node, at)) => {
            if proto != ListenerProtocol::Https {
                o.err(
                    s,
                    at,
                    "tls",
                    "only https listeners take TLS settings; set protocol = \"https\" or remove [listener.tls]",
                );
            }
            Obj::from_node(s, node, format!("{}: tls", o.ctx), at).and_then(|t| tls(s, t, base))
        }
        None => {
            if proto == ListenerProtocol::Https {
                let at = protocol.map_or(o.at, |p| p.1);
                o.err(
                    s,
                    at,
                    "protocol",
                    "an https listener needs a [listener.tls] table with at least one certificate",
                );
            }
            None
        }
    };

    let limits = match o.sub(s, "limits", OPT) {
        Some(l) => limits(s, l),
        None => Some(Limits::default()),
    };

    // `http2 = true|false`, or a `[listener.http2]` table (on, unless `enabled = false`).
    let mut http2_at = o.at;
    let (http2_flag, http2_settings) = match o.take(s, "http2", OPT) {
        None => (None, Http2Settings::default()),
        Some((Node::Value(toml_edit::Value::Boolean(b)), at)) => {
            http2_at = at;
            (Some(*b.value()), Http2Settings::default())
        }
        Some((node, at)) => {
            http2_at = at;
            let ctx = format!("{}: http2", o.ctx);
            match Obj::from_node(s, node, ctx, at) {
                Some(h) => {
                    let (on, set) = http2_settings(s, h);
                    (Some(on), set)
                }
                None => (None, Http2Settings::default()),
            }
        }
    };
    if proto == ListenerProtocol::Tcp && http2_flag == Some(true) {
        o.err(
            s,
            http2_at,
            "http2",
            "tcp listeners forward bytes and speak no HTTP; remove http2 or use protocol = \"http\"/\"https\"",
        );
    }
    let http2 =
        proto != ListenerProtocol::Tcp && http2_flag.unwrap_or(proto == ListenerProtocol::Https);

    let request_id = super::traffic::request_id(s, &mut o);
    let request_headers = super::traffic::rewrite(s, &mut o, "request_headers");
    let response_headers = super::traffic::rewrite(s, &mut o, "response_headers");
    let http_only = ["request_id", "request_headers", "response_headers"];
    if proto == ListenerProtocol::Tcp {
        for key in http_only {
            if let Some(at) = o.key_at(key) {
                o.err(
                    s,
                    at,
                    key,
                    "tcp listeners forward bytes and speak no HTTP; remove it or use protocol = \"http\"",
                );
            }
        }
    }
    let mut rules = Vec::new();
    let mut rule_facts = Vec::new();
    if let Some((node, at)) = o.take(s, "rule", OPT) {
        let list = table_list(s, node, &format!("{}: rule", o.ctx), at);
        if proto == ListenerProtocol::Tcp && !list.is_empty() {
            o.err(
                s,
                at,
                "rule",
                "tcp listeners cannot have rules (they forward whole connections to target_group); remove the rules or use protocol = \"http\"",
            );
        }
        for (i, (node, at)) in list.into_iter().enumerate() {
            let ctx = format!("{}: rule[{i}]", o.ctx);
            if let Some(r) = Obj::from_node(s, node, ctx, at) {
                let (built, facts) = rule::read(s, r);
                rules.extend(built);
                rule_facts.push(facts);
            }
        }
        rule::check_priorities(s, &o, &rule_facts);
    }
    // A subject condition needs verified client certificates to look at.
    let mutual = tls
        .as_ref()
        .is_some_and(|t| t.client_auth != ClientAuth::Off);
    if !mutual
        && rules
            .iter()
            .any(|r: &crate::config::RuleConfig| !r.conditions.client_cert_subject.is_empty())
    {
        o.err_here(
            s,
            "a rule matches client_cert_subject, but this listener verifies no client certificates; set [listener.tls] client_auth = \"optional\" or \"required\"",
        );
    }
    let facts = ListenerFacts {
        ctx: o.ctx.clone(),
        name: name.clone(),
        protocol: proto_known,
        bind,
        target_group: target_group.clone(),
        rules: rule_facts,
    };
    o.finish(s);
    let built = (|| {
        let tls_ok = proto != ListenerProtocol::Https || tls.is_some();
        if !tls_ok {
            return None;
        }
        Some(ListenerConfig {
            name: name?.0,
            bind: bind?.0,
            protocol: proto,
            target_group: target_group?.0,
            backlog,
            access_log,
            accept_proxy_protocol,
            congestion_control,
            defer_accept,
            tls,
            limits: limits?,
            rules,
            http2,
            http2_settings,
            request_id: request_id.unwrap_or(None),
            request_headers: request_headers.unwrap_or_default(),
            response_headers: response_headers.unwrap_or_default(),
        })
    })();
    (built, facts)
}

impl ListenerConfig {
    /// What is valid but likely not meant: `ringlb check` prints these and `ringlb run` logs
    /// them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.defer_accept && self.protocol == ListenerProtocol::Tcp {
            out.push(format!(
                "listener '{}': defer_accept = true on a tcp listener: the kernel holds each connection until the client sends, so a protocol where the server speaks first (SMTP, SSH, MySQL) waits a second or more for every connection; keep it only if clients always speak first",
                self.name
            ));
        }
        out
    }
}

/// `base/p` when `p` is relative, else `p`.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Records an error unless `path` is a readable regular file.
pub(crate) fn check_readable(s: &mut Sink, o: &Obj, key: &str, path: &Path, at: usize) -> bool {
    let problem = match std::fs::metadata(path) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
        Ok(_) => std::fs::File::open(path).err().map(|e| e.to_string()),
    };
    match problem {
        Some(p) => {
            o.err(
                s,
                at,
                key,
                format!("cannot read \"{}\": {p}", path.display()),
            );
            false
        }
        None => true,
    }
}

fn tls(s: &mut Sink, mut o: Obj, base: &Path) -> Option<ListenerTls> {
    let items = o.array(s, "certificates", REQ);
    let mut certificates = Vec::new();
    let mut ok = items.is_some();
    if let Some((items, at)) = items {
        if items.is_empty() {
            o.err(
                s,
                at,
                "certificates",
                "list at least one { cert = \"..\", key = \"..\" }",
            );
            ok = false;
        }
        if items.len() > MAX_CERTIFICATES {
            o.err(
                s,
                o.at,
                "certificates",
                format!("more than {MAX_CERTIFICATES} certificates"),
            );
            ok = false;
        }
        for (i, (v, at)) in items.into_iter().take(MAX_CERTIFICATES).enumerate() {
            let ctx = format!("{}: certificates[{i}]", o.ctx);
            let Some(mut c) = Obj::from_node(s, Node::Value(v), ctx, at) else {
                ok = false;
                continue;
            };
            let file = |s: &mut Sink, c: &mut Obj, key: &'static str| {
                let (p, at) = c.text(s, key, REQ)?;
                let path = resolve(base, Path::new(&p));
                check_readable(s, c, key, &path, at).then_some(path)
            };
            let cert = file(s, &mut c, "cert");
            let key = file(s, &mut c, "key");
            // Some(None): no ocsp key; None: one that cannot be read.
            let ocsp = match c.has("ocsp") {
                true => file(s, &mut c, "ocsp").map(Some),
                false => Some(None),
            };
            c.finish(s);
            match (cert, key, ocsp) {
                (Some(cert), Some(key), Some(ocsp)) => {
                    match crate::tls::check_pair(&cert, &key, ocsp.as_deref()) {
                        Ok(()) => certificates.push(CertificateFiles { cert, key, ocsp }),
                        Err(e) => {
                            // The content is parsed here so `ringlb check` catches it, not the
                            // start.
                            c.err(s, at, e.field(), e);
                            ok = false;
                        }
                    }
                }
                _ => ok = false,
            }
        }
    }
    let client_auth = o
        .choice(
            s,
            "client_auth",
            OPT,
            &[
                ("off", ClientAuth::Off),
                ("optional", ClientAuth::Optional),
                ("required", ClientAuth::Required),
            ],
        )
        .map(|(v, _)| v);
    let client_auth = match client_auth {
        Some(v) => v,
        None if o.has("client_auth") => {
            ok = false;
            ClientAuth::Off
        }
        None => ClientAuth::Off,
    };
    let mut client_ca = None;
    if let Some((p, at)) = o.text(s, "client_ca", OPT) {
        let path = resolve(base, Path::new(&p));
        if check_readable(s, &o, "client_ca", &path, at) {
            match crate::tls::client_auth::verifier(ClientAuth::Required, &path, &[]) {
                Ok(_) => client_ca = Some(path),
                Err(e) => {
                    o.err(s, at, "client_ca", e);
                    ok = false;
                }
            }
        } else {
            ok = false;
        }
    }
    let mut client_crl = Vec::new();
    for (i, (p, at)) in o
        .strings(s, "client_crl", OPT)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let key = format!("client_crl[{i}]");
        let path = resolve(base, Path::new(&p));
        if !check_readable(s, &o, &key, &path, at) {
            ok = false;
            continue;
        }
        let checked = crate::tls::client_auth::read_crls(&path).and_then(|crls| match &client_ca {
            Some(ca) => crate::tls::client_auth::check_crl_issuers(ca, &path, &crls),
            None => Ok(()),
        });
        match checked {
            Ok(()) => client_crl.push(path),
            Err(e) => {
                o.err(s, at, &key, e);
                ok = false;
            }
        }
    }
    if client_auth != ClientAuth::Off && client_ca.is_none() && !o.has("client_ca") {
        o.err_here(
            s,
            "client_auth needs client_ca: the PEM bundle of the CAs client certificates must chain to",
        );
        ok = false;
    }
    if client_auth == ClientAuth::Off && (o.has("client_ca") || o.has("client_crl")) {
        o.err_here(
            s,
            "client_ca and client_crl take effect only with client_auth = \"optional\" or \"required\"",
        );
        ok = false;
    }
    let cipher_preference = o
        .choice(
            s,
            "cipher_preference",
            OPT,
            &[
                ("server", CipherPreference::Server),
                ("client", CipherPreference::Client),
            ],
        )
        .map_or(CipherPreference::Server, |(v, _)| v);
    o.finish(s);
    ok.then_some(ListenerTls {
        certificates,
        client_auth,
        client_ca,
        client_crl,
        cipher_preference,
    })
}

/// `[listener.http2]`: whether it is on (`enabled`, default true) and its settings.
fn http2_settings(s: &mut Sink, mut o: Obj) -> (bool, Http2Settings) {
    let d = Http2Settings::default();
    let enabled = o.bool(s, "enabled", OPT).unwrap_or(true);
    let streams = o.int(s, "max_concurrent_streams", OPT, 1..=MAX_H2_STREAMS);
    o.finish(s);
    let set = Http2Settings {
        max_concurrent_streams: streams.map_or(d.max_concurrent_streams, |v| v.0),
    };
    (enabled, set)
}

fn limits(s: &mut Sink, mut o: Obj) -> Option<Limits> {
    let d = Limits::default();
    let header = o.size(
        s,
        "max_header_bytes",
        OPT,
        MIN_HEADER_BYTES..=MAX_HEADER_BYTES,
    );
    let max_headers = o.int(s, "max_headers", OPT, 1..=MAX_HEADERS).map(|v| v.0);
    let uri = o.size(s, "max_uri_bytes", OPT, 1..=MAX_HEADER_BYTES);
    let max_header_bytes = header.map_or(d.max_header_bytes as u64, |v| v.0);
    if let Some((u, at)) = uri {
        if u > max_header_bytes {
            o.err(
                s,
                at,
                "max_uri_bytes",
                format!("{u} bytes exceeds max_header_bytes ({max_header_bytes}); the URI is part of the head"),
            );
        }
    }
    let max_body_bytes = o.size(s, "max_body_bytes", OPT, 0..=u64::MAX).map(|v| v.0);
    let header_timeout = o.duration(s, "header_timeout", OPT, false).map(|v| v.0);
    let idle_timeout = o.duration(s, "idle_timeout", OPT, false).map(|v| v.0);
    let per_ip = o.int(s, "max_connections_per_ip", OPT, 0..=i64::from(u32::MAX));
    let rps = o.int(
        s,
        "requests_per_second_per_ip",
        OPT,
        0..=i64::from(u32::MAX),
    );
    let allow = cidrs(s, &mut o, "allow");
    let deny = cidrs(s, &mut o, "deny");
    o.finish(s);
    Some(Limits {
        max_header_bytes: usize::try_from(max_header_bytes).ok()?,
        max_headers: max_headers.unwrap_or(d.max_headers),
        max_uri_bytes: uri.map_or(Some(d.max_uri_bytes), |v| usize::try_from(v.0).ok())?,
        max_body_bytes: max_body_bytes.unwrap_or(d.max_body_bytes),
        header_timeout: header_timeout.unwrap_or(d.header_timeout),
        idle_timeout: idle_timeout.unwrap_or(d.idle_timeout),
        max_connections_per_ip: per_ip.map_or(d.max_connections_per_ip, |v| v.0),
        requests_per_second_per_ip: rps.map_or(d.requests_per_second_per_ip, |v| v.0),
        allow,
        deny,
    })
}

/// A list of CIDRs ("10.0.0.0/8", "::1/128"); a bare address means just that address.
pub(crate) fn cidrs(s: &mut Sink, o: &mut Obj, key: &'static str) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for (i, (text, at)) in o
        .strings(s, key, OPT)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let t = text.trim();
        let net = t
            .parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| t.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
        match net {
            Some(n) => out.push(n.trunc()),
            None => o.err(
                s,
                at,
                &format!("{key}[{i}]"),
                format!(
                    "\"{text}\" is not a CIDR; write one like \"10.0.0.0/8\" or \"2001:db8::/32\""
                ),
            ),
        }
    }
    out
}

/// True when two bind addresses would take the same connections (same port, and the same
/// address or a wildcard covering the other; `[::]` is taken as dual-stack).
pub(crate) fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    // Port 0 asks the kernel for a free port: two such binds never clash.
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (ia, ib) = (a.ip(), b.ip());
    ia == ib
        || (ia.is_unspecified() && (ia.is_ipv6() || ib.is_ipv4() == ia.is_ipv4()))
        || (ib.is_unspecified() && (ib.is_ipv6() || ia.is_ipv4() == ib.is_ipv4()))
}
