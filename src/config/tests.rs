//! Unit tests of the config loader over in-memory text: defaults, the example, and each
//! validation error with its message and line. Run by `cargo test` on the test threads;
//! nothing here touches the file system (see tests/config.rs for files).

use super::*;

/// A small valid config with hooks to insert lines into the listener, the group, and after.
fn cfg(listener_extra: &str, group_extra: &str, tail: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\ntarget_group = \"app\"\n{listener_extra}\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\n{group_extra}\n{tail}\n"
    )
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("ringlb.toml"))
}

/// 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in test text"));
    text[..at].matches('\n').count() + 1
}

/// Asserts `text` fails with exactly one error, on the line holding `needle`, whose message
/// contains `msg`.
#[track_caller]
fn one_error(text: &str, needle: &str, msg: &str) {
    let errs = match parse(text) {
        Ok(_) => panic!("expected an error containing {msg:?}, but it parsed:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(
        errs.0.len(),
        1,
        "expected one error, got:\n{errs}\nfor:\n{text}"
    );
    let e = &errs.0[0];
    assert!(e.message.contains(msg), "{msg:?} not in {e}");
    assert_eq!(
        e.line,
        line_of(text, needle),
        "wrong line in {e} for:\n{text}"
    );
}

#[test]
fn minimal_config_takes_the_design_defaults() {
    let c = parse(&cfg("", "", "")).unwrap();
    assert_eq!(c.runtime, RuntimeConfig::default());
    assert_eq!(c.runtime.workers, 0);
    assert!(c.runtime.pin);
    assert_eq!(c.runtime.io, IoBackend::Auto);
    assert_eq!(c.runtime.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.runtime.resolver, "system");
    assert_eq!(c.admin, None);
    let l = &c.listeners[0];
    assert_eq!(l.protocol, ListenerProtocol::Http);
    assert_eq!(l.backlog, 4096);
    assert_eq!(l.access_log, None);
    assert!(!l.accept_proxy_protocol);
    assert_eq!(l.congestion_control, None);
    assert!(!l.defer_accept);
    assert_eq!(l.tls, None);
    assert!(l.rules.is_empty());
    let lim = &l.limits;
    assert_eq!(*lim, Limits::default());
    assert_eq!(lim.max_header_bytes, 16384);
    assert_eq!(lim.max_headers, 100);
    assert_eq!(lim.max_uri_bytes, 8192);
    assert_eq!(lim.max_body_bytes, 10 << 20);
    assert_eq!(lim.header_timeout, Duration::from_secs(10));
    assert_eq!(lim.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        (lim.max_connections_per_ip, lim.requests_per_second_per_ip),
        (0, 0)
    );
    let g = c.target_group("app").unwrap();
    assert_eq!(g.protocol, GroupProtocol::Http);
    assert_eq!(g.algorithm, Algorithm::RoundRobin);
    assert_eq!(
        g.targets,
        vec![TargetSpec::Static {
            address: "127.0.0.1:3000".parse().unwrap(),
            weight: 1
        }]
    );
    assert_eq!(g.retries, 2);
    assert!(g.fail_open);
    assert_eq!(g.passive_failures, 5);
    assert_eq!(g.deregistration_delay, Duration::from_secs(30));
    assert_eq!(g.proxy_protocol, ProxyProtocol::Off);
    assert_eq!((g.tls.clone(), g.health_check.clone()), (None, None));
    assert_eq!(g.connect_timeout, Duration::from_secs(3));
    assert_eq!(g.response_timeout, Duration::from_secs(60));
    assert_eq!(g.keepalive_timeout, Duration::from_secs(4));
    assert_eq!(g.max_idle_per_target, 256);
    assert_eq!(g.congestion_control, None);
    assert!(c.target_group("nope").is_none());
}

#[test]
fn congestion_control_is_checked_against_this_host() {
    // reno is built into every Linux kernel.
    let text = cfg(
        "congestion_control = \"reno\"",
        "congestion_control = \"reno\"",
        "",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.listeners[0].congestion_control.as_deref(), Some("reno"));
    let g = c.target_group("app").unwrap();
    assert_eq!(g.congestion_control.as_deref(), Some("reno"));

    let unknown = cfg("", "congestion_control = \"nosuchcc\"", "");
    one_error(
        &unknown,
        "congestion_control",
        "congestion control \"nosuchcc\" is not available on this host (it has: ",
    );
    let malformed = cfg("congestion_control = \"cu bic\"", "", "");
    one_error(
        &malformed,
        "congestion_control",
        "\"cu bic\" is not a congestion control name",
    );
    let wrong_type = cfg("congestion_control = 3", "", "");
    one_error(
        &wrong_type,
        "congestion_control",
        "expected a string, found an integer",
    );
}

#[test]
fn health_check_defaults_follow_design() {
    let c = parse(&cfg("", "[target_group.health_check]", "")).unwrap();
    let h = c.target_groups[0].health_check.clone().unwrap();
    assert_eq!(h.protocol, HealthProtocol::Http);
    assert_eq!(h.path, "/");
    assert_eq!(h.interval, Duration::from_secs(5));
    assert_eq!(h.timeout, Duration::from_secs(2));
    assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (3, 2));
    assert!(h.matcher.matches(200) && h.matcher.matches(399) && !h.matcher.matches(400));
}

