//! Unit tests of the semantic checks: ranges, references, protocol pairing, rules. Run by
//! `cargo test` on the test threads over in-memory text; no state outside each test.

use super::*;

#[test]
fn targets_weights_and_ports() {
    let t = cfg("", "", "").replace("targets = [\"127.0.0.1:3000\"]", "targets = []");
    one_error(
        &t,
        "targets = []",
        "target_group 'app': targets: list at least one target",
    );
    let t = cfg("", "", "").replace(
        "\"127.0.0.1:3000\"",
        "{ address = \"127.0.0.1:3000\", weight = 0 }",
    );
    one_error(
        &t,
        "weight = 0",
        "targets[0]: weight: 0 is out of range 1..=1000",
    );
    let t = cfg("", "", "").replace(
        "\"127.0.0.1:3000\"",
        "\"127.0.0.1:3000\", { address = \"127.0.0.1:3001\", weight = 1001 }",
    );
    one_error(
        &t,
        "weight = 1001",
        "targets[1]: weight: 1001 is out of range",
    );
    let t = cfg("", "", "").replace("127.0.0.1:3000", "127.0.0.1:0");
    one_error(&t, "127.0.0.1:0", "targets[0]: port must not be 0");
    let t = cfg("", "", "").replace("\"127.0.0.1:3000\"", "\"app.internal:80\"");
    one_error(
        &t,
        "app.internal",
        "for a host name write { dns = \"app.internal:80\" }",
    );
    // A port out of range is named as such, with no host-name hint for an IP.
    let t = cfg("", "", "").replace("127.0.0.1:3000", "127.0.0.1:99999");
    one_error(
        &t,
        "127.0.0.1:99999",
        "port 99999 is out of range (1..=65535)",
    );
    let errs = parse(&t).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!errs.contains("dns"), "{errs}");
    let t = cfg("", "", "").replace("127.0.0.1:3000", "127.0.0.1:http");
    one_error(&t, "127.0.0.1:http", "is not \"ip:port\" (like");
    let t = cfg("bind = \"0.0.0.0:70000\"", "", "").replace("bind = \"127.0.0.1:8080\"\n", "");
    one_error(&t, "0.0.0.0:70000", "port 70000 is out of range");
    let t = cfg("", "", "").replace("\"127.0.0.1:3000\"", "{ dns = \"app.internal:0\" }");
    one_error(&t, "app.internal", "targets[0]: dns: \"0\" is not a port");
    let t = cfg("", "", "").replace(
        "\"127.0.0.1:3000\"",
        "\"127.0.0.1:3000\", \"127.0.0.1:3000\"",
    );
    one_error(&t, "targets", "targets[1]: is listed twice");
    let t = cfg("[[listener.rule]]\npriority = 1\npath = [\"/\"]\nforward = [{ target_group = \"app\", weight = 0 }]", "", "");
    one_error(
        &t,
        "weight = 0",
        "forward[0]: weight: 0 is out of range 1..=1000",
    );
    let t = cfg(
        "[[listener.rule]]\npriority = 1\npath = [\"/\"]\nredirect = { port = 0 }",
        "",
        "",
    );
    one_error(
        &t,
        "port = 0",
        "redirect: port: 0 is out of range 1..=65535",
    );
}

#[test]
fn zero_durations_are_refused_where_they_make_no_sense() {
    for (extra, key) in [
        ("[target_group.health_check]\ninterval = \"0s\"", "interval"),
        ("[target_group.health_check]\ntimeout = \"0ms\"", "timeout"),
        ("connect_timeout = \"0s\"", "connect_timeout"),
        ("response_timeout = \"0s\"", "response_timeout"),
    ] {
        one_error(
            &cfg("", extra, ""),
            key,
            &format!("{key}: must be greater than zero"),
        );
    }
    for key in ["header_timeout", "idle_timeout"] {
        let t = cfg(&format!("[listener.limits]\n{key} = \"0s\""), "", "");
        one_error(
            &t,
            key,
            &format!("limits: {key}: must be greater than zero"),
        );
    }
    // drain_timeout 0 means "do not wait": allowed.
    assert!(parse(&cfg("", "", "[runtime]\ndrain_timeout = \"0s\"")).is_ok());
}

