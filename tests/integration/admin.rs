//! The admin API (DESIGN §6): status JSON, Prometheus metrics, HDR latency, registration and
//! deregistration, the bearer token and JSON errors.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

#[test]
fn health_and_status_shape() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], "", ""));
    let admin = p.admin();
    let r = admin_request(admin, "GET", "/health", None, None);
    assert_eq!((r.status, r.text().trim()), (200, "ok"));

    let mut c = Client::connect(p.addr);
    assert_eq!(c.get("/").status, 200);
    let s = status(admin);
    let groups = s["target_groups"].as_array().expect("target_groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "app");
    let t = &groups[0]["targets"][0];
    let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "address",
            "in_flight",
            "reason",
            "requests",
            "state",
            "weight"
        ]
    );
    assert_eq!(t["address"], a.addr.to_string());
    assert_eq!(t["state"], "healthy");
    assert_eq!(t["weight"], 1);
    assert_eq!(t["requests"], 1);
    // The worker ends the request's count just after the last byte went to the client.
    wait_for(Duration::from_secs(2), "in_flight back to 0", || {
        target_status(admin, a.addr).is_some_and(|t| t["in_flight"] == 0)
    });
    let l = &s["listeners"][0];
    assert_eq!(l["name"], "web");
    assert_eq!(l["bind"], p.addr.to_string());
    assert_eq!(l["connections"], 1, "the open client connection");
    drop(c);
    wait_for(
        Duration::from_secs(3),
        "the closed connection to leave /status",
        || status(admin)["listeners"][0]["connections"] == 0,
    );
}

#[test]
fn register_then_deregister_with_a_request_in_flight() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let group = format!(
        "deregistration_delay = \"20s\"\n{}",
        health_check(100, 2, 2)
    );
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], &group, ""));
    let admin = p.admin();
    wait_state(admin, a.addr, "healthy");

    let body = format!("{{\"address\":\"{}\",\"weight\":1}}", b.addr);
    let r = admin_request(
        admin,
        "POST",
        "/target_groups/app/targets",
        Some(&body),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(t["address"], b.addr.to_string());
    assert_eq!(t["state"], "initial");
    assert_eq!(t["reason"], "Elb.InitialHealthChecking");
    let r = admin_request(
        admin,
        "POST",
        "/target_groups/app/targets",
        Some(&body),
        None,
    );
    assert_eq!(r.status, 409, "duplicate: {}", r.text());

    wait_state(admin, b.addr, "healthy");
    let mut c = Client::connect(p.addr);
    wait_for(
        Duration::from_secs(2),
        "traffic to the registered target",
        || c.get("/").text() == "b",
    );

    // Two slow requests at once: round robin sends one to each target.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = p.addr;
            std::thread::spawn(move || get(addr, "/slow/700"))
        })
        .collect();
    // b must hold the slow request itself: `in_flight` alone can still show the tail of the
    // last quick request (its count ends just after its last byte went to the client).
    wait_for(Duration::from_secs(3), "the slow request at b", || {
        b.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.target == "/slow/700")
    });
    wait_for(Duration::from_secs(3), "a request in flight to b", || {
        target_status(admin, b.addr).is_some_and(|t| t["in_flight"] == 1)
    });
    let path = format!("/target_groups/app/targets/{}", b.addr);
    let r = admin_request(admin, "DELETE", &path, None, None);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        target_state(admin, b.addr),
        (
            "draining".to_string(),
            "Target.DeregistrationInProgress".to_string()
        )
    );
    let before = b.traffic();
    let mut c = Client::connect(p.addr);
    for _ in 0..10 {
        assert_eq!(
            c.get("/").text(),
            "a",
            "a draining target takes no new request"
        );
    }
    assert_eq!(b.traffic(), before);
    let mut bodies: Vec<String> = slow
        .into_iter()
        .map(|t| {
            let r = t.join().unwrap();
            assert_eq!(r.status, 200, "the in-flight request finished");
            r.text()
        })
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["a", "b"]);
    // Its last request done, it leaves well before the 20 s delay.
    wait_for(Duration::from_secs(3), "b to leave /status", || {
        target_status(admin, b.addr).is_none()
    });
    let r = admin_request(admin, "DELETE", &path, None, None);
    assert_eq!(r.status, 404, "already gone: {}", r.text());
}

#[test]
fn a_target_registered_without_health_check_is_healthy_at_once() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], "", ""));
    let body = format!("{{\"address\":\"{}\",\"weight\":3}}", b.addr);
    let r = admin_request(
        p.admin(),
        "POST",
        "/target_groups/app/targets",
        Some(&body),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (t["state"].as_str(), t["weight"].as_u64()),
        (Some("healthy"), Some(3))
    );
    let mut c = Client::connect(p.addr);
    let mut counts = HashMap::new();
    for _ in 0..40 {
        *counts.entry(c.get("/").text()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("b"), Some(&30), "weight 3 of 4: {counts:?}");
}