#[test]
fn example_parses_with_its_values() {
    let c = parse(example()).unwrap();
    assert_eq!(
        c.admin.as_ref().unwrap().bind,
        "127.0.0.1:9901".parse().unwrap()
    );
    let web = c.listener("web").unwrap();
    assert_eq!(web.access_log.as_deref(), Some("-"));
    assert_eq!(
        web.limits.deny,
        vec!["192.0.2.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    let prios: Vec<u32> = web.rules.iter().map(|r| r.priority).collect();
    assert_eq!(prios, vec![10, 20, 30, 40]);
    assert_eq!(
        web.rules[1].action,
        Action::Forward(vec![
            WeightedGroup {
                target_group: "app".into(),
                weight: 90
            },
            WeightedGroup {
                target_group: "api".into(),
                weight: 10
            },
        ])
    );
    assert_eq!(
        web.rules[2].conditions.header,
        vec![("X-Force-Https".to_string(), "1".to_string())]
    );
    assert_eq!(
        web.rules[2].action,
        Action::Redirect(Redirect {
            protocol: Some("https".into()),
            host: None,
            port: Some(443),
            path: None,
            query: None,
            status: 301
        })
    );
    let db = c.listener("db").unwrap();
    assert_eq!(db.protocol, ListenerProtocol::Tcp);
    let api = c.target_group("api").unwrap();
    assert_eq!(
        api.targets,
        vec![TargetSpec::Dns {
            host: "localhost".into(),
            port: 4000,
            refresh: Duration::from_secs(10),
            weight: 1
        }]
    );
    let pg = c.target_group("postgres").unwrap();
    assert_eq!(pg.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(
        pg.health_check.as_ref().unwrap().protocol,
        HealthProtocol::Tcp
    );
}

#[test]
fn rules_are_sorted_by_priority_and_read_every_condition() {
    let rules = "[[listener.rule]]\npriority = 20\nmethod = [\"POST\"]\nquery = { debug = \"1\" }\n\
                 fixed_response = { status = 404 }\n\
                 [[listener.rule]]\npriority = 5\nsource_ip = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.168.1.7\"]\n\
                 forward = \"app\"\n";
    let c = parse(&cfg(rules, "", "")).unwrap();
    let r = &c.listeners[0].rules;
    assert_eq!((r[0].priority, r[1].priority), (5, 20));
    let nets: Vec<String> = r[0]
        .conditions
        .source_ip
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]);
    assert_eq!(r[1].conditions.method, ["POST"]);
    assert_eq!(
        r[1].conditions.query,
        [("debug".to_string(), "1".to_string())]
    );
    assert_eq!(
        r[1].action,
        Action::FixedResponse(FixedResponse {
            status: 404,
            body: String::new(),
            content_type: "text/plain".into()
        })
    );
}

#[test]
fn targets_in_all_three_forms() {
    let g = "[[target_group]]\nname = \"b\"\ntargets = [\"[::1]:80\", { address = \"10.0.0.2:81\", weight = 7 }, \
             { dns = \"app.internal:3000\", refresh = \"1m\", weight = 3 }]";
    let c = parse(&cfg("", "", g)).unwrap();
    assert_eq!(
        c.target_group("b").unwrap().targets,
        vec![
            TargetSpec::Static {
                address: "[::1]:80".parse().unwrap(),
                weight: 1
            },
            TargetSpec::Static {
                address: "10.0.0.2:81".parse().unwrap(),
                weight: 7
            },
            TargetSpec::Dns {
                host: "app.internal".into(),
                port: 3000,
                refresh: Duration::from_secs(60),
                weight: 3
            },
        ]
    );
}

#[test]
fn syntax_error_names_its_line() {
    let text = cfg("backlog = = 3", "", "");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.starts_with("invalid TOML"), "{e}");
    assert_eq!(e.0[0].line, line_of(&text, "backlog"));
}

