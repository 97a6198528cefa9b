//! Active health checks, passive ejection and what happens when nothing is healthy, seen from
//! outside: `/status` on the admin API and where client requests land.

use std::time::Duration;

use crate::support::*;

/// An address nothing listens on now (bound, then closed), free to start a backend on later.
fn reserved_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], crate::cli::free_port()))
}

#[test]
fn a_target_goes_initial_healthy_unhealthy_and_back() {
    let a = Backend::start("a");
    let p = Proxy::start(&admin_config(
        &[a.addr.to_string()],
        &health_check(100, 3, 2),
        "",
    ));
    let admin = p.admin();
    // Three passing checks 100 ms apart are needed: right after start the target is initial.
    assert_eq!(
        target_state(admin, a.addr),
        (
            "initial".to_string(),
            "Elb.InitialHealthChecking".to_string()
        )
    );
    let r = get(p.addr, "/");
    assert_eq!(r.status, 503, "no traffic before the target is healthy");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(a.traffic(), 0);

    assert_eq!(wait_state(admin, a.addr, "healthy"), "");
    assert_eq!(get(p.addr, "/").text(), "a");
    // The checks were GETs of the configured path, with the target as Host and no body.
    let check = a.seen.lock().unwrap()[0].clone();
    assert_eq!(
        (check.method.as_str(), check.target.as_str()),
        ("GET", HEALTH_PATH)
    );
    assert_eq!(check.header("host"), Some(a.addr.to_string().as_str()));
    assert_eq!(check.body_len, 0);

    a.set_status(500);
    assert_eq!(
        wait_state(admin, a.addr, "unhealthy"),
        "Target.ResponseCodeMismatch"
    );
    a.set_status(0);
    assert_eq!(wait_state(admin, a.addr, "healthy"), "");
    assert_eq!(get(p.addr, "/").text(), "a");
}

#[test]
fn a_backend_answering_500_gets_no_traffic() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = Proxy::start(&admin_config(
        &[a.addr.to_string(), b.addr.to_string()],
        &health_check(100, 2, 2),
        "",
    ));
    let admin = p.admin();
    wait_state(admin, a.addr, "healthy");
    wait_state(admin, b.addr, "healthy");
    let mut c = Client::connect(p.addr);
    let mut seen_b = false;
    for _ in 0..10 {
        seen_b |= c.get("/").text() == "b";
    }
    assert!(seen_b, "both healthy: both get traffic");

    b.set_status(500);
    assert_eq!(
        wait_state(admin, b.addr, "unhealthy"),
        "Target.ResponseCodeMismatch"
    );
    let before = b.traffic();
    for _ in 0..20 {
        let r = c.get("/");
        assert_eq!((r.status, r.text()), (200, "a".to_string()));
    }
    assert_eq!(b.traffic(), before, "the unhealthy target got requests");
}

#[test]
fn a_target_that_never_passes_never_gets_traffic() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    b.set_status(500);
    let p = Proxy::start(&admin_config(
        &[a.addr.to_string(), b.addr.to_string()],
        &health_check(100, 2, 2),
        "",
    ));
    let admin = p.admin();
    wait_state(admin, a.addr, "healthy");
    assert_eq!(
        wait_state(admin, b.addr, "unhealthy"),
        "Target.ResponseCodeMismatch"
    );
    let mut c = Client::connect(p.addr);
    for _ in 0..20 {
        assert_eq!(c.get("/").text(), "a");
    }
    assert_eq!(b.traffic(), 0);
}

/// Both targets fail their checks (the check path answers 503) but serve requests.
fn failing_checks(fail_open: bool) -> (Backend, Backend, Proxy) {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let group = format!(
        "fail_open = {fail_open}\n[target_group.health_check]\npath = \"/status/503\"\n\
         interval = \"100ms\"\ntimeout = \"75ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n"
    );
    let p = Proxy::start(&admin_config(
        &[a.addr.to_string(), b.addr.to_string()],
        &group,
        "",
    ));
    wait_state(p.admin(), a.addr, "unhealthy");
    wait_state(p.admin(), b.addr, "unhealthy");
    (a, b, p)
}

#[test]
fn every_target_unhealthy_fails_open_to_all() {
    let (a, b, p) = failing_checks(true);
    let mut c = Client::connect(p.addr);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..20 {
        let r = c.get("/");
        assert_eq!(r.status, 200);
        *counts.entry(r.text()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    assert_eq!(a.traffic() + b.traffic(), 20);
}

#[test]
fn every_target_unhealthy_without_fail_open_gives_503() {
    let (a, b, p) = failing_checks(false);
    let r = get(p.addr, "/");
    assert_eq!(r.status, 503);
    assert!(
        r.header("retry-after").is_none(),
        "Retry-After is only for targets still in their first checks"
    );
    assert_eq!(a.traffic() + b.traffic(), 0);
}

#[test]
fn only_initial_targets_give_503_with_retry_after() {
    let a = Backend::start("a");
    // Checks 5 s apart: the target stays initial for the whole test.
    let p = Proxy::start(&simple_config(
        &[a.addr.to_string()],
        &health_check(5000, 3, 2),
    ));
    let mut c = Client::connect(p.addr);
    for _ in 0..3 {
        let r = c.get("/");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("5"));
    }
    assert_eq!(a.traffic(), 0);
}

#[test]
fn passive_ejection_without_health_check_and_recovery() {
    let down = reserved_addr();
    let b = Backend::start("b");
    let p = Proxy::start(&admin_config(
        &[down.to_string(), b.addr.to_string()],
        "passive_failures = 2\n",
        "",
    ));
    let admin = p.admin();
    assert_eq!(
        target_state(admin, down).0,
        "healthy",
        "no check: healthy at once"
    );
    let mut c = Client::connect(p.addr);
    for _ in 0..6 {
        // Connects to the dead target fail over to b: no failed request.
        let r = c.get("/");
        assert_eq!((r.status, r.text()), (200, "b".to_string()));
    }
    assert_eq!(
        target_state(admin, down),
        (
            "unhealthy".to_string(),
            "Target.PassiveFailures".to_string()
        )
    );
    // Back: the recovery probe (first after 1 s) finds it and traffic returns.
    let d = Backend::start_on("down", down);
    assert_eq!(wait_state(admin, down, "healthy"), "");
    wait_for(
        Duration::from_secs(3),
        "traffic to the recovered target",
        || c.get("/").status == 200 && d.traffic() > 0,
    );
}