#[test]
fn token_is_required_when_set() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(
        &[a.addr.to_string()],
        "",
        "token = \"s3cret\"",
    ));
    let admin = p.admin();
    for path in ["/health", "/status", "/metrics", "/latency?listener=web"] {
        for token in [None, Some("wrong"), Some("s3cre")] {
            let r = admin_request(admin, "GET", path, None, token);
            assert_eq!(r.status, 401, "{path} with {token:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(e["error"].as_str().unwrap().contains("Bearer"));
        }
        let r = admin_request(admin, "GET", path, None, Some("s3cret"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let body = format!("{{\"address\":\"{}\"}}", "127.0.0.1:9");
    let r = admin_request(
        admin,
        "POST",
        "/target_groups/app/targets",
        Some(&body),
        None,
    );
    assert_eq!(r.status, 401, "writes need the token too");
    assert_eq!(
        status_with(admin, "s3cret")["target_groups"][0]["targets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

fn status_with(admin: std::net::SocketAddr, token: &str) -> serde_json::Value {
    let r = admin_request(admin, "GET", "/status", None, Some(token));
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn errors_are_json_with_the_right_status() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], "", ""));
    let admin = p.admin();
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/target_groups/app/targets", Some("not json"), 400),
        (
            "POST",
            "/target_groups/app/targets",
            Some("{\"address\":\"nope\"}"),
            400,
        ),
        (
            "POST",
            "/target_groups/app/targets",
            Some("{\"address\":\"127.0.0.1:0\"}"),
            400,
        ),
        (
            "POST",
            "/target_groups/app/targets",
            Some("{\"address\":\"127.0.0.1:9\",\"weight\":0}"),
            400,
        ),
        (
            "POST",
            "/target_groups/app/targets",
            Some("{\"adress\":\"127.0.0.1:9\"}"),
            400,
        ),
        (
            "POST",
            "/target_groups/nope/targets",
            Some("{\"address\":\"127.0.0.1:9\"}"),
            404,
        ),
        (
            "DELETE",
            "/target_groups/app/targets/127.0.0.1:9",
            None,
            404,
        ),
        ("DELETE", "/target_groups/app/targets/garbage", None, 400),
        (
            "DELETE",
            "/target_groups/nope/targets/127.0.0.1:9",
            None,
            404,
        ),
        ("GET", "/target_groups/app/targets", None, 405),
        ("PUT", "/status", None, 405),
        ("POST", "/metrics", None, 405),
        ("GET", "/reload", None, 405),
        // The in-process config names no real file: refused, and the running config is kept.
        ("POST", "/reload", None, 400),
        ("GET", "/nothing-here", None, 404),
        ("GET", "/latency?listener=nope", None, 404),
        ("GET", "/latency", None, 400),
    ];
    for &(method, path, body, want) in cases {
        let r = admin_request(admin, method, path, body, None);
        assert_eq!(r.status, want, "{method} {path}: {}", r.text());
        let e: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", r.text()));
        let msg = e["error"].as_str().expect("an error message");
        assert!(!msg.is_empty());
        if want == 405 {
            assert!(r.header("allow").is_some(), "405 names what is allowed");
        }
    }
    // A body over 64 KiB is refused without being read whole.
    let big = "x".repeat(64 * 1024 + 1);
    let r = admin_request(
        admin,
        "POST",
        "/target_groups/app/targets",
        Some(&big),
        None,
    );
    assert_eq!(r.status, 413);
    // Nothing was registered by any of that.
    assert_eq!(
        status(admin)["target_groups"][0]["targets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn latency_is_an_hgrm_distribution() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], "", ""));
    let mut c = Client::connect(p.addr);
    for _ in 0..50 {
        assert_eq!(c.get("/").status, 200);
    }
    let r = admin_request(p.admin(), "GET", "/latency?listener=web", None, None);
    assert_eq!(r.status, 200);
    let text = r.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    let last = rows.last().expect("rows");
    assert_eq!((last[1], last[2]), (1.0, 50.0), "{text}");
    assert!(last[0] > 0.0 && last[0] < 5000.0, "max in ms: {text}");
    assert!(text.contains("#[Max     ="), "{text}");
}

/// A strict reader of the Prometheus text format (0.0.4): returns samples as
/// (name, labels, value), or the first violation.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let valid_name = |n: &str| {
        let mut cs = n.chars();
        cs.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(at("bad metric name".into()));
            }
            if kw == "TYPE" {
                let kind = parts.next().unwrap_or("");
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("bad type".into()));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(at("second TYPE for a family".into()));
                }
                if let Some(c) = current.replace(name.to_string()) {
                    finished.push(c);
                }
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at("bad metric name".into()));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find("=\"").ok_or_else(|| at("bad label".into()))?;
                let lname = &rest[..eq];
                if !valid_name(lname) || lname.contains(':') {
                    return Err(at("bad label name".into()));
                }
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((j, '"')) => break j,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(at("bad escape".into())),
                        },
                        Some((_, '\n')) | None => return Err(at("unterminated label".into())),
                        Some((_, c)) => value.push(c),
                    }
                };
                labels.push((lname.to_string(), value));
                rest = &rest[eq + 2 + end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("bad value".into()))?,
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        if current.as_deref() != Some(family) {
            return Err(at(if finished.iter().any(|f| f == family) {
                "samples of a family split by another".into()
            } else {
                "sample before its family's TYPE".into()
            }));
        }
        samples.push((name.to_string(), labels, v));
    }
    // Histograms: cumulative buckets ending in +Inf equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let key = |labels: &[(String, String)]| {
            labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut series: HashMap<String, Vec<(String, f64)>> = HashMap::new();
        for (n, labels, v) in &samples {
            if *n == format!("{family}_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.clone())
                    .ok_or("a bucket without le")?;
                series.entry(key(labels)).or_default().push((le, *v));
            }
        }
        for (k, buckets) in series {
            let mut last_le = f64::NEG_INFINITY;
            let mut last_count = 0.0;
            for (le, count) in &buckets {
                let le_v: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("bad le {le}"))?
                };
                if le_v <= last_le || *count < last_count {
                    return Err(format!(
                        "{family}{{{k}}}: buckets not cumulative in le order"
                    ));
                }
                last_le = le_v;
                last_count = *count;
            }
            if buckets.last().map(|b| b.0.as_str()) != Some("+Inf") {
                return Err(format!("{family}{{{k}}}: no le=\"+Inf\" bucket last"));
            }
            let count = samples
                .iter()
                .find(|(n, l, _)| *n == format!("{family}_count") && key(l) == k)
                .ok_or_else(|| format!("{family}{{{k}}}: no _count"))?;
            if count.2 != last_count {
                return Err(format!(
                    "{family}{{{k}}}: +Inf bucket {last_count} != _count {}",
                    count.2
                ));
            }
            if !samples
                .iter()
                .any(|(n, l, _)| *n == format!("{family}_sum") && key(l) == k)
            {
                return Err(format!("{family}{{{k}}}: no _sum"));
            }
        }
    }
    Ok(samples)
}