#[test]
fn unknown_fields_are_rejected_at_every_level() {
    let t = cfg("colour = \"red\"", "", "");
    one_error(&t, "colour", "listener 'web': unknown field `colour`");
    let t = cfg("", "", "[listeners]\nx = 1");
    one_error(&t, "[listeners]", "unknown field `listeners`");
    let t = cfg("", "", "[runtime]\nthreads = 4");
    one_error(
        &t,
        "threads",
        "runtime: unknown field `threads`; expected one of: workers",
    );
    let t = cfg("[listener.limits]\nmax_body = \"1MiB\"", "", "");
    one_error(
        &t,
        "max_body",
        "listener 'web': limits: unknown field `max_body`",
    );
    let t = cfg("", "", "[admin]\nbind = \"127.0.0.1:9901\"\nport = 1");
    one_error(&t, "port = 1", "admin: unknown field `port`");
    let t = cfg(
        "",
        "targets = [{ address = \"127.0.0.1:3001\", wieght = 2 }]",
        "",
    );
    let t = t.replacen("targets = [\"127.0.0.1:3000\"]\n", "", 1);
    one_error(
        &t,
        "wieght",
        "target_group 'app': targets[0]: unknown field `wieght`",
    );
    let t = cfg("", "[target_group.health_check]\nport = 80", "");
    one_error(&t, "port = 80", "health_check: unknown field `port`");
    let t = cfg(
        "[[listener.rule]]\npriority = 1\npath = [\"/\"]\nforward = \"app\"\nhosts = [\"a\"]",
        "",
        "",
    );
    one_error(&t, "hosts", "rule[0] (priority 1): unknown field `hosts`");
}

#[test]
fn wrong_types_name_the_field() {
    let t = cfg("", "", "[runtime]\nworkers = \"four\"");
    one_error(
        &t,
        "workers",
        "runtime: workers: expected an integer, found a string",
    );
    let t = cfg("accept_proxy_protocol = \"yes\"", "", "");
    one_error(&t, "accept_proxy_protocol", "expected true or false");
    let t = cfg("defer_accept = 1", "", "");
    one_error(&t, "defer_accept", "expected true or false");
    let on = parse(&cfg("defer_accept = true", "", "")).expect("defer_accept = true");
    assert!(on.listeners[0].defer_accept);
    assert!(
        on.listeners[0].warnings().is_empty(),
        "clients speak first over HTTP"
    );
    let tcp_group = "protocol = \"tcp\"";
    let tcp = parse(&cfg(
        "protocol = \"tcp\"\ndefer_accept = true",
        tcp_group,
        "",
    ))
    .expect("tcp");
    let w = tcp.listeners[0].warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("listener 'web'") && w[0].contains("server speaks first"),
        "{w:?}"
    );
    let plain_tcp = parse(&cfg("protocol = \"tcp\"", tcp_group, "")).expect("tcp");
    assert!(plain_tcp.listeners[0].warnings().is_empty());
    let t = cfg("", "", "[runtime]\ndrain_timeout = 30");
    one_error(&t, "drain_timeout", "expected a duration string");
    let t = "[listener]\nname = \"x\"\n";
    one_error(
        t,
        "[listener]",
        "listener: expected an array of tables (write [[listener]]",
    );
}

#[test]
fn missing_required_fields_point_at_their_table() {
    let t = "[[listener]]\nname = \"web\"\ntarget_group = \"app\"\n[[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:1\"]\n";
    one_error(
        t,
        "[[listener]]",
        "listener 'web': missing required field `bind`",
    );
    let t = cfg("", "", "[[target_group]]\ntargets = [\"127.0.0.1:1\"]");
    one_error(
        &t,
        "[[target_group]]\ntargets",
        "target_group[1]: missing required field `name`",
    );
}

#[test]
fn bad_durations_and_sizes() {
    let t = cfg("[listener.limits]\nheader_timeout = \"10 seconds\"", "", "");
    one_error(
        &t,
        "header_timeout",
        "limits: header_timeout: duration \"10 seconds\" has unknown unit",
    );
    let t = cfg("[listener.limits]\nidle_timeout = \"-1s\"", "", "");
    one_error(&t, "idle_timeout", "non-negative");
    let t = cfg("[listener.limits]\nmax_body_bytes = \"10 MB\"", "", "");
    one_error(
        &t,
        "max_body_bytes",
        "max_body_bytes: size \"10 MB\" has unknown unit",
    );
    let t = cfg("[listener.limits]\nmax_body_bytes = \"1.5GiB\"", "", "");
    one_error(&t, "max_body_bytes", "whole number");
}

