//! The admin dashboard (`GET /`) and its time series (`GET /series`): headless Chromium renders
//! every target with its state from a running ringlb; with an admin token the page carries no
//! data and every endpoint it polls answers 401 without the token.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Runs headless Chromium on `url` and returns the DOM after `budget_ms` of virtual time.
fn dump_dom(url: &str, budget_ms: u64) -> String {
    let profile = crate::testdir::test_path(&format!("dashboard-{}", fastrand::u64(..)));
    let mut child = KillOnDrop(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--virtual-time-budget={budget_ms}"),
                "--dump-dom",
                url,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium is installed (.ci/run installs it)"),
    );
    let started = Instant::now();
    let mut out = String::new();
    if let Some(mut o) = child.0.stdout.take() {
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = o.read_to_string(&mut s);
            s
        });
        while child.0.try_wait().ok().flatten().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "chromium did not finish in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        out = reader.join().unwrap_or_default();
    }
    let _ = std::fs::remove_dir_all(&profile);
    out
}

/// The `<tr>` of `address` in the dumped DOM.
fn target_row(dom: &str, address: SocketAddr) -> &str {
    let key = format!("data-target=\"{address}\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("{address} is on the page:\n{dom}"));
    let start = dom[..at].rfind("<tr").unwrap_or(at);
    let end = dom[at..].find("</tr>").map_or(dom.len(), |e| at + e);
    &dom[start..end]
}

fn series(admin: SocketAddr, query: &str) -> Value {
    let r = admin_request(admin, "GET", &format!("/series{query}"), None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("/series is JSON")
}

#[test]
fn chromium_shows_every_target_with_its_state() {
    let healthy = Backend::start("healthy");
    let closed: SocketAddr = format!("127.0.0.1:{}", crate::cli::free_port())
        .parse()
        .unwrap();
    let drained = Backend::start("drained");
    let waiting = Backend::start("waiting");
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[runtime]\nworkers = 1\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n\
         [[listener]]\nname = \"batch\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"batch\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{}\", \"{closed}\"]\n{}\n\
         [[target_group]]\nname = \"batch\"\ntargets = [\"{}\"]\nderegistration_delay = \"60s\"\n\n\
         [[target_group]]\nname = \"later\"\ntargets = [\"{}\"]\n\
         [target_group.health_check]\npath = \"{HEALTH_PATH}\"\ninterval = \"60s\"\nhealthy_threshold = 3\n",
        healthy.addr,
        health_check(100, 1, 1),
        drained.addr,
        waiting.addr,
    );
    let p = Proxy::start(&toml);
    let admin = p.admin();
    wait_state(admin, healthy.addr, "healthy");
    wait_state(admin, closed, "unhealthy");
    wait_state(admin, waiting.addr, "initial");

    // A slow request holds the batch target while it drains.
    let batch = p
        .server
        .as_ref()
        .and_then(|s| s.listener_addr("batch"))
        .expect("batch listener");
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(batch);
        c.send(b"GET /slow/15000 HTTP/1.1\r\nHost: t\r\n\r\n");
        let _ = c.read_response(false);
    });
    wait_for(Duration::from_secs(5), "the slow request in flight", || {
        target_status(admin, drained.addr).is_some_and(|t| t["in_flight"] == 1)
    });
    let path = format!("/target_groups/batch/targets/{}", drained.addr);
    let r = admin_request(admin, "DELETE", &path, None, None);
    assert_eq!(r.status, 202, "{}", r.text());

    // Traffic, and a sample with its latency, so that the charts have lines.
    let mut c = Client::connect(p.addr);
    for _ in 0..50 {
        assert_eq!(c.get("/").status, 200);
    }
    wait_for(
        Duration::from_secs(6),
        "a latency sample in /series",
        || {
            series(admin, "")["listeners"][0]["p50_us"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.is_u64()))
        },
    );

    let dom = dump_dom(&format!("http://{admin}/"), 3000);
    for (address, state) in [
        (healthy.addr, "healthy"),
        (closed, "unhealthy"),
        (drained.addr, "draining"),
        (waiting.addr, "initial"),
    ] {
        let row = target_row(&dom, address);
        assert!(
            row.contains(&format!("data-state=\"{state}\"")) && row.contains(&format!(">{state}<")),
            "{address} shows {state}: {row}"
        );
    }
    assert!(
        target_row(&dom, closed).contains("Target.FailedHealthChecks"),
        "the reason is shown"
    );
    assert!(
        target_row(&dom, drained.addr).contains(">Draining</button>"),
        "a draining target's drain button is off"
    );
    for name in ["web", "batch"] {
        assert!(dom.contains(&format!("id=\"latency-{name}\"")), "{name}");
    }
    assert!(
        dom.contains("class=\"line p50\""),
        "the web listener's latency chart has its p50 line:\n{dom}"
    );
    assert!(
        dom.contains("Register target"),
        "no token: the page offers registration"
    );
    assert!(dom.contains(&p.addr.to_string()), "the listener's bind");
    drop(slow);
}