#[test]
fn the_validator_rejects_bad_exposition() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"q\\\"\"} 1\n";
    assert!(parse_prometheus(good).is_ok());
    for bad in [
        "x_total 1\n",
        "# TYPE x counter\n# TYPE x counter\nx 1\n",
        "# TYPE 1x counter\n1x 1\n",
        "# TYPE x counter\nx{a=\"b} 1\n",
        "# TYPE x counter\nx 1\n# TYPE y gauge\ny 1\nx 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let a = Backend::start("a");
    // 404s pass the check, so the target stays healthy while it answers them.
    let group = format!("{}matcher = \"200-499\"\n", health_check(100, 2, 2));
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], &group, ""));
    let admin = p.admin();
    wait_state(admin, a.addr, "healthy");
    let mut c = Client::connect(p.addr);
    for _ in 0..20 {
        assert_eq!(c.get("/").status, 200);
    }
    a.set_status(404);
    for _ in 0..10 {
        assert_eq!(c.get("/").status, 404);
    }
    a.set_status(0);
    let r = admin_request(admin, "GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&r.text()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    let value = |name: &str, want: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .unwrap_or_else(|| panic!("no {name} {want:?}"))
            .2
    };
    let web = ("listener", "web");
    assert_eq!(
        value("ringlb_responses_total", &[web, ("class", "2xx")]),
        20.0
    );
    assert_eq!(
        value("ringlb_responses_total", &[web, ("class", "4xx")]),
        10.0
    );
    assert_eq!(value("ringlb_request_duration_seconds_count", &[web]), 30.0);
    assert_eq!(value("ringlb_connections_active", &[web]), 1.0);
    let target = a.addr.to_string();
    let t = [("group", "app"), ("target", target.as_str())];
    assert_eq!(value("ringlb_target_healthy", &t), 1.0);
    assert_eq!(value("ringlb_target_requests_total", &t), 30.0);
    assert_eq!(value("ringlb_upstream_connect_errors_total", &t), 0.0);
    let passes = value(
        "ringlb_health_checks_total",
        &[t[0], t[1], ("result", "pass")],
    );
    assert!(passes >= 2.0, "health-check passes counted: {passes}");
    assert_eq!(
        value("ringlb_errors_total", &[web, ("kind", "no_target")]),
        0.0
    );
}

/// Another site's page in the operator's browser cannot change ringlb through the admin API
/// (no token set): a cross-site "simple" POST is refused, while curl and the dashboard's own
/// same-origin requests work.
#[test]
fn a_cross_site_request_cannot_register_a_target() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], "", ""));
    let admin = p.admin();
    let body = format!("{{\"address\":\"{}\",\"weight\":1}}", b.addr);
    let post = |extra: &str| {
        let mut c = Client::connect(admin);
        c.send(
            format!(
                "POST /target_groups/app/targets HTTP/1.1\r\nHost: {admin}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        c.read_response(false).expect("admin response")
    };
    let r = post("Origin: http://evil.example\r\n");
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post("Sec-Fetch-Site: cross-site\r\n");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        target_status(admin, b.addr).is_none(),
        "nothing was registered"
    );
    // The dashboard's own request (same origin) and curl (no Origin) go through.
    let r = post(&format!("Origin: http://{admin}\r\n"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(target_status(admin, b.addr).is_some());
}
