//! What a new user runs into (issue 19): a second ringlb on a port one already holds refuses to
//! start and `check` says who holds it; a target port out of range is named as such; logs carry
//! no colour escapes when they do not go to a terminal; every CLI option says what it takes.
//! Each runs the real binary, as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::{bin, free_port, wait_port, write_config};
use crate::support::*;

fn config(port: u16, target: std::net::SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{port}\"\n\
         target_group = \"app\"\n\n[[target_group]]\nname = \"app\"\ntargets = [\"{target}\"]\n"
    )
}

/// Starts `ringlb run` with stderr piped; returns the child and a channel of its stderr lines.
fn spawn_run(cfg: &std::path::Path) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringlb");
    let (tx, rx) = mpsc::channel();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (KillOnDrop(child), rx)
}

/// Lines until one contains `needle` (all of them), or panics after 10 s.
fn lines_until(rx: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {needle:?} in:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn a_second_ringlb_on_a_held_port_refuses_to_start_and_check_names_the_holder() {
    let a = Backend::start("first");
    let port = free_port();
    let first_cfg = write_config("first.toml", &config(port, a.addr));
    let (first, _first_log) = spawn_run(&first_cfg);
    wait_port(port);
    let first_pid = first.0.id();

    let b = Backend::start("second");
    let second_cfg = write_config("second.toml", &config(port, b.addr));
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&second_cfg)
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(0), "check warns, it does not fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("in use by pid {first_pid} (ringlb)"))
            && err.contains("listener 'web'"),
        "check names the holder: {err}"
    );

    let mut second = Command::new(bin())
        .args(["run", "--config"])
        .arg(&second_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn second");
    let started = std::time::Instant::now();
    let status = loop {
        if let Ok(Some(s)) = second.try_wait() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            panic!("a second ringlb on a held port started (and would share its traffic)");
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    let mut err = String::new();
    if let Some(mut e) = second.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("listener 'web'") && err.contains(&format!("in use by pid {first_pid}")),
        "the refusal is located and names the holder: {err}"
    );
    // The first instance alone answers.
    for _ in 0..10 {
        assert_eq!(
            get(format!("127.0.0.1:{port}").parse().expect("addr"), "/").text(),
            "first"
        );
    }
    assert_eq!(b.traffic(), 0);
}

#[test]
fn a_target_port_out_of_range_is_named_as_such() {
    let cfg = write_config(
        "port-range.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\ntarget_group = \"app\"\n\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:99999\"]\n",
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("port 99999 is out of range (1..=65535)"),
        "{err}"
    );
    assert!(
        !err.contains("dns"),
        "no host-name hint for an IP address: {err}"
    );
}

#[test]
fn logs_carry_no_colour_escapes_when_stderr_is_not_a_terminal() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = write_config("nocolour.toml", &config(port, a.addr));
    let (_child, rx) = spawn_run(&cfg);
    let lines = lines_until(&rx, "ringlb started");
    let text = lines.join("\n");
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a pipe: {text:?}");
}

#[test]
fn every_cli_option_says_what_it_takes() {
    for sub in ["run", "check", "tune", "demo"] {
        let out = Command::new(bin())
            .args([sub, "--help"])
            .output()
            .expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.trim_start().starts_with('-')) {
            let described = line
                .trim()
                .split("  ")
                .filter(|part| !part.trim().is_empty())
                .count()
                >= 2;
            assert!(
                described,
                "`ringlb {sub} --help`: no description on {line:?}"
            );
        }
    }
    let out = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config <FILE>"),
        "the value name matches the text: {text}"
    );
}