#[test]
fn with_a_token_the_page_has_no_data_and_its_endpoints_need_the_token() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(
        &[a.addr.to_string()],
        "",
        "token = \"s3cret\"",
    ));
    let admin = p.admin();

    let page = admin_request(admin, "GET", "/", None, None);
    assert_eq!(page.status, 200, "the static page needs no token");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text();
    assert!(html.len() < 64 * 1024, "a few tens of KiB: {}", html.len());
    assert!(
        !html.contains(&a.addr.to_string()) && !html.contains("127.0.0.1"),
        "the page carries no data"
    );
    assert_eq!(admin_request(admin, "POST", "/", None, None).status, 405);

    let target = a.addr.to_string().replace(':', "%3A");
    for (method, path, body) in [
        ("GET", "/status".to_string(), None),
        ("GET", "/series".to_string(), None),
        ("GET", "/series?after=0".to_string(), None),
        ("GET", "/metrics".to_string(), None),
        ("GET", "/latency?listener=web".to_string(), None),
        (
            "POST",
            "/target_groups/app/targets".to_string(),
            Some("{\"address\":\"127.0.0.1:9\"}"),
        ),
        (
            "DELETE",
            format!("/target_groups/app/targets/{target}"),
            None,
        ),
    ] {
        for token in [None, Some("wrong")] {
            let r = admin_request(admin, method, &path, body, token);
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
        }
    }
    for path in ["/status", "/series"] {
        let r = admin_request(admin, "GET", path, None, Some("s3cret"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.text().contains("\"web\""), "{}", r.text());
    }

    // In a browser, without a token: the token form and nothing else.
    let dom = dump_dom(&format!("http://{admin}/"), 2000);
    assert!(dom.contains("Admin token required"), "{dom}");
    assert!(
        dom.contains("<section id=\"locked\" class=\"card\">"),
        "the token form shows:\n{dom}"
    );
    assert!(
        dom.contains("<div id=\"data\" hidden=\"\">"),
        "the data stays hidden:\n{dom}"
    );
    assert!(!dom.contains(&a.addr.to_string()), "no target on the page");
    assert!(!dom.contains("data-target=\""), "no target row on the page");
}

#[test]
fn series_keeps_a_bounded_sample_per_second() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(&[a.addr.to_string()], "", ""));
    let admin = p.admin();
    // Rates start from the first sample.
    wait_for(Duration::from_secs(3), "the first sample", || {
        series(admin, "")["seq"].as_u64() >= Some(1)
    });
    let mut c = Client::connect(p.addr);
    for _ in 0..20 {
        assert_eq!(c.get("/").status, 200);
    }
    wait_for(Duration::from_secs(6), "three samples", || {
        series(admin, "")["seq"].as_u64() >= Some(3)
    });
    let s = series(admin, "");
    assert_eq!(s["interval_ms"], 1000);
    assert_eq!(s["capacity"], 600);
    assert_eq!(s["target_capacity"], 120);
    assert!(s["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000));
    let seq = s["seq"].as_u64().unwrap();
    let l = &s["listeners"][0];
    assert_eq!(
        (&l["name"], &l["protocol"]),
        (&Value::from("web"), &Value::from("http"))
    );
    assert_eq!(l["bind"], p.addr.to_string());
    assert_eq!(l["target_group"], "app");
    for key in [
        "connections",
        "connections_per_s",
        "requests_per_s",
        "responses_5xx_per_s",
        "errors_per_s",
        "p50_us",
        "p90_us",
        "p99_us",
    ] {
        let n = l[key].as_array().map(Vec::len);
        assert!(n.is_some_and(|n| n >= 1 && n as u64 <= seq), "{key}: {l}");
    }
    let total: f64 = l["requests_per_s"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!(total > 0.0, "the requests show as a rate: {l}");
    assert!(l["spectrum"]["points"].is_array(), "{l}");
    let t = &s["targets"][0];
    assert_eq!(
        (&t["group"], &t["address"]),
        (&Value::from("app"), &Value::from(a.addr.to_string()))
    );
    assert_eq!(t["passive_ejections"], 0);
    for key in ["requests_per_s", "connect_errors_per_s", "in_flight"] {
        assert!(t[key].is_array(), "{key}: {t}");
    }

    // Only the samples after `after`.
    let newer = series(admin, &format!("?after={seq}"));
    let n = newer["seq"].as_u64().unwrap() - seq;
    assert_eq!(
        newer["listeners"][0]["requests_per_s"]
            .as_array()
            .map(Vec::len),
        Some(n as usize)
    );
    let r = admin_request(admin, "GET", "/series?after=soon", None, None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        admin_request(admin, "POST", "/series", None, None).status,
        405
    );
}