#[test]
fn health_check_rules() {
    let t = cfg(
        "",
        "[target_group.health_check]\ninterval = \"2s\"\ntimeout = \"2s\"",
        "",
    );
    one_error(
        &t,
        "timeout = \"2s\"",
        "health_check: timeout: 2s must be shorter than interval (2s)",
    );
    let t = cfg("", "[target_group.health_check]\nhealthy_threshold = 0", "");
    one_error(
        &t,
        "healthy_threshold",
        "healthy_threshold: 0 is out of range 1..=10",
    );
    let t = cfg(
        "",
        "[target_group.health_check]\nunhealthy_threshold = 11",
        "",
    );
    one_error(
        &t,
        "unhealthy_threshold",
        "unhealthy_threshold: 11 is out of range 1..=10",
    );
    let t = cfg("", "[target_group.health_check]\nmatcher = \"200-600\"", "");
    one_error(
        &t,
        "matcher",
        "matcher: matcher \"200-600\": status 600 is outside 100..=599",
    );
    let t = cfg("", "[target_group.health_check]\npath = \"health\"", "");
    one_error(&t, "path", "path: \"health\" must start with '/'");
    let t = cfg(
        "",
        "[target_group.health_check]\nprotocol = \"tcp\"\npath = \"/\"",
        "",
    );
    one_error(&t, "path = ", "only http health checks request a path");
}

#[test]
fn rule_validation() {
    let rule = |body: &str| cfg(&format!("[[listener.rule]]\n{body}"), "", "");
    one_error(
        &rule("priority = 0\npath = [\"/\"]\nforward = \"app\""),
        "priority",
        "rule[0]: priority: 0 is out of range",
    );
    one_error(
        &rule("priority = 1\nforward = \"app\""),
        "[[listener.rule]]",
        "rule[0] (priority 1): has no condition",
    );
    one_error(
        &rule("priority = 1\npath = [\"/\"]"),
        "[[listener.rule]]",
        "needs exactly one action",
    );
    one_error(
        &rule("priority = 1\npath = [\"/\"]\nforward = \"app\"\nfixed_response = { status = 200 }"),
        "[[listener.rule]]",
        "has 2 actions (forward, fixed_response)",
    );
    one_error(
        &rule("priority = 1\npath = [\"/\"]\nredirect = { protocol = \"https\", status = 300 }"),
        "status = 300",
        "redirect: status: 300 is not a redirect status; use 301, 302, 307 or 308",
    );
    one_error(
        &rule("priority = 1\npath = [\"/\"]\nredirect = { status = 302 }"),
        "redirect",
        "changes nothing",
    );
    one_error(
        &rule("priority = 1\npath = [\"/\"]\nfixed_response = { status = 99 }"),
        "status",
        "fixed_response: status: 99 is out of range 100..=599",
    );
    one_error(
        &rule("priority = 1\npath = [\"/\"]\nfixed_response = { status = 600 }"),
        "status",
        "out of range 100..=599",
    );
    one_error(
        &rule("priority = 1\npath = [\"api\"]\nforward = \"app\""),
        "\"api\"",
        "path[0]: \"api\" is not a path pattern",
    );
    one_error(
        &rule("priority = 1\nsource_ip = [\"10.0.0.0/8\", \"300.1.1.1\"]\nforward = \"app\""),
        "source_ip",
        "source_ip[1]: \"300.1.1.1\" is not a CIDR",
    );
    let two = "[[listener.rule]]\npriority = 7\npath = [\"/a\"]\nforward = \"app\"\n[[listener.rule]]\npriority = 7\npath = [\"/b\"]\nforward = \"app\"";
    let t = cfg(two, "", "");
    let at = t.rfind("priority = 7").unwrap();
    let errs = parse(&t).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert!(
        errs.0[0].message.contains("rule priority 7 is used twice"),
        "{errs}"
    );
    assert_eq!(errs.0[0].line, t[..at].matches('\n').count() + 1);
}

#[test]
fn listener_and_group_protocols_must_pair() {
    let tcp_group =
        "[[target_group]]\nname = \"db\"\nprotocol = \"tcp\"\ntargets = [\"127.0.0.1:5432\"]";
    let t = cfg("", "", tcp_group).replace("target_group = \"app\"", "target_group = \"db\"");
    one_error(&t, "\"db\"", "target_group 'db' has protocol tcp; an http/https listener forwards only to http or https target groups");
    let t = cfg("protocol = \"tcp\"", "", "");
    one_error(
        &t,
        "target_group = \"app\"",
        "target_group 'app' has protocol http; a tcp listener forwards only to tcp target groups",
    );
    let t = cfg(
        "protocol = \"tcp\"\n[[listener.rule]]\npriority = 1\npath = [\"/\"]\nforward = \"db\"",
        "",
        tcp_group,
    )
    .replace("target_group = \"app\"", "target_group = \"db\"");
    let e = parse(&t).unwrap_err();
    assert!(
        e.0.iter()
            .any(|e| e.message.contains("tcp listeners cannot have rules")),
        "{e}"
    );
    one_error(
        &cfg("", "proxy_protocol = \"v1\"", ""),
        "proxy_protocol",
        "only tcp target groups send a PROXY header",
    );
    one_error(
        &cfg("", "[target_group.tls]\nserver_name = \"x\"", ""),
        "[target_group.tls]",
        "tls: only https target groups take TLS settings",
    );
    let https = cfg(
        "",
        "protocol = \"https\"\n[target_group.tls]\nserver_name = \"app.internal\"",
        "",
    );
    let c = parse(&https).unwrap();
    assert_eq!(
        c.target_groups[0]
            .tls
            .as_ref()
            .unwrap()
            .server_name
            .as_deref(),
        Some("app.internal")
    );
}

