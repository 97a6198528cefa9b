//! Hot reload (`POST /reload`, SIGHUP): traffic moves to the new targets with zero errors, a bad
//! file keeps the old config, listeners come and go without dropping open connections, rules
//! change, certificates are re-read; and the drain timing of SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::{bin, free_port, wait_port, write_config};
use crate::support::*;

/// Two workers, an admin API, then `body` (listeners and groups).
fn config(body: &str) -> String {
    format!("[runtime]\nworkers = 2\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n{body}")
}

fn listener(name: &str, group: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         target_group = \"{group}\"\n{extra}\n"
    )
}

fn group(name: &str, targets: &[SocketAddr]) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[target_group]]\nname = \"{name}\"\ntargets = [{}]\n\n",
        t.join(", ")
    )
}

fn post_reload(admin: SocketAddr) -> Response {
    admin_request(admin, "POST", "/reload", None, None)
}

fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).expect("rewrite config");
}

#[test]
fn reload_under_load_moves_traffic_with_zero_errors() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let cfg = |i: usize| config(&(listener("web", "app", "") + &group("app", &[backends[i].addr])));
    let path = write_config("reload-load.toml", &cfg(0));
    let p = Proxy::from_file(&path);
    let admin = p.admin();
    let addr = p.addr;

    // A client doing keep-alive requests in a loop (a fresh connection every 20 requests).
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, errors, done) = (stop.clone(), errors.clone(), done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut c = Client::connect(addr);
                for _ in 0..20 {
                    match c.read_after_get("/") {
                        Some(r) if r.status == 200 && ["a", "b", "c"].contains(&&*r.text()) => {}
                        Some(r) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()))
                        }
                        None => errors.lock().unwrap().push("connection lost".to_string()),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Reload several times while it runs: a → b → c → b → c.
    for i in [1, 2, 1, 2] {
        let before = done.load(Ordering::Relaxed);
        rewrite(&path, &cfg(i));
        let r = post_reload(admin);
        assert_eq!(r.status, 200, "{}", r.text());
        wait_for(Duration::from_secs(5), "requests after the reload", || {
            done.load(Ordering::Relaxed) > before + 50
        });
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");
    assert_eq!(*errors.lock().unwrap(), Vec::<String>::new(), "no errors");
    assert!(backends[1].requests() > 0, "requests moved to b");
    assert!(backends[2].requests() > 0, "requests moved to c");
    // New connections go to the target of the last reload only.
    let seen_c = backends[2].requests();
    let seen_b = backends[1].requests();
    for _ in 0..5 {
        assert_eq!(get(addr, "/").text(), "c");
    }
    assert_eq!(backends[2].requests(), seen_c + 5);
    assert_eq!(backends[1].requests(), seen_b);
}

/// `Client::get` that reports a lost connection instead of panicking.
trait GetOrLost {
    fn read_after_get(&mut self, path: &str) -> Option<Response>;
}

impl GetOrLost for Client {
    fn read_after_get(&mut self, path: &str) -> Option<Response> {
        use std::io::Write;
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .ok()?;
        self.read_response(false)
    }
}

#[test]
fn a_bad_reload_keeps_the_old_config_and_says_where() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let good = config(&(listener("web", "app", "") + &group("app", &[a.addr])));
    let path = write_config("reload-bad.toml", &good);
    let p = Proxy::from_file(&path);
    let admin = p.admin();
    let mut kept = Client::connect(p.addr);
    assert_eq!(kept.get("/").text(), "a");

    // The listener names a group that does not exist (line 11), and the targets move to b.
    let bad = config(&(listener("web", "nope", "") + &group("app", &[b.addr])));
    rewrite(&path, &bad);
    let r = post_reload(admin);
    assert_eq!(r.status, 400, "{}", r.text());
    let e: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error");
    let msg = e.to_string();
    assert!(msg.contains("reload-bad.toml:11:"), "located: {msg}");
    assert!(msg.contains("nope"), "names the culprit: {msg}");
    // The old config serves, on open and new connections.
    assert_eq!(kept.get("/").text(), "a");
    assert_eq!(get(p.addr, "/").text(), "a");
    assert_eq!(b.requests(), 0);

    // Unparsable TOML is refused as well.
    rewrite(&path, "[[listener]\nname = ");
    assert_eq!(post_reload(admin).status, 400);
    assert_eq!(get(p.addr, "/").text(), "a");
}

