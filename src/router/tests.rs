//! Unit tests of rule compilation and evaluation over parsed configs and parsed request heads,
//! plus the 1,000-rule micro-benchmark (`--ignored`). Run on the test threads; no sockets.

use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use super::*;
use crate::config::Config;
use crate::http::parse::{parse_request, HeadLimits};

fn limits() -> HeadLimits {
    HeadLimits {
        max_header_bytes: 64 * 1024,
        max_headers: 100,
        max_uri_bytes: 8 * 1024,
    }
}

/// A router over `rules` (TOML `[[listener.rule]]` tables), with groups app, a, b, c.
fn router(rules: &str) -> Router {
    let text = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n{rules}\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:1\"]\n\
         [[target_group]]\nname = \"a\"\ntargets = [\"127.0.0.1:2\"]\n\
         [[target_group]]\nname = \"b\"\ntargets = [\"127.0.0.1:3\"]\n\
         [[target_group]]\nname = \"c\"\ntargets = [\"127.0.0.1:4\"]\n"
    );
    let config = Config::parse(&text, Path::new("t.toml")).expect("test config parses");
    let table = Table::build(&config, 1);
    let default = table.group("app").cloned().expect("app group");
    Router::build(&config.listeners[0].rules, default, &table).expect("rules compile")
}

/// What `raw` routes to, from `ip`: "group:NAME", "redirect:LOCATION-ish" or "fixed:STATUS".
fn route_from(r: &Router, raw: &str, ip: &str) -> String {
    let mut head = RequestHead::new();
    let buf = raw.as_bytes();
    parse_request(buf, &limits(), &mut head)
        .expect("valid request")
        .expect("complete request");
    let view = RequestView {
        buf,
        head: &head,
        source: ip.parse::<IpAddr>().expect("ip"),
        client_cert_subject: None,
    };
    match r.route(&view) {
        Route::Forward(g, _) => format!("group:{}", g.name),
        Route::Redirect(rd) => format!("redirect:{}", rd.status),
        Route::Fixed(f) => format!("fixed:{}", f.status),
    }
}

fn route(r: &Router, raw: &str) -> String {
    route_from(r, raw, "192.0.2.1")
}

