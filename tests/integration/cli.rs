//! The `ringlb` binary: check, run + SIGTERM drain, demo.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringlb")
}

pub(crate) fn free_port() -> u16 {
    // Below the ephemeral range: a port that port 0 handed out could be handed out again to
    // another test's listener or connection before ringlb binds it, and the test would then talk
    // to the wrong server.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(12000);
    // Never the same port twice in one test process: two draws of one test (a listener and its
    // admin port) once came out equal, and ringlb refused the clashing config.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        let port = fastrand::u16(10000..low);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below {low} on 127.0.0.1");
}

pub(crate) fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = crate::testdir::test_path("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

pub(crate) fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn check_reports_every_error_with_its_location() {
    let p = write_config(
        "bad.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\ntarget_group = \"ap\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\nalgorithm = \"fastest\"\n",
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:"), "names the file: {err}");
    // The undefined group is on line 5 (or the algorithm on line 10 if parsing stops there).
    assert!(
        err.contains(":5:") || err.contains(":10:"),
        "names the line: {err}"
    );

    let good = write_config(
        "good.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\ntarget_group = \"app\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\n",
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_warns_of_deferred_accept_on_a_tcp_listener_and_still_passes_it() {
    let text = |defer: &str| {
        format!(
            "[[listener]]\nname = \"smtp\"\nbind = \"127.0.0.1:{}\"\nprotocol = \"tcp\"\ntarget_group = \"mail\"\n{defer}\n\n\
             [[target_group]]\nname = \"mail\"\nprotocol = \"tcp\"\ntargets = [\"127.0.0.1:2525\"]\n",
            free_port()
        )
    };
    let check = |name: &str, body: String| {
        let p = write_config(name, &body);
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("tcp-deferred.toml", text("defer_accept = true"));
    assert!(
        err.contains("warning: listener 'smtp': defer_accept = true on a tcp listener"),
        "{err}"
    );
    assert!(!check("tcp.toml", text("")).contains("defer_accept"));
}

#[test]
fn run_refuses_a_bad_config() {
    let p = write_config(
        "bad-run.toml",
        "[[listener]]\nname = \"web\"\nbind = \"nope\"\n",
    );
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-run.toml:"));
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = write_config(
        "drain.toml",
        &format!(
            "[runtime]\nworkers = 1\ndrain_timeout = \"5s\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{port}\"\n\
             protocol = \"http\"\ntarget_group = \"app\"\n\n[[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
            a.addr
        ),
    );
    let mut child = KillOnDrop(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // An idle keep-alive client, and a request in flight when SIGTERM arrives.
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/").status, 200);
    let inflight = std::thread::spawn(move || get(addr, "/slow/800"));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let r = inflight.join().unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "a".to_string()),
        "in-flight request finished"
    );
    assert!(idle.is_closed(), "idle keep-alive connection closed");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit 0 after drain: {status:?}");
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn demo_serves_both_builtin_backends() {
    let port = free_port();
    let mut child = KillOnDrop(
        Command::new(bin())
            .args(["demo", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut seen: Vec<String> = (0..4).map(|_| get(addr, "/").text()).collect();
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let _ = child.0.wait();
    // What the demo promises: one request to each in turn (one worker, one cursor).
    assert_ne!(seen[0], seen[1], "{seen:?}");
    assert_eq!(seen[0], seen[2], "{seen:?}");
    assert_eq!(seen[1], seen[3], "{seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        vec![
            "hello from backend 1\n".to_string(),
            "hello from backend 2\n".to_string()
        ]
    );
}

fn spawn_run(cfg: &std::path::Path, prefix: &[&str]) -> KillOnDrop {
    let mut cmd = if prefix.is_empty() {
        Command::new(bin())
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(bin());
        c
    };
    KillOnDrop(
        cmd.args(["run", "--config"])
            .arg(cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out
}

#[test]
fn workers_default_to_the_allowed_cpus_and_are_pinned() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = write_config(
        "pin.toml",
        &format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{port}\"\ntarget_group = \"app\"\n\n\
             [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
            a.addr
        ),
    );
    // Only CPU 0 allowed (taskset): one worker, pinned there.
    let mut child = spawn_run(&cfg, &["taskset", "-c", "0"]);
    wait_port(port);
    // The port listens before the workers start (and name themselves): wait for them.
    let mut workers = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while workers.is_empty() && Instant::now() < until {
        workers = thread_cpus(child.0.id())
            .into_iter()
            .filter(|(n, _)| n.starts_with("ringlb-w"))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let _ = child.0.wait();
    assert_eq!(workers, vec![("ringlb-w0".to_string(), "0".to_string())]);
}

#[test]
fn accept_survives_running_out_of_file_descriptors() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = write_config(
        "emfile.toml",
        &format!(
            "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{port}\"\ntarget_group = \"app\"\n\n\
             [[target_group]]\nname = \"app\"\ntargets = [\"{}\"]\n",
            a.addr
        ),
    );
    // A tiny fd limit: a few dozen connections exhaust it.
    let mut child = spawn_run(&cfg, &["prlimit", "--nofile=48", "--"]);
    wait_port(port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut first = Client::connect(addr);
    assert_eq!(first.get("/").status, 200);
    // Flood: more connections than fds. The kernel queues them; ringlb backs off on EMFILE.
    let flood: Vec<_> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The open connection is still served while accept is starved.
    assert_eq!(
        first.get("/").status,
        200,
        "open connections keep being served"
    );
    drop(flood);
    // Once fds are free again, new clients are accepted.
    let t = Instant::now();
    loop {
        let mut c = Client::connect(addr);
        c.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        if let Some(r) = c.read_response(false) {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never recovered from EMFILE"
        );
    }
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
}