#[test]
fn listeners_are_added_and_removed_without_dropping_open_connections() {
    let a = Backend::start("a");
    let body = |second: &str| {
        config(
            &(listener("web", "app", "") + &listener(second, "app", "") + &group("app", &[a.addr])),
        )
    };
    let path = write_config("reload-listeners.toml", &body("old"));
    let p = Proxy::from_file(&path);
    let admin = p.admin();
    let server = p.server.as_ref().expect("running");
    let old_addr = server.listener_addr("old").expect("old bound");

    // A keep-alive connection on the listener about to go, with a request in flight.
    let mut open = Client::connect(old_addr);
    assert_eq!(open.get("/").text(), "a");
    open.send(b"GET /slow/600 HTTP/1.1\r\nHost: test\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));

    rewrite(&path, &body("new"));
    let r = post_reload(admin);
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(j["listeners_added"], serde_json::json!(["new"]));
    assert_eq!(j["listeners_removed"], serde_json::json!(["old"]));
    assert_eq!(j["listeners_kept"], serde_json::json!(["web"]));

    // The in-flight request gets its response, and the connection stays usable.
    let r = open.read_response(false).expect("in-flight response");
    assert_eq!((r.status, r.text()), (200, "a".to_string()));
    assert_eq!(open.get("/").text(), "a");

    let new_addr = server.listener_addr("new").expect("new bound");
    assert_eq!(get(new_addr, "/").text(), "a", "the added listener answers");
    assert_eq!(get(p.addr, "/").text(), "a", "the kept listener answers");
    wait_for(
        Duration::from_secs(2),
        "the removed listener refuses",
        || std::net::TcpStream::connect(old_addr).is_err(),
    );
    // `/status` lists the new set.
    let names: Vec<String> = status(admin)["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["web", "new"]);
}

#[test]
fn a_rule_change_takes_effect_on_reload() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let groups = group("app", &[a.addr]) + &group("api", &[b.addr]);
    let path = write_config(
        "reload-rules.toml",
        &config(&(listener("web", "app", "") + &groups)),
    );
    let p = Proxy::from_file(&path);
    assert_eq!(get(p.addr, "/api/x").text(), "a");

    let rule = "[[listener.rule]]\npriority = 10\npath = [\"/api/*\"]\nforward = \"api\"\n";
    rewrite(&path, &config(&(listener("web", "app", rule) + &groups)));
    assert_eq!(post_reload(p.admin()).status, 200);
    assert_eq!(get(p.addr, "/api/x").text(), "b");
    assert_eq!(get(p.addr, "/other").text(), "a");
}

/// The `listener.*` entries of a reload's `ignored_until_restart` (under RINGLB_TEST_IO=epoll
/// the running `runtime.io` differs from the file's too).
fn ignored_listener_settings(r: &Response) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_str(&r.text()).expect("json");
    assert_eq!(body["listeners_kept"], serde_json::json!(["web"]));
    body["ignored_until_restart"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|v| v.starts_with("listener."))
        .map(str::to_string)
        .collect()
}

#[test]
fn socket_settings_of_a_kept_listener_are_reported_as_needing_a_restart() {
    let a = Backend::start("a");
    let (default, chosen) = congestion_controls();
    assert_ne!(chosen, default, "this host offers no second algorithm");
    let original = config(&(listener("web", "app", "") + &group("app", &[a.addr])));
    let path = write_config("reload-sockets.toml", &original);
    let p = Proxy::from_file(&path);
    let extra = format!("backlog = 128\ncongestion_control = \"{chosen}\"\ndefer_accept = true");
    let changed = config(&(listener("web", "app", &extra) + &group("app", &[a.addr])));
    rewrite(&path, &changed);
    let socket_fields = [
        "listener.web.backlog",
        "listener.web.congestion_control",
        "listener.web.defer_accept",
    ];
    assert_eq!(
        ignored_listener_settings(&post_reload(p.admin())),
        socket_fields
    );
    // The sockets still run the first file's settings: reloading the same file says so again.
    assert_eq!(
        ignored_listener_settings(&post_reload(p.admin())),
        socket_fields
    );
    // Back to what the sockets run: nothing is ignored.
    rewrite(&path, &original);
    assert!(ignored_listener_settings(&post_reload(p.admin())).is_empty());
    // The listener itself is kept and serves on.
    assert_eq!(get(p.addr, "/").text(), "a");
}

#[test]
fn targets_that_stay_keep_their_health_across_a_reload() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let hc = health_check(50, 2, 2);
    let body = |targets: &[SocketAddr]| {
        config(&(listener("web", "app", "") + &group("app", targets) + &hc))
    };
    let path = write_config("reload-health.toml", &body(&[a.addr]));
    let p = Proxy::from_file(&path);
    let admin = p.admin();
    wait_state(admin, a.addr, "healthy");
    rewrite(&path, &body(&[a.addr, b.addr]));
    assert_eq!(post_reload(admin).status, 200);
    // a stays healthy (not back to initial); b starts initial and is then checked healthy.
    assert_eq!(target_state(admin, a.addr).0, "healthy");
    wait_state(admin, b.addr, "healthy");
}