fn get(host: &str, target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

#[test]
fn host_conditions_exact_and_wildcard_ignore_case_and_port() {
    let r = router(
        "[[listener.rule]]\npriority = 1\nhost = [\"api.example.com\"]\nforward = \"a\"\n\
         [[listener.rule]]\npriority = 2\nhost = [\"*.example.org\"]\nforward = \"b\"\n\
         [[listener.rule]]\npriority = 3\nhost = [\"w?b-*.test\"]\nforward = \"c\"\n",
    );
    assert_eq!(route(&r, &get("api.example.com", "/")), "group:a");
    assert_eq!(route(&r, &get("API.Example.COM:8080", "/")), "group:a");
    assert_eq!(route(&r, &get("www.example.org", "/")), "group:b");
    assert_eq!(route(&r, &get("a.b.EXAMPLE.org:443", "/")), "group:b");
    assert_eq!(route(&r, &get("example.org", "/")), "group:app");
    assert_eq!(route(&r, &get("web-1.test", "/")), "group:c");
    assert_eq!(route(&r, &get("other.example.com", "/")), "group:app");
    assert_eq!(route(&r, "GET / HTTP/1.0\r\n\r\n"), "group:app");
}

#[test]
fn path_conditions_exact_prefix_and_glob() {
    let r = router(
        "[[listener.rule]]\npriority = 1\npath = [\"/api/*\"]\nforward = \"a\"\n\
         [[listener.rule]]\npriority = 2\npath = [\"/login\"]\nforward = \"b\"\n\
         [[listener.rule]]\npriority = 3\npath = [\"*.png\"]\nforward = \"c\"\n",
    );
    assert_eq!(route(&r, &get("h", "/api/v1/users?x=1")), "group:a");
    assert_eq!(route(&r, &get("h", "/api")), "group:app");
    assert_eq!(route(&r, &get("h", "/login")), "group:b");
    assert_eq!(route(&r, &get("h", "/login/x")), "group:app");
    assert_eq!(route(&r, &get("h", "/LOGIN")), "group:app");
    assert_eq!(route(&r, &get("h", "/img/logo.png")), "group:c");
    assert_eq!(route(&r, &get("h", "/api/logo.png")), "group:a");
}

#[test]
fn method_header_query_and_source_conditions() {
    let r = router(
        "[[listener.rule]]\npriority = 1\nmethod = [\"POST\", \"put\"]\nforward = \"a\"\n\
         [[listener.rule]]\npriority = 2\nheader = { x-canary = \"yes*\" }\nforward = \"b\"\n\
         [[listener.rule]]\npriority = 3\nquery = { version = \"2\" }\nforward = \"c\"\n\
         [[listener.rule]]\npriority = 4\nsource_ip = [\"10.0.0.0/8\"]\nfixed_response = { status = 403 }\n",
    );
    assert_eq!(
        route(
            &r,
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        ),
        "group:a"
    );
    assert_eq!(route(&r, "PUT / HTTP/1.1\r\nHost: h\r\n\r\n"), "group:a");
    assert_eq!(
        route(
            &r,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Canary: YES-please\r\n\r\n"
        ),
        "group:b"
    );
    assert_eq!(
        route(&r, "GET / HTTP/1.1\r\nHost: h\r\nX-Canary: no\r\n\r\n"),
        "group:app"
    );
    assert_eq!(route(&r, &get("h", "/x?a=1&version=2")), "group:c");
    assert_eq!(route(&r, &get("h", "/x?version=20")), "group:app");
    assert_eq!(route_from(&r, &get("h", "/"), "10.1.2.3"), "fixed:403");
    assert_eq!(
        route_from(&r, &get("h", "/"), "::ffff:10.1.2.3"),
        "fixed:403"
    );
    assert_eq!(route_from(&r, &get("h", "/"), "11.1.2.3"), "group:app");
}

#[test]
fn client_cert_subject_conditions_match_the_verified_subject_only() {
    // Parsed with a path condition (a subject condition needs a mutual-TLS listener), then
    // given the subject globs.
    let text = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\
         [[listener.rule]]\npriority = 1\npath = [\"/admin/*\"]\nforward = \"a\"\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:1\"]\n\
         [[target_group]]\nname = \"a\"\ntargets = [\"127.0.0.1:2\"]\n";
    let mut config = Config::parse(text, Path::new("t.toml")).expect("parses");
    config.listeners[0].rules[0].conditions.client_cert_subject =
        vec!["CN=admin*".to_string(), "*,OU=ops,*".to_string()];
    let table = Table::build(&config, 1);
    let default = table.group("app").cloned().expect("app");
    let r = Router::build(&config.listeners[0].rules, default, &table).expect("compiles");
    let raw = b"GET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut head = RequestHead::new();
    parse_request(raw, &limits(), &mut head)
        .expect("valid")
        .expect("complete");
    let to = |subject: Option<&str>| match r.route(&RequestView {
        buf: raw,
        head: &head,
        source: "10.0.0.1".parse().expect("ip"),
        client_cert_subject: subject
            .map(|s| crate::tls::client_auth::dn_match_form(s.as_bytes()))
            .as_deref(),
    }) {
        Route::Forward(g, _) => g.name.clone(),
        _ => "answer".to_string(),
    };
    assert_eq!(to(Some("CN=admin-1,O=Example,C=US")), "a");
    assert_eq!(to(Some("cn=ADMIN,O=Example")), "a", "case-insensitive");
    assert_eq!(to(Some("CN=bob,OU=ops,O=Example")), "a");
    assert_eq!(to(Some("CN=bob,OU=dev,O=Example")), "app");
    assert_eq!(
        to(None),
        "app",
        "no certificate: the condition does not hold"
    );
    // A separator escaped inside a value is not a separator: this CN cannot pass for an
    // OU=ops RDN.
    assert_eq!(to(Some("CN=bob\\,OU=ops\\,x,O=Example")), "app");
    assert_eq!(
        to(Some("CN=x\\\\,OU=ops,O=Example")),
        "a",
        "an escaped backslash, then a real separator"
    );
}

#[test]
fn all_conditions_of_a_rule_must_hold_and_priority_decides() {
    let r = router(
        "[[listener.rule]]\npriority = 20\npath = [\"/api/*\"]\nforward = \"b\"\n\
         [[listener.rule]]\npriority = 10\nhost = [\"api.test\"]\npath = [\"/api/*\"]\nmethod = [\"GET\"]\nforward = \"a\"\n\
         [[listener.rule]]\npriority = 30\nhost = [\"api.test\"]\nredirect = { protocol = \"https\" }\n",
    );
    assert_eq!(route(&r, &get("api.test", "/api/x")), "group:a");
    assert_eq!(
        route(&r, "DELETE /api/x HTTP/1.1\r\nHost: api.test\r\n\r\n"),
        "group:b"
    );
    assert_eq!(route(&r, &get("other.test", "/api/x")), "group:b");
    assert_eq!(route(&r, &get("api.test", "/home")), "redirect:301");
}

#[test]
fn weighted_forward_splits_by_weight() {
    let r = router(
        "[[listener.rule]]\npriority = 1\npath = [\"/*\"]\n\
         forward = [{ target_group = \"a\", weight = 90 }, { target_group = \"b\", weight = 10 }]\n",
    );
    let mut a = 0;
    for _ in 0..10_000 {
        if route(&r, &get("h", "/x")) == "group:a" {
            a += 1;
        }
    }
    assert!((8_700..=9_300).contains(&a), "a got {a} of 10000");
}

/// 1,000 rules over distinct hosts and paths, the last one matching, plus wildcard rules that
/// every request must consider.
fn thousand_rules() -> Router {
    let mut rules = String::new();
    for i in 0..1000 {
        let p = i + 1;
        match i % 4 {
            0 => writeln!(
                rules,
                "[[listener.rule]]\npriority = {p}\nhost = [\"h{i}.example.com\"]\nforward = \"a\""
            ),
            1 => writeln!(
                rules,
                "[[listener.rule]]\npriority = {p}\npath = [\"/svc{i}/*\"]\nforward = \"b\""
            ),
            2 => writeln!(
                rules,
                "[[listener.rule]]\npriority = {p}\nhost = [\"*.z{i}.example.net\"]\nforward = \"b\""
            ),
            _ => writeln!(
                rules,
                "[[listener.rule]]\npriority = {p}\nheader = {{ x-tenant = \"t{i}\" }}\nforward = \"c\""
            ),
        }
        .expect("write to String");
    }
    router(&rules)
}

#[test]
fn a_thousand_rules_route_correctly() {
    let r = thousand_rules();
    assert_eq!(route(&r, &get("h996.example.com", "/")), "group:a");
    assert_eq!(route(&r, &get("x", "/svc997/a")), "group:b");
    assert_eq!(route(&r, &get("a.b.z998.example.net", "/")), "group:b");
    assert_eq!(
        route(&r, "GET / HTTP/1.1\r\nHost: x\r\nX-Tenant: t999\r\n\r\n"),
        "group:c"
    );
    assert_eq!(route(&r, &get("nothing.example.com", "/none")), "group:app");
}

/// Micro-benchmark: `cargo test --release --lib router::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_thousand_rules_evaluation() {
    let r = thousand_rules();
    let requests = [
        get("h996.example.com", "/"),
        get("x", "/svc997/a"),
        get("a.b.z998.example.net", "/"),
        get("nothing.example.com", "/none/at/all?q=1"),
    ];
    let heads: Vec<(Vec<u8>, RequestHead)> = requests
        .iter()
        .map(|raw| {
            let mut head = RequestHead::new();
            parse_request(raw.as_bytes(), &limits(), &mut head)
                .expect("valid")
                .expect("complete");
            (raw.as_bytes().to_vec(), head)
        })
        .collect();
    let source: IpAddr = "192.0.2.1".parse().expect("ip");
    let rounds = 200_000;
    let started = Instant::now();
    let mut forwards = 0usize;
    for i in 0..rounds {
        let (buf, head) = &heads[i % heads.len()];
        let view = RequestView {
            buf,
            head,
            source,
            client_cert_subject: None,
        };
        if let Route::Forward(..) = std::hint::black_box(r.route(&view)) {
            forwards += 1;
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / rounds as f64;
    println!("rule evaluation with 1,000 rules: {ns:.0} ns per request");
    assert_eq!(forwards, rounds);
    // The worst of these requests still scans only the 250 header rules, not all 1,000.
    assert!(ns < 20_000.0, "{ns} ns per evaluation");
}

#[test]
fn many_candidate_lists_fall_back_to_trying_every_rule_in_order() {
    let mut rules = String::new();
    for i in 0..40 {
        let group = if i == 3 { "b" } else { "a" };
        writeln!(
            rules,
            "[[listener.rule]]\npriority = {}\nheader = {{ x-t = \"v{i}\" }}\nforward = \"{group}\"",
            i + 1
        )
        .expect("write to String");
    }
    let r = router(&rules);
    // 30 matching header values: more candidate lists than the index merges at once.
    let headers: String = (3..33).rev().map(|i| format!("X-T: v{i}\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
    assert_eq!(route(&r, &raw), "group:b");
    assert_eq!(
        route(&r, "GET / HTTP/1.1\r\nHost: h\r\nX-T: V3\r\n\r\n"),
        "group:b"
    );
    assert_eq!(
        route(&r, "GET / HTTP/1.1\r\nHost: h\r\nX-T: v99\r\n\r\n"),
        "group:app"
    );
}
