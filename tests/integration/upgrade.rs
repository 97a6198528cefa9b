//! Binary upgrade (SIGUSR2) with the real binary: under load no connection is refused and no
//! request lost; a broken new binary or config changes nothing; a second SIGUSR2 while one runs is
//! refused (and so is a reload); TLS clients resume their sessions across the upgrade.
//!
//! The new process is a child of the old one and outlives it; this test binary makes itself the
//! child subreaper so it can wait for (and reap) those grandchildren.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::{bin, free_port, wait_port, write_config};
use crate::support::*;

/// A ringlb process started from `program` with `config`; stderr goes to a file we read.
struct Running {
    child: Child,
    log: PathBuf,
    listener: SocketAddr,
    admin: SocketAddr,
    /// New processes seen serving: killed (and reaped) if the test ends early.
    descendants: std::cell::RefCell<Vec<u64>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in self.descendants.borrow().iter() {
            // SAFETY: kill/waitpid on a descendant's PID (already reaped ones fail harmlessly).
            unsafe {
                if libc::kill(pid as i32, libc::SIGKILL) == 0 {
                    libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                }
            }
        }
    }
}

impl Running {
    fn start(program: &Path, name: &str, config: &Path, listener: u16, admin: u16) -> Running {
        Running::start_with(program, name, config, (listener, admin), None)
    }