#[test]
fn sighup_reloads_the_running_binary() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = free_port();
    let text = |t: SocketAddr| {
        format!(
            "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{port}\"\n\
             protocol = \"http\"\ntarget_group = \"app\"\n\n[[target_group]]\nname = \"app\"\ntargets = [\"{t}\"]\n"
        )
    };
    let cfg = write_config("reload-hup.toml", &text(a.addr));
    let log_path = cfg.with_extension("log");
    let log = std::fs::File::create(&log_path).expect("log file");
    // Killed if an assertion fails, so no ringlb outlives the test.
    let mut child = KillOnDrop(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ringlb"),
    );
    wait_port(port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert_eq!(get(addr, "/").text(), "a");
    rewrite(&cfg, &text(b.addr));
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    wait_for(Duration::from_secs(5), "traffic on b after SIGHUP", || {
        get(addr, "/").text() == "b"
    });
    // A tcp listener with deferred accept, added by reload: the log warns of it, as `check` does.
    let tcp_port = free_port();
    rewrite(
        &cfg,
        &format!(
            "{}\n[[listener]]\nname = \"smtp\"\nbind = \"127.0.0.1:{tcp_port}\"\nprotocol = \"tcp\"\n\
             target_group = \"mail\"\ndefer_accept = true\n\n[[target_group]]\nname = \"mail\"\n\
             protocol = \"tcp\"\ntargets = [\"{}\"]\n",
            text(b.addr),
            b.addr
        ),
    );
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    wait_port(tcp_port);
    let logged = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        logged.contains("listener 'smtp': defer_accept = true on a tcp listener"),
        "{logged}"
    );
    // A bad file on SIGHUP: the process keeps serving the last good config.
    rewrite(&cfg, "not = [toml");
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(addr, "/").text(), "b");
    assert!(child.0.try_wait().expect("wait").is_none(), "still running");
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().expect("exit").success());
}

#[test]
fn certificates_are_reread_on_reload() {
    use crate::tls::{cert_list, https_get, peer_cert, Pki};
    let a = Backend::start("a");
    let pki = Pki::new("reload");
    let first = pki.leaf("site", &["localhost"]);
    let text = format!(
        "[runtime]\nworkers = 2\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\n\
         bind = \"127.0.0.1:0\"\nprotocol = \"https\"\ntarget_group = \"app\"\n  [listener.tls]\n\
         \x20 certificates = [{}]\n\n{}",
        cert_list(&[&first]),
        group("app", &[a.addr])
    );
    let path = write_config("reload-tls.toml", &text);
    let p = Proxy::from_file(&path);
    let client = Arc::new(pki.client(&["http/1.1"]));
    let (r, conn) = https_get(p.addr, &client, "localhost", "/");
    assert_eq!(r.text(), "a");
    assert_eq!(peer_cert(&conn), first.der);
    assert_eq!(conn.handshake_kind(), Some(rustls::HandshakeKind::Full));

    // A reload that leaves the certificates as they were keeps the sessions: clients resume.
    assert_eq!(post_reload(p.admin()).status, 200);
    for _ in 0..4 {
        let (r, conn) = https_get(p.addr, &client, "localhost", "/");
        assert_eq!(r.text(), "a");
        assert_eq!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    }

    // Renewal: new files at the same paths, then reload.
    let second = pki.leaf("site", &["localhost"]);
    assert_ne!(first.der, second.der);
    assert_eq!(post_reload(p.admin()).status, 200);
    let (r, conn) = https_get(p.addr, &client, "localhost", "/");
    assert_eq!(r.text(), "a");
    assert_eq!(
        peer_cert(&conn),
        second.der,
        "new connections see the new cert"
    );
    assert_eq!(
        conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full),
        "sessions made under the old certificate do not resume"
    );

    // A broken key file is a located error; the running certificate stays.
    std::fs::write(&second.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("write");
    let r = post_reload(p.admin());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("site.key"),
        "names the file: {}",
        r.text()
    );
    let (_, conn) = https_get(p.addr, &client, "localhost", "/");
    assert_eq!(peer_cert(&conn), second.der);
}

#[test]
fn sigterm_exits_within_drain_timeout_with_a_request_stuck() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = write_config(
        "reload-drain-timing.toml",
        &format!(
            "[runtime]\nworkers = 1\ndrain_timeout = \"1s\"\n\n[[listener]]\nname = \"web\"\n\
             bind = \"127.0.0.1:{port}\"\nprotocol = \"http\"\ntarget_group = \"app\"\n\n\
             [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\nresponse_timeout = \"30s\"\n",
            a.addr
        ),
    );
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringlb");
    wait_port(port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut stuck = Client::connect(addr);
    stuck.send(b"GET /slow/10000 HTTP/1.1\r\nHost: test\r\n\r\n");
    wait_for(
        Duration::from_secs(2),
        "the request reached the backend",
        || a.requests() == 1,
    );
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    assert!(status.is_some(), "ringlb did not exit after SIGTERM");
    assert!(
        took >= Duration::from_millis(900),
        "waited for the drain: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "exited within drain_timeout: {took:?}"
    );
}