#[test]
fn names_must_be_unique_and_well_formed() {
    let t = cfg(
        "",
        "",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8081\"\ntarget_group = \"app\"",
    );
    one_error(
        &t,
        "name = \"web\"\nbind = \"127.0.0.1:8081\"",
        "name 'web' is already used by another listener (line 2)",
    );
    let t = cfg(
        "",
        "",
        "[[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:1\"]",
    );
    one_error(
        &t,
        "name = \"app\"\ntargets = [\"127.0.0.1:1\"]",
        "name 'app' is already used by another target group",
    );
    let t = cfg(
        "",
        "",
        "[[target_group]]\nname = \"a b\"\ntargets = [\"127.0.0.1:1\"]",
    );
    one_error(&t, "a b", "is not a valid name");
}

#[test]
fn undefined_target_groups() {
    let t = cfg("", "", "").replace("target_group = \"app\"", "target_group = \"ap\"");
    one_error(
        &t,
        "\"ap\"",
        "listener 'web': target_group 'ap' is not defined",
    );
    let e = parse(&t).unwrap_err();
    assert_eq!(e.0[0].column, 16, "column of the value in {e}");
    let t = cfg(
        "[[listener.rule]]\npriority = 3\npath = [\"/x\"]\nforward = [{ target_group = \"nope\" }]",
        "",
        "",
    );
    one_error(
        &t,
        "\"nope\"",
        "rule[0] (priority 3): target_group 'nope' is not defined",
    );
}

#[test]
fn listener_tls_iff_https() {
    let t = cfg("[listener.tls]\ncertificates = []", "", "");
    let e = parse(&t).unwrap_err().to_string();
    assert!(
        e.contains("tls: only https listeners take TLS settings"),
        "{e}"
    );
    assert!(e.contains("certificates: list at least one"), "{e}");
    let t = cfg("protocol = \"https\"", "", "");
    one_error(
        &t,
        "\"https\"",
        "an https listener needs a [listener.tls] table",
    );
}

#[test]
fn bind_addresses() {
    let t = cfg("", "", "").replace("127.0.0.1:8080", "localhost:8080");
    one_error(
        &t,
        "localhost",
        "bind: \"localhost:8080\" is not a socket address",
    );
    // Port 0 binds an ephemeral port (tests, `ringlb demo`): allowed.
    let t = cfg("", "", "").replace("127.0.0.1:8080", "127.0.0.1:0");
    assert!(parse(&t).is_ok());
    let second = "[[listener]]\nname = \"two\"\nbind = \"0.0.0.0:8080\"\ntarget_group = \"app\"";
    one_error(
        &cfg("", "", second),
        "0.0.0.0:8080",
        "listener 'two': bind: 0.0.0.0:8080 clashes with 127.0.0.1:8080 of listener 'web'",
    );
    let other_port = second.replace(":8080", ":8081");
    assert!(parse(&cfg("", "", &other_port)).is_ok());
    let v6 = second.replace("0.0.0.0:8080", "[::1]:8080");
    let dual = second.replace("0.0.0.0:8080", "[::]:8080");
    one_error(
        &cfg("", "", &dual),
        "[::]:8080",
        "clashes with 127.0.0.1:8080",
    );
    assert!(
        parse(&cfg("", "", &v6)).is_ok(),
        "different address families do not clash"
    );
    let admin = "[admin]\nbind = \"127.0.0.1:8080\"";
    one_error(
        &cfg("", "", admin),
        "127.0.0.1:8080",
        "listener 'web': bind: 127.0.0.1:8080 clashes with 127.0.0.1:8080 of admin",
    );
    one_error(
        &cfg("", "", "[admin]\nbind = \"nowhere\""),
        "nowhere",
        "admin: bind: \"nowhere\" is not a socket address",
    );
}

#[test]
fn all_errors_are_reported_together_in_line_order() {
    let t = cfg(
        "backlog = 0\nbind2 = 1",
        "retries = 99",
        "[runtime]\nworkers = 5000",
    )
    .replace("target_group = \"app\"", "target_group = \"missing\"");
    let e = parse(&t).unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        vec![
            line_of(&t, "missing"),
            line_of(&t, "backlog"),
            line_of(&t, "bind2"),
            line_of(&t, "retries"),
            line_of(&t, "workers")
        ],
        "{e}"
    );
    assert!(e.0[4].message.starts_with("runtime: workers: 5000"), "{e}");
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 5);
    assert!(
        shown.lines().all(|l| l.starts_with("ringlb.toml:")),
        "{shown}"
    );
}

