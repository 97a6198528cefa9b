//! Failures a production user hits (issue 20): a reload moves keep-alive clients off removed
//! targets at once; a target that accepts and never answers is ejected by live traffic; pooled
//! connections the target closed do not sit in CLOSE_WAIT; a drain answers the requests idle
//! keep-alive clients send as it begins instead of dropping them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cli::write_config;
use crate::support::*;

fn one_listener(targets: &[SocketAddr], group_extra: &str) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[runtime]\nworkers = 1\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\n\
         bind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n[[target_group]]\nname = \"app\"\n\
         targets = [{}]\n{group_extra}\n",
        t.join(", ")
    )
}

#[test]
fn a_reload_moves_keep_alive_clients_off_removed_targets_at_once() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let path = write_config("faults-reload.toml", &one_listener(&[a.addr], ""));
    let p = Proxy::from_file(&path);
    let mut c = Client::connect(p.addr);
    assert_eq!(c.get("/").text(), "a");
    std::fs::write(&path, one_listener(&[b.addr], "")).expect("rewrite");
    let r = admin_request(p.admin(), "POST", "/reload", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let before = a.traffic();
    // The same keep-alive connection: its next requests go by the new config.
    for _ in 0..20 {
        assert_eq!(c.get("/").text(), "b");
    }
    assert_eq!(a.traffic(), before, "the removed target gets nothing more");
}

/// A target that accepts connections and never answers (a hung process).
fn silent_target() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

#[test]
fn a_target_that_accepts_and_never_answers_is_ejected_by_live_traffic() {
    let silent = silent_target();
    let good = Backend::start("good");
    let p = Proxy::start(&simple_config(
        &[silent.to_string(), good.addr.to_string()],
        "response_timeout = \"200ms\"\npassive_failures = 2",
    ));
    let (mut ok, mut timeouts) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        match get(p.addr, "/").status {
            200 => ok += 1,
            504 => timeouts += 1,
            s => panic!("unexpected {s}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two timeouts eject it; a tcp-connect probe lets it back after 1 s, two more eject it,
    // and the next probe waits longer. Without ejection it would take every other request.
    assert!(timeouts <= 5, "{timeouts} timeouts, {ok} answered");
    assert!(ok >= 40, "{timeouts} timeouts, {ok} answered");
}

/// Sockets in CLOSE_WAIT whose remote port is `port` (from /proc/net/tcp: ringlb runs in this
/// process's network namespace).
fn close_wait_to(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "08"
                && f[2]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[test]
fn pooled_connections_the_target_closed_are_reaped() {
    // The target closes idle keep-alive connections after 200 ms (as nginx or Node do); the
    // pool keeps its connections for 4 s.
    let a = Backend::start_with_idle("a", Some(Duration::from_millis(200)));
    let p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    assert_eq!(get(p.addr, "/").text(), "a");
    wait_for(
        Duration::from_secs(3),
        "the target's close seen by ringlb",
        || {
            close_wait_to(a.addr.port()) == 0
                && a.accepts.load(std::sync::atomic::Ordering::SeqCst) == 1
        },
    );
    // Long enough for the target to have closed, well before the pool's 4 s keep-alive.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        close_wait_to(a.addr.port()),
        0,
        "a pooled connection the target closed is closed by the pool's sweep"
    );
    // And the next request gets a fresh connection, not the dead one.
    assert_eq!(get(p.addr, "/").text(), "a");
}

#[test]
fn a_drain_answers_requests_idle_clients_send_as_it_begins() {
    let a = Backend::start("a");
    let mut p = Proxy::start(&simple_config(&[a.addr.to_string()], ""));
    let mut clients: Vec<Client> = (0..16).map(|_| Client::connect(p.addr)).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    let server = p.server.take().expect("server");
    let drained = std::thread::spawn(move || server.drain(Duration::from_secs(5)));
    // The requests were on their way when the drain began (a network's worth of delay).
    std::thread::sleep(Duration::from_millis(40));
    for c in &mut clients {
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c
            .read_response(false)
            .unwrap_or_else(|| panic!("client {i}: its request was dropped by the drain"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"), "told to go away");
    }
    assert!(drained.join().expect("drain thread"), "drained in time");
}