    /// With `notify`: the path of a datagram socket given as NOTIFY_SOCKET, as systemd does.
    fn start_with(
        program: &Path,
        name: &str,
        config: &Path,
        (listener, admin): (u16, u16),
        notify: Option<&Path>,
    ) -> Running {
        // SAFETY: prctl with constant arguments; makes orphaned descendants our children.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let log = config.with_extension(format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(["run", "--config"])
            .arg(config)
            .stderr(Stdio::from(err));
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n);
        }
        let child = cmd.spawn().expect("start ringlb");
        wait_port(listener);
        wait_port(admin);
        Running {
            child,
            log,
            listener: format!("127.0.0.1:{listener}").parse().expect("addr"),
            admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
            descendants: Default::default(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The PID `/status` reports (whichever process answers the admin socket).
    fn serving_pid(&self) -> u64 {
        status(self.admin)["pid"].as_u64().expect("pid in /status")
    }

    fn usr2(&self, pid: u64) {
        // SAFETY: kill on a PID this test started (or its descendant).
        unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    }

    /// Waits until the admin API answers from a process other than `old`; returns its PID.
    fn wait_new_pid(&self, old: u64) -> u64 {
        let mut pid = old;
        wait_for(Duration::from_secs(20), "the new process serving", || {
            pid = self.serving_pid();
            pid != old
        });
        self.descendants.borrow_mut().push(pid);
        pid
    }

    /// Waits for the first process (the one this test started) to exit; its exit code. It
    /// drains in well under a second here (idle clients get 250 ms); the drain timeout (5 s)
    /// would mean its accepts were not withdrawn.
    fn wait_first_exit(&mut self) -> Option<i32> {
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(Instant::now() < until, "the old process never exited");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn config_text(listener: u16, admin: u16, target: SocketAddr, extra_listener: &str) -> String {
    let io = if std::env::var("RINGLB_TEST_IO").as_deref() == Ok("epoll") {
        "io = \"epoll\"\n"
    } else {
        ""
    };
    format!(
        "[runtime]\nworkers = 2\ndrain_timeout = \"5s\"\n{io}\n[admin]\nbind = \"127.0.0.1:{admin}\"\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{listener}\"\nprotocol = \"http\"\n\
         target_group = \"app\"\n{extra_listener}\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{target}\"]\n"
    )
}

/// Waits for process `pid` (our child or, as subreaper, our descendant) to exit; its exit code.
fn wait_exit(pid: u64, within: Duration) -> i32 {
    let until = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a PID that is our child (directly or by subreaping).
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
        }
        assert!(Instant::now() < until, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops whichever process serves now, and reaps it.
fn stop(pid: u64) {
    // SAFETY: kill on a descendant's PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_exit(pid, Duration::from_secs(15));
}

/// A program path of our own that is first a link to the real binary, and can be swapped.
/// One backend and ringlb started through a program link of its own (so the test can replace
/// the binary at that path), serving.
struct Linked {
    _backend: Backend,
    cfg: PathBuf,
    program: PathBuf,
    p: Running,
    /// The serving process's pid.
    old: u64,
}

impl Linked {
    fn start(name: &str) -> Linked {
        let backend = Backend::start("app");
        let (port, admin) = (free_port(), free_port());
        let cfg = write_config(
            &format!("upgrade-{name}.toml"),
            &config_text(port, admin, backend.addr, ""),
        );
        let program = program_link(name);
        let p = Running::start(&program, name, &cfg, port, admin);
        let old = p.serving_pid();
        Linked {
            _backend: backend,
            cfg,
            program,
            p,
            old,
        }
    }
}

fn program_link(test: &str) -> PathBuf {
    let dir = crate::testdir::test_path(&format!("upgrade-{test}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("ringlb");
    point_at_real_binary(&p);
    p
}

fn point_at_real_binary(p: &Path) {
    let _ = std::fs::remove_file(p);
    std::os::unix::fs::symlink(bin(), p).expect("symlink");
}

fn replace_with_script(p: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = p.with_extension("new");
    std::fs::write(&tmp, script).expect("script");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // As a package manager does: the new file is renamed over the old path.
    std::fs::rename(&tmp, p).expect("rename");
}

/// One request on a fresh connection: `Ok` with the status line's code.
fn one_shot(addr: SocketAddr) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no response: {text:?}"))
}

#[test]
fn sigusr2_under_load_refuses_no_connection_and_loses_no_request() {
    let backend = Backend::start("app");
    let (port, admin) = (free_port(), free_port());
    let cfg = write_config(
        "upgrade-load.toml",
        &config_text(port, admin, backend.addr, ""),
    );
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    let notify_path = cfg.with_extension("notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut p = Running::start_with(
        Path::new(bin()),
        "load",
        &cfg,
        (port, admin),
        Some(&notify_path),
    );
    let old = p.serving_pid();
    let mut note = [0u8; 512];
    let n = notify
        .recv(&mut note)
        .expect("READY=1 from the first process");
    assert_eq!(
        String::from_utf8_lossy(&note[..n]),
        format!("MAINPID={old}\nREADY=1\n")
    );
    assert_eq!(old, u64::from(p.child.id()));
    assert_eq!(
        status(p.admin)["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );

    let stop_load = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    // Two clients opening a connection per request (a refused SYN would show here) and two
    // keep-alive clients that reconnect when told `Connection: close`.
    for keep_alive in [false, false, true, true] {
        let (stop_load, errors, ok, addr) =
            (stop_load.clone(), errors.clone(), ok.clone(), p.listener);
        load.push(std::thread::spawn(move || {
            while !stop_load.load(Ordering::Relaxed) {
                if !keep_alive {
                    match one_shot(addr) {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(s) => {
                            errors.lock().unwrap().push(format!("status {s}"));
                            0
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            0
                        }
                    };
                    continue;
                }
                let mut c = Client::connect(addr);
                loop {
                    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                    match c.read_response(false) {
                        Some(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.header("connection") == Some("close")
                                || stop_load.load(Ordering::Relaxed)
                            {
                                break;
                            }
                        }
                        Some(r) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("keep-alive: status {}", r.status));
                            break;
                        }
                        None => {
                            errors
                                .lock()
                                .unwrap()
                                .push("keep-alive: no response".into());
                            break;
                        }
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(400));
    let before = ok.load(Ordering::Relaxed);
    // The new process runs one worker: it accepts on both of the old process's sockets (a socket
    // of the SO_REUSEPORT group nobody accepts on would leave its clients hanging).
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("workers = 2", "workers = 1")).expect("config");
    p.usr2(old);
    let new = p.wait_new_pid(old);
    // The old process drains and exits 0; the new one keeps serving the same port.
    assert_eq!(p.wait_first_exit(), Some(0), "old process exit status");
    // systemd heard that the new process is the service's main process now, and ready.
    let mut heard = Vec::new();
    while let Ok(n) = notify.recv(&mut note) {
        heard.push(String::from_utf8_lossy(&note[..n]).into_owned());
        if heard.len() == 2 {
            break;
        }
    }
    assert!(
        heard.contains(&format!("MAINPID={new}\nREADY=1\n")),
        "the new process: {heard:?}"
    );
    assert!(
        heard.contains(&format!("MAINPID={new}\n")),
        "the old process hands over: {heard:?}"
    );
    let switched = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(400));
    stop_load.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    let after = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "requests failed across the upgrade: {errors:?}"
    );
    assert!(
        before > 20 && after > switched + 20,
        "load ran throughout: {before} {switched} {after}"
    );
    let log = p.log();
    assert!(log.contains("SIGUSR2: upgrading"), "{log}");
    assert!(log.contains("the new process serves"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!log.contains("cannot withdraw"), "{log}");
    assert!(!log.contains("drain timeout"), "{log}");
    assert_eq!(get(p.listener, "/").status, 200);
    stop(new);
}

#[test]
fn a_broken_new_binary_or_config_changes_nothing_and_a_fixed_one_upgrades() {
    let Linked {
        _backend,
        cfg,
        program,
        mut p,
        old,
    } = Linked::start("broken");

    // 1. The file at the program's path is not ringlb at all.
    replace_with_script(
        &program,
        "#!/bin/sh\necho 'not a ringlb binary' >&2\nexit 3\n",
    );
    p.usr2(old);
    wait_for(Duration::from_secs(10), "the failure logged", || {
        p.log().contains("upgrade failed")
    });
    let log = p.log();
    assert!(log.contains("exit status: 3"), "says how it ended: {log}");
    assert_eq!(p.serving_pid(), old);
    assert_eq!(get(p.listener, "/").status, 200, "still serving");

    // 2. The right binary, but the config now has an error: the new process says why.
    point_at_real_binary(&program);
    let good = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, good.replace("targets = [", "targets = [1, ")).expect("break config");
    p.usr2(old);
    wait_for(Duration::from_secs(10), "the refusal logged", || {
        p.log().contains("refused to start")
    });
    let log = p.log();
    assert!(
        log.contains("upgrade-broken.toml:"),
        "names the file and line: {log}"
    );
    assert_eq!(p.serving_pid(), old);
    assert_eq!(get(p.listener, "/").status, 200, "still serving");
    let errors_before = p.log().matches("upgrade failed").count();
    assert_eq!(errors_before, 2);

    // 3. A config that turns deferred accept on, then fails on a later listener (its port is
    //    taken): the new process set it on the shared sockets before it gave up, and the old
    //    process puts its own settings back, so a client that has sent nothing is accepted at
    //    once, not after the kernel's deferral second.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let later = format!(
        "[[listener]]\nname = \"taken\"\nbind = \"{}\"\ntarget_group = \"app\"\n\n",
        taken.local_addr().expect("addr")
    );
    let deferring = good
        .replace(
            "target_group = \"app\"\n",
            "target_group = \"app\"\ndefer_accept = true\n",
        )
        .replace("[[target_group]]", &format!("{later}[[target_group]]"));
    std::fs::write(&cfg, deferring).expect("deferring config");
    p.usr2(old);
    wait_for(Duration::from_secs(10), "the third failure logged", || {
        p.log().matches("upgrade failed").count() == 3
    });
    assert!(p.log().contains("already in use"), "{}", p.log());
    let silent = std::net::TcpStream::connect(p.listener).expect("connect");
    wait_for(
        Duration::from_millis(900),
        "the silent client accepted",
        || status(p.admin)["listeners"][0]["connections"].as_u64() == Some(1),
    );
    drop(silent);

    // 4. Fixed: the upgrade goes through, and the failed attempts left nothing behind.
    std::fs::write(&cfg, &good).expect("fix config");
    p.usr2(old);
    let new = p.wait_new_pid(old);
    assert_eq!(p.wait_first_exit(), Some(0));
    assert_eq!(get(p.listener, "/").status, 200);
    stop(new);
}

#[test]
fn a_second_sigusr2_and_a_reload_during_an_upgrade_are_refused() {
    let Linked {
        _backend,
        program,
        mut p,
        old,
        ..
    } = Linked::start("twice");
    // A new binary that takes a while to start (as one loading many certificates would).
    replace_with_script(
        &program,
        &format!("#!/bin/sh\nsleep 1.5\nexec {} \"$@\"\n", bin()),
    );
    p.usr2(old);
    std::thread::sleep(Duration::from_millis(300));
    p.usr2(old);
    let r = admin_request(p.admin, "POST", "/reload", None, None);
    assert_eq!(r.status, 409, "reload during an upgrade: {}", r.text());
    assert!(r.text().contains("upgrade"), "says why: {}", r.text());
    wait_for(Duration::from_secs(5), "the refusal logged", || {
        p.log()
            .contains("SIGUSR2 refused: an upgrade is already in progress")
    });
    let new = p.wait_new_pid(old);
    assert_eq!(p.wait_first_exit(), Some(0));
    assert_eq!(
        p.log().matches("SIGUSR2: upgrading").count(),
        1,
        "{}",
        p.log()
    );
    assert_eq!(get(p.listener, "/").status, 200);
    stop(new);
}

#[test]
fn tls_clients_resume_their_sessions_across_an_upgrade() {
    let pki = crate::tls::Pki::new("upgrade");
    let leaf = pki.leaf("site", &["site.test"]);
    let backend = Backend::start("app");
    let (port, admin, tls_port) = (free_port(), free_port(), free_port());
    let https = format!(
        "\n[[listener]]\nname = \"websecure\"\nbind = \"127.0.0.1:{tls_port}\"\nprotocol = \"https\"\n\
         target_group = \"app\"\n  [listener.tls]\n  certificates = [{}]\n",
        crate::tls::cert_list(&[&leaf])
    );
    let cfg = write_config(
        "upgrade-tls.toml",
        &config_text(port, admin, backend.addr, &https),
    );
    let mut p = Running::start(Path::new(bin()), "tls", &cfg, port, admin);
    wait_port(tls_port);
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let client = Arc::new(pki.client(&["http/1.1"]));
    let (r, first) = crate::tls::https_get(addr, &client, "site.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // A few more sessions, so the client holds tickets to spend after the upgrade.
    for _ in 0..3 {
        let (r, _) = crate::tls::https_get(addr, &client, "site.test", "/");
        assert_eq!(r.status, 200);
    }

    // The new process runs more workers than the old: it adds sockets to the same port.
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("workers = 2", "workers = 3")).expect("config");
    let old = p.serving_pid();
    p.usr2(old);
    let new = p.wait_new_pid(old);
    assert_eq!(p.wait_first_exit(), Some(0));
    for _ in 0..6 {
        assert_eq!(one_shot(p.listener), Ok(200));
    }
    let (r, after) = crate::tls::https_get(addr, &client, "site.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(
        after.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "a ticket from the old process opens in the new one"
    );
    stop(new);
}

#[test]
fn sigterm_during_an_upgrade_stops_the_new_process_too() {
    let Linked {
        _backend,
        cfg,
        program,
        mut p,
        old,
    } = Linked::start("term");
    replace_with_script(
        &program,
        &format!("#!/bin/sh\nsleep 1\nexec {} \"$@\"\n", bin()),
    );
    p.usr2(old);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill on the process this test started.
    unsafe { libc::kill(old as i32, libc::SIGTERM) };
    assert_eq!(p.wait_first_exit(), Some(0));
    // Nothing serves any more: the new process was stopped before it could. Looked up by the
    // config path on its command line rather than by connecting, because once the listening
    // socket is closed, another test may be given the port.
    std::thread::sleep(Duration::from_millis(1500));
    let left = processes_with_arg(&cfg);
    assert!(
        left.is_empty(),
        "still running after SIGTERM: {left:?}\n{}",
        p.log()
    );
    assert!(
        p.log().contains("stopping the upgrade's new process"),
        "{}",
        p.log()
    );
}

/// The command lines of the processes that have `arg` as one of their arguments.
fn processes_with_arg(arg: &Path) -> Vec<String> {
    let arg = arg.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.split(|&b| b == 0).any(|a| a == arg))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}