#[test]
fn listener_limits_ranges() {
    one_error(
        &cfg("backlog = 0", "", ""),
        "backlog",
        "backlog: 0 is out of range 1..=65535",
    );
    one_error(
        &cfg("backlog = 70000", "", ""),
        "backlog",
        "backlog: 70000 is out of range",
    );
    let lim = |l: &str| cfg(&format!("[listener.limits]\n{l}"), "", "");
    one_error(
        &lim("max_header_bytes = 512"),
        "max_header_bytes",
        "512 bytes is out of range 1024..=1048576 bytes",
    );
    one_error(
        &lim("max_header_bytes = \"2MiB\""),
        "max_header_bytes",
        "out of range",
    );
    one_error(
        &lim("max_headers = 0"),
        "max_headers",
        "max_headers: 0 is out of range 1..=256",
    );
    one_error(
        &lim("max_headers = 257"),
        "max_headers",
        "out of range 1..=256",
    );
    one_error(
        &lim("max_header_bytes = \"4KiB\"\nmax_uri_bytes = \"8KiB\""),
        "max_uri_bytes",
        "8192 bytes exceeds max_header_bytes (4096)",
    );
    one_error(
        &lim("allow = [\"10.0.0.0/33\"]"),
        "allow",
        "allow[0]: \"10.0.0.0/33\" is not a CIDR",
    );
    one_error(
        &lim("deny = [\"::1/128\", \"fe80::/10\", \"nope\"]"),
        "deny",
        "deny[2]: \"nope\" is not a CIDR",
    );
    let c = parse(&lim(
        "max_header_bytes = \"32KiB\"\nmax_uri_bytes = 100\nmax_body_bytes = 0\nallow = [\"::/0\"]",
    ))
    .unwrap();
    let l = &c.listeners[0].limits;
    assert_eq!(
        (l.max_header_bytes, l.max_uri_bytes, l.max_body_bytes),
        (32768, 100, 0)
    );
    assert_eq!(l.allow[0].to_string(), "::/0");
}

#[test]
fn runtime_limits() {
    one_error(
        &cfg("", "", "[runtime]\nworkers = 1025"),
        "workers",
        "runtime: workers: 1025 is out of range 0..=1024",
    );
    one_error(
        &cfg("", "", "[runtime]\nio = \"iouring\""),
        "io =",
        "runtime: io: expected one of \"auto\", \"uring\", \"epoll\", found \"iouring\"",
    );
    one_error(
        &cfg("", "", "[runtime]\nresolver = \"8.8.8.8\""),
        "resolver",
        "expected \"system\" or a DNS server",
    );
    let c = parse(&cfg(
        "",
        "",
        "[runtime]\nresolver = \"127.0.0.1:53\"\nio = \"epoll\"\nworkers = 2",
    ))
    .unwrap();
    assert_eq!(
        (c.runtime.resolver.as_str(), c.runtime.io, c.runtime.workers),
        ("127.0.0.1:53", IoBackend::Epoll, 2)
    );
}

#[test]
fn protocol_version_and_grpc_health_checks() {
    let c = parse(&cfg("", "protocol_version = \"grpc\"\n  [target_group.health_check]\n  protocol = \"grpc\"\n  grpc_service = \"helloworld.Greeter\"", "")).unwrap();
    let g = &c.target_groups[0];
    assert_eq!(g.protocol_version, ProtocolVersion::Grpc);
    let hc = g.health_check.as_ref().unwrap();
    assert_eq!(hc.protocol, HealthProtocol::Grpc);
    assert_eq!(hc.grpc_service, "helloworld.Greeter");
    assert_eq!(
        parse(&cfg("", "", "")).unwrap().target_groups[0].protocol_version,
        ProtocolVersion::Http1
    );
    one_error(
        &cfg("", "protocol_version = \"h3\"", ""),
        "h3",
        "protocol_version",
    );
    one_error(
        &cfg(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nprotocol_version = \"http2\"",
            "",
        ),
        "protocol_version = \"http2\"",
        "applies to http and https groups",
    );
    one_error(
        &cfg(
            "",
            "  [target_group.health_check]\n  protocol = \"grpc\"\n  path = \"/hc\"",
            "",
        ),
        "path = \"/hc\"",
        "grpc checks call grpc.health.v1.Health/Check",
    );
    one_error(
        &cfg(
            "",
            "  [target_group.health_check]\n  grpc_service = \"x\"",
            "",
        ),
        "grpc_service",
        "only grpc health checks name a service",
    );
    one_error(
        &cfg(
            "",
            "  [target_group.health_check]\n  protocol = \"grpc\"\n  matcher = \"200\"",
            "",
        ),
        "matcher",
        "only http health checks have a status matcher",
    );
}