#[test]
fn error_display_format() {
    let e = ConfigError {
        file: "ringlb.toml".into(),
        line: 14,
        column: 16,
        message: "listener 'web': target_group 'ap' is not defined".into(),
    };
    assert_eq!(
        e.to_string(),
        "ringlb.toml:14:16: listener 'web': target_group 'ap' is not defined"
    );
    let whole = ConfigError {
        line: 0,
        column: 0,
        ..e
    };
    assert!(whole.to_string().starts_with("ringlb.toml: listener"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let t = cfg("", "", "")
        .replace("name = \"web\"", "# ünïcödé\nname = \"web\"")
        .replace("bind = \"127.0.0.1:8080\"", "bind    = \"x\" # é");
    let e = parse(&t).unwrap_err();
    assert_eq!(
        (e.0[0].line, e.0[0].column),
        (line_of(&t, "bind"), 11),
        "{e}"
    );
}

mod validation;

#[test]
fn every_truncation_of_the_example_gives_errors_not_panics() {
    let text = example();
    let lines = text.lines().count() + 1;
    let mut refused = 0;
    for (cut, _) in text.char_indices().step_by(7) {
        if let Err(e) = parse(&text[..cut]) {
            refused += 1;
            assert!(!e.0.is_empty());
            for err in &e.0 {
                assert!((1..=lines).contains(&err.line), "{err} for cut {cut}");
                assert!(err.column >= 1, "{err}");
            }
        }
    }
    assert!(
        refused > 100,
        "most prefixes cut a field or a table in half"
    );
}

#[test]
fn http2_is_a_switch_or_a_table_of_settings() {
    let c = parse(&cfg("", "", "")).expect("valid");
    assert!(
        !c.listeners[0].http2,
        "h2c is off by default on http listeners"
    );
    let c = parse(&cfg("http2 = true", "", "")).expect("valid");
    assert!(c.listeners[0].http2);
    assert_eq!(c.listeners[0].http2_settings.max_concurrent_streams, 128);
    let c = parse(&cfg(
        "  [listener.http2]\n  max_concurrent_streams = 64",
        "",
        "",
    ))
    .expect("valid");
    assert!(c.listeners[0].http2, "a settings table turns it on");
    assert_eq!(c.listeners[0].http2_settings.max_concurrent_streams, 64);
    let c = parse(&cfg("  [listener.http2]\n  enabled = false", "", "")).expect("valid");
    assert!(!c.listeners[0].http2);
}

#[test]
fn http2_mistakes_are_located() {
    let t = cfg("  [listener.http2]\n  max_concurrent_streams = 0", "", "");
    one_error(&t, "max_concurrent_streams", "max_concurrent_streams");
    let t = cfg("  [listener.http2]\n  streams = 5", "", "");
    one_error(&t, "streams = 5", "unknown field `streams`");
    let t = cfg("protocol = \"tcp\"\nhttp2 = true", "protocol = \"tcp\"", "");
    one_error(&t, "http2 = true", "tcp listeners forward bytes");
    let t = cfg("http2 = \"yes\"", "", "");
    one_error(&t, "http2 = ", "expected a table");
}

#[test]
fn client_certificate_fields_cannot_be_matched_or_rewritten_from_the_config() {
    // A header condition would match what a client forged (those fields are dropped, not
    // trusted): the subject has its own condition.
    one_error(
        &cfg(
            "[[listener.rule]]\npriority = 1\nheader = { \"X-Client-Cert-Fingerprint\" = \"ab*\" }\nforward = \"app\"",
            "",
            "",
        ),
        "header =",
        "client_cert_subject",
    );
    for rewrite in [
        "request_headers = { set = { \"x-client-cert-subject\" = \"CN=admin\" } }",
        "request_headers = { remove = [\"X_Client_Cert\"] }",
    ] {
        one_error(
            &cfg(rewrite, "", ""),
            "request_headers",
            "verified client certificate",
        );
    }
    // A subject condition on a listener that verifies no client certificate never holds.
    one_error(
        &cfg(
            "[[listener.rule]]\npriority = 1\nclient_cert_subject = [\"CN=a*\"]\nforward = \"app\"",
            "",
            "",
        ),
        "[[listener]]",
        "verifies no client certificates",
    );
}