#[test]
fn traffic_management_settings() {
    let c = parse(&cfg(
        "request_id = \"X-Trace\"\nrequest_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"x-debug\"] }\nresponse_headers = { remove = [\"server\"] }",
        "stickiness = { type = \"app_cookie\", cookie = \"SESSIONID\", duration = \"2h\" }\nslow_start = \"30s\"\nmax_connections = 64\nqueue_timeout = \"2s\"\nretry_on = [\"connect-failure\", \"reset\", \"timeout\"]",
        "",
    ))
    .unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.request_id.as_deref(), Some("x-trace"));
    assert_eq!(l.request_headers.set, vec![("x-env".into(), "prod".into())]);
    assert_eq!(l.request_headers.remove, vec!["x-debug".to_string()]);
    assert_eq!(l.response_headers.remove, vec!["server".to_string()]);
    let g = &c.target_groups[0];
    assert_eq!(
        g.stickiness,
        Some(Stickiness::AppCookie {
            cookie: "SESSIONID".into(),
            duration: Duration::from_secs(7200)
        })
    );
    assert_eq!(g.slow_start, Duration::from_secs(30));
    assert_eq!(
        (g.max_connections, g.queue_timeout),
        (64, Duration::from_secs(2))
    );
    assert!(g.retry_on.connect_failure && g.retry_on.reset && g.retry_on.timeout);
    // Defaults.
    let d = parse(&cfg("", "", "")).unwrap();
    assert_eq!(d.listeners[0].request_id.as_deref(), Some("x-request-id"));
    assert_eq!(d.target_groups[0].retry_on, RetryOn::default());
    assert_eq!(d.target_groups[0].max_connections, 0);
    assert_eq!(
        parse(&cfg("request_id = \"\"", "", "")).unwrap().listeners[0].request_id,
        None
    );
}

#[test]
fn traffic_management_mistakes_are_located() {
    one_error(
        &cfg(
            "request_headers = { set = { \"Content-Length\" = \"1\" } }",
            "",
            "",
        ),
        "Content-Length",
        "frames the message or belongs to the connection",
    );
    one_error(
        &cfg(
            "response_headers = { remove = [\"Transfer-Encoding\"] }",
            "",
            "",
        ),
        "Transfer-Encoding",
        "cannot be rewritten",
    );
    one_error(
        &cfg("request_headers = { set = { \"host\" = \"x\" } }", "", ""),
        "\"host\"",
        "cannot be rewritten",
    );
    one_error(
        &cfg(
            "request_headers = { set = { \"x-a\" = \"b\\nc\" } }",
            "",
            "",
        ),
        "x-a",
        "without control characters",
    );
    one_error(
        &cfg("request_id = \"bad name\"", "", ""),
        "bad name",
        "not a usable header name",
    );
    one_error(
        &cfg("", "stickiness = { type = \"app_cookie\" }", ""),
        "stickiness",
        "needs cookie",
    );
    one_error(
        &cfg(
            "",
            "stickiness = { type = \"lb_cookie\", cookie = \"X\" }",
            "",
        ),
        "cookie = \"X\"",
        "uses ringlb's own cookie",
    );
    one_error(
        &cfg("", "stickiness = { type = \"sticky\" }", ""),
        "\"sticky\"",
        "expected one of \"lb_cookie\", \"app_cookie\"",
    );
    one_error(
        &cfg("", "retry_on = [\"reset\", \"5xx\"]", ""),
        "\"5xx\"",
        "expected one of \"connect-failure\", \"reset\", \"timeout\"",
    );
    one_error(
        &cfg("", "slow_start = \"1h\"", ""),
        "slow_start",
        "at most 15m",
    );
    one_error(
        &cfg(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nmax_connections = 5",
            "",
        ),
        "max_connections",
        "tcp groups cannot take it",
    );
    one_error(
        &cfg(
            "[[listener.rule]]\npriority = 1\npath = [\"/x\"]\nfixed_response = { status = 200 }\nresponse_headers = { remove = [\"server\"] }",
            "",
            "",
        ),
        "response_headers",
        "only forward rules rewrite headers",
    );
}
